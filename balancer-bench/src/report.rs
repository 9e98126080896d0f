//! `results/bench.md` (every table, the targets met or missed, analysis) and
//! `results/bench.png` (bar charts of the same figures).

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use balancer::ring;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::e2e::{self, http_problems, E2e, Metric, Peer};
use super::health::HealthCpu;
use super::maglev::{RingBuild, PAPER};
use super::perf;
use super::stats::{summarize, Summary};
use super::xdp::{CaseResult, FullTable, MapMemory, Measured, PerPacket, Profile};

/// A part of the bench: not run, failed (why), or its results.
pub type Part<T> = Option<Result<T, String>>;

/// Facts about the machine and the run.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub date: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub load_start: String,
    pub load_end: String,
    pub elapsed: Duration,
}

/// Everything the bench measured.
#[derive(Default)]
pub struct Results {
    pub env: Environment,
    pub per_packet: Part<PerPacket>,
    pub profile: Part<Profile>,
    pub full_table: Part<FullTable>,
    pub rings: Part<Vec<RingBuild>>,
    pub memory: Part<Vec<MapMemory>>,
    pub health: Part<HealthCpu>,
    pub e2e: Part<E2e>,
}

/// Whether a target was met.
#[derive(Clone, Debug)]
pub enum Verdict {
    Met(String),
    Missed(String),
    Unknown(String),
}

/// One target of issue 4 and what was measured for it.
#[derive(Clone, Debug)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub verdict: Verdict,
}

impl Target {
    fn unknown(what: &str, goal: &str, why: &str) -> Target {
        Target {
            what: what.into(),
            goal: goal.into(),
            measured: "-".into(),
            verdict: Verdict::Unknown(why.into()),
        }
    }

    pub fn met(&self) -> Option<bool> {
        match self.verdict {
            Verdict::Met(_) => Some(true),
            Verdict::Missed(_) => Some(false),
            Verdict::Unknown(_) => None,
        }
    }
}

fn ok<T>(p: &Part<T>) -> Option<&T> {
    p.as_ref().and_then(|r| r.as_ref().ok())
}

fn part_note<T>(p: &Part<T>) -> Option<String> {
    match p {
        None => Some("not run".into()),
        Some(Err(e)) => Some(format!("failed: {e}")),
        Some(Ok(_)) => None,
    }
}

impl Measured {
    pub fn case(&self, prefix: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name.starts_with(prefix))
    }

    /// `case`'s cost net of the floor, per round: its median in the round minus the
    /// floor's median in the same round (measured moments apart).
    pub fn round_nets(&self, case: &CaseResult) -> Vec<f64> {
        case.round_medians
            .iter()
            .zip(&self.floor.round_medians)
            .map(|(c, f)| c - f)
            .collect()
    }

    /// `case`'s cost net of the floor: the median of [`Measured::round_nets`]. Pairing
    /// the case with the floor of its own round takes out the drifts of a shared machine,
    /// which move both alike within a round but differ between rounds (the difference of
    /// the all-samples medians mixes them in). Without rounds, the medians' difference.
    pub fn net(&self, case: &CaseResult) -> f64 {
        let nets = self.round_nets(case);
        if nets.is_empty() {
            case.summary.p50 - self.floor.summary.p50
        } else {
            summarize(&nets).p50
        }
    }
}

fn ratio_target(e2e: Option<&E2e>, metric: Metric, peer: Peer, goal: f64) -> Target {
    let what = format!("{} through balancer vs {}", metric.name(), peer.short());
    let goal_text = format!(">= {goal:.1}x");
    let Some(e2e) = e2e else {
        return Target::unknown(&what, &goal_text, "end-to-end section did not run");
    };
    match (e2e.best(Peer::TARGETS, metric), e2e.best(peer, metric)) {
        (None, _) => Target::unknown(
            &what,
            &goal_text,
            &format!("path {} not run", Peer::TARGETS.short()),
        ),
        (Some(b), Some(o)) if o > 0.0 => {
            let r = b / o;
            let driver = e2e
                .best(Peer::Balancer, metric)
                .map_or("-".into(), |d| format!("{:.2}x", d / o));
            let measured = format!(
                "{r:.2}x ({} vs {}; {}; {} {driver})",
                rate(b),
                rate(o),
                Peer::TARGETS.name(),
                Peer::Balancer.name()
            );
            let verdict = if r >= goal {
                Verdict::Met(format!("by {:+.0}%", (r / goal - 1.0) * 100.0))
            } else {
                Verdict::Missed(format!(
                    "by {:.2}x ({:.0}% short)",
                    goal - r,
                    (1.0 - r / goal) * 100.0
                ))
            };
            Target {
                what,
                goal: goal_text,
                measured,
                verdict,
            }
        }
        _ => Target::unknown(&what, &goal_text, "no measurement"),
    }
}

/// The targets of issue 4, in order.
pub fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    let what = "XDP: established TCP v4 forward, net of the empty program";
    match ok(&r.per_packet) {
        Some(pp) => match pp.replayed.case("TCP established") {
            Some(c) => {
                let m = &pp.replayed;
                let net = m.net(c);
                let single = pp
                    .single
                    .case("TCP established")
                    .map_or(f64::NAN, |s| pp.single.net(s));
                t.push(Target {
                    what: what.into(),
                    goal: "<= 100 ns/packet".into(),
                    measured: format!(
                        "{net:.0} ns ({} runs per test run: median of the rounds' nets {}; \
                         one run per test run: {single:.0} ns)",
                        pp.repeat,
                        m.round_nets(c)
                            .iter()
                            .map(|n| format!("{n:.0}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    verdict: if net <= 100.0 {
                        Verdict::Met(format!("{:.0} ns to spare", 100.0 - net))
                    } else {
                        Verdict::Missed(format!("by {:.0} ns", net - 100.0))
                    },
                });
            }
            None => t.push(Target::unknown(what, "<= 100 ns/packet", "no such case")),
        },
        None => t.push(Target::unknown(
            what,
            "<= 100 ns/packet",
            "per-packet section did not run",
        )),
    }
    let e2e = ok(&r.e2e);
    for metric in [Metric::KeepAlive, Metric::Close] {
        for (peer, goal) in [
            (Peer::Direct, 0.9),
            (Peer::Nftables, 1.3),
            (Peer::Haproxy, 1.8),
        ] {
            t.push(ratio_target(e2e, metric, peer, goal));
        }
    }
    t.push(ratio_target(e2e, Metric::Udp, Peer::Nftables, 1.1));
    t.push(ratio_target(e2e, Metric::Udp, Peer::Direct, 0.9));

    let what = "Maglev build, M = 65537, 1000 backends";
    let ring_row = |kind: &str| {
        ok(&r.rings)?
            .iter()
            .find(|b| b.m == 65_537 && b.backends == 1000 && b.kind == kind)
    };
    match ring_row("fresh") {
        Some(b) => t.push(Target {
            what: what.into(),
            goal: "< 1 ms".into(),
            measured: match ring_row(PAPER) {
                Some(p) => format!(
                    "{:.3} ms (median of {}); the paper's algorithm here: {:.3} ms",
                    b.ms.p50, b.ms.n, p.ms.p50
                ),
                None => format!("{:.3} ms (median of {})", b.ms.p50, b.ms.n),
            },
            verdict: if b.ms.p50 < 1.0 {
                Verdict::Met(format!("{:.2} ms to spare", 1.0 - b.ms.p50))
            } else {
                Verdict::Missed(format!("by {:.2} ms ({:.1}x)", b.ms.p50 - 1.0, b.ms.p50))
            },
        }),
        None => t.push(Target::unknown(what, "< 1 ms", "ring section did not run")),
    }

    let what = "CLI `backend add` to the map holding it";
    match e2e.and_then(|e| e.cli.as_ref()) {
        Some(c) => t.push(Target {
            what: what.into(),
            goal: "< 10 ms".into(),
            measured: format!(
                "{:.1} ms (median CLI wall time of {}; {}/{} in the map on return)",
                c.add.p50, c.adds, c.add_in_map, c.adds
            ),
            verdict: if c.add.p50 < 10.0 {
                Verdict::Met(format!("{:.1} ms to spare", 10.0 - c.add.p50))
            } else {
                Verdict::Missed(format!("by {:.1} ms", c.add.p50 - 10.0))
            },
        }),
        None => t.push(Target::unknown(what, "< 10 ms", "CLI timing did not run")),
    }

    let what = "Health checks (issue 3): agent CPU for 1000 TCP backends at 1 s";
    match ok(&r.health) {
        Some(h) => t.push(Target {
            what: what.into(),
            goal: "< 5% of one core".into(),
            measured: format!(
                "{:.1}% agent process; {:.1}% of its core incl. softirq ({:.0} checks/s)",
                h.agent_pct,
                h.cpu_net_pct(),
                h.checks_per_sec
            ),
            verdict: if h.agent_pct.max(h.cpu_net_pct()) < 5.0 {
                Verdict::Met(format!(
                    "{:.1} points to spare",
                    5.0 - h.agent_pct.max(h.cpu_net_pct())
                ))
            } else {
                Verdict::Missed(format!(
                    "by {:.1} points",
                    h.agent_pct.max(h.cpu_net_pct()) - 5.0
                ))
            },
        }),
        None => t.push(Target::unknown(
            what,
            "< 5% of one core",
            "health section did not run",
        )),
    }
    t
}

/// `45210` -> `45.2k`.
pub fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn ns(s: &Summary) -> String {
    format!("{:.0} ({:.0}-{:.0})", s.p50, s.p10, s.p90)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict_cell(v: &Verdict) -> String {
    match v {
        Verdict::Met(how) => format!("**met** ({how})"),
        Verdict::Missed(how) => format!("**missed** {how}"),
        Verdict::Unknown(why) => format!("not measured ({why})"),
    }
}

/// The Markdown report.
pub fn markdown(r: &Results, analysis: &[String]) -> String {
    let mut md = String::new();
    let e = &r.env;
    let _ = writeln!(md, "# balancer benchmark\n");
    let _ = writeln!(
        md,
        "- date: {}\n- kernel: {}\n- CPU: {} ({} CPUs, shared with other work on this machine)\n\
         - load average at start / end: {} / {}\n- bench run time: {:.0} s\n\
         - produced by `cargo xtask bench` (release build); every packet stays inside network \
         namespaces on veth pairs\n",
        e.date,
        e.kernel,
        e.cpu,
        e.cpus,
        e.load_start,
        e.load_end,
        e.elapsed.as_secs_f64()
    );

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| target | goal | measured | result |\n|---|---|---|---|"
    );
    for t in targets(r) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.what,
            t.goal,
            t.measured,
            verdict_cell(&t.verdict)
        );
    }
    md.push('\n');

    section_per_packet(&mut md, r);
    section_profile(&mut md, r);
    section_e2e(&mut md, r);
    section_scale(&mut md, r);

    if !analysis.is_empty() {
        let _ = writeln!(md, "## Analysis\n");
        for p in analysis {
            let _ = writeln!(md, "{p}\n");
        }
    }
    md
}

fn section_per_packet(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "## 1. XDP program cost per packet (BPF_PROG_TEST_RUN)\n"
    );
    if let Some(note) = part_note(&r.per_packet) {
        let _ = writeln!(md, "{note}\n");
        return;
    }
    let pp = ok(&r.per_packet).expect("checked");
    let _ = writeln!(
        md,
        "One TCP VIP (:80) and one UDP VIP (:5300), each with the same 100 backends, Maglev, \
         ring 65537, SNAT; FIB lookups succeed (routes and permanent neighbours in a private \
         namespace). Every test run comes from a thread pinned to one CPU, as a flow's packets \
         are with RSS; the kernel measures `duration`. Cases are interleaved round by round, \
         and a warm-up is not counted. The floor is a 2-instruction XDP program (`r0 = \
         XDP_PASS; exit`) loaded with a raw `BPF_PROG_LOAD` and run the same way as the \
         cases, first in every round. A case's net cost is the median over rounds of its \
         round median minus the floor's median of the same round (the machine's drifts move \
         both alike within a round).\n"
    );
    let _ = writeln!(
        md,
        "### Bursts: {} runs per test run (the target's measure)\n\n\
         This kernel runs each repeat of a test run on the previous repeat's output, so every \
         case runs behind a wrapper (`bench/replay.rs`, hand-assembled) that first writes the \
         original frame back into the packet and then tail-calls the program. The kernel runs \
         the repeats back to back, as a driver runs XDP over a burst of packets, and reports \
         their mean: each sample is that mean. The floor is the same wrapper in front of the \
         empty program, so the wrapper's stores and its tail call are netted out. {} rounds x \
         {} test runs per case. A SYN cannot be replayed (from its second run on, its flow \
         exists); new flows are measured below.\n",
        pp.repeat, pp.replay_plan.rounds, pp.replay_plan.runs
    );
    table_per_packet(md, &pp.replayed);
    let _ = writeln!(
        md,
        "\n### One run per test run\n\n\
         Each sample is one `BPF_PROG_TEST_RUN` with `repeat = 1` and the original frame: \
         between two runs the syscall, the copies of frame and context and the timer reads \
         take the caches, so this measures a packet that arrives alone. {} rounds x {} runs \
         per case.\n",
        pp.plan.rounds, pp.plan.runs
    );
    table_per_packet(md, &pp.single);
    let p = &pp.program;
    let _ = writeln!(
        md,
        "\nThe loaded program: {} translated (xlated) instructions, {} bytes of JIT code, {} \
         instructions processed by the verifier.\n",
        p.xlated_insns.map_or("?".into(), |n| n.to_string()),
        p.jited_bytes,
        p.verified_insns.map_or("?".into(), |n| n.to_string())
    );
}

/// One table of cases measured one way, the floor first.
fn table_per_packet(md: &mut String, m: &Measured) {
    let _ = writeln!(
        md,
        "| case | verdict | ns/packet median (p10-p90) | round medians | net of floor (median of rounds) |\n\
         |---|---|---|---|---|"
    );
    let row = |md: &mut String, c: &CaseResult, net: Option<f64>| {
        let rounds: Vec<String> = c.round_medians.iter().map(|m| format!("{m:.0}")).collect();
        let bad = if c.unexpected > 0 {
            format!(" ({} other verdicts)", c.unexpected)
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {}{bad} | {} | {} | {} |",
            c.name,
            c.verdict,
            ns(&c.summary),
            rounds.join(", "),
            net.map_or("-".into(), |n| format!("{n:.0} ns"))
        );
    };
    row(md, &m.floor, None);
    for c in &m.cases {
        row(md, c, Some(m.net(c)));
    }
}

fn section_profile(md: &mut String, r: &Results) {
    let Some(p) = &r.profile else {
        return;
    };
    let _ = writeln!(
        md,
        "### Where the time of an established-TCP test run goes (perf)\n"
    );
    let p = match p {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(md, "not profiled: {e}\n");
            return;
        }
    };
    let _ = writeln!(
        md,
        "`perf record -p <bench>` while the bench ran {} test runs of the established-TCP \
         case back to back: {:.0} ns of wall time per `BPF_PROG_TEST_RUN` syscall, of which \
         the kernel timed {:.0} ns (median) as the program's run. Self time by symbol (share of \
         all samples; the ns column is that share of the wall time per run):\n",
        p.runs, p.wall_ns_per_run, p.duration_median
    );
    let _ = writeln!(
        md,
        "| symbol | category | share | ns per run |\n|---|---|---|---|"
    );
    for x in &p.top {
        let _ = writeln!(
            md,
            "| `{}` | {} | {:.1}% | {:.0} |",
            x.symbol,
            perf::test_run_category(&x.symbol),
            x.percent,
            x.percent / 100.0 * p.wall_ns_per_run
        );
    }
    md.push('\n');
    let _ = writeln!(md, "By category (of the symbols above):\n");
    for (cat, pct) in by_category(&p.top, perf::test_run_category) {
        let _ = writeln!(
            md,
            "- {cat}: {pct:.1}%, {:.0} ns per run",
            pct / 100.0 * p.wall_ns_per_run
        );
    }
    md.push('\n');
}

/// Shares summed by [`perf::category`], largest first.
pub fn by_category(
    samples: &[perf::Sample],
    category: fn(&str) -> &'static str,
) -> Vec<(&'static str, f64)> {
    let mut sums: Vec<(&'static str, f64)> = Vec::new();
    for s in samples {
        let cat = category(&s.symbol);
        match sums.iter_mut().find(|(c, _)| *c == cat) {
            Some((_, v)) => *v += s.percent,
            None => sums.push((cat, s.percent)),
        }
    }
    sums.sort_by(|a, b| b.1.total_cmp(&a.1));
    sums
}

/// A share table: one row per key, one column per profile.
fn share_table(md: &mut String, head: &str, peers: &[Peer], cols: &[Vec<(&'static str, f64)>]) {
    let mut line = format!("| {head} |");
    let mut sep = "|---|".to_string();
    for peer in peers {
        let _ = write!(line, " {} |", peer.short());
        sep.push_str("---|");
    }
    let _ = writeln!(md, "{line}\n{sep}");
    let mut keys: Vec<&str> = Vec::new();
    for (k, _) in cols.iter().flatten() {
        if !keys.contains(k) {
            keys.push(k);
        }
    }
    for key in keys {
        let mut line = format!("| {key} |");
        for c in cols {
            let v = c.iter().find(|(n, _)| *n == key).map_or(0.0, |(_, v)| *v);
            let _ = write!(line, " {v:.1}% |");
        }
        let _ = writeln!(md, "{line}");
    }
    md.push('\n');
}

/// Shares summed by process group (`perf::bench_process`, or other work).
fn by_process(samples: &[perf::Sample]) -> Vec<(&'static str, f64)> {
    let mut sums: Vec<(&'static str, f64)> = Vec::new();
    for s in samples {
        let group = s
            .comm
            .as_deref()
            .and_then(perf::bench_process)
            .unwrap_or("other processes on the machine");
        match sums.iter_mut().find(|(g, _)| *g == group) {
            Some((_, v)) => *v += s.percent,
            None => sums.push((group, s.percent)),
        }
    }
    sums.sort_by(|a, b| b.1.total_cmp(&a.1));
    sums
}

/// The samples of the bench's own processes (and the idle/softirq context).
fn own_samples(samples: &[perf::Sample]) -> Vec<perf::Sample> {
    samples
        .iter()
        .filter(|s| s.comm.as_deref().and_then(perf::bench_process).is_some())
        .cloned()
        .collect()
}

fn section_e2e_profiles(md: &mut String, profiles: &[(Peer, &Result<Vec<perf::Sample>, String>)]) {
    let _ = writeln!(
        md,
        "### Where the CPU goes under HTTP keep-alive load (perf, system-wide)\n\n\
         `perf record -a` during the first keep-alive run of a path. It samples everything on \
         the machine, so first by process (softirq work, such as forwarding, counts for \
         whichever process it interrupted), then, for the bench's own processes only, by \
         category of kernel and user symbol (shares of all samples):\n"
    );
    let peers: Vec<Peer> = profiles.iter().map(|(p, _)| *p).collect();
    let ok_samples: Vec<Vec<perf::Sample>> = profiles
        .iter()
        .map(|(_, p)| p.as_ref().map(|s| s.to_vec()).unwrap_or_default())
        .collect();
    let procs: Vec<_> = ok_samples.iter().map(|s| by_process(s)).collect();
    share_table(md, "process", &peers, &procs);
    let cats: Vec<_> = ok_samples
        .iter()
        .map(|s| by_category(&own_samples(s), perf::category))
        .collect();
    share_table(md, "category (bench processes only)", &peers, &cats);
    for (peer, p) in profiles {
        match p {
            Ok(samples) => {
                let top: Vec<String> = own_samples(samples)
                    .iter()
                    .take(15)
                    .map(|s| {
                        let user = if s.kernel { "" } else { ", user" };
                        format!(
                            "`{}` ({}{user}) {:.1}%",
                            s.symbol,
                            s.comm.as_deref().unwrap_or("?"),
                            s.percent
                        )
                    })
                    .collect();
                let _ = writeln!(md, "Top symbols, {}: {}.\n", peer.short(), top.join(", "));
            }
            Err(err) => {
                let _ = writeln!(md, "{}: not profiled ({err}).\n", peer.short());
            }
        }
    }
}

fn section_e2e(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 2. End to end in namespaces\n");
    if let Some(note) = part_note(&r.e2e) {
        let _ = writeln!(md, "{note}\n");
        return;
    }
    let e = ok(&r.e2e).expect("checked");
    let p = &e.params;
    let _ = writeln!(
        md,
        "`client | lb | switch (bridge) | 3 backends` (`balancer_tests::Topology`). Backends: \
         nginx (one process each, `return 200` of a 2-byte body) and testsrv's UDP echo. Paths:\n\
         - **direct**: no XDP, no agent; the lb namespace forwards by routing (the client routes \
         10.0.2.0/24 via the lb, the backends 10.0.1.0/24 back); wrk thread i talks to backend i.\n\
         - **direct + XDP_PASS**: direct, with a 2-instruction XDP program that passes \
         everything attached (driver mode) to the lb's two veths: the cost of XDP mode on veth \
         by itself (a control, not a target).\n\
         - **balancer**: the agent (`default_config`, Maglev, XDP in driver mode on both lb \
         veths, full NAT).\n\
         - **balancer-generic**: the same agent with `xdp_mode = \"skb\"` (generic XDP), the \
         mode to pick on veth, and SNAT ports of its own (7000-19999: it runs right after the \
         driver-mode agent, whose tuples are still in TIME-WAIT on the backends); the targets \
         use this path.\n\
         - **nftables DNAT**: `dnat to numgen inc mod 3 map {{...}}` in prerouting plus \
         masquerade towards the backends (as kube-proxy's nftables mode does), which keeps \
         the client's ports.\n\
         - **HAProxy**: 2.6, `mode tcp`, round-robin, bound to the VIP on the lb's `lo` (no \
         UDP); it connects from the lb's ephemeral ports, set to {}. (A port range per path: \
         tuples the backends hold in TIME-WAIT from a path on another TCP timestamp clock \
         would make them drop SYNs by PAWS.)\n\n\
         Load from the client namespace: `wrk -t{} -c{} -d{}s --latency` with keep-alive and \
         with `-H 'Connection: close'` (a new connection per request); UDP: a generator in the \
         bench (a thread in the client namespace) with {} sockets (flows) sending {}-byte \
         datagrams, at most {} in flight, for {} s, counting the echoes. {} rounds, the paths \
         interleaved; the tables show the best round (noise on a shared machine only lowers \
         throughput), every round is listed below. Before each run the TCP sockets in \
         TIME-WAIT are removed from every namespace (`ss -K`), so that no path pays for the \
         ones an earlier path left (a conn-per-request run leaves ~200k on the backends), \
         and the client reuses its TIME-WAIT ports after 1 s (`tcp_tw_reuse = 1`: one wrk \
         host has 28k ports; where it closes first, as behind HAProxy, they ran out). \
         Everything (wrk, nginx, the forwarding) shares {} CPUs.\n",
        e2e::LB_LOCAL_PORTS.replace(' ', "-"),
        p.wrk_threads,
        p.wrk_connections,
        p.http_duration.as_secs(),
        p.udp_sockets,
        p.udp_payload,
        p.udp_window,
        p.udp_duration.as_secs(),
        p.rounds,
        r.env.cpus
    );
    let direct = |m: Metric| e.best(Peer::Direct, m);
    let _ = writeln!(
        md,
        "| path | HTTP keep-alive req/s | x direct | HTTP conn/request req/s | x direct | UDP echo pps | x direct |\n\
         |---|---|---|---|---|---|---|"
    );
    for peer in Peer::ALL {
        let mut line = format!("| {} |", peer.name());
        for m in Metric::ALL {
            match e.best(peer, m) {
                Some(v) => {
                    let ratio = direct(m).map_or("-".into(), |d| format!("{:.2}", v / d));
                    let _ = write!(line, " {v:.0} | {ratio} |");
                }
                None => line.push_str(" n/a | - |"),
            }
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(
        md,
        "\nRatios of each path to each other path (row ÷ column, best rounds):\n"
    );
    for m in Metric::ALL {
        let _ = writeln!(md, "{}:\n", m.name());
        let mut head = "| ÷ |".to_string();
        let mut sep = "|---|".to_string();
        for col in Peer::ALL {
            let _ = write!(head, " {} |", col.short());
            sep.push_str("---|");
        }
        let _ = writeln!(md, "{head}\n{sep}");
        for row in Peer::ALL {
            let mut line = format!("| {} |", row.short());
            for col in Peer::ALL {
                match (e.best(row, m), e.best(col, m)) {
                    (Some(a), Some(b)) if b > 0.0 => {
                        let _ = write!(line, " {:.2} |", a / b);
                    }
                    _ => line.push_str(" - |"),
                }
            }
            let _ = writeln!(md, "{line}");
        }
        md.push('\n');
    }

    let _ = writeln!(
        md,
        "Every run (latency p50/p99 from wrk; UDP: echoes/s, sent, loss; how busy all CPUs \
         of the machine were during the run, from /proc/stat, and how much of that was work \
         of processes outside the bench, from /proc/<pid>/stat):\n\n\
         | path | round | keep-alive | conn/request | UDP | problems |\n|---|---|---|---|---|---|"
    );
    for run in &e.runs {
        let http = |h: &Option<super::e2e::HttpResult>| {
            h.map_or("-".into(), |h| {
                format!(
                    "{:.0} req/s, {:.2}/{:.2} ms{}",
                    h.rps,
                    h.p50_ms,
                    h.p99_ms,
                    busy(h.cpu)
                )
            })
        };
        let udp = run.udp.map_or("-".into(), |u| {
            format!(
                "{:.0} pps, {} sent, {:.1}% lost{}",
                u.pps(),
                u.sent,
                u.loss() * 100.0,
                busy(run.udp_cpu)
            )
        });
        let mut problems: Vec<String> = Vec::new();
        for (what, h) in [("keep-alive", &run.keepalive), ("conn/request", &run.close)] {
            if let Some(h) = h {
                let p = http_problems(h);
                if !p.is_empty() {
                    problems.push(format!("{what}: {p}"));
                }
            }
        }
        if let Some(u) = &run.udp {
            if u.errors > 0 || u.stalls > 0 {
                problems.push(format!("UDP: {} errors, {} stalls", u.errors, u.stalls));
            }
        }
        if let Some(err) = &run.error {
            problems.push(err.replace('\n', " ").replace('|', "/"));
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            run.peer.short(),
            run.round + 1,
            http(&run.keepalive),
            http(&run.close),
            udp,
            problems.join("; ")
        );
    }
    md.push('\n');
    let tcp: Vec<String> = e
        .runs
        .iter()
        .filter(|r| !r.close_tcp.is_empty())
        .map(|r| {
            let c: Vec<String> = r
                .close_tcp
                .iter()
                .map(|(side, k, v)| format!("{side} {k} {v}"))
                .collect();
            format!("{} round {}: {}", r.peer.short(), r.round + 1, c.join(", "))
        })
        .collect();
    if !tcp.is_empty() {
        let _ = writeln!(
            md,
            "TCP counters (nstat) that moved in the client and the backends during each \
             conn-per-request run:\n\n{}\n",
            tcp.iter()
                .map(|l| format!("- {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let counters: Vec<String> = e
        .runs
        .iter()
        .filter(|r| r.peer.is_balancer() && !r.counters.is_empty())
        .map(|r| {
            let c: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{} round {}: {}", r.peer.short(), r.round + 1, c.join(", "))
        })
        .collect();
    if !counters.is_empty() {
        let _ = writeln!(
            md,
            "The balancer's global counters after each of its runs (non-zero only): {}.\n",
            counters.join("; ")
        );
    }
    let profiles: Vec<(Peer, &Result<Vec<perf::Sample>, String>)> = e
        .runs
        .iter()
        .filter_map(|r| r.profile.as_ref().map(|p| (r.peer, p)))
        .collect();
    if !profiles.is_empty() {
        section_e2e_profiles(md, &profiles);
    }
    if let (Some(t), Some(n)) = (e.testsrv_direct, e.best(Peer::Direct, Metric::KeepAlive)) {
        let _ = writeln!(
            md,
            "Backend check: with `testsrv` (a thread per connection, std only) as the HTTP \
             backend, direct keep-alive gave {:.0} req/s against {:.0} req/s with nginx ({:.2}x){}.\n",
            t.rps,
            n,
            t.rps / n,
            if t.rps < 0.9 * n {
                ": testsrv would be the bottleneck, so the bench uses nginx"
            } else {
                "; the bench uses nginx all the same (the standard backend)"
            }
        );
    }
}

/// `, CPUs 93% busy (21% other work)`.
fn busy(c: Option<super::e2e::CpuUse>) -> String {
    c.map_or(String::new(), |c| {
        format!(
            ", CPUs {:.0}% busy ({:.0}% other work)",
            c.busy * 100.0,
            c.foreign * 100.0
        )
    })
}

fn section_health(md: &mut String, r: &Results) {
    let _ = writeln!(md, "### Health checks: CPU of the agent\n");
    let Some(h) = ok(&r.health) else {
        let _ = writeln!(md, "{}\n", part_note(&r.health).unwrap_or_default());
        return;
    };
    let _ = writeln!(
        md,
        "The agent (`balancer run`, release build) checks {} backends with `type = \"tcp\"` \
         every {:.0} s (a SYN from a raw socket, the SYN-ACK, the kernel's reset). The backends \
         stand for other hosts: \
         one listener in a backend namespace accepts for all their addresses over a veth pair \
         of its own, with that namespace's packets steered (RPS) to CPU 1 and the listener \
         pinned there; the agent is pinned to CPU 0 and its received packets are steered to \
         CPU 0 (the veth's hand-over to the other CPU stands for a NIC). Measured over {:.1} s \
         after a 2 s warm-up.\n",
        h.backends, h.interval_secs, h.window_secs
    );
    let _ = writeln!(
        md,
        "| figure | value |\n|---|---|\n\
         | checks/s (SYN-ACKs the backends sent) | {:.0} |\n\
         | backends up with a passing last check at the end | {} of {} |\n\
         | agent process CPU (user + system, /proc/PID/stat) | {:.2}% of one core (user {:.2}, system {:.2}) |\n\
         | agent's CPU busy (wall time not idle, all contexts; /proc/stat idle) | {:.2}% ({:.2}% idle baseline before the agent started: {:.2}% net) |\n",
        h.checks_per_sec,
        h.up,
        h.backends,
        h.agent_pct,
        h.agent_user_pct,
        h.agent_sys_pct,
        h.cpu_busy_pct,
        h.cpu_idle_busy_pct,
        h.cpu_net_pct()
    );
}

fn section_scale(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 3. Scale and control plane\n");
    let _ = writeln!(md, "### Maglev ring build (`balancer::ring::maglev`)\n");
    match ok(&r.rings) {
        Some(rings) => {
            let _ = writeln!(
                md,
                "| M | backends | build | median ms | min-max ms | builds |\n|---|---|---|---|---|---|"
            );
            for b in rings {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.3} | {:.3}-{:.3} | {} |",
                    b.m, b.backends, b.kind, b.ms.p50, b.ms.min, b.ms.max, b.ms.n
                );
            }
            md.push('\n');
        }
        None => {
            let _ = writeln!(md, "{}\n", part_note(&r.rings).unwrap_or_default());
        }
    }

    let _ = writeln!(md, "### CLI change to map\n");
    match ok(&r.e2e).map(|e| (e.cli.as_ref(), e.cli_error.as_ref())) {
        Some((Some(c), _)) => {
            let _ = writeln!(
                md,
                "Wall time of the `balancer` CLI process, from spawn to exit, against the agent \
                 of the end-to-end topology (pool \"web\", {} backends at first, VIP with a \
                 65537-slot Maglev ring). The CLI returns only after the agent has written the \
                 maps (BACKENDS, the inactive ring slice, then the VIP's flip); after every add \
                 the bench read the agent's BACKENDS map (found through the program attached to \
                 `lbc0`) and found the new backend there {}/{} times. Each add uses a new \
                 address, so each rebuild moves about 1/(n+1) of the ring's slots.\n",
                c.pool_before, c.add_in_map, c.adds
            );
            let _ = writeln!(
                md,
                "| command | median ms | p10-p90 ms | runs |\n|---|---|---|---|\n\
                 | `backend list web` (read-only round trip: process start, socket, reply) | {:.2} | {:.2}-{:.2} | {} |\n\
                 | `backend add web 10.0.2.x:80` | {:.2} | {:.2}-{:.2} | {} |\n\
                 | `backend del web 10.0.2.x:80` | {:.2} | {:.2}-{:.2} | {} |\n",
                c.list.p50,
                c.list.p10,
                c.list.p90,
                c.list.n,
                c.add.p50,
                c.add.p10,
                c.add.p90,
                c.add.n,
                c.del.p50,
                c.del.p10,
                c.del.p90,
                c.del.n
            );
            if let Some(us) = c.slot_write_us {
                let how = match c.ring_mmapable {
                    Some(true) => {
                        "RING is created `BPF_F_MMAPABLE`, so the agent writes ring slots with \
                         plain stores into the mapped array; for comparison"
                    }
                    Some(false) => {
                        "RING is not memory-mapped, so the agent writes each ring slot with \
                         one syscall"
                    }
                    None => "For comparison",
                };
                let _ = writeln!(
                    md,
                    "{how}, one ring slot written by syscall (`aya::maps::Array::set`, one \
                     `BPF_MAP_UPDATE_ELEM`) took {us:.2} µs from this process: a change that \
                     rewrote a quarter of the 65537 slots that way would take {:.0} ms.\n",
                    us * 65_537.0 / 4.0 / 1e3
                );
            }
        }
        Some((None, err)) => {
            let _ = writeln!(
                md,
                "not measured: {}\n",
                err.map_or("unknown", |e| e.as_str())
            );
        }
        None => {
            let _ = writeln!(md, "{}\n", part_note(&r.e2e).unwrap_or_default());
        }
    }

    section_health(md, r);

    let _ = writeln!(md, "### Map memory\n");
    match ok(&r.memory) {
        Some(mems) => {
            let _ = writeln!(
                md,
                "The program loaded with `EbpfLoader::map_max_entries` for CONNS and NAT (LRU \
                 hashes, preallocated); `memlock:` from `/proc/self/fdinfo/<map fd>`.\n\n\
                 | CONNS and NAT entries | CONNS | NAT | all maps | bytes per flow (CONNS + NAT) | load time |\n\
                 |---|---|---|---|---|---|"
            );
            for m in mems {
                let per = (m.get("CONNS") + m.get("NAT")) as f64 / f64::from(m.entries);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {per:.0} | {:.2} s |",
                    m.entries,
                    mib(m.get("CONNS")),
                    mib(m.get("NAT")),
                    mib(m.total()),
                    m.load_time.as_secs_f64()
                );
            }
            if let Some(m) = mems.first() {
                let others: Vec<String> = m
                    .by_map
                    .iter()
                    .filter(|(k, _)| k.as_str() != "CONNS" && k.as_str() != "NAT")
                    .map(|(k, v)| format!("{k} {}", mib(*v)))
                    .collect();
                let _ = writeln!(md, "\nThe other maps: {}.\n", others.join(", "));
            }
        }
        None => {
            let _ = writeln!(md, "{}\n", part_note(&r.memory).unwrap_or_default());
        }
    }

    let _ = writeln!(md, "### New flows with a full connection table\n");
    match ok(&r.full_table) {
        Some(f) => {
            let net = f.syn.summary.p50 - f.floor.summary.p50;
            let _ = writeln!(
                md,
                "CONNS and NAT sized to {} entries, filled first with {} SYNs of fresh tuples \
                 ({:.2} s), then SYNs of further fresh tuples: each one is a new flow that \
                 evicts least-recently-used entries. One run per test run, as in section 1.\n\n\
                 | case | ns/packet median (p10-p90) | net of floor | new flows/s on one CPU |\n\
                 |---|---|---|---|\n\
                 | {} | {} | {net:.0} ns | {} (by the median incl. harness), {} (net) |\n\
                 | {} | {} | - | - |\n",
                f.entries,
                f.filled_with,
                f.fill_time.as_secs_f64(),
                f.syn.name,
                ns(&f.syn.summary),
                rate(1e9 / f.syn.summary.p50),
                rate(1e9 / net.max(1.0)),
                f.floor.name,
                ns(&f.floor.summary)
            );
            if f.syn.unexpected > 0 {
                let _ = writeln!(
                    md,
                    "{} of those SYNs got another verdict than XDP_REDIRECT.\n",
                    f.syn.unexpected
                );
            }
        }
        None => {
            let _ = writeln!(md, "{}\n", part_note(&r.full_table).unwrap_or_default());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The chart.
// ---------------------------------------------------------------------------------------

const FONT_PATHS: [(&str, FontStyle); 2] = [
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        FontStyle::Normal,
    ),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
        FontStyle::Bold,
    ),
];

/// Registers DejaVu Sans (Debian's fonts-dejavu-core) as "sans-serif" for the chart.
fn register_fonts() -> Result<()> {
    for (path, style) in FONT_PATHS {
        let bytes = std::fs::read(path).with_context(|| {
            format!("reading {path} (install fonts-dejavu-core; `cargo xtask bench` does)")
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", style, bytes)
            .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    }
    Ok(())
}

/// One bar of a horizontal bar panel.
struct Bar {
    label: String,
    value: f64,
    /// A whisker (e.g. p10-p90).
    range: Option<(f64, f64)>,
    color: RGBColor,
    note: String,
}

struct Panel {
    title: String,
    unit: &'static str,
    bars: Vec<Bar>,
    /// A vertical line: (value, label).
    target: Option<(f64, String)>,
}

const BLUE: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const GREEN: RGBColor = RGBColor(0x2f, 0x85, 0x5a);
const GREY: RGBColor = RGBColor(0x8a, 0x8f, 0x98);
const ORANGE: RGBColor = RGBColor(0xdd, 0x6b, 0x20);
const PURPLE: RGBColor = RGBColor(0x6b, 0x46, 0xc1);
const CYAN: RGBColor = RGBColor(0x0b, 0x8a, 0x9e);
const RED: RGBColor = RGBColor(0xc5, 0x30, 0x30);

fn peer_color(p: Peer) -> RGBColor {
    match p {
        Peer::Direct => GREY,
        Peer::DirectXdpPass => GREEN,
        Peer::Balancer => BLUE,
        Peer::BalancerGeneric => CYAN,
        Peer::Nftables => ORANGE,
        Peer::Haproxy => PURPLE,
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(area: &Area<'_>, panel: &Panel) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let title = ("sans-serif", 22).into_font().style(FontStyle::Bold);
    let text = ("sans-serif", 15).into_font();
    let small = ("sans-serif", 13).into_font();
    area.draw_text(&panel.title, &title.color(&BLACK), (12, 8))?;
    if panel.bars.is_empty() {
        area.draw_text("not measured", &text.color(&RED), (12, 48))?;
        return Ok(());
    }
    let mut label_w = 0;
    for b in &panel.bars {
        label_w = label_w.max(area.estimate_text_size(&b.label, &text.color(&BLACK))?.0 as i32);
    }
    let label_w = label_w + 12;
    let left = label_w + 10;
    let right = w - 130;
    let top = 46;
    let bottom = h - 34;
    let max = panel
        .bars
        .iter()
        .map(|b| b.range.map_or(b.value, |r| r.1.max(b.value)))
        .chain(panel.target.as_ref().map(|t| t.0))
        .fold(0.0f64, f64::max)
        * 1.08;
    let max = if max > 0.0 { max } else { 1.0 };
    let x = |v: f64| left + ((v / max) * f64::from(right - left)) as i32;
    let n = panel.bars.len() as i32;
    let slot = (bottom - top) / n;
    let bar_h = (slot * 7 / 10).max(4);
    // Axis and scale.
    area.draw(&PathElement::new(
        vec![(left, top - 4), (left, bottom)],
        BLACK.stroke_width(1),
    ))?;
    area.draw_text(
        &format!("0 .. {} {}", fmt_axis(max), panel.unit),
        &small.color(&GREY),
        (left, bottom + 8),
    )?;
    for (i, b) in panel.bars.iter().enumerate() {
        let y0 = top + i as i32 * slot + (slot - bar_h) / 2;
        let y1 = y0 + bar_h;
        area.draw(&Rectangle::new(
            [(left, y0), (x(b.value).max(left + 1), y1)],
            b.color.filled(),
        ))?;
        if let Some((lo, hi)) = b.range {
            let ym = (y0 + y1) / 2;
            area.draw(&PathElement::new(
                vec![(x(lo), ym), (x(hi), ym)],
                BLACK.stroke_width(2),
            ))?;
            for v in [lo, hi] {
                area.draw(&PathElement::new(
                    vec![(x(v), ym - 5), (x(v), ym + 5)],
                    BLACK.stroke_width(2),
                ))?;
            }
        }
        let label_y = (y0 + y1) / 2 - 8;
        let (tw, _) = area.estimate_text_size(&b.label, &text.color(&BLACK))?;
        area.draw_text(
            &b.label,
            &text.color(&BLACK),
            (label_w - tw as i32, label_y),
        )?;
        let end = b.range.map_or(b.value, |r| r.1.max(b.value));
        area.draw_text(&b.note, &text.color(&BLACK), (x(end) + 6, label_y))?;
    }
    if let Some((v, label)) = &panel.target {
        let tx = x(*v);
        let mut y = top - 6;
        while y < bottom {
            area.draw(&PathElement::new(
                vec![(tx, y), (tx, (y + 6).min(bottom))],
                RED.stroke_width(2),
            ))?;
            y += 10;
        }
        area.draw_text(label, &small.color(&RED), (tx + 4, top - 20))?;
    }
    Ok(())
}

fn fmt_axis(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn xdp_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    let mut target = None;
    if let Some(pp) = ok(&r.per_packet) {
        let mut push = |label: String, net: f64, color| {
            bars.push(Bar {
                label,
                value: net,
                range: None,
                color,
                note: format!("{net:.0} ns"),
            })
        };
        let m = &pp.replayed;
        for c in &m.cases {
            push(format!("{} (burst)", short_case(c.name)), m.net(c), BLUE);
        }
        if let Some(c) = pp.single.case("TCP SYN") {
            push(
                format!("{} (alone)", short_case(c.name)),
                pp.single.net(c),
                GREEN,
            );
        }
        if let Some(f) = ok(&r.full_table) {
            push(
                format!("{} (alone)", short_case(f.syn.name)),
                f.syn.summary.p50 - f.floor.summary.p50,
                GREEN,
            );
        }
        target = Some((100.0, "target: 100 ns (established TCP)".to_string()));
    }
    Panel {
        title: "XDP cost per packet, net of the empty program (BPF_PROG_TEST_RUN, median)".into(),
        unit: "ns",
        bars,
        target,
    }
}

fn short_case(name: &str) -> String {
    match name {
        n if n.starts_with("empty") => "empty program (floor)".into(),
        n if n.starts_with("TCP established") => "TCP established".into(),
        n if n.starts_with("TCP SYN, new flow, full") => "TCP SYN, full table".into(),
        n if n.starts_with("TCP SYN") => "TCP SYN (new flow)".into(),
        n if n.starts_with("UDP") => "UDP established".into(),
        n if n.starts_with("NAT reply") => "NAT reply".into(),
        n if n.starts_with("not for a VIP") => "not a VIP (pass)".into(),
        n => n.into(),
    }
}

fn e2e_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    if let Some(e) = ok(&r.e2e) {
        for m in Metric::ALL {
            let Some(d) = e.best(Peer::Direct, m) else {
                continue;
            };
            for peer in Peer::ALL {
                if let Some(v) = e.best(peer, m) {
                    bars.push(Bar {
                        label: format!("{} {}", m.short(), peer.short()),
                        value: v / d,
                        range: None,
                        color: peer_color(peer),
                        note: format!("{:.2}x ({}/s)", v / d, rate(v)),
                    });
                }
            }
        }
    }
    Panel {
        title: "End to end, relative to direct (best round)".into(),
        unit: "x direct",
        bars,
        target: None,
    }
}

/// Slots the Maglev builder's walks take, and the slots they leave free, for `n`
/// backends of equal weight and ring size `m`: rounds in which every backend below quota
/// takes one slot, until at most `m / ENDGAME_FRACTION` are free.
fn walk_slots(m: u64, n: u64) -> (u64, u64) {
    let (quota, one_more) = (m / n, m % n);
    let (mut free, mut round) = (m, 0);
    while free > m / ring::ENDGAME_FRACTION as u64 {
        let active = match round.cmp(&quota) {
            Ordering::Less => n,
            Ordering::Equal => one_more,
            Ordering::Greater => 0,
        };
        if active == 0 {
            break;
        }
        free -= active;
        round += 1;
    }
    (m - free, free)
}

fn ring_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    let mut title = "Maglev ring build (median, min-max)".to_string();
    if let Some(rings) = ok(&r.rings) {
        for b in rings {
            if b.m > 100_000 {
                // Ten times the others: it would flatten them; its figure goes in the title.
                title = format!("Maglev build, median (M={}: {:.1} ms)", b.m, b.ms.p50);
                continue;
            }
            let (kind, color) = match b.kind {
                "fresh" => ("", BLUE),
                PAPER => (", paper", GREY),
                k if k.contains("adding") => (", +1 rebuild", GREEN),
                _ => (", -1 rebuild", GREEN),
            };
            bars.push(Bar {
                label: format!("M={} n={}{kind}", b.m, b.backends),
                value: b.ms.p50,
                range: Some((b.ms.min, b.ms.max)),
                color,
                note: format!("{:.2} ms", b.ms.p50),
            });
        }
    }
    Panel {
        title,
        unit: "ms",
        bars,
        target: Some((1.0, "target: M=65537 n=1000 < 1 ms".into())),
    }
}

fn control_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    if let Some(c) = ok(&r.e2e).and_then(|e| e.cli.as_ref()) {
        for (label, s, color) in [
            ("CLI backend list", &c.list, GREY),
            ("CLI backend add", &c.add, BLUE),
            ("CLI backend del", &c.del, BLUE),
        ] {
            bars.push(Bar {
                label: label.into(),
                value: s.p50,
                range: Some((s.p10, s.p90)),
                color,
                note: format!("{:.1} ms", s.p50),
            });
        }
    }
    Panel {
        title: "CLI change to map (wall time, median, p10-p90)".into(),
        unit: "ms",
        bars,
        target: Some((10.0, "target: add < 10 ms".into())),
    }
}

fn memory_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    if let Some(mems) = ok(&r.memory) {
        for m in mems {
            let flows = m.entries / 1_000_000;
            let conns = m.get("CONNS") + m.get("NAT");
            bars.push(Bar {
                label: format!("{flows}M flows: CONNS + NAT"),
                value: conns as f64 / (1u64 << 20) as f64,
                range: None,
                color: BLUE,
                note: mib(conns),
            });
            bars.push(Bar {
                label: format!("{flows}M flows: all maps"),
                value: m.total() as f64 / (1u64 << 20) as f64,
                range: None,
                color: PURPLE,
                note: mib(m.total()),
            });
        }
    }
    Panel {
        title: "Kernel memory of the maps (memlock)".into(),
        unit: "MiB",
        bars,
        target: None,
    }
}

/// Draws `results/bench.png`.
pub fn chart(r: &Results, path: &Path) -> Result<()> {
    register_fonts()?;
    let root = BitMapBackend::new(path, (1600, 1250)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = ("sans-serif", 28).into_font().style(FontStyle::Bold);
    root.draw_text(
        &format!(
            "balancer benchmark - {} - kernel {}",
            r.env.date, r.env.kernel
        ),
        &title.color(&BLACK),
        (20, 14),
    )?;
    let body = root.margin(60, 10, 10, 10);
    let (top, rest) = body.split_vertically(560);
    let (top_left, top_right) = top.split_horizontally(800);
    let bottom = rest.split_evenly((1, 3));
    draw_panel(&top_left, &xdp_panel(r))?;
    draw_panel(&top_right, &e2e_panel(r))?;
    draw_panel(&bottom[0], &ring_panel(r))?;
    draw_panel(&bottom[1], &control_panel(r))?;
    draw_panel(&bottom[2], &memory_panel(r))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// ns per run spent in `category`, from a profile of test runs.
fn profile_ns(p: &Profile, category: &str) -> f64 {
    p.top
        .iter()
        .filter(|x| perf::test_run_category(&x.symbol) == category)
        .map(|x| x.percent / 100.0 * p.wall_ns_per_run)
        .fold(0.0, |a, b| a + b)
}

/// Share (%) of `category` in the e2e profile of `peer`.
fn e2e_share(e: &E2e, peer: Peer, category: &str) -> Option<f64> {
    let run = e
        .runs
        .iter()
        .find(|r| r.peer == peer && matches!(r.profile, Some(Ok(_))))?;
    let Some(Ok(samples)) = &run.profile else {
        return None;
    };
    Some(
        own_samples(samples)
            .iter()
            .filter(|x| perf::category(&x.symbol) == category)
            .map(|x| x.percent)
            .fold(0.0, |a, b| a + b),
    )
}

/// "direct 70.6% (other processes 8.3%), ...": the share of wrk and nginx in each profile.
fn app_share(e: &E2e) -> String {
    let parts: Vec<String> = e
        .runs
        .iter()
        .filter_map(|r| match &r.profile {
            Some(Ok(samples)) => Some((r.peer, by_process(samples))),
            _ => None,
        })
        .map(|(peer, procs)| {
            let get = |name: &str| {
                procs
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
                    .fold(0.0, |a, b| a + b)
            };
            format!(
                "{} {:.0}% (other processes {:.0}%)",
                peer.short(),
                get("wrk (client)") + get("nginx (backends)"),
                get("other processes on the machine")
            )
        })
        .collect();
    if parts.is_empty() {
        "not profiled".into()
    } else {
        parts.join(", ")
    }
}

/// Paragraphs on the missed targets: where the time goes, from what was measured.
pub fn analysis(r: &Results) -> Vec<String> {
    let targets = targets(r);
    let missed = |prefix: &str| {
        targets
            .iter()
            .any(|t| t.what.starts_with(prefix) && t.met() == Some(false))
    };
    let mut out = Vec::new();

    if missed("XDP:") {
        let mut p = String::from("**XDP per-packet cost.** ");
        if let Some(pp) = ok(&r.per_packet) {
            let m = &pp.replayed;
            if let Some(c) = m.case("TCP established") {
                let _ = write!(
                    p,
                    "An established TCP packet costs {:.0} ns net of the harness floor; a \
                     packet that is not for a VIP costs {:.0} ns net (one array read: no VIP \
                     has an address in its `VIP_ADDRS` slot). ",
                    m.net(c),
                    m.case("not for a VIP").map_or(f64::NAN, |c| m.net(c))
                );
            }
            let _ = write!(
                p,
                "The program is {} translated instructions ({} bytes of JIT code). The \
                 established path does, per packet: the `VIP_ADDRS` array read, the SETTINGS \
                 array read, the clock (`bpf_jiffies64`, inlined by the verifier, times the tick \
                 length), the per-CPU `FLOW_CACHE` read (the flow's translation and checksum \
                 changes, taken from its CONNS entry, valid for the current `flow_epoch` and \
                 250 ms since the entry was touched; the CONNS LRU lookup, the `VIP_GENS` and `BACKENDS` checks \
                 and the entry's update run once per flow, CPU and 250 ms), three per-CPU \
                 counter updates (VIP, backend, verdict), the incremental IPv4 and TCP \
                 checksum updates, the per-CPU next-hop cache read and `bpf_redirect`. ",
                pp.program
                    .xlated_insns
                    .map_or("?".into(), |n| n.to_string()),
                pp.program.jited_bytes
            );
        }
        if let Some(prof) = ok(&r.profile) {
            let _ = write!(
                p,
                "perf over {} one-run-per-test-run runs of that case puts about {:.0} ns per packet in the FIB \
                 lookup (`bpf_ipv4_fib_lookup`, `fib_table_lookup`), {:.0} ns in BPF hash-map \
                 lookups and {:.0} ns in the JIT code itself; the rest of the {:.0} ns per \
                 syscall is the test-run harness (copies of the frame and context, the \
                 syscall, the timer). ",
                prof.runs,
                profile_ns(prof, "FIB lookup (helper)"),
                profile_ns(prof, "BPF map lookups (helpers)"),
                profile_ns(prof, "XDP program (JIT code)"),
                prof.wall_ns_per_run
            );
        }
        p.push_str(
            "The FIB is asked once a second per backend and per client slot (`NEXT_HOPS`, \
             `CLIENT_HOPS`), and the connection table once per flow, CPU and 250 ms \
             (`FLOW_CACHE`), not per packet. What is left to close the gap to 100 ns: \
             merging the VIP, backend and verdict counters into one per-CPU value per flow \
             direction (about 10 ns measured by leaving them out), the `bpf_redirect` helper \
             call (a helper call measured about 50 ns here: `bpf_ktime_get_coarse_ns` alone in \
             a program, against the empty one; the clock became `bpf_jiffies64`, which the \
             verifier inlines, and saved about 30 ns per packet), byte-wise header reads and \
             MAC writes (the BPF target splits unaligned accesses), and keeping SETTINGS in a \
             global (`.rodata`/`.data`) instead of an array map.",
        );
        out.push(p);
    }

    let ratio = |e: &E2e, a: Peer, b: Peer, m: Metric| -> String {
        match (e.best(a, m), e.best(b, m)) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "?".into(),
        }
    };
    let xdp_share = |e: &E2e, peer: Peer| -> String {
        let cats = [
            "XDP program (JIT code)",
            "BPF map lookups",
            "veth XDP: skb copied into an XDP buffer",
            "veth XDP: skb rebuilt from an XDP frame",
            "veth / XDP plumbing",
        ];
        let v: Option<f64> = cats
            .iter()
            .map(|c| e2e_share(e, peer, c))
            .try_fold(0.0, |acc, x| x.map(|x| acc + x));
        v.map_or("?".into(), |v| format!("{v:.1}%"))
    };

    let http_missed = missed("HTTP keep-alive") || missed("HTTP conn-per-request");
    if let (true, Some(e)) = (http_missed, ok(&r.e2e)) {
        let (ka, cl) = (Metric::KeepAlive, Metric::Close);
        let mut p = String::from("**HTTP through the balancer.** ");
        let _ = write!(
            p,
            "Every path shares the machine's {} CPUs with wrk and nginx, and the runs kept \
             them busy (see the CPU column), so req/s measures the CPU cost per request of the \
             whole system, most of which is wrk and nginx (share of all samples in the \
             profiles, softirq forwarding included: {}). A forwarder that \
             is cheaper than another can therefore only raise req/s by its share of that \
             total: 1.3x over nftables or 1.8x over HAProxy would need nftables' or HAProxy's \
             forwarding to be a large part of the CPU per request, and HAProxy (which \
             terminates and re-originates every connection) reached {} of direct, nftables \
             {} (keep-alive). ",
            r.env.cpus,
            app_share(e),
            ratio(e, Peer::Haproxy, Peer::Direct, ka),
            ratio(e, Peer::Nftables, Peer::Direct, ka),
        );
        let _ = write!(
            p,
            "The control path \"direct + XDP_PASS\" (no balancer logic, just an XDP program \
             in driver mode on the lb's two veths) reached {} of direct with keep-alive and {} \
             with a connection per request: on veth, driver-mode XDP costs that much by \
             itself. A veth with an XDP program receives in NAPI and turns every skb into an \
             XDP buffer, copying socket-built segments (data in page fragments, less than 256 \
             bytes of headroom: `skb_pp_cow_data`), and every redirected frame becomes a new \
             skb at the target veth (`__build_skb_around`), where kernel forwarding hands the \
             original skb along. The balancer in driver mode reached {} (keep-alive) and {} \
             (per request) of that control. In generic mode (`xdp_mode = \"skb\"`) the \
             socket-built skbs are copied too (`netif_skb_check_for_xdp`), but the program runs \
             in the veth's own receive path and a redirect transmits the skb on the other veth \
             (`generic_xdp_tx`): no hand-off to the veth's NAPI through a ring and no new skb \
             built from a frame. There the balancer reached {} (keep-alive) and {} (per \
             request) of direct, the figures the targets use. In the profiles the XDP-specific categories (program, \
             map lookups, the copy, the rebuild, veth/XDP plumbing) took {} of all samples for \
             the balancer in driver mode, {} in generic mode, {} for the control and {} for \
             direct. With native XDP on a NIC the program runs before any skb exists, so \
             neither veth cost applies and what the balancer adds is its per-packet cost of \
             section 1. ",
            ratio(e, Peer::DirectXdpPass, Peer::Direct, ka),
            ratio(e, Peer::DirectXdpPass, Peer::Direct, cl),
            ratio(e, Peer::Balancer, Peer::DirectXdpPass, ka),
            ratio(e, Peer::Balancer, Peer::DirectXdpPass, cl),
            ratio(e, Peer::TARGETS, Peer::Direct, ka),
            ratio(e, Peer::TARGETS, Peer::Direct, cl),
            xdp_share(e, Peer::Balancer),
            xdp_share(e, Peer::BalancerGeneric),
            xdp_share(e, Peer::DirectXdpPass),
            xdp_share(e, Peer::Direct),
        );
        // What a target asks of direct, next to what the balancer reached.
        let of_direct = |peer: Peer, m: Metric| -> Option<f64> {
            match (e.best(peer, m), e.best(Peer::Direct, m)) {
                (Some(v), Some(d)) if d > 0.0 => Some(v / d),
                _ => None,
            }
        };
        for m in [ka, cl] {
            let reached = of_direct(Peer::TARGETS, m);
            let needs: Vec<String> = [(Peer::Nftables, 1.3), (Peer::Haproxy, 1.8)]
                .iter()
                .filter_map(|&(peer, goal)| {
                    let need = goal * of_direct(peer, m)?;
                    Some(format!(
                        "{goal}x {} needs {need:.2} of direct",
                        peer.short()
                    ))
                })
                .collect();
            if let (Some(b), false) = (reached, needs.is_empty()) {
                let _ = write!(
                    p,
                    "{}: {}; {} reached {b:.2}. ",
                    m.name(),
                    needs.join(", "),
                    Peer::TARGETS.name()
                );
            }
        }
        let tcp_of = |peer: Peer, side: &str, name: &str| -> u64 {
            e.runs
                .iter()
                .filter(|r| r.peer == peer)
                .flat_map(|r| r.close_tcp.iter())
                .filter(|(s, n, _)| *s == side && n == name)
                .map(|(_, _, v)| *v)
                .sum()
        };
        let paws = tcp_of(Peer::TARGETS, "backends", "TcpExtPAWSTimewait");
        let reused_early: u64 = e
            .runs
            .iter()
            .filter(|r| r.peer == Peer::TARGETS)
            .flat_map(|r| r.counters.iter())
            .filter(|(name, _)| name == "snat_port_reused_early")
            .map(|(_, v)| *v)
            .sum();
        let syn_retrans = tcp_of(Peer::TARGETS, "client", "TcpExtTCPSynRetrans");
        if paws > 0 || syn_retrans > 0 {
            let busy_of = |peer: Peer| -> String {
                let v: Vec<String> = e
                    .runs
                    .iter()
                    .filter(|r| r.peer == peer)
                    .filter_map(|r| r.close.and_then(|h| h.cpu))
                    .map(|c| format!("{:.0}%", c.busy * 100.0))
                    .collect();
                if v.is_empty() {
                    "?".into()
                } else {
                    v.join("/")
                }
            };
            let _ = write!(
                p,
                "With a connection per request, connections through the balancer stall \
                 (CPUs {} busy in its runs, direct {}, nftables {}; below 100% the CPUs \
                 were idle while connections waited). The TCP \
                 counters say where: over the balancer's conn-per-request runs the backends \
                 rejected {paws} SYNs in TIME-WAIT by PAWS (`TcpExtPAWSTimewait`: the SYN's \
                 timestamp is older than the last one seen on that 4-tuple), the client \
                 answered the backends' replies with resets and retransmitted {syn_retrans} \
                 SYNs (`TcpExtTCPSynRetrans`), each after the 1 s initial RTO (direct: {} and \
                 {}, nftables: {} and {}). The backends see the balancer's SNAT tuple \
                 (10.0.2.1:port, backend:80); nginx closes first (`Connection: close`), so each \
                 such tuple sits in TIME-WAIT on the backend for 60 s. Within one agent the \
                 port of such a flow rests for `timeouts.snat_time_wait` (60 s) before a \
                 different client connection gets it, unless none of the probed ports is free \
                 (`snat_port_reused_early`: {reused_early} over these runs). But every run \
                 starts a fresh agent with empty maps, which knows nothing of the tuples an \
                 earlier agent left in TIME-WAIT: the two balancer paths get disjoint port \
                 ranges, the rounds of one path share theirs. nftables' masquerade keeps a \
                 NAT tuple reserved in conntrack for its own TIME-WAIT (120 s). ",
                busy_of(Peer::TARGETS),
                busy_of(Peer::Direct),
                busy_of(Peer::Nftables),
                tcp_of(Peer::Direct, "backends", "TcpExtPAWSTimewait"),
                tcp_of(Peer::Direct, "client", "TcpExtTCPSynRetrans"),
                tcp_of(Peer::Nftables, "backends", "TcpExtPAWSTimewait"),
                tcp_of(Peer::Nftables, "client", "TcpExtTCPSynRetrans"),
            );
        }
        let spread: Vec<String> = Peer::ALL
            .iter()
            .map(|&peer| {
                let all: Vec<String> = e.all(peer, ka).iter().map(|v| format!("{v:.0}")).collect();
                format!("{} {}", peer.short(), all.join("/"))
            })
            .collect();
        let _ = write!(
            p,
            "The machine is shared with other work (the \"other work\" share in the table of \
             every run): keep-alive req/s per round were {}; differences of 10-20% between \
             rounds of one path are noise here, and the tables use each path's best round.",
            spread.join("; ")
        );
        out.push(p);
    }

    if let (true, Some(e)) = (missed("UDP"), ok(&r.e2e)) {
        out.push(format!(
            "**UDP.** The generator's datagrams are small socket-built skbs: with XDP on the \
             receiving veth each is copied into an XDP buffer before the program runs and \
             rebuilt as an skb after the redirect, while direct and nftables forward the \
             original skb. The control \"direct + XDP_PASS\" reached {} of direct (its \
             passed packets pay the copy and then the whole kernel forwarding), the balancer \
             {} in driver mode and {} in generic mode (a copy, but no NAPI hand-off and no \
             rebuild). shared/TOOLCHAIN.md measured the same veth effect with a minimal XDP router \
             (0.8x the kernel's forwarding for 18-byte UDP). The echo servers (testsrv, one \
             thread each) and the generator share the same {} CPUs.",
            ratio(e, Peer::DirectXdpPass, Peer::Direct, Metric::Udp),
            ratio(e, Peer::Balancer, Peer::Direct, Metric::Udp),
            ratio(e, Peer::TARGETS, Peer::Direct, Metric::Udp),
            r.env.cpus
        ));
    }

    if missed("Maglev") {
        if let Some(rings) = ok(&r.rings) {
            let find = |m: u32, n: usize| {
                rings
                    .iter()
                    .find(|b| b.m == m && b.backends == n && b.kind == "fresh")
                    .map_or(f64::NAN, |b| b.ms.p50)
            };
            let kind = |prefix: &str| {
                rings
                    .iter()
                    .filter(|b| b.kind.starts_with(prefix))
                    .map(|b| format!("{:.2} ms with {} backends", b.ms.p50, b.backends))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let t = find(65_537, 1000);
            let mut p = format!(
                "**Maglev build.** A fresh 65537-slot build takes {:.2} ms with 10 backends, \
                 {:.2} ms with 100 and {t:.2} ms with 1000: the time follows the ring size, not \
                 the backend count. ",
                find(65_537, 10),
                find(65_537, 100),
            );
            if let Some(paper) = rings.iter().find(|b| b.kind == PAPER) {
                let pt = paper.ms.p50;
                let m = 65_537u64;
                let (walked, left) = walk_slots(m, 1000);
                let mf = m as f64;
                // Random probes into a table with k of m slots free take m/k each on
                // average: about m ln(m/left) in all, and m H_m for the paper's algorithm.
                let probes = mf * (mf / left as f64).ln();
                let paper_probes = mf * (mf.ln() + 0.5772);
                let _ = write!(
                    p,
                    "The Maglev paper's own algorithm (Pseudocode 1, walks to the last slot) \
                     takes {pt:.2} ms here for the same backends: the builder needs {:.2}x its \
                     time, and to be under 1 ms here it would need {:.2}x. The builder walks \
                     until at most 1/{} of the slots are free ({walked} slots by walks, \
                     {left} left) and deals those out round-robin (its endgame), about \
                     {:.0}k probes; the paper's algorithm probes about {:.0}k for all {m}. \
                     {:.1}x the probes cost {:.1}x the time: in these loops (a different \
                     table, so an indication only) the probes are the cheap part, and the \
                     end of each walk, on a branch the CPU cannot predict (is this slot \
                     free?), the costly one. ",
                    t / pt,
                    1.0 / pt,
                    ring::ENDGAME_FRACTION,
                    probes / 1e3,
                    paper_probes / 1e3,
                    paper_probes / probes,
                    pt / t,
                );
            }
            let _ = write!(
                p,
                "A larger endgame would cut walks, but it places more slots round-robin in \
                 slot order instead of by each backend's permutation, so fresh builds of two \
                 configurations that differ by one backend would disagree on more slots. A fresh build \
                 only happens at start-up and when a VIP is added; on a change the agent \
                 rebuilds from the previous table, which keeps most slots: after removing one \
                 backend {}; after adding one {}.",
                kind("rebuild after removing"),
                kind("rebuild after adding")
            );
            out.push(p);
        }
    }

    if missed("CLI") {
        if let Some(c) = ok(&r.e2e).and_then(|e| e.cli.as_ref()) {
            let mut p = format!(
                "**CLI change to map.** `backend add` took {:.1} ms against {:.1} ms for a \
                 read-only `backend list`, so about {:.0} ms are the agent's work. ",
                c.add.p50,
                c.list.p50,
                c.add.p50 - c.list.p50
            );
            match (c.ring_mmapable, c.slot_write_us) {
                (Some(false), Some(us)) => {
                    let _ = write!(
                        p,
                        "A ring slot write costs {us:.2} µs (one `BPF_MAP_UPDATE_ELEM` syscall \
                         per slot), so that is about {:.0}k slot writes per change: the agent \
                         writes the new table into the inactive slice, which holds the table \
                         of two changes ago. Ways under 10 ms, for the agent's owners: create \
                         RING with `BPF_F_MMAPABLE` and write slots with stores, or write a \
                         change with one `BPF_MAP_UPDATE_BATCH` call.",
                        (c.add.p50 - c.list.p50) * 1e3 / us / 1e3
                    );
                }
                _ => {
                    let _ = write!(
                        p,
                        "RING is memory-mapped, so slot writes are plain stores; what is left \
                         in the agent is the Maglev rebuild from the previous table (about \
                         1 ms, section 3), a few map updates (BACKENDS, the VIP's flip) and the \
                         control-socket round trip. The CLI process itself (start-up, connect, \
                         JSON) is most of the {:.1} ms of the read-only `list`, i.e. most of the \
                         budget: the spread (`add` p10 {:.1} ms, p90 {:.1} ms) and the load of \
                         other work on this machine decide whether one run lands under 10 ms. \
                         To measure the map change without the CLI process, time the control \
                         request on an open socket, or poll the map (as the bench does once \
                         after each add) from a process that is already running.",
                        c.list.p50, c.add.p10, c.add.p90
                    );
                }
            }
            out.push(p);
        }
    }

    if missed("Health checks") {
        if let Some(h) = ok(&r.health) {
            out.push(format!(
                "**Health checks.** {} TCP checks a second cost the agent process {:.1}% of one \
                 core (its CPU was {:.1}% busier than idle, softirq work in other contexts \
                 included). A check is already three packets and no socket: the SYNs of a \
                 batch (a tick of up to 50 ms) are written with one `sendmmsg` on a raw socket, the SYN-ACKs \
                 read with `recvmmsg` from a packet socket that a classic BPF filter limits \
                 to the answers, and the kernel resets each SYN-ACK; only changed results \
                 reach the agent's main task. What remains is per packet in the kernel: the \
                 raw transmit path (route lookup, neighbour output) of each SYN, the receive \
                 path and reset of each SYN-ACK, and the hand-over of each batch to the \
                 backends' CPU (an inter-processor interrupt, a VM exit on this machine). \
                 `perf record -p` of the agent shows which of them dominates on a given \
                 host.",
                h.checks_per_sec,
                h.agent_pct,
                h.cpu_net_pct()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_slots_follows_the_builders_rounds() {
        // 65537 = 65 * 1000 + 537: 64 full rounds leave 1537 <= 2048 free.
        assert_eq!(walk_slots(65_537, 1000), (64_000, 1537));
        // 10 backends: 6553 rounds each and 7 takes in the last, until <= 2048 are free.
        assert_eq!(walk_slots(65_537, 10), (63_490, 2047));
        // Fewer slots than backends: one round, every slot taken by a walk.
        assert_eq!(walk_slots(5, 10), (5, 0));
    }
}
