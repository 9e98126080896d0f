//! End to end in namespaces: the same HTTP (wrk) and UDP load directly to the backends,
//! through the balancer, through nftables DNAT and through HAProxy; and the time from a
//! CLI change to the maps.
//!
//! Backends are nginx (HTTP :80, a small static body) plus `testsrv --udp` (the UDP echo on
//! :5300) in each backend namespace of a `balancer_tests::Topology`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use aya::maps::{Array, Map, MapData};
use balancer_common::{map_names, Backend, BACKEND_F_PRESENT};
use balancer_tests::{
    balancer_path, default_config, http_request,
    netns::{run_in_netns_path, Netns},
    testsrv_path, udp_request,
    util::{output_with_timeout, terminate, TempDir},
    Agent, Topology, HTTP_PORT, LB_BACKEND_ADDR, LB_CLIENT_ADDR, UDP_PORT, VIP,
};

use super::stats::{summarize, Summary};
use super::udpload::{self, UdpLoad, UdpResult};
use super::Stop;
use super::{perf, xdp};

const BACKENDS: usize = 3;

// Source ports from the lb's address towards the backends, a range per path. A backend
// keeps each tuple it closed in TIME-WAIT for 60 s and takes a new SYN for it only with a
// newer TCP timestamp, and a sender's timestamps run on a clock of their own per 4-tuple.
// So a tuple must not pass from one client connection to another within a minute unless
// the sender's tuple is the same, or the backends drop the SYN by PAWS and it is resent a
// second later. The balancers rest their SNAT ports for that (the balancer: its default
// 20000-32767, balancer-generic: 7000-19999). nftables' masquerade keeps the client's port
// (the client's ephemeral ports, 32768-60999), so a tuple towards a backend always carries
// the same client connection's clock; a `masquerade to :range` maps client ports onto the
// range and was measured dropping ~2500 SYNs per run. HAProxy and the agent's health checks
// connect from the lb itself, so their ports must stay out of the client's range: sharing
// it cost nftables ~1600 resent SYNs (406 req/s in a round after HAProxy's, where its first
// round made 30.9k), and HAProxy as many. (Since every run starts without TIME-WAIT
// sockets, see `forget_time_wait`, a tuple can no longer pass between paths; the ranges
// still keep a path's own tuples apart, e.g. the agent's health checks from its SNAT.)
/// The lb namespace's ephemeral ports (`ip_local_port_range`): HAProxy, health checks.
pub const LB_LOCAL_PORTS: &str = "61000 65535";
/// Table name of the nftables comparison in the lb namespace.
const NFT_TABLE: &str = "blt_bench";

/// What load to apply.
#[derive(Clone, Debug)]
pub struct Params {
    pub rounds: usize,
    pub http_duration: Duration,
    pub udp_duration: Duration,
    pub wrk_threads: usize,
    pub wrk_connections: usize,
    pub udp_sockets: usize,
    pub udp_window: usize,
    pub udp_payload: usize,
    /// Also measure testsrv as the HTTP backend (to show whether it would be the bottleneck).
    pub testsrv_check: bool,
    /// Repetitions of each CLI command timed.
    pub cli_repeats: usize,
    /// `perf record -a` during the first keep-alive run of direct, the XDP_PASS control and
    /// both balancer paths.
    pub profile_secs: Option<u64>,
    /// The paths to run (all by default).
    pub peers: Vec<Peer>,
}

/// The four ways from the client to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Direct,
    /// Direct, with an XDP program that passes everything on the lb's two veths: what XDP
    /// mode costs on veth by itself.
    DirectXdpPass,
    /// The agent with XDP in driver (native) mode, its default where the driver has it.
    Balancer,
    /// The agent with XDP in generic (skb) mode: on veth the faster one (see
    /// [`Peer::TARGETS`]).
    BalancerGeneric,
    Nftables,
    Haproxy,
}

impl Peer {
    pub const ALL: [Peer; 6] = [
        Peer::Direct,
        Peer::DirectXdpPass,
        Peer::Balancer,
        Peer::BalancerGeneric,
        Peer::Nftables,
        Peer::Haproxy,
    ];

    /// The balancer path the end-to-end targets are measured on. The bench runs on veth,
    /// where the agent's generic (`xdp_mode = "skb"`) mode is the one to pick: both modes
    /// copy a socket-built skb to give the program its headroom, but in generic mode the
    /// program runs in the veth's own receive path and a redirect transmits the skb on the
    /// target veth (`generic_xdp_tx`), where driver mode hands it to the veth's NAPI through
    /// a ring and builds a new skb from the frame at the target veth.
    pub const TARGETS: Peer = Peer::BalancerGeneric;

    /// Whether this path is the agent (in either XDP mode).
    pub fn is_balancer(self) -> bool {
        matches!(self, Peer::Balancer | Peer::BalancerGeneric)
    }

    pub fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::DirectXdpPass => "direct + XDP_PASS on the lb veths",
            Peer::Balancer => "balancer (XDP, driver mode)",
            Peer::BalancerGeneric => "balancer (XDP, generic mode)",
            Peer::Nftables => "nftables DNAT",
            Peer::Haproxy => "HAProxy (TCP)",
        }
    }

    /// The path called `name` (its short name).
    pub fn by_name(name: &str) -> Option<Peer> {
        Peer::ALL
            .into_iter()
            .find(|p| p.short().eq_ignore_ascii_case(name))
    }

    pub fn short(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::DirectXdpPass => "direct+xdp",
            Peer::Balancer => "balancer",
            Peer::BalancerGeneric => "balancer-generic",
            Peer::Nftables => "nftables",
            Peer::Haproxy => "HAProxy",
        }
    }
}

/// What wrk reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpResult {
    pub rps: f64,
    pub requests: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
    pub timeouts: u64,
    pub non_2xx: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// How busy the CPUs were during the run, and how much of it was other work.
    pub cpu: Option<CpuUse>,
}

/// One peer in one round.
#[derive(Clone, Debug)]
pub struct CaseRun {
    pub peer: Peer,
    pub round: usize,
    pub keepalive: Option<HttpResult>,
    pub close: Option<HttpResult>,
    pub udp: Option<UdpResult>,
    /// How busy the CPUs were during the UDP run, and how much of it was other work.
    pub udp_cpu: Option<CpuUse>,
    /// Set when the case could not be set up or a load run failed.
    pub error: Option<String>,
    /// The balancer's non-zero drop/pass counters after the case (balancer only).
    pub counters: Vec<(String, u64)>,
    /// TCP counters (nstat) that moved during the conn-per-request run: (where, name, delta).
    pub close_tcp: Vec<(&'static str, String, u64)>,
    /// A system-wide profile taken during the keep-alive run (first round only).
    pub profile: Option<Result<Vec<perf::Sample>, String>>,
}

/// CLI round trips, in ms of wall time (process start to exit).
#[derive(Clone, Debug)]
pub struct CliTimes {
    /// `balancer backend list web`: a read-only round trip (process start, socket, reply).
    pub list: Summary,
    /// `balancer backend add web ADDR:80` (a new backend each time).
    pub add: Summary,
    /// `balancer backend del web ADDR:80`.
    pub del: Summary,
    /// Adds after which the BACKENDS map already held the backend when the CLI returned.
    pub add_in_map: usize,
    pub adds: usize,
    /// Backends in the pool before the first add.
    pub pool_before: usize,
    /// One `BPF_MAP_UPDATE_ELEM` of a RING slot from user space, in µs (median of batches).
    pub slot_write_us: Option<f64>,
    /// Whether the program creates RING with `BPF_F_MMAPABLE` (slots written by stores).
    pub ring_mmapable: Option<bool>,
}

/// Everything the end-to-end section measured.
#[derive(Clone, Debug)]
pub struct E2e {
    pub params: Params,
    pub runs: Vec<CaseRun>,
    /// testsrv instead of nginx, direct, keep-alive.
    pub testsrv_direct: Option<HttpResult>,
    pub cli: Option<CliTimes>,
    pub cli_error: Option<String>,
}

/// Which metric of a case run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    KeepAlive,
    Close,
    Udp,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::KeepAlive, Metric::Close, Metric::Udp];

    pub fn name(self) -> &'static str {
        match self {
            Metric::KeepAlive => "HTTP keep-alive req/s",
            Metric::Close => "HTTP conn-per-request req/s",
            Metric::Udp => "UDP echo pps",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Metric::KeepAlive => "keep-alive",
            Metric::Close => "conn/request",
            Metric::Udp => "UDP",
        }
    }

    pub fn of(self, run: &CaseRun) -> Option<f64> {
        match self {
            Metric::KeepAlive => run.keepalive.map(|h| h.rps),
            Metric::Close => run.close.map(|h| h.rps),
            Metric::Udp => run.udp.map(|u| u.pps()),
        }
    }
}

impl E2e {
    /// The best value of `metric` for `peer` over the rounds (noise only lowers throughput).
    pub fn best(&self, peer: Peer, metric: Metric) -> Option<f64> {
        self.runs
            .iter()
            .filter(|r| r.peer == peer)
            .filter_map(|r| metric.of(r))
            .reduce(f64::max)
    }

    /// Every round's value of `metric` for `peer`.
    pub fn all(&self, peer: Peer, metric: Metric) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.peer == peer)
            .filter_map(|r| metric.of(r))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Processes started in namespaces, stopped on drop.
// ---------------------------------------------------------------------------------------

/// Child processes (in their own process group), terminated on drop.
#[derive(Default)]
struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, what: &str, mut cmd: Command, log: &Path) -> Result<()> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Own process group: a Ctrl-C reaches only the bench, which stops these in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.children.push((what.to_string(), child));
        Ok(())
    }

    /// Fails if a process already exited; its log says why.
    fn check_running(&mut self, log_dir: &Path) -> Result<()> {
        for (what, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{what} exited ({status}); logs in {}", log_dir.display());
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            terminate(child, Duration::from_secs(2));
        }
    }
}

fn nginx_conf(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        r#"# Written by the balancer bench: backend {name}.
worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen {HTTP_PORT} backlog=8192;
        location / {{
            default_type text/plain;
            return 200 "{name}";
        }}
    }}
}}
"#
    )
}

/// nginx (HTTP) and testsrv (UDP echo) in every backend namespace; waits until each answers.
fn start_backends(topo: &Topology, dir: &Path) -> Result<Procs> {
    let mut procs = Procs::default();
    let testsrv = testsrv_path();
    for i in 1..=topo.n_backends() {
        let ns = topo.backend(i);
        let name = topo.backend_name(i);
        let bdir = dir.join(&name);
        std::fs::create_dir_all(&bdir)?;
        let conf = bdir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&bdir, &name))?;
        let mut nginx = ns.command("nginx");
        nginx
            .arg("-p")
            .arg(&bdir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(bdir.join("error.log"));
        procs.spawn(&format!("nginx {name}"), nginx, &bdir.join("nginx.out"))?;
        let mut udp = ns.command(&testsrv.to_string_lossy());
        udp.args(["--name", &name, "--udp", &format!("0.0.0.0:{UDP_PORT}")]);
        procs.spawn(&format!("testsrv {name}"), udp, &bdir.join("testsrv.out"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 1..=topo.n_backends() {
        let (addr, name) = (topo.backend_addr(i), topo.backend_name(i));
        loop {
            procs.check_running(dir)?;
            let probe = run_in_netns_path(&topo.lb().path(), || -> Result<()> {
                let t = Duration::from_millis(500);
                let resp = http_request(SocketAddrV4::new(addr, HTTP_PORT), t)?;
                ensure!(
                    resp.body == name,
                    "HTTP answer {:?} is not {name}",
                    resp.body
                );
                let udp = udp_request(SocketAddrV4::new(addr, UDP_PORT), b"ready?", t)?;
                ensure!(udp == name, "UDP answer {udp:?} is not {name}");
                Ok(())
            })?;
            match probe {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context(format!("backend {name} never answered"))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(procs)
}

// ---------------------------------------------------------------------------------------
// The peers.
// ---------------------------------------------------------------------------------------

/// Whatever a peer set up; dropping it tears it down.
enum Setup {
    Nothing,
    Agent(Box<Agent>),
    XdpPass {
        _links: Vec<xdp::XdpLink>,
        _prog: xdp::EmptyXdp,
    },
    Nft {
        _guard: NftGuard,
    },
    Haproxy {
        _guard: HaproxyGuard,
    },
}

struct NftGuard {
    lb: String,
}

impl Drop for NftGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.lb, "nft", "delete", "table", "ip", NFT_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
    }
}

struct HaproxyGuard {
    lb: String,
    procs: Procs,
}

impl Drop for HaproxyGuard {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs.children {
            terminate(child, Duration::from_secs(2));
        }
        let _ = Command::new("ip")
            .args([
                "-n",
                &self.lb,
                "addr",
                "del",
                &format!("{VIP}/32"),
                "dev",
                "lo",
            ])
            .stderr(Stdio::null())
            .status();
    }
}

fn backend_list(topo: &Topology, sep: &str, f: impl Fn(usize, Ipv4Addr) -> String) -> String {
    (1..=topo.n_backends())
        .map(|i| f(i, topo.backend_addr(i)))
        .collect::<Vec<_>>()
        .join(sep)
}

fn nft_rules(topo: &Topology) -> String {
    let n = topo.n_backends();
    let map = backend_list(topo, ", ", |i, a| format!("{} : {a}", i - 1));
    format!(
        r#"# kube-proxy style kernel L4 balancing: DNAT to a backend chosen by a counter, then
# masquerade towards the backends so the replies come back through this namespace.
table ip {NFT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} tcp dport {HTTP_PORT} dnat to numgen inc mod {n} map {{ {map} }}
        ip daddr {VIP} udp dport {UDP_PORT} dnat to numgen inc mod {n} map {{ {map} }}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat oifname "lbs0" masquerade
    }}
}}
"#
    )
}

fn haproxy_conf(topo: &Topology) -> String {
    let servers = backend_list(topo, "\n", |i, a| {
        format!("    server b{i} {a}:{HTTP_PORT}")
    });
    format!(
        r#"# Written by the balancer bench.
global
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind {VIP}:{HTTP_PORT}
    default_backend web

backend web
    balance roundrobin
{servers}
"#
    )
}

fn setup(topo: &Topology, peer: Peer, dir: &Path) -> Result<Setup> {
    let lb = topo.lb();
    Ok(match peer {
        Peer::Direct => Setup::Nothing,
        Peer::DirectXdpPass => {
            let prog = xdp::EmptyXdp::load()?;
            let fd = prog.raw_fd();
            let links = lb.in_thread(|| -> Result<Vec<xdp::XdpLink>> {
                topo.lb_interfaces()
                    .iter()
                    .map(|dev| xdp::attach_xdp(fd, dev))
                    .collect()
            })??;
            Setup::XdpPass {
                _links: links,
                _prog: prog,
            }
        }
        Peer::Balancer => Setup::Agent(Box::new(Agent::start(topo, &agent_config(topo)?)?)),
        Peer::BalancerGeneric => {
            let config = agent_config(topo)?;
            // Its own SNAT ports: it runs right after the driver-mode agent, whose
            // connections' tuples still sit in TIME-WAIT on the backends (60 s). A new
            // agent would hand those ports to other client connections, and the backends
            // reject such SYNs by PAWS (measured: ~1000 per run, each a 1 s SYN resend).
            let generic = config
                .replace("xdp_mode = \"auto\"", "xdp_mode = \"skb\"")
                .replace("[nat]\n", "[nat]\nport_range = \"7000-19999\"\n");
            ensure!(
                generic.contains("xdp_mode = \"skb\"") && generic.contains("port_range"),
                "the test configuration has no `xdp_mode = \"auto\"` or `[nat]` to change"
            );
            Setup::Agent(Box::new(Agent::start(topo, &generic)?))
        }
        Peer::Nftables => {
            let file = dir.join("nft.rules");
            std::fs::write(&file, nft_rules(topo))?;
            let guard = NftGuard {
                lb: lb.name().to_string(),
            };
            lb.run(&["nft", "-f", &file.to_string_lossy()])
                .context("loading the nftables rules")?;
            Setup::Nft { _guard: guard }
        }
        Peer::Haproxy => {
            let file = dir.join("haproxy.cfg");
            std::fs::write(&file, haproxy_conf(topo))?;
            let mut guard = HaproxyGuard {
                lb: lb.name().to_string(),
                procs: Procs::default(),
            };
            lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            let mut cmd = lb.command("haproxy");
            cmd.arg("-f").arg(&file).arg("-db");
            guard
                .procs
                .spawn("haproxy", cmd, &dir.join("haproxy.log"))?;
            Setup::Haproxy { _guard: guard }
        }
    })
}

/// Waits until one HTTP request (and, when `udp`, one UDP request) goes through.
fn wait_path(topo: &Topology, http: SocketAddrV4, udp: Option<SocketAddrV4>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = topo.client().in_thread(|| -> Result<()> {
            let t = Duration::from_millis(500);
            let resp = http_request(http, t)?;
            ensure!(resp.status == 200, "HTTP status {}", resp.status);
            if let Some(udp) = udp {
                udp_request(udp, b"ready?", t)?;
            }
            Ok(())
        })?;
        match probe {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context("the path never carried a request")
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load: wrk and the UDP generator, from the client namespace.
// ---------------------------------------------------------------------------------------

/// The agent's configuration in the bench: [`default_config`] with nothing pinned, so
/// that every run starts from empty flow tables (a pinned table would hand the previous
/// run's flows, of another path or XDP mode, to the next agent).
fn agent_config(topo: &Topology) -> Result<String> {
    let config = default_config(topo, "maglev");
    let pins = format!("pin_dir = \"{}\"", topo.pin_dir().display());
    ensure!(
        config.contains(&pins),
        "the test configuration has no `{pins}` to change"
    );
    Ok(config.replace(&pins, "pin_dir = \"\""))
}

/// A wrk script that points thread `i` at backend `i % n` (for "direct").
fn direct_script(topo: &Topology) -> String {
    let hosts = backend_list(topo, ", ", |_, a| format!("\"{a}\""));
    format!(
        r#"-- Written by the balancer bench: thread i talks to backend i % n.
local hosts = {{ {hosts} }}
local n = 0
function setup(thread)
    thread.addr = wrk.lookup(hosts[(n % #hosts) + 1], "{HTTP_PORT}")[1]
    n = n + 1
end
"#
    )
}

fn parse_latency_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|x| x * scale)
}

/// Parses wrk's report (with `--latency`).
pub fn parse_wrk(out: &str) -> Result<HttpResult> {
    let mut r = HttpResult::default();
    let mut rps = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_ms = parse_latency_ms(v).unwrap_or(f64::NAN);
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = parse_latency_ms(v).unwrap_or(f64::NAN);
        } else if line.contains(" requests in ") {
            r.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                let mut words = part.split_whitespace();
                let (kind, n) = (
                    words.next(),
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                );
                if let (Some(kind), Some(n)) = (kind, n) {
                    r.socket_errors += n;
                    if kind == "timeout" {
                        r.timeouts = n;
                    }
                }
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    r.rps = rps.context("no `Requests/sec:` line in wrk's output")?;
    Ok(r)
}

struct WrkRun<'a> {
    client: &'a Netns,
    /// The topology's namespaces (for [`CpuMeter`]).
    ours: HashSet<u64>,
    url: String,
    script: Option<PathBuf>,
    close: bool,
    threads: usize,
    connections: usize,
    duration: Duration,
}

/// TCP counters that tell why connections stall (SYN retransmits, resets, TIME-WAIT
/// and listen-queue trouble, challenge ACKs).
const TCP_COUNTERS: &[&str] = &[
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpOutRsts",
    "TcpRetransSegs",
    "TcpExtTCPSynRetrans",
    "TcpExtTCPChallengeACK",
    "TcpExtPAWSEstab",
    "TcpExtPAWSActive",
    "TcpExtPAWSTimewait",
    "TcpExtPAWSOldAck",
    "TcpExtTCPSYNChallenge",
    "TcpExtTCPACKSkippedPAWS",
    "TcpExtTW",
    "TcpExtTWRecycled",
    "TcpExtTWKilled",
    "TcpExtTCPTimeWaitOverflow",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDrop",
    "TcpExtTCPAbortOnData",
    "TcpExtTCPACKSkippedSynRecv",
    "TcpExtTCPACKSkippedTimeWait",
    "TcpExtTCPACKSkippedChallenge",
];

/// `nstat` absolute counters of a namespace.
fn nstat(ns: &Netns) -> HashMap<String, u64> {
    let Ok(out) = ns.run(&["nstat", "-asz", "--json"]) else {
        return HashMap::new();
    };
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.get("kernel").cloned())
        .and_then(|k| k.as_object().cloned())
        .map(|k| {
            k.into_iter()
                .filter_map(|(name, v)| Some((name, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the TCP sockets in TIME-WAIT from every namespace of the topology
/// (`ss -K`, the kernel's SOCK_DESTROY) and returns how many there were.
///
/// A conn-per-request run leaves about 200k of them on the backends. For the next 60 s
/// they lengthen the chains of the kernel's connection hash (one table, shared by all
/// namespaces), and their timers fire during the runs that follow. So without this, a
/// path measured later in a round ran slower: HAProxy's conn-per-request made 4.5k req/s
/// in last place against 7.9k alone, and nftables' 13.6k against 19.8k when first.
fn forget_time_wait(topo: &Topology) -> Result<usize> {
    let mut killed = 0;
    for ns in namespaces(topo) {
        let out = ns
            .run(&["ss", "-K", "-H", "-t", "-n", "state", "time-wait"])
            .with_context(|| format!("removing TIME-WAIT sockets in {}", ns.name()))?;
        killed += out.lines().filter(|l| !l.trim().is_empty()).count();
    }
    Ok(killed)
}

/// Before a measured run: no TIME-WAIT sockets left by earlier runs ([`forget_time_wait`]);
/// a failure is the case's error.
fn start_clean(topo: &Topology, errors: &mut Vec<String>) {
    match forget_time_wait(topo) {
        Ok(n) => say(&format!(
            "    removed {n} TIME-WAIT sockets of earlier runs"
        )),
        Err(e) => errors.push(format!("{e:#}")),
    }
}

/// The TCP counters of the client and of all backends (summed).
fn tcp_snapshot(topo: &Topology) -> [HashMap<String, u64>; 2] {
    let mut backends: HashMap<String, u64> = HashMap::new();
    for b in topo.backends() {
        for (k, v) in nstat(b) {
            *backends.entry(k).or_default() += v;
        }
    }
    [nstat(topo.client()), backends]
}

fn tcp_deltas(
    a: &[HashMap<String, u64>; 2],
    b: &[HashMap<String, u64>; 2],
) -> Vec<(&'static str, String, u64)> {
    let mut out = Vec::new();
    for (i, side) in ["client", "backends"].into_iter().enumerate() {
        for name in TCP_COUNTERS {
            let d = b[i]
                .get(*name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(a[i].get(*name).copied().unwrap_or(0));
            if d > 0 {
                out.push((side, name.to_string(), d));
            }
        }
    }
    out
}

/// (busy, total) jiffies of all CPUs from the first line of /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime (jiffies) of every process that is not the bench's: neither this
/// process nor one inside the topology's namespaces.
fn foreign_jiffies(ours: &HashSet<u64>) -> HashMap<u32, u64> {
    let me = std::process::id();
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let ns = std::fs::read_link(entry.path().join("ns/net"))
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("net:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            });
        if ns.is_some_and(|ns| ours.contains(&ns)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) in parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            continue;
        };
        if let (Ok(u), Ok(s)) = (u.parse::<u64>(), s.parse::<u64>()) {
            out.insert(pid, u + s);
        }
    }
    out
}

/// How busy the machine's CPUs were during a run, and how much of that was not the bench.
struct CpuMeter {
    ours: HashSet<u64>,
    stat: Option<(u64, u64)>,
    foreign: HashMap<u32, u64>,
}

/// Busy share of all CPUs, and the share used by processes outside the bench.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub busy: f64,
    pub foreign: f64,
}

impl CpuMeter {
    fn start(ours: &HashSet<u64>) -> CpuMeter {
        CpuMeter {
            ours: ours.clone(),
            stat: cpu_jiffies(),
            foreign: foreign_jiffies(ours),
        }
    }

    fn stop(self) -> Option<CpuUse> {
        let (busy1, total1) = cpu_jiffies()?;
        let (busy0, total0) = self.stat?;
        let total = total1.checked_sub(total0).filter(|&t| t > 0)? as f64;
        let foreign: u64 = foreign_jiffies(&self.ours)
            .iter()
            .map(|(pid, &j)| j.saturating_sub(self.foreign.get(pid).copied().unwrap_or(0)))
            .sum();
        Some(CpuUse {
            busy: busy1.saturating_sub(busy0) as f64 / total,
            foreign: (foreign as f64 / total).min(1.0),
        })
    }
}

/// The network-namespace inodes of the topology.
/// Every namespace of the topology.
fn namespaces(topo: &Topology) -> impl Iterator<Item = &Netns> {
    [topo.client(), topo.lb(), topo.switch()]
        .into_iter()
        .chain(topo.backends())
}

fn namespace_inodes(topo: &Topology) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt as _;
    namespaces(topo)
        .filter_map(|ns| std::fs::metadata(ns.path()).ok().map(|m| m.ino()))
        .collect()
}

fn wrk(run: &WrkRun<'_>) -> Result<HttpResult> {
    let mut cmd = run.client.command("wrk");
    cmd.arg(format!("-t{}", run.threads))
        .arg(format!("-c{}", run.connections))
        .arg(format!("-d{}s", run.duration.as_secs().max(1)))
        .args(["--timeout", "2s", "--latency"]);
    if let Some(script) = &run.script {
        cmd.arg("-s").arg(script);
    }
    if run.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&run.url);
    let meter = CpuMeter::start(&run.ours);
    let out = output_with_timeout(&mut cmd, run.duration + Duration::from_secs(30))?;
    let cpu = meter.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut r = parse_wrk(&stdout).with_context(|| format!("wrk printed:\n{stdout}"))?;
    r.cpu = cpu;
    Ok(r)
}

fn udp_load(
    topo: &Topology,
    targets: Vec<SocketAddrV4>,
    p: &Params,
    stop: &Stop,
) -> Result<UdpResult> {
    let load = UdpLoad {
        targets,
        sockets: p.udp_sockets,
        window: p.udp_window,
        payload: p.udp_payload,
        duration: p.udp_duration,
    };
    topo.client()
        .in_thread(|| udpload::run(&load, || stop.stopped()))?
}

/// The balancer's non-zero counters other than the plain verdicts.
fn agent_counters(agent: &Agent) -> Vec<(String, u64)> {
    let out = agent.cli(&["status", "--json"]);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    json.get("global")
        .and_then(|g| g.as_object())
        .map(|g| {
            g.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(_, v)| *v > 0)
                .collect()
        })
        .unwrap_or_default()
}

fn run_case(
    topo: &Topology,
    peer: Peer,
    round: usize,
    p: &Params,
    dir: &Path,
    stop: &Stop,
) -> CaseRun {
    let mut run = CaseRun {
        peer,
        round,
        keepalive: None,
        close: None,
        udp: None,
        udp_cpu: None,
        error: None,
        counters: Vec::new(),
        close_tcp: Vec::new(),
        profile: None,
    };
    let mut errors = Vec::new();
    let ours = namespace_inodes(topo);
    let setup = match setup(topo, peer, dir) {
        Ok(s) => s,
        Err(e) => {
            run.error = Some(format!("set-up failed: {e:#}"));
            return run;
        }
    };
    let vip_http = Topology::vip_http();
    let (url, script, http_probe, udp_targets) = match peer {
        Peer::Direct | Peer::DirectXdpPass => (
            format!("http://{}/", topo.backend_addr(1)),
            Some(dir.join("direct.lua")),
            topo.backend_http(1),
            (1..=topo.n_backends())
                .map(|i| topo.backend_udp(i))
                .collect(),
        ),
        Peer::Haproxy => (format!("http://{VIP}/"), None, vip_http, Vec::new()),
        Peer::Balancer | Peer::BalancerGeneric | Peer::Nftables => (
            format!("http://{VIP}/"),
            None,
            vip_http,
            vec![Topology::vip_udp()],
        ),
    };
    if let Err(e) = wait_path(topo, http_probe, udp_targets.first().copied()) {
        let log = match &setup {
            Setup::Agent(agent) => format!(" (agent log: {})", agent.log().trim()),
            _ => String::new(),
        };
        run.error = Some(format!("{e:#}{log}"));
        return run;
    }
    for close in [false, true] {
        if stop.stopped() {
            break;
        }
        let w = WrkRun {
            client: topo.client(),
            ours: ours.clone(),
            url: url.clone(),
            script: script.clone(),
            close,
            threads: p.wrk_threads,
            connections: p.wrk_connections,
            duration: p.http_duration,
        };
        say(&format!(
            "  {} round {}: wrk {}...",
            peer.short(),
            round + 1,
            if close {
                "conn-per-request"
            } else {
                "keep-alive"
            }
        ));
        start_clean(topo, &mut errors);
        // First keep-alive run only: perf itself costs CPU the run then lacks.
        let profiled = !close
            && round == 0
            && (peer.is_balancer() || matches!(peer, Peer::Direct | Peer::DirectXdpPass));
        let recording = match p.profile_secs {
            Some(secs) if profiled && perf::available() => {
                let secs = secs.min(p.http_duration.as_secs().saturating_sub(2)).max(1);
                Some(perf::record(perf::Scope::System, secs, dir, peer.short()))
            }
            _ => None,
        };
        let tcp_before = close.then(|| tcp_snapshot(topo));
        let result = wrk(&w);
        if let Some(before) = tcp_before {
            run.close_tcp = tcp_deltas(&before, &tcp_snapshot(topo));
        }
        if let Some(rec) = recording {
            run.profile = Some(
                rec.and_then(|r| r.finish(400, true))
                    .map_err(|e| format!("{e:#}")),
            );
        }
        match result {
            Ok(r) if close => run.close = Some(r),
            Ok(r) => run.keepalive = Some(r),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !udp_targets.is_empty() && !stop.stopped() {
        say(&format!("  {} round {}: UDP...", peer.short(), round + 1));
        start_clean(topo, &mut errors);
        let meter = CpuMeter::start(&ours);
        let result = udp_load(topo, udp_targets, p, stop);
        run.udp_cpu = meter.stop();
        match result {
            Ok(r) => run.udp = Some(r),
            Err(e) => errors.push(format!("UDP load: {e:#}")),
        }
    }
    if let Setup::Agent(agent) = &setup {
        run.counters = agent_counters(agent);
    }
    drop(setup);
    if !errors.is_empty() {
        run.error = Some(errors.join("; "));
    }
    run
}

fn say(msg: &str) {
    eprintln!("[bench] {msg}");
}

// ---------------------------------------------------------------------------------------
// CLI change to map.
// ---------------------------------------------------------------------------------------

fn timed_cli(socket: &Path, args: &[&str]) -> Result<f64> {
    let started = Instant::now();
    let out = Command::new(balancer_path())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running the balancer CLI")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "`balancer {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

/// The agent's BACKENDS map, found through the program attached to the lb's `lbc0`.
fn agent_backends_map(topo: &Topology) -> Result<Array<MapData, Backend>> {
    let json = topo.lb().ip(&["-j", "link", "show", "dev", "lbc0"])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("ip -j link show")?;
    let prog_id = v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .context("no XDP program attached to lbc0")? as u32;
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .context("the attached program is not among the loaded ones")?;
    for id in info.map_ids()?.unwrap_or_default() {
        let map_info = aya::maps::MapInfo::from_id(id)?;
        if map_info.name_as_str() == Some(map_names::BACKENDS) {
            let data = MapData::from_id(id)?;
            return Ok(Array::try_from(Map::Array(data))?);
        }
    }
    bail!("the agent's program has no {} map", map_names::BACKENDS)
}

fn map_holds(map: &Array<MapData, Backend>, addr: SocketAddrV4) -> bool {
    let want = u32::from_ne_bytes(addr.ip().octets());
    let port = addr.port().to_be();
    map.iter()
        .filter_map(Result::ok)
        .any(|b| b.addr == want && b.port == port && b.flags & BACKEND_F_PRESENT != 0)
}

/// `BPF_F_MMAPABLE` (linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The cost of one ring slot write by syscall (`Array::set`, one `BPF_MAP_UPDATE_ELEM`
/// each), and whether RING is memory-mapped (then the agent writes slots with stores).
fn slot_write_us() -> Result<(f64, bool)> {
    let mut ebpf = xdp::load(None)?;
    let map = ebpf
        .take_map(map_names::RING)
        .context("the program has no RING map")?;
    let mmapable = match &map {
        Map::Array(data) => data.info()?.map_flags() & BPF_F_MMAPABLE != 0,
        _ => false,
    };
    let mut ring: Array<MapData, u32> = Array::try_from(map)?;
    let mut per_batch = Vec::new();
    for batch in 0..10u32 {
        let started = Instant::now();
        for slot in 0..2000u32 {
            ring.set(batch * 2000 + slot, slot, 0)?;
        }
        per_batch.push(started.elapsed().as_secs_f64() * 1e6 / 2000.0);
    }
    Ok((summarize(&per_batch).p50, mmapable))
}

fn cli_times(topo: &Topology, p: &Params, stop: &Stop) -> Result<CliTimes> {
    let slot_write = slot_write_us().ok();
    let agent = Agent::start(topo, &agent_config(topo)?)?;
    let socket = agent.socket().to_path_buf();
    let map = agent_backends_map(topo)?;
    let n = p.cli_repeats;
    let mut list = Vec::new();
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let mut in_map = 0;
    for _ in 0..n {
        stop.check()?;
        list.push(timed_cli(&socket, &["backend", "list", "web"])?);
    }
    let addrs: Vec<SocketAddrV4> = (0..n)
        .map(|k| SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 60 + k as u8), HTTP_PORT))
        .collect();
    for a in &addrs {
        stop.check()?;
        let text = a.to_string();
        add.push(timed_cli(&socket, &["backend", "add", "web", &text])?);
        if map_holds(&map, *a) {
            in_map += 1;
        }
    }
    for a in &addrs {
        stop.check()?;
        del.push(timed_cli(
            &socket,
            &["backend", "del", "web", &a.to_string()],
        )?);
    }
    drop(agent);
    Ok(CliTimes {
        list: summarize(&list),
        add: summarize(&add),
        del: summarize(&del),
        add_in_map: in_map,
        adds: n,
        pool_before: BACKENDS.min(topo.n_backends()),
        slot_write_us: slot_write.map(|s| s.0),
        ring_mmapable: slot_write.map(|s| s.1),
    })
}

// ---------------------------------------------------------------------------------------
// The whole section.
// ---------------------------------------------------------------------------------------

/// Builds the topology and runs every peer `rounds` times, interleaved.
pub fn run(p: &Params, stop: &Stop) -> Result<E2e> {
    say("end to end: building client | lb | switch | 3 backends");
    let topo = Topology::new(BACKENDS)?;
    topo.lb().run(&[
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv4.ip_local_port_range={LB_LOCAL_PORTS}"),
    ])?;
    // wrk is one host with 28k ephemeral ports. Where it closes first (HAProxy forwards
    // the backend's FIN late, so wrk closes before it arrives), each closed connection
    // keeps its port in TIME-WAIT for 60 s, and connect() tries the even ports first: at
    // about 14k of them in TIME-WAIT every connect() searched the range, and HAProxy's
    // conn-per-request rate fell from 7.9k req/s in a 5 s run to 4.5k in a 10 s one.
    // Reusing a TIME-WAIT port for a new connection after 1 s (safe with timestamps) is
    // what a load generator needs; many clients would not share one port space.
    topo.client()
        .run(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])?;
    // "direct": the client reaches the backends through the lb by plain routing.
    topo.client().ip(&[
        "route",
        "add",
        "10.0.2.0/24",
        "via",
        &LB_CLIENT_ADDR.to_string(),
    ])?;
    for b in topo.backends() {
        b.ip(&[
            "route",
            "add",
            "10.0.1.0/24",
            "via",
            &LB_BACKEND_ADDR.to_string(),
        ])?;
    }
    let dir = TempDir::new(&format!("{}-bench", topo.prefix()))?;
    std::fs::write(dir.path().join("direct.lua"), direct_script(&topo))?;
    let client = topo.client();

    let mut testsrv_direct = None;
    if p.testsrv_check {
        say("end to end: testsrv as the backend (direct, keep-alive)");
        let servers = topo.start_backends()?;
        wait_path(&topo, topo.backend_http(1), None)?;
        testsrv_direct = Some(wrk(&WrkRun {
            client,
            ours: namespace_inodes(&topo),
            url: format!("http://{}/", topo.backend_addr(1)),
            script: Some(dir.path().join("direct.lua")),
            close: false,
            threads: p.wrk_threads,
            connections: p.wrk_connections,
            duration: p.http_duration.min(Duration::from_secs(5)),
        })?);
        drop(servers);
    }

    say("end to end: starting nginx and the UDP echo on the backends");
    let backends = start_backends(&topo, dir.path())?;
    let mut runs = Vec::new();
    'rounds: for round in 0..p.rounds {
        for &peer in &p.peers {
            if stop.stopped() {
                break 'rounds;
            }
            let run = run_case(&topo, peer, round, p, dir.path(), stop);
            if let Some(e) = &run.error {
                say(&format!("  {} round {}: {e}", peer.short(), round + 1));
            }
            runs.push(run);
        }
    }
    drop(backends);

    let (cli, cli_error) = if stop.stopped() {
        (None, Some("interrupted".to_string()))
    } else {
        say("end to end: CLI change to map");
        match cli_times(&topo, p, stop) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };
    Ok(E2e {
        params: p.clone(),
        runs,
        testsrv_direct,
        cli,
        cli_error,
    })
}

/// A one-line description of a wrk result's problems, if any.
pub fn http_problems(h: &HttpResult) -> String {
    let mut s = String::new();
    if h.socket_errors > 0 {
        let _ = write!(
            s,
            "{} socket errors ({} timeouts)",
            h.socket_errors, h.timeouts
        );
    }
    if h.non_2xx > 0 {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{} non-2xx", h.non_2xx);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_report_is_parsed() {
        let out = "Running 10s test @ http://10.0.100.1/\n  3 threads and 33 connections\n\
                   \x20 Latency Distribution\n     50%  386.00us\n     75%  500.00us\n\
                   \x20    90%    1.00ms\n     99%    2.28ms\n\
                   \x20 123456 requests in 10.00s, 17.31MB read\n\
                   \x20 Socket errors: connect 0, read 3, write 0, timeout 2\n\
                   \x20 Non-2xx or 3xx responses: 5\nRequests/sec:  12345.67\n\
                   Transfer/sec:      1.73MB\n";
        let r = parse_wrk(out).unwrap();
        assert!((r.rps - 12345.67).abs() < 1e-6);
        assert_eq!(
            (r.requests, r.socket_errors, r.timeouts, r.non_2xx),
            (123456, 5, 2, 5)
        );
        assert!((r.p50_ms - 0.386).abs() < 1e-9 && (r.p99_ms - 2.28).abs() < 1e-9);
        assert!(parse_wrk("no report").is_err());
    }
}
