//! The forwarder-bound bench's network: a client namespace (the sender), the forwarder's
//! namespace (the path under test) and a sink namespace, whose XDP program counts and drops
//! every frame that arrives, so no backend's stack is in the measure.
//!
//! ```text
//!  client ns ──veth── fwd ns ──────────────────veth── sink ns
//!  fc0 (AF_PACKET)    fwc 10.0.1.1 (threaded NAPI)    fs0: XDP count + drop
//!                     fws 10.0.2.1; backends 10.0.2.11.. as permanent neighbours on fws
//! ```

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context as _, Result};
use balancer_tests::{agent::web_and_dns, netns::Netns, util::TempDir, Agent};
use balancer_wire::MacAddr;

use super::Path;
use crate::asm::{count_and_return, insn, verdict_counter_map, MOV64_IMM};
use crate::replay::VerdictCounters;
use crate::xdp::syscall::{attach_xdp, ifindex, load_xdp, XdpLink};
use crate::xdp::{backend_addr, backend_neighbours, ip_batch, XDP_DROP};

pub const CLIENT_IF: &str = "fc0";
/// The forwarder's interfaces: from the client (its NAPI thread is the measured CPU's
/// work) and towards the backends.
pub const FWD_IN: &str = "fwc";
pub const FWD_OUT: &str = "fws";
const SINK_IF: &str = "fs0";
pub const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x02]);
pub const FWD_IN_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x01]);
const FWD_OUT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x02, 0x01]);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// The VIP (TCP :80, UDP :5300); kernel forwarding routes it to the first backend.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 1);
/// Backends: 10.0.2.11 ..= 10.0.2.110 (permanent neighbours; nothing answers, the sink
/// drops all).
pub const BACKENDS: usize = 100;
/// The balancer's SNAT ports: wide, so that 1M flows over the backends take a sixth of
/// them (the default range would run out, which is another measure).
pub const PORT_RANGE: &str = "1024-65535";
const NFT_TABLE: &str = "fwdbench";

/// The three namespaces and the sink's counting program; dropping it removes them all.
pub struct Net {
    // Fields drop in order: the agent or rules of the path first, then the namespaces.
    pub client: Netns,
    pub fwd: Netns,
    _sink_link: XdpLink,
    _sink_prog: OwnedFd,
    _sink: Netns,
    /// Frames the sink received (its `XDP_DROP` count).
    pub arrived: VerdictCounters,
    dir: TempDir,
}

impl Net {
    pub fn new() -> Result<Net> {
        let client = Netns::unique("fwc").context("creating the client namespace")?;
        let fwd = Netns::unique("fwd").context("creating the forwarder's namespace")?;
        let sink = Netns::unique("fws").context("creating the sink namespace")?;
        let dir = TempDir::new("blt-bench-fwd")?;
        let veth = |a: &Netns, name: &str, peer: &str, b: &Netns| {
            a.ip(&[
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                b.name(),
            ])
        };
        veth(&client, CLIENT_IF, FWD_IN, &fwd)?;
        veth(&fwd, FWD_OUT, SINK_IF, &sink)?;
        client.ip(&["link", "set", CLIENT_IF, "address", &CLIENT_MAC.to_string()])?;
        let mut batch = vec![
            format!("link set {FWD_IN} address {FWD_IN_MAC}"),
            format!("link set {FWD_OUT} address {FWD_OUT_MAC}"),
            format!("addr add 10.0.1.1/24 dev {FWD_IN}"),
            format!("addr add {SNAT}/24 dev {FWD_OUT}"),
            "link set lo up".into(),
            format!("link set {FWD_IN} up"),
            format!("link set {FWD_OUT} up"),
            // Plain routing's way to the VIP: to the first backend.
            format!(
                "route add 10.0.100.0/24 via {} dev {FWD_OUT}",
                backend_addr(0)
            ),
        ];
        batch.extend(backend_neighbours(FWD_OUT, BACKENDS));
        ip_batch(&fwd, &batch).context("setting up the forwarder's namespace")?;
        // Clients come from many addresses no route leads back to: no reverse-path filter.
        fwd.run(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            &format!("net.ipv4.conf.{FWD_IN}.rp_filter=0"),
        ])?;
        // GRO gives the ingress veth its NAPI (without XDP too): received there, not in the
        // sender's backlog, so on the NAPI thread's CPU.
        fwd.run(&["ethtool", "-K", FWD_IN, "gro", "on"])?;
        // veth hands a frame to the peer's NAPI only if it is eligible for GRO: from a
        // device without TSO (else it goes to the sending CPU's backlog, and the sender's
        // CPU would forward).
        client.run(&["ethtool", "-K", CLIENT_IF, "tso", "off"])?;
        client.ip(&["link", "set", CLIENT_IF, "up"])?;
        sink.ip(&["link", "set", SINK_IF, "up"])?;
        let map = verdict_counter_map()?;
        let arrived = VerdictCounters::from_fd(map.try_clone()?)?;
        let mut insns = vec![
            insn(MOV64_IMM, 7, 0, 0, balancer_common::stat::XDP_DROP as i32),
            insn(MOV64_IMM, 8, 0, 0, XDP_DROP as i32),
        ];
        insns.extend(count_and_return(map.as_raw_fd()));
        let prog = load_xdp(b"bench_sink", &insns).context("loading the sink program")?;
        let fd = prog.as_raw_fd();
        let link = sink.in_thread(|| attach_xdp(fd, SINK_IF))??;
        Ok(Net {
            client,
            fwd,
            _sink_link: link,
            _sink_prog: prog,
            _sink: sink,
            arrived,
            dir,
        })
    }

    /// The client's interface index, for the sender (read in the client namespace).
    pub fn client_ifindex(&self) -> Result<u32> {
        self.client.in_thread(|| ifindex(CLIENT_IF))?
    }

    /// Sets `path` up in the forwarder's namespace; dropping the guard tears it down.
    pub fn path(&self, path: Path) -> Result<PathGuard<'_>> {
        let guard = match path {
            Path::Kernel => PathGuard::Nothing,
            Path::BalancerSkb | Path::BalancerDriver => {
                let mode = if path == Path::BalancerSkb {
                    "skb"
                } else {
                    "driver"
                };
                let socket = self.dir.path().join("balancer.sock");
                let agent = Agent::start_in(&self.fwd, &agent_config(mode, &socket), &socket)
                    .with_context(|| format!("starting the agent ({mode} mode)"))?;
                // Its threads off the forwarding CPU.
                if let Some(pid) = agent.pid() {
                    for tid in threads(pid) {
                        let _ = crate::pin(tid, super::SENDER_CPU);
                    }
                }
                PathGuard::Agent(Box::new(agent))
            }
            Path::Nftables => {
                let file = self.dir.path().join("nft.rules");
                std::fs::write(&file, nft_rules())?;
                let guard = PathGuard::Nft(&self.fwd);
                self.fwd
                    .run(&["nft", "-f", &file.to_string_lossy()])
                    .context("loading the nftables rules")?;
                guard
            }
        };
        self.threaded_napi()?;
        Ok(guard)
    }

    /// Turns the ingress veth's NAPI into a thread and pins it to the forwarding CPU (again
    /// after every change of path: attaching XDP may recreate the NAPI).
    fn threaded_napi(&self) -> Result<()> {
        self.fwd.run(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{FWD_IN}/threaded"),
        ])?;
        let napi = napi_threads(FWD_IN);
        ensure!(
            !napi.is_empty(),
            "no NAPI thread of {FWD_IN} after `threaded = 1`"
        );
        for tid in napi {
            crate::pin(tid, super::FORWARD_CPU)?;
        }
        Ok(())
    }
}

/// What a path set up.
pub enum PathGuard<'a> {
    Nothing,
    /// Stopped when dropped.
    Agent(Box<Agent>),
    Nft(&'a Netns),
}

impl Drop for PathGuard<'_> {
    fn drop(&mut self) {
        match self {
            PathGuard::Nothing | PathGuard::Agent(_) => {}
            PathGuard::Nft(ns) => {
                if let Err(e) = ns.run(&["nft", "delete", "table", "ip", NFT_TABLE]) {
                    eprintln!("warning: removing the nftables rules: {e:#}");
                }
            }
        }
    }
}

fn agent_config(mode: &str, socket: &std::path::Path) -> String {
    let backends: Vec<Ipv4Addr> = (0..BACKENDS).map(backend_addr).collect();
    format!(
        "[agent]\ninterfaces = [\"{FWD_IN}\", \"{FWD_OUT}\"]\nxdp_mode = \"{mode}\"\n\
         control_socket = \"{}\"\npin_dir = \"\"\n\n\
         [nat]\nsource_address = \"{SNAT}\"\nport_range = \"{PORT_RANGE}\"\n\n{}",
        socket.display(),
        web_and_dns(&backends, "maglev")
    )
}

/// nftables DNAT as kube-proxy does it, to the same backends, SNAT by masquerade.
fn nft_rules() -> String {
    let map = (0..BACKENDS).fold(String::new(), |mut m, i| {
        let _ = write!(
            m,
            "{}{i} : {}",
            if i == 0 { "" } else { ", " },
            backend_addr(i)
        );
        m
    });
    format!(
        "table ip {NFT_TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {VIP} tcp dport 80 dnat to numgen inc mod {BACKENDS} map {{ {map} }}\n\
         \t\tip daddr {VIP} udp dport 5300 dnat to numgen inc mod {BACKENDS} map {{ {map} }}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tct status dnat oifname \"{FWD_OUT}\" masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// The thread ids of process `pid`.
fn threads(pid: u32) -> Vec<libc::pid_t> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The kernel threads `napi/DEV-ID` of interface `dev` (the names are unique to this
/// bench's namespaces while it runs).
fn napi_threads(dev: &str) -> Vec<libc::pid_t> {
    let prefix = format!("napi/{dev}-");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| {
            let pid: libc::pid_t = e.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.starts_with(&prefix).then_some(pid)
        })
        .collect()
}

/// The kernel's conntrack limit (global: the namespaces share it).
pub fn conntrack_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `bail!` unless the balancer sent on (redirected) what it got: a packet it passed to the
/// stack or dropped would be another path's figure (the stack's forwarding) or none.
pub fn check_verdicts(guard: &PathGuard<'_>) -> Result<()> {
    let PathGuard::Agent(agent) = guard else {
        return Ok(());
    };
    let counters = crate::e2e::agent_counters(agent);
    let get = |name: &str| {
        counters
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |&(_, v)| v)
    };
    let redirected = get("xdp_redirect");
    let other = get("xdp_pass") + get("xdp_drop") + get("xdp_tx") + get("xdp_aborted");
    ensure!(
        redirected > 0 && other * 100 < redirected,
        "the balancer redirected {redirected} packets and passed, dropped or bounced {other}: \
         {counters:?}"
    );
    Ok(())
}

/// `bail!` unless the balancer of `path` is attached to the forwarder's ingress in its mode.
pub fn check_attached(net: &Net, path: Path) -> Result<()> {
    let attached = net.fwd.xdp_prog(FWD_IN).is_some();
    let link = net.fwd.ip(&["link", "show", FWD_IN])?;
    let generic = link.contains("xdpgeneric");
    match path {
        Path::BalancerDriver if !attached || generic => {
            bail!("the balancer is not attached in driver mode to {FWD_IN}: {link}")
        }
        Path::BalancerSkb if !generic => {
            bail!("the balancer is not attached in skb mode to {FWD_IN}: {link}")
        }
        _ => Ok(()),
    }
}
