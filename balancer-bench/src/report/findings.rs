//! Findings: sentences computed from this run's figures (rankings, ratios between cases and
//! between paths, shares of the profiles, margins to the targets). They say what was
//! measured, not how the code works: that belongs to the README and the code's own docs,
//! where it does not depend on one run.

use std::fmt::Write as _;

use super::targets::{Target, Verdict, E2E_GOALS};
use super::{ok, rate, ratio, short_case, Results};
use crate::e2e::{CliTimes, E2e, Metric, Peer};
use crate::maglev::{self, PAPER};
use crate::perf;
use crate::xdp::Measured;

/// The `## Findings` section: one list per part that has figures.
pub fn section(md: &mut String, r: &Results, targets: &[Target]) {
    let groups = [
        ("Targets", target_lines(targets)),
        ("XDP per packet", xdp_lines(r)),
        ("End to end", e2e_lines(r)),
        ("Scale and control plane", scale_lines(r)),
    ];
    let _ = writeln!(md, "## Findings\n\nComputed from the figures above.\n");
    for (title, lines) in groups.iter().filter(|(_, l)| !l.is_empty()) {
        let _ = writeln!(md, "### {title}\n");
        for l in lines {
            let _ = writeln!(md, "- {l}");
        }
        md.push('\n');
    }
}

fn target_lines(targets: &[Target]) -> Vec<String> {
    let count = |met: Option<bool>| targets.iter().filter(|t| t.met() == met).count();
    let mut out = vec![format!(
        "{} of {} targets met, {} missed, {} not measured.",
        count(Some(true)),
        targets.len(),
        count(Some(false)),
        count(None)
    )];
    for t in targets {
        if let Verdict::Missed(how) = &t.verdict {
            out.push(format!("Missed: {} (goal {}), {how}.", t.what, t.goal));
        }
    }
    out
}

/// `what: case net, case net, ...`, the costliest case first.
fn ranking(what: &str, m: &Measured) -> String {
    let mut nets: Vec<(&str, f64)> = m.cases.iter().map(|c| (c.name, m.net(c))).collect();
    nets.sort_by(|a, b| b.1.total_cmp(&a.1));
    let list: Vec<String> = nets
        .iter()
        .map(|(name, net)| format!("{} {net:.0} ns", short_case(name)))
        .collect();
    format!("{what}: {}.", list.join(", "))
}

fn xdp_lines(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(pp) = ok(&r.per_packet) {
        let (burst, single) = (&pp.replayed, &pp.single);
        out.push(ranking(
            "In bursts, net of the floor, costliest first",
            burst,
        ));
        out.push(ranking(
            "One run per test run, net of the floor, costliest first",
            single,
        ));
        let alone: Vec<String> = burst
            .cases
            .iter()
            .filter_map(|b| {
                let (bn, sn) = (burst.net(b), single.net(single.case(b.name)?));
                (bn >= 1.0).then(|| {
                    format!(
                        "{} {sn:.0} against {bn:.0} ns ({:.1}x)",
                        short_case(b.name),
                        sn / bn
                    )
                })
            })
            .collect();
        if !alone.is_empty() {
            out.push(format!(
                "A packet alone against the same packet in a burst, net: {}.",
                alone.join(", ")
            ));
        }
        out.push(format!(
            "The floor itself: {:.0} ns per run in bursts (the replay wrapper in front of the \
             empty program), {:.0} ns one run per test run.",
            burst.floor.summary.p50, single.floor.summary.p50
        ));
        if let (Some(syn), Some(est)) = (single.case("TCP SYN"), single.case("TCP established")) {
            let (s, e) = (single.net(syn), single.net(est));
            if e > 0.0 {
                out.push(format!(
                    "A new flow's SYN costs {:.1}x an established TCP packet, one run per test \
                     run ({s:.0} against {e:.0} ns net).",
                    s / e
                ));
            }
        }
        if let Some(c) = burst.case("TCP established") {
            let nets = burst.round_nets(c);
            let (lo, hi) = nets
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &n| {
                    (lo.min(n), hi.max(n))
                });
            if nets.len() > 1 {
                out.push(format!(
                    "Established TCP in bursts, net per round: {lo:.0} to {hi:.0} ns over {} \
                     rounds.",
                    nets.len()
                ));
            }
        }
        for c in burst.cases.iter().chain(&single.cases) {
            if c.unexpected > 0 {
                out.push(format!(
                    "{} runs of \"{}\" did not return {}.",
                    c.unexpected, c.name, c.verdict
                ));
            }
        }
    }
    if let Some(f) = ok(&r.full_table) {
        let net = f.net();
        let mut line = format!(
            "With CONNS and NAT full ({} entries), a new flow costs {net:.0} ns net: {} new \
             flows/s on one CPU",
            f.entries,
            rate(1e9 / net.max(1.0))
        );
        let room = ok(&r.per_packet)
            .and_then(|pp| pp.single.case("TCP SYN").map(|c| pp.single.net(c)))
            .filter(|room| *room > 0.0);
        if let Some(room) = room {
            let _ = write!(
                line,
                ", {:.1}x a new flow in a table with room ({room:.0} ns)",
                net / room
            );
        }
        line.push('.');
        out.push(line);
    }
    if let Some(p) = ok(&r.profile) {
        let wall = p.wall_ns_per_run;
        let cats: Vec<String> = perf::by_category(&p.top, perf::test_run_category)
            .iter()
            .map(|(c, pct)| format!("{c} {pct:.0}% ({:.0} ns)", pct / 100.0 * wall))
            .collect();
        out.push(format!(
            "Of the {wall:.0} ns of wall time per test-run syscall, the kernel timed {:.0} ns \
             ({:.0}%) as the program's run; by category of the profile: {}.",
            p.duration_median,
            100.0 * p.duration_median / wall,
            cats.join(", ")
        ));
        if let Some(top) = p.top.first() {
            out.push(format!(
                "The largest single symbol: `{}` ({}), {:.1}% of the samples.",
                top.symbol,
                perf::test_run_category(&top.symbol),
                top.percent
            ));
        }
    }
    out
}

fn e2e_lines(r: &Results) -> Vec<String> {
    let Some(e) = ok(&r.e2e) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in Metric::ALL {
        let mut best: Vec<(Peer, f64)> = Peer::ALL
            .iter()
            .filter_map(|&p| Some((p, e.best(p, m)?)))
            .collect();
        if best.is_empty() {
            continue;
        }
        best.sort_by(|a, b| b.1.total_cmp(&a.1));
        let direct = e.best(Peer::Direct, m).filter(|d| *d > 0.0);
        let list: Vec<String> = best
            .iter()
            .map(|&(p, v)| match direct {
                Some(d) if p != Peer::Direct => {
                    format!("{} {} ({:.2}x direct)", p.short(), rate(v), v / d)
                }
                _ => format!("{} {}", p.short(), rate(v)),
            })
            .collect();
        out.push(format!(
            "{}, best rounds, highest first: {}.",
            m.name(),
            list.join(", ")
        ));
    }
    let against = [
        (
            Peer::DirectXdpPass,
            Peer::Direct,
            "the XDP_PASS control over direct",
        ),
        (
            Peer::Balancer,
            Peer::DirectXdpPass,
            "the balancer in driver mode over the control",
        ),
        (
            Peer::BalancerGeneric,
            Peer::Balancer,
            "generic over driver mode",
        ),
    ];
    let parts: Vec<String> = against
        .iter()
        .filter_map(|&(a, b, what)| Some(format!("{what}: {}", ratios(e, a, b)?)))
        .collect();
    if !parts.is_empty() {
        out.push(format!("Best rounds, {}.", parts.join("; ")));
    }
    out.extend(profile_shares(e));
    out.extend(goal_gaps(e));
    out.extend(round_spread(e));
    out.extend(conn_per_request(e));
    let lost: Vec<String> = Peer::ALL
        .iter()
        .filter_map(|&p| {
            let best = e
                .runs
                .iter()
                .filter(|run| run.peer == p)
                .filter_map(|run| run.udp)
                .max_by(|a, b| a.pps().total_cmp(&b.pps()))?;
            // Under 0.1% a table cell already reads 0.0%.
            (best.loss() >= 0.001).then(|| format!("{} {:.1}%", p.short(), best.loss() * 100.0))
        })
        .collect();
    if !lost.is_empty() {
        out.push(format!(
            "UDP datagrams without an echo in the best round: {}.",
            lost.join(", ")
        ));
    }
    out
}

/// `keep-alive 0.83, conn/request 0.91, UDP 0.78`: `a` over `b` per metric, best rounds.
fn ratios(e: &E2e, a: Peer, b: Peer) -> Option<String> {
    let parts: Vec<String> = Metric::ALL
        .iter()
        .filter(|&&m| e.best(a, m).is_some() && e.best(b, m).is_some())
        .map(|&m| format!("{} {}", m.short(), ratio(e.best(a, m), e.best(b, m))))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// What the processes and the XDP-specific categories took in each keep-alive profile.
fn profile_shares(e: &E2e) -> Option<String> {
    const XDP_CATEGORIES: [&str; 5] = [
        "XDP program (JIT code)",
        "BPF map lookups",
        "veth XDP: skb copied into an XDP buffer",
        "veth XDP: skb rebuilt from an XDP frame",
        "veth / XDP plumbing",
    ];
    let mut apps = Vec::new();
    let mut xdp = Vec::new();
    for run in &e.runs {
        let Some(Ok(samples)) = &run.profile else {
            continue;
        };
        let procs = perf::by_process(samples);
        let share = |names: &[&str]| -> f64 {
            procs
                .iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(_, v)| v)
                .sum()
        };
        apps.push(format!(
            "{} {:.0}% (other processes {:.0}%)",
            run.peer.short(),
            share(&["wrk (client)", "nginx (backends)"]),
            share(&[perf::OTHER_PROCESSES])
        ));
        let own = perf::by_category(&perf::own_samples(samples), perf::category);
        let x: f64 = own
            .iter()
            .filter(|(c, _)| XDP_CATEGORIES.contains(c))
            .map(|(_, v)| v)
            .sum();
        xdp.push(format!("{} {x:.1}%", run.peer.short()));
    }
    (!apps.is_empty()).then(|| {
        format!(
            "In the keep-alive profiles, wrk and nginx took {} of all samples; the \
             XDP-specific categories (JIT code, map lookups, the veth copy and rebuild, \
             veth/XDP plumbing) took {}.",
            apps.join(", "),
            xdp.join(", ")
        )
    })
}

/// For each end-to-end goal missed: what it asks of direct, and what was reached.
fn goal_gaps(e: &E2e) -> Vec<String> {
    E2E_GOALS
        .iter()
        .filter_map(|&(m, peer, goal)| {
            let b = e.best(Peer::TARGETS, m)?;
            let o = e.best(peer, m).filter(|o| *o > 0.0)?;
            let d = e.best(Peer::Direct, m).filter(|d| *d > 0.0)?;
            (b / o < goal).then(|| {
                format!(
                    "{goal}x {} ({}) needs {:.2} of direct; {} reached {:.2}, {:.0}% of that.",
                    peer.short(),
                    m.short(),
                    goal * o / d,
                    Peer::TARGETS.short(),
                    b / d,
                    100.0 * b / (goal * o)
                )
            })
        })
        .collect()
}

/// Worst round over best round, per path and metric: how noisy the machine was.
fn round_spread(e: &E2e) -> Option<String> {
    let spread: Vec<String> = Peer::ALL
        .iter()
        .filter_map(|&p| {
            let cells: Vec<String> = Metric::ALL
                .iter()
                .map(|&m| {
                    let all = e.all(p, m);
                    let (lo, hi) = all.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    });
                    if all.len() > 1 && hi > 0.0 {
                        format!("{:.2}", lo / hi)
                    } else {
                        "-".into()
                    }
                })
                .collect();
            cells
                .iter()
                .any(|c| c != "-")
                .then(|| format!("{} {}", p.short(), cells.join("/")))
        })
        .collect();
    (!spread.is_empty()).then(|| {
        format!(
            "Worst round over best round (keep-alive/conn-per-request/UDP): {}.",
            spread.join(", ")
        )
    })
}

/// CPU use and the TCP counters of the conn-per-request runs, per path.
fn conn_per_request(e: &E2e) -> Vec<String> {
    let mut out = Vec::new();
    let busy: Vec<String> = Peer::ALL
        .iter()
        .filter_map(|&p| {
            let v: Vec<String> = e
                .runs
                .iter()
                .filter(|r| r.peer == p)
                .filter_map(|r| r.close.and_then(|h| h.cpu))
                .map(|c| format!("{:.0}%", c.busy * 100.0))
                .collect();
            (!v.is_empty()).then(|| format!("{} {}", p.short(), v.join("/")))
        })
        .collect();
    if !busy.is_empty() {
        out.push(format!(
            "CPUs busy during the conn-per-request runs, by round: {}.",
            busy.join(", ")
        ));
    }
    let foreign = e
        .runs
        .iter()
        .flat_map(|r| {
            [
                r.keepalive.and_then(|h| h.cpu),
                r.close.and_then(|h| h.cpu),
                r.udp_cpu,
            ]
        })
        .flatten()
        .map(|c| c.foreign)
        .fold(0.0f64, f64::max);
    if foreign > 0.0 {
        out.push(format!(
            "Processes outside the bench took up to {:.0}% of the CPUs during a run.",
            foreign * 100.0
        ));
    }
    let tcp = |peer: Peer, side: &str, name: &str| -> u64 {
        e.runs
            .iter()
            .filter(|r| r.peer == peer)
            .flat_map(|r| r.close_tcp.iter())
            .filter(|(s, n, _)| *s == side && n == name)
            .map(|(_, _, v)| *v)
            .sum()
    };
    let stalls: Vec<String> = Peer::ALL
        .iter()
        .filter_map(|&p| {
            let paws = tcp(p, "backends", "TcpExtPAWSTimewait");
            let resent = tcp(p, "client", "TcpExtTCPSynRetrans");
            (paws + resent > 0).then(|| format!("{} {paws}/{resent}", p.short()))
        })
        .collect();
    if !stalls.is_empty() {
        out.push(format!(
            "Over the conn-per-request runs, SYNs the backends rejected by PAWS \
             (`TcpExtPAWSTimewait`) / SYNs the client resent (`TcpExtTCPSynRetrans`): {}.",
            stalls.join(", ")
        ));
    }
    let reused: u64 = e
        .runs
        .iter()
        .filter(|r| r.peer.is_balancer())
        .flat_map(|r| r.counters.iter())
        .filter(|(name, _)| name == "snat_port_reused_early")
        .map(|(_, v)| *v)
        .sum();
    if reused > 0 {
        out.push(format!(
            "The balancer reused a resting SNAT port early {reused} times over its runs \
             (`snat_port_reused_early`)."
        ));
    }
    out
}

fn scale_lines(r: &Results) -> Vec<String> {
    let mut out = ring_lines(r);
    if let Some(c) = ok(&r.e2e).and_then(|e| e.cli.as_ref()) {
        out.push(cli_line(c));
    }
    if let Some(h) = ok(&r.health).filter(|h| h.checks_per_sec > 0.0) {
        // % of a core over checks per second: µs of CPU per check.
        let per_check = |pct: f64| pct / 100.0 / h.checks_per_sec * 1e6;
        out.push(format!(
            "{:.0} health checks a second cost the agent process {:.2}% of a core, {:.1} µs of \
             CPU per check; its CPU, net of the idle baseline, {:.2}% ({:.1} µs per check, \
             softirq included). {} of {} backends were up with a passing last check.",
            h.checks_per_sec,
            h.agent_pct,
            per_check(h.agent_pct),
            h.cpu_net_pct(),
            per_check(h.cpu_net_pct()),
            h.up,
            h.backends
        ));
    }
    if let Some(mems) = ok(&r.memory).filter(|m| !m.is_empty()) {
        let per_flow: Vec<String> = mems
            .iter()
            .map(|m| format!("{:.0} at {} entries", m.bytes_per_flow(), m.entries))
            .collect();
        let loads: Vec<String> = mems
            .iter()
            .map(|m| format!("{:.2} s at {}", m.load_time.as_secs_f64(), m.entries))
            .collect();
        let largest = mems.iter().max_by_key(|m| m.entries).expect("not empty");
        out.push(format!(
            "Bytes per flow in CONNS and NAT: {}; at {} entries the two are {:.0}% of all \
             maps' memory. Loading the program took {}.",
            per_flow.join(", "),
            largest.entries,
            100.0 * largest.flow_tables() as f64 / largest.total().max(1) as f64,
            loads.join(", ")
        ));
    }
    out
}

/// The CLI's round trips, and what an add costs beyond a read-only one.
fn cli_line(c: &CliTimes) -> String {
    let extra = c.add.p50 - c.list.p50;
    let mut line = format!(
        "`backend add` took {:.1} ms (median; p10-p90 {:.1}-{:.1}), {:.1} ms more than a \
         read-only `backend list` ({:.1} ms); `backend del` {:.1} ms, {:.1} ms more. {} of \
         {} adds were in BACKENDS when the CLI returned.",
        c.add.p50,
        c.add.p10,
        c.add.p90,
        extra,
        c.list.p50,
        c.del.p50,
        c.del.p50 - c.list.p50,
        c.add_in_map,
        c.adds
    );
    if let (Some(false), Some(us)) = (c.ring_mmapable, c.slot_write_us) {
        let _ = write!(
            line,
            " At {us:.2} µs per ring slot written by syscall, the add's extra {extra:.1} ms \
             is the time of {:.1}k slot writes.",
            extra * 1e3 / us / 1e3
        );
    }
    line
}

fn ring_lines(r: &Results) -> Vec<String> {
    let Some(rings) = ok(&r.rings) else {
        return Vec::new();
    };
    let fresh = |m: u32, n: usize| {
        rings
            .iter()
            .find(|b| b.m == m && b.backends == n && b.kind == "fresh")
            .map(|b| b.ms.p50)
    };
    let mut out = Vec::new();
    let sizes: Vec<String> = rings
        .iter()
        .filter(|b| b.m == 65_537 && b.kind == "fresh")
        .map(|b| format!("{:.2} ms with {} backends", b.ms.p50, b.backends))
        .collect();
    if !sizes.is_empty() {
        out.push(format!("Fresh builds at M = 65537: {}.", sizes.join(", ")));
    }
    if let (Some(small), Some(big)) = (fresh(65_537, 1000), fresh(655_373, 1000)) {
        out.push(format!(
            "M = 655373 with 1000 backends took {big:.2} ms, {:.1}x M = 65537 for 10x the slots.",
            big / small
        ));
    }
    let rebuilds: Vec<String> = rings
        .iter()
        .filter(|b| b.kind.starts_with("rebuild"))
        .filter_map(|b| {
            // The fresh build of the same ring with the nearest backend count.
            let reference = rings
                .iter()
                .filter(|f| f.m == b.m && f.kind == "fresh")
                .min_by_key(|f| f.backends.abs_diff(b.backends))?;
            Some(format!(
                "{} backends {:.2} ms ({:.2}x the fresh build with {})",
                b.backends,
                b.ms.p50,
                b.ms.p50 / reference.ms.p50,
                reference.backends
            ))
        })
        .collect();
    if !rebuilds.is_empty() {
        out.push(format!(
            "Rebuilds from the previous table: {}.",
            rebuilds.join(", ")
        ));
    }
    let paper = rings.iter().find(|b| b.kind == PAPER);
    if let (Some(p), Some(t)) = (paper, fresh(65_537, 1000)) {
        let pt = p.ms.p50;
        let mut line = format!(
            "The Maglev paper's algorithm took {pt:.2} ms for the same 1000 backends: the \
             builder took {:.2}x its time",
            t / pt
        );
        if t >= 1.0 {
            let _ = write!(
                line,
                ", and would need to be {t:.2}x faster to build in 1 ms"
            );
        }
        let (probes, paper_probes) = maglev::probe_estimates(65_537, 1000);
        let _ = write!(
            line,
            ". Estimated probes (a model of both algorithms, not a measurement): builder \
             {:.0}k, paper {:.0}k, so {:.1} ns per probe for the builder and {:.1} for the paper.",
            probes / 1e3,
            paper_probes / 1e3,
            t * 1e6 / probes,
            pt * 1e6 / paper_probes
        );
        out.push(line);
    }
    out
}
