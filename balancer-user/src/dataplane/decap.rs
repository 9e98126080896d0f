//! `balancer decap`: the backends' decapsulation program (`balancer_decap` in the embedded
//! object), attached to an interface and left there. Its link and maps are pinned in a
//! directory per interface, so the command exits, and a later one changes the outer
//! addresses it accepts, reads its counters or detaches it (removing the pins releases
//! the link: the kernel detaches the program).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{links::FdLink, Xdp},
    EbpfLoader,
};
use balancer_common::{decap_stat, map_names, DecapSettings, DECAP_PROGRAM_NAME, MAX_DECAP_ADDRS};
use serde::Serialize;

use super::loader::{self, EBPF_OBJECT};
use crate::config::XdpMode;

/// Where the pins live by default: one directory per interface below it.
pub const DEFAULT_DECAP_PIN_DIR: &str = "/sys/fs/bpf/balancer-decap";

/// File name of the pinned link in an interface's directory.
const LINK: &str = "link";

/// The balancer's maps the decapsulation program does not use, created as small as the
/// kernel allows when the object is loaded for it (each would be megabytes).
const UNUSED_LARGE_MAPS: [&str; 5] = [
    map_names::CONNS,
    map_names::NAT,
    map_names::RING,
    map_names::FLOW_CACHE,
    map_names::BACKENDS,
];

/// What to attach: the interface, the outer destinations to accept (the backend's own
/// addresses the balancer tunnels to), GUE's port (0: IPIP only), the XDP mode.
#[derive(Clone, Debug)]
pub struct DecapSpec {
    pub interface: String,
    pub addresses: Vec<Ipv4Addr>,
    pub gue_port: u16,
    pub mode: XdpMode,
}

/// One attached program, as `balancer decap status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DecapStatus {
    pub interface: String,
    pub addresses: Vec<Ipv4Addr>,
    /// 0: GUE is not decapsulated.
    pub gue_port: u16,
    /// (`decap_stat` name, packets), summed over CPUs.
    pub counters: Vec<(String, u64)>,
}

/// The pin directory of `interface` under `root`.
fn dir_of(root: &Path, interface: &str) -> PathBuf {
    root.join(interface)
}

/// Attaches the program to `spec.interface` and pins it under `root`, or, when it is
/// attached there already, gives it `spec`'s addresses and port. Returns what was done.
///
/// # Errors
/// The interface does not exist, another XDP program holds it, `root` is not on a bpf
/// filesystem, or the kernel refused.
pub fn attach(spec: &DecapSpec, root: &Path) -> anyhow::Result<String> {
    check_spec(spec)?;
    let dir = dir_of(root, &spec.interface);
    if dir.join(LINK).exists() {
        write_config(&dir, spec)?;
        return Ok(format!(
            "{}: decapsulation already attached; it now accepts {}",
            spec.interface,
            accepts(spec)
        ));
    }
    loader::check_privileges("balancer decap")?;
    crate::sys::ifindex(&spec.interface)
        .with_context(|| format!("--interface {}: no such interface", spec.interface))?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the pin directory {}", dir.display()))?;
    let attached = attach_new(spec, &dir);
    if attached.is_err() {
        // Nothing half-made stays behind for the next attempt to trip on.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mode = attached?;
    Ok(format!(
        "{}: decapsulation attached ({mode} mode); it accepts {}",
        spec.interface,
        accepts(spec)
    ))
}

fn check_spec(spec: &DecapSpec) -> anyhow::Result<()> {
    if spec.addresses.is_empty() {
        bail!("give at least one --address: the outer destination the balancer tunnels to (this backend's address)");
    }
    if spec.addresses.len() > MAX_DECAP_ADDRS as usize {
        bail!(
            "at most {MAX_DECAP_ADDRS} addresses (got {})",
            spec.addresses.len()
        );
    }
    if let Some(bad) = spec
        .addresses
        .iter()
        .find(|a| a.is_unspecified() || a.is_multicast() || a.is_broadcast())
    {
        bail!("--address {bad}: not a unicast address");
    }
    Ok(())
}

/// "IPIP and GUE (port N) to A, B".
fn accepts(spec: &DecapSpec) -> String {
    let list: Vec<String> = spec.addresses.iter().map(ToString::to_string).collect();
    let kinds = if spec.gue_port == 0 {
        "IPIP".to_owned()
    } else {
        format!("IPIP and GUE (UDP port {})", spec.gue_port)
    };
    format!("{kinds} to {}", list.join(", "))
}

/// Loads, attaches and pins a new program in `dir`; returns the XDP mode it got.
fn attach_new(spec: &DecapSpec, dir: &Path) -> anyhow::Result<&'static str> {
    let mut loader = EbpfLoader::new();
    for name in UNUSED_LARGE_MAPS {
        loader.map_max_entries(name, 1);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).context("loading the XDP object")?;
    for name in [
        map_names::DECAP_ADDRS,
        map_names::DECAP_SETTINGS,
        map_names::DECAP_STATS,
    ] {
        let map = ebpf
            .map(name)
            .with_context(|| format!("the XDP object has no map {name}"))?;
        map.pin(dir.join(name))
            .with_context(|| format!("pinning {name} in {} (a bpf filesystem?)", dir.display()))?;
    }
    write_config(dir, spec)?;
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM_NAME)
        .with_context(|| format!("the XDP object has no program {DECAP_PROGRAM_NAME}"))?
        .try_into()
        .context("the decapsulation program is not an XDP program")?;
    program
        .load()
        .context("the kernel refused the decapsulation program (verifier)")?;
    let (id, mode) = loader::attach(program, &spec.interface, spec.mode)?;
    let link = program.take_link(id)?;
    let link = FdLink::try_from(link).context("the XDP attachment is not a bpf_link")?;
    link.pin(dir.join(LINK))
        .with_context(|| format!("pinning the link in {}", dir.display()))?;
    Ok(mode.name())
}

fn pinned(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("reading {}", path.display()))
}

/// Writes `spec`'s addresses (replacing those there) and GUE port into the pinned maps.
fn write_config(dir: &Path, spec: &DecapSpec) -> anyhow::Result<()> {
    let mut addrs: HashMap<MapData, u32, u32> = pinned(dir, map_names::DECAP_ADDRS)?.try_into()?;
    let wanted: Vec<u32> = spec
        .addresses
        .iter()
        .map(|a| u32::from(*a).to_be())
        .collect();
    let old: Vec<u32> = addrs.keys().filter_map(Result::ok).collect();
    for addr in &wanted {
        addrs.insert(addr, 1, 0).context("writing DECAP_ADDRS")?;
    }
    for addr in old.iter().filter(|a| !wanted.contains(a)) {
        addrs.remove(addr).context("writing DECAP_ADDRS")?;
    }
    let mut settings: Array<MapData, DecapSettings> =
        pinned(dir, map_names::DECAP_SETTINGS)?.try_into()?;
    let value = DecapSettings {
        gue_port: spec.gue_port.to_be(),
        _pad: 0,
    };
    settings
        .set(0, value, 0)
        .context("writing DECAP_SETTINGS")?;
    Ok(())
}

/// Detaches the program from `interface` (removes its pins).
///
/// # Errors
/// Nothing is attached there by `balancer decap`, or the pins cannot be removed.
pub fn detach(interface: &str, root: &Path) -> anyhow::Result<String> {
    let dir = dir_of(root, interface);
    if !dir.join(LINK).exists() {
        bail!(
            "{interface}: no decapsulation program attached by `balancer decap` (nothing in {})",
            dir.display()
        );
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(format!("{interface}: decapsulation detached"))
}

/// The attached programs under `root` (only `interface`'s when given).
///
/// # Errors
/// `interface` has none, or a pinned map cannot be read.
pub fn status(root: &Path, interface: Option<&str>) -> anyhow::Result<Vec<DecapStatus>> {
    let mut names: Vec<String> = match interface {
        Some(name) => {
            if !dir_of(root, name).join(LINK).exists() {
                bail!("{name}: no decapsulation program attached by `balancer decap`");
            }
            vec![name.to_owned()]
        }
        None => std::fs::read_dir(root)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.path().join(LINK).exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    names.sort();
    names.iter().map(|name| one_status(root, name)).collect()
}

fn one_status(root: &Path, interface: &str) -> anyhow::Result<DecapStatus> {
    let dir = dir_of(root, interface);
    let addrs: HashMap<MapData, u32, u32> = pinned(&dir, map_names::DECAP_ADDRS)?.try_into()?;
    let mut addresses: Vec<Ipv4Addr> = addrs
        .keys()
        .filter_map(Result::ok)
        .map(|a| Ipv4Addr::from(u32::from_be(a)))
        .collect();
    addresses.sort();
    let settings: Array<MapData, DecapSettings> =
        pinned(&dir, map_names::DECAP_SETTINGS)?.try_into()?;
    let gue_port = u16::from_be(settings.get(&0, 0)?.gue_port);
    let stats: PerCpuArray<MapData, u64> = pinned(&dir, map_names::DECAP_STATS)?.try_into()?;
    let mut counters = Vec::new();
    for (index, name) in (0..decap_stat::COUNT).zip(decap_stat::NAMES) {
        let total = stats.get(&index, 0)?.iter().sum();
        counters.push((name.to_owned(), total));
    }
    Ok(DecapStatus {
        interface: interface.to_owned(),
        addresses,
        gue_port,
        counters,
    })
}

/// `statuses` as `balancer decap status` prints them.
#[must_use]
pub fn render(statuses: &[DecapStatus]) -> String {
    if statuses.is_empty() {
        return "no decapsulation program attached by `balancer decap`".to_owned();
    }
    let mut out = Vec::new();
    for s in statuses {
        let list: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
        let gue = match s.gue_port {
            0 => "off".to_owned(),
            port => port.to_string(),
        };
        out.push(format!(
            "{}: accepts {} (GUE port {gue})",
            s.interface,
            list.join(", ")
        ));
        for (name, value) in &s.counters {
            out.push(format!("  {name:<16} {value}"));
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addresses: &[&str]) -> DecapSpec {
        DecapSpec {
            interface: "eth0".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            gue_port: 6080,
            mode: XdpMode::Auto,
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = check_spec(&spec(&[])).unwrap_err().to_string();
        assert!(err.contains("at least one --address"), "{err}");
        let err = check_spec(&spec(&["10.0.0.1", "224.0.0.5"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--address 224.0.0.5: not a unicast address"),
            "{err}"
        );
        assert!(check_spec(&spec(&["10.0.0.1"])).is_ok());
    }

    #[test]
    fn says_what_it_accepts() {
        assert_eq!(
            accepts(&spec(&["10.0.0.1", "10.0.0.2"])),
            "IPIP and GUE (UDP port 6080) to 10.0.0.1, 10.0.0.2"
        );
        let ipip_only = DecapSpec {
            gue_port: 0,
            ..spec(&["10.0.0.1"])
        };
        assert_eq!(accepts(&ipip_only), "IPIP to 10.0.0.1");
    }

    #[test]
    fn renders_counters_per_interface() {
        let status = DecapStatus {
            interface: "eth0".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            gue_port: 0,
            counters: vec![("decap_ipip".into(), 3)],
        };
        let text = render(&[status]);
        assert!(
            text.starts_with("eth0: accepts 10.0.0.1 (GUE port off)"),
            "{text}"
        );
        assert!(text.contains("decap_ipip       3"), "{text}");
        assert!(render(&[]).contains("no decapsulation program"));
    }
}
