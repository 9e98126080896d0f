//! The bench namespace (routes and permanent neighbours, so that every FIB lookup succeeds)
//! and the program loaded with its maps filled by the agent's own `Balancer`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};
use std::rc::Rc;

use anyhow::{bail, ensure, Context as _, Result};
use aya::{maps::Map, programs::Xdp, Ebpf, EbpfLoader};
use balancer::{
    config,
    dataplane::{loader::EBPF_OBJECT, AyaMaps},
    lb::Balancer,
};
use balancer_common::{map_names, PROGRAM_NAME};
use balancer_tests::{agent::web_and_dns, netns::Netns, util::TempDir};
use balancer_wire::MacAddr;

use crate::replay::VerdictCounters;

use super::{
    ProgramFacts, BACKEND_IF, CLIENT, CLIENT_IF, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC,
    N_BACKENDS, SNAT,
};

/// Backend `i`: 10.0.2.11 on.
pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 11 + i as u8)
}

pub(super) fn backend_mac(i: usize) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0x02, 0x11 + i as u8])
}

/// `ip -batch` lines: permanent neighbour entries on `dev` for backends `0..n` (addresses
/// from 10.0.2.11 on, MACs to match), so that every FIB lookup towards them succeeds.
pub fn backend_neighbours(dev: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "neigh replace {} lladdr {} dev {dev} nud permanent",
                backend_addr(i),
                backend_mac(i)
            )
        })
        .collect()
}

/// Runs `lines` with `ip -batch` in `ns`.
pub fn ip_batch(ns: &Netns, lines: &[String]) -> Result<()> {
    let tmp = TempDir::new("blt-bench-ip")?;
    let file = tmp.path().join("setup.batch");
    std::fs::write(&file, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    ns.ip(&["-batch", &file.to_string_lossy()])?;
    Ok(())
}

/// A namespace like the packet fixtures' one: the balancer's two interfaces with fixed
/// MACs, both subnets, forwarding on, and permanent neighbour entries for the client and
/// every backend.
fn bench_namespace() -> Result<Netns> {
    let ns = Netns::unique("bx").context("creating the XDP bench namespace")?;
    let mut batch = vec![
        "link set lo up".to_string(),
        format!("link add {CLIENT_IF} type veth peer name {CLIENT_IF}-p"),
        format!("link add {BACKEND_IF} type veth peer name {BACKEND_IF}-p"),
        format!("link set {CLIENT_IF} address {}", LB_CLIENT_MAC),
        format!("link set {BACKEND_IF} address {}", LB_BACKEND_MAC),
        format!("addr add 10.0.1.1/24 dev {CLIENT_IF}"),
        format!("addr add {SNAT}/24 dev {BACKEND_IF}"),
    ];
    for dev in [CLIENT_IF, BACKEND_IF] {
        batch.push(format!("link set {dev} up"));
        batch.push(format!("link set {dev}-p up"));
    }
    batch.push(format!(
        "neigh replace {CLIENT} lladdr {CLIENT_MAC} dev {CLIENT_IF} nud permanent"
    ));
    batch.extend(backend_neighbours(BACKEND_IF, N_BACKENDS));
    ip_batch(&ns, &batch).context("setting up the XDP bench namespace")?;
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ns.run(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
    Ok(ns)
}

/// Runs `f` in a thread inside a bench namespace of its own, removed after.
pub(super) fn in_bench_namespace<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let ns = bench_namespace()?;
    ns.in_thread(f)?
}

/// The configuration of the bench: VIP "web" (TCP :80) and VIP "dns" (UDP :5300), Maglev,
/// each with the same 100 backends; SNAT from 10.0.2.1.
/// The port of the bench's direct-server-return VIP (its backends listen there too).
pub(super) const DSR_PORT: u16 = 8080;
/// The ports of the bench's IPIP and GUE tunnel VIPs (their backends listen there too).
pub(super) const IPIP_PORT: u16 = 8081;
pub(super) const GUE_PORT: u16 = 8082;

/// `port_range`: `nat.port_range` when given (else the default).
pub(super) fn bench_config(port_range: Option<&str>) -> Result<config::Config> {
    let backends: Vec<Ipv4Addr> = (0..N_BACKENDS).map(backend_addr).collect();
    // The same backends on the port of each untranslated VIP: direct server return, and
    // tunnels (IPIP and GUE) from the SNAT address.
    let untranslated = [
        ("direct", DSR_PORT, "forwarding = \"dsr\""),
        ("ipip", IPIP_PORT, "forwarding = \"tunnel\""),
        (
            "gue",
            GUE_PORT,
            "forwarding = \"tunnel\"\nencapsulation = \"gue\"",
        ),
    ];
    let mut vips = String::new();
    for (name, port, forwarding) in untranslated {
        let list = backends.iter().fold(String::new(), |mut list, addr| {
            let _ = writeln!(list, "  {{ address = \"{addr}\", port = {port} }},");
            list
        });
        let _ = write!(
            vips,
            "[[pool]]\nname = \"{name}\"\nbackends = [\n{list}]\n\n\
             [[vip]]\nname = \"{name}\"\naddress = \"10.0.100.1\"\nport = {port}\n\
             protocol = \"tcp\"\npool = \"{name}\"\n{forwarding}\n\n"
        );
    }
    let text = format!(
        "[agent]\ninterfaces = [\"{CLIENT_IF}\", \"{BACKEND_IF}\"]\n\n\
         [nat]\nsource_address = \"{SNAT}\"\n{}\n[tunnel]\nsource = \"{SNAT}\"\n\n{}\n{vips}",
        port_range.map_or(String::new(), |r| format!("port_range = \"{r}\"\n")),
        web_and_dns(&backends, "maglev")
    );
    config::parse(&text, "bench.toml").context("the bench configuration does not parse")
}

/// Loads the embedded XDP object, with `conns` entries in CONNS and NAT when given.
pub fn load(conns: Option<u32>) -> Result<Ebpf> {
    ensure!(
        !EBPF_OBJECT.is_empty(),
        "this bench binary was built without the XDP program: build it with \
         `cargo xtask bench` (BALANCER_EBPF_OBJ)"
    );
    let mut loader = EbpfLoader::new();
    if let Some(n) = conns {
        loader
            .map_max_entries(map_names::CONNS, n)
            .map_max_entries(map_names::NAT, n);
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the XDP object (maps)")?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .context("the XDP object has no program `balancer`")?
        .try_into()
        .context("`balancer` is not an XDP program")?;
    program
        .load()
        .context("the kernel refused the XDP program")?;
    Ok(ebpf)
}

pub(super) fn program_fd(ebpf: &Ebpf) -> Result<RawFd> {
    let program: &Xdp = ebpf
        .program(PROGRAM_NAME)
        .context("no program `balancer`")?
        .try_into()?;
    Ok(program.fd()?.as_fd().as_raw_fd())
}

pub(super) fn program_facts(ebpf: &Ebpf) -> Result<ProgramFacts> {
    let program: &Xdp = ebpf
        .program(PROGRAM_NAME)
        .context("no program `balancer`")?
        .try_into()?;
    let info = program.info()?;
    Ok(ProgramFacts {
        xlated_insns: info.size_translated().map(|bytes| bytes / 8),
        jited_bytes: info.size_jitted(),
        verified_insns: info.verified_instruction_count(),
    })
}

/// The loaded program with its maps filled by the agent's own `Balancer`.
pub(super) struct Loaded {
    pub(super) ebpf: Ebpf,
    /// The program's verdict counters (`GLOBAL_STATS`), which check every run of a burst.
    pub(super) verdicts: Rc<VerdictCounters>,
    // Keeps the maps the balancer took out of `ebpf` open.
    _lb: Balancer<AyaMaps>,
}

impl Loaded {
    /// With `conns` entries in CONNS and NAT and `port_range` as `nat.port_range` when given.
    pub(super) fn new(conns: Option<u32>, port_range: Option<&str>) -> Result<Loaded> {
        let mut ebpf = load(conns)?;
        let Some(Map::PerCpuArray(stats)) = ebpf.map(map_names::GLOBAL_STATS) else {
            bail!(
                "the XDP object has no per-CPU array {}",
                map_names::GLOBAL_STATS
            );
        };
        let stats = stats
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the fd of GLOBAL_STATS")?;
        let verdicts = Rc::new(VerdictCounters::from_fd(stats)?);
        let maps = AyaMaps::new(&mut ebpf).context("taking the program's maps")?;
        let lb = Balancer::from_config(maps, &bench_config(port_range)?)
            .context("filling the maps from the bench configuration")?;
        Ok(Loaded {
            ebpf,
            verdicts,
            _lb: lb,
        })
    }
}
