//! End to end in namespaces: the same HTTP (wrk) and UDP load directly to the backends,
//! through the balancer, through nftables DNAT and through HAProxy; and the time from a
//! CLI change to the maps.
//!
//! Backends are nginx (HTTP :80, a small static body) plus `testsrv --udp` (the UDP echo on
//! :5300) in each backend namespace of a `balancer_tests::Topology`.

mod cli;
pub mod l7;
mod load;
mod observe;
mod paths;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use balancer_tests::{util::TempDir, Topology, LB_BACKEND_ADDR, LB_CLIENT_ADDR, VIP};

use cli::cli_times;
use load::{udp_load, wrk, WrkRun};
pub use observe::{agent_counters, cpu_jiffies, CpuUse};
use observe::{namespace_inodes, start_clean, tcp_deltas, tcp_snapshot, CpuMeter};
use paths::{direct_script, setup, start_backends, wait_path, Setup};

use crate::stats::Summary;
use crate::udpload::UdpResult;
use crate::{perf, say, Stop};

const BACKENDS: usize = 3;

// Source ports from the lb's address towards the backends, a range per path. A backend
// keeps each tuple it closed in TIME-WAIT for 60 s and takes a new SYN for it only with a
// newer TCP timestamp, and a sender's timestamps run on a clock of their own per 4-tuple.
// So a tuple must not pass from one client connection to another within a minute unless
// the sender's tuple is the same, or the backends drop the SYN by PAWS and it is resent a
// second later. The balancers rest their SNAT ports for that (the balancer: its default
// 20000-32767, balancer-generic: 7000-19999). nftables' masquerade keeps the client's port
// (the client's ephemeral ports, 32768-60999), so a tuple towards a backend always carries
// the same client connection's clock (a `masquerade to :range`, which maps client ports onto
// the range, dropped SYNs by PAWS). HAProxy and the agent's health checks connect from the
// lb itself, so their ports stay out of the client's range, where they cost nftables and
// HAProxy resent SYNs. (Since every run starts without TIME-WAIT
// sockets, see `forget_time_wait`, a tuple can no longer pass between paths; the ranges
// still keep a path's own tuples apart, e.g. the agent's health checks from its SNAT.)
/// The lb namespace's ephemeral ports (`ip_local_port_range`): HAProxy, health checks.
pub const LB_LOCAL_PORTS: &str = "61000 65535";
/// The SNAT ports of [`Peer::BalancerGeneric`] (`nat.port_range`).
const GENERIC_SNAT_PORTS: &str = "7000-19999";

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
    /// `perf record -a` during the first keep-alive run of direct, the `XDP_PASS` control and
    /// both balancer paths.
    pub profile_secs: Option<u64>,
    /// The paths to run (all by default).
    pub peers: Vec<Peer>,
}

/// The compared ways from the client to the backends.
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

    /// What the path is, for the report.
    pub fn what(self) -> String {
        match self {
            Peer::Direct => "no XDP, no agent: the lb namespace forwards by routing; wrk thread \
                             i talks to backend i"
                .into(),
            Peer::DirectXdpPass => "direct, with a 2-instruction XDP program that passes \
                                    everything on the lb's two veths (driver mode): a control, \
                                    not a target"
                .into(),
            Peer::Balancer => "the agent (Maglev, full NAT), XDP in driver mode".into(),
            Peer::BalancerGeneric => format!(
                "the agent with `xdp_mode = \"skb\"` (generic XDP) and SNAT ports \
                 {GENERIC_SNAT_PORTS}; the end-to-end targets use this path"
            ),
            Peer::Nftables => "`dnat to numgen inc mod n` in prerouting, masquerade towards \
                               the backends"
                .into(),
            Peer::Haproxy => {
                "`mode tcp`, round-robin, bound to the VIP on the lb's `lo` (no UDP)".into()
            }
        }
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

impl CaseRun {
    /// A run of `peer` in `round` that has measured nothing yet.
    pub fn new(peer: Peer, round: usize) -> CaseRun {
        CaseRun {
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
        }
    }
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
    /// Backends of the topology.
    pub backends: usize,
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

fn run_case(
    topo: &Topology,
    peer: Peer,
    round: usize,
    p: &Params,
    dir: &Path,
    stop: &Stop,
) -> CaseRun {
    let mut run = CaseRun::new(peer, round);
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

/// The end-to-end topology: client | lb | switch | [`BACKENDS`] backends, with the lb's
/// own ports apart, TIME-WAIT reuse on the client and routes for "direct".
fn topology() -> Result<Topology> {
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
    // keeps its port in TIME-WAIT for 60 s, and connect() tries the even ports first: with
    // half the range in TIME-WAIT every connect() searches it, and HAProxy's
    // conn-per-request rate fell with the length of the run.
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
    Ok(topo)
}

/// Builds the topology and runs every peer `rounds` times, interleaved.
pub fn run(p: &Params, stop: &Stop) -> Result<E2e> {
    let topo = topology()?;
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
        backends: topo.n_backends(),
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
