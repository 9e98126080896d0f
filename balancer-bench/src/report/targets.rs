//! The targets (per-packet cost, end-to-end ratios, Maglev build, CLI to map, health-check
//! CPU): each goal next to what this run measured, met or missed and by how much.

use std::fmt::Write as _;

use super::{ok, rate, Results};
use crate::e2e::{E2e, Metric, Peer};
use crate::maglev::PAPER;

/// The end-to-end targets: [`Peer::TARGETS`] over another path, at least this ratio.
pub const E2E_GOALS: [(Metric, Peer, f64); 8] = [
    (Metric::KeepAlive, Peer::Direct, 0.9),
    (Metric::KeepAlive, Peer::Nftables, 1.3),
    (Metric::KeepAlive, Peer::Haproxy, 1.8),
    (Metric::Close, Peer::Direct, 0.9),
    (Metric::Close, Peer::Nftables, 1.3),
    (Metric::Close, Peer::Haproxy, 1.8),
    (Metric::Udp, Peer::Nftables, 1.1),
    (Metric::Udp, Peer::Direct, 0.9),
];

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
    let e2e = ok(&r.e2e);
    let mut t = vec![xdp_target(r)];
    t.extend(
        E2E_GOALS
            .iter()
            .map(|&(metric, peer, goal)| ratio_target(e2e, metric, peer, goal)),
    );
    t.push(ring_target(r));
    t.push(cli_target(e2e));
    t.push(health_target(r));
    t.push(scrape_target(r));
    t.extend(super::l7::targets(&r.l7));
    t
}

fn xdp_target(r: &Results) -> Target {
    let what = "XDP: established TCP v4 forward, net of the empty program";
    let goal = "<= 100 ns/packet";
    let Some(pp) = ok(&r.per_packet) else {
        return Target::unknown(what, goal, "per-packet section did not run");
    };
    let m = &pp.replayed;
    let Some(c) = m.case("TCP established") else {
        return Target::unknown(what, goal, "no such case");
    };
    let net = m.net(c);
    let single = pp
        .single
        .case("TCP established")
        .map_or(f64::NAN, |s| pp.single.net(s));
    let rounds: Vec<String> = m.round_nets(c).iter().map(|n| format!("{n:.0}")).collect();
    Target {
        what: what.into(),
        goal: goal.into(),
        measured: format!(
            "{net:.0} ns ({} runs per test run: median of the rounds' nets {}; one run per test \
             run: {single:.0} ns)",
            pp.repeat,
            rounds.join(", "),
        ),
        verdict: if net <= 100.0 {
            Verdict::Met(format!("{:.0} ns to spare", 100.0 - net))
        } else {
            Verdict::Missed(format!("by {:.0} ns", net - 100.0))
        },
    }
}

fn ring_target(r: &Results) -> Target {
    let what = "Maglev build, M = 65537, 1000 backends";
    let ring_row = |kind: &str| {
        ok(&r.rings)?
            .iter()
            .find(|b| b.m == 65_537 && b.backends == 1000 && b.kind == kind)
    };
    let Some(b) = ring_row("fresh") else {
        return Target::unknown(what, "< 1 ms", "ring section did not run");
    };
    Target {
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
    }
}

fn cli_target(e2e: Option<&E2e>) -> Target {
    let what = "CLI `backend add` to the map holding it";
    let Some(c) = e2e.and_then(|e| e.cli.as_ref()) else {
        return Target::unknown(what, "< 10 ms", "CLI timing did not run");
    };
    Target {
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
    }
}

fn health_target(r: &Results) -> Target {
    let what = "Health checks (issue 3): agent CPU for 1000 TCP backends at 1 s";
    let Some(h) = ok(&r.health) else {
        return Target::unknown(what, "< 5% of one core", "health section did not run");
    };
    let worst = h.agent_pct.max(h.cpu_net_pct());
    Target {
        what: what.into(),
        goal: "< 5% of one core".into(),
        measured: format!(
            "{:.1}% agent process; {:.1}% of its core incl. softirq ({:.0} checks/s)",
            h.agent_pct,
            h.cpu_net_pct(),
            h.checks_per_sec
        ),
        verdict: if worst < 5.0 {
            Verdict::Met(format!("{:.1} points to spare", 5.0 - worst))
        } else {
            Verdict::Missed(format!("by {:.1} points", worst - 5.0))
        },
    }
}

fn scrape_target(r: &Results) -> Target {
    let what = "Metrics (issue 21): a `/metrics` scrape, 1000 backends and 100 VIPs";
    let goal = "< 50 ms";
    let Some(s) = ok(&r.scrape) else {
        return Target::unknown(what, goal, "scrape section did not run");
    };
    Target {
        what: what.into(),
        goal: goal.into(),
        measured: format!(
            "{:.1} ms median, {:.1} ms p99 ({} scrapes, {} VIPs, {} backends); an established \
             packet {:.0} ns without scrapes, {:.0} ns with",
            s.ms.p50,
            s.p99_ms,
            s.ms.n,
            s.vips,
            s.backends,
            s.packet_quiet.p50,
            s.packet_scraping.p50
        ),
        verdict: if s.vips < 100 || s.backends < 1000 {
            Verdict::Unknown(format!(
                "at {} VIPs and {} backends, below the target's scale",
                s.vips, s.backends
            ))
        } else if s.p99_ms < 50.0 {
            Verdict::Met(format!("{:.1} ms to spare at p99", 50.0 - s.p99_ms))
        } else {
            Verdict::Missed(format!("by {:.1} ms at p99", s.p99_ms - 50.0))
        },
    }
}

/// The `result` cell of a target.
fn verdict_cell(v: &Verdict) -> String {
    match v {
        Verdict::Met(how) => format!("**met** ({how})"),
        Verdict::Missed(how) => format!("**missed** {how}"),
        Verdict::Unknown(why) => format!("not measured ({why})"),
    }
}

/// The `## Targets` table.
pub fn table(md: &mut String, targets: &[Target]) {
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| target | goal | measured | result |\n|---|---|---|---|"
    );
    for t in targets {
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
}
