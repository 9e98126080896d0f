//! Section 4 of the report: the agent's HTTP proxy beside HAProxy in `mode http`, per case
//! the medians over rounds with their spread, the ratios against the targets, memory per
//! idle connection, every run, and where the CPU went.

use std::fmt::Write as _;

use super::end_to_end::{busy, share_table, top_symbols};
use super::targets::{Target, Verdict};
use super::{figures, rate, Part, Results};
use crate::e2e::l7::{Case, Proxy, AGENT_THREADS, IDLE_CONNECTIONS, L7};
use crate::e2e::{http_problems, HttpResult};
use crate::perf;
use crate::stats::summarize;

/// The median of `v`, or `None` when there is none.
fn median(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| summarize(v).p50)
}

/// `median (min-max)` with `show` for each value, or `n/a`.
fn spread(v: &[f64], show: impl Fn(f64) -> String) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let s = summarize(v);
    let (lo, hi) = (show(s.min), show(s.max));
    if lo == hi {
        show(s.p50)
    } else {
        format!("{} ({lo}-{hi})", show(s.p50))
    }
}

fn ms(x: f64) -> String {
    format!("{x:.2}")
}

fn rps(l: &L7, proxy: Proxy, case: Case) -> Vec<f64> {
    l.values(proxy, case, |h| h.rps)
}

fn p99(l: &L7, proxy: Proxy, case: Case) -> Vec<f64> {
    l.values(proxy, case, |h| h.p99_ms)
}

/// balancer ÷ the reference HAProxy, medians.
fn versus(b: &[f64], h: &[f64]) -> Option<f64> {
    match (median(b), median(h)) {
        (Some(b), Some(h)) if h > 0.0 => Some(b / h),
        _ => None,
    }
}

/// The targets of issue 18, when the part was asked for: per case at least HAProxy's
/// requests/s and at most its p99, and at most twice its memory per idle connection.
#[expect(clippy::ref_option, reason = "a part as `Results` holds it")]
pub fn targets(part: &Part<L7>) -> Vec<Target> {
    let Some(result) = part else {
        return Vec::new();
    };
    let reference = Proxy::REFERENCE.name();
    let l = result.as_ref().ok();
    let unknown = |what: String, goal: &str| Target {
        what,
        goal: goal.into(),
        measured: "-".into(),
        verdict: Verdict::Unknown("no figures".into()),
    };
    let ratio_target = |what: String, goal: &str, r: Option<f64>, at_least: bool, limit: f64| {
        let Some(r) = r else {
            return unknown(what, goal);
        };
        let met = if at_least { r >= limit } else { r <= limit };
        Target {
            what,
            goal: goal.into(),
            measured: format!("{r:.2}x (medians)"),
            verdict: if met {
                Verdict::Met(format!("{:.2} to spare", (r - limit).abs()))
            } else {
                Verdict::Missed(format!("by {:.2}", (r - limit).abs()))
            },
        }
    };
    let mut t = Vec::new();
    for case in Case::ALL {
        let (b, h) = match l {
            Some(l) => (
                (
                    rps(l, Proxy::Balancer, case),
                    rps(l, Proxy::REFERENCE, case),
                ),
                (
                    p99(l, Proxy::Balancer, case),
                    p99(l, Proxy::REFERENCE, case),
                ),
            ),
            None => Default::default(),
        };
        t.push(ratio_target(
            format!("HTTP proxy, {}: req/s vs {reference}", case.name()),
            ">= 1.0x",
            versus(&b.0, &b.1),
            true,
            1.0,
        ));
        t.push(ratio_target(
            format!("HTTP proxy, {}: p99 latency vs {reference}", case.name()),
            "<= 1.0x",
            versus(&h.0, &h.1),
            false,
            1.0,
        ));
    }
    let mem = l.and_then(|l| {
        versus(
            &l.idle_bytes(Proxy::Balancer),
            &l.idle_bytes(Proxy::REFERENCE),
        )
    });
    t.push(ratio_target(
        format!("HTTP proxy: memory per idle connection vs {reference}"),
        "<= 2.0x",
        mem,
        false,
        2.0,
    ));
    t
}

pub fn section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 4. HTTP proxy (L7) beside HAProxy\n");
    let Some(l) = figures(md, &r.l7) else {
        return;
    };
    let p = &l.params;
    let _ = writeln!(
        md,
        "The end-to-end topology and nginx backends; an HTTP-mode VIP of the agent and \
         HAProxy (`mode http`, `option forwardfor`, bound to the VIP on the lb's `lo`) with the \
         same rules: `/static/`, `/images/` prefixes and `.css`, `.js` suffixes to pool \
         \"static\" (backend 1), the rest to \"app\" (the other backends, round-robin). The \
         requests (`/` and `/bytes/N`) all go to \"app\". Load: `wrk -t{} -c{} -d{}s \
         --latency`, with keep-alive and with `Connection: close`; {} rounds, the proxies \
         interleaved; figures are medians over the rounds (min-max). The agent's tokio runtime \
         has {AGENT_THREADS} worker threads, fixed by `balancer run` (not configurable), so \
         the targets compare with HAProxy at `nbthread {AGENT_THREADS}`; HAProxy at \
         `nbthread 1` is shown beside.\n",
        p.wrk_threads,
        p.wrk_connections,
        p.http_duration.as_secs(),
        p.rounds,
    );
    let _ = writeln!(
        md,
        "| case | {} req/s | {} req/s | {} req/s | req/s ÷ {} | p50 ms, balancer / HAProxy | \
         p99 ms, balancer / HAProxy | p99 ÷ {} |\n|---|---|---|---|---|---|---|---|",
        Proxy::ALL[0].name(),
        Proxy::ALL[1].name(),
        Proxy::ALL[2].name(),
        Proxy::REFERENCE.name(),
        Proxy::REFERENCE.name(),
    );
    let reference = Proxy::REFERENCE;
    for case in Case::ALL {
        let mut line = format!("| {} |", case.name());
        for proxy in Proxy::ALL {
            let _ = write!(line, " {} |", spread(&rps(l, proxy, case), rate));
        }
        let p50 = |proxy| l.values(proxy, case, |h| h.p50_ms);
        let ratio = |r: Option<f64>| r.map_or("?".into(), |r| format!("{r:.2}"));
        let _ = writeln!(
            md,
            "{line} {} | {} / {} | {} / {} | {} |",
            ratio(versus(
                &rps(l, Proxy::Balancer, case),
                &rps(l, reference, case)
            )),
            spread(&p50(Proxy::Balancer), ms),
            spread(&p50(reference), ms),
            spread(&p99(l, Proxy::Balancer, case), ms),
            spread(&p99(l, reference, case), ms),
            ratio(versus(
                &p99(l, Proxy::Balancer, case),
                &p99(l, reference, case)
            )),
        );
    }
    memory_table(md, l);
    runs_table(md, l);
    profiles(md, l);
}

fn memory_table(md: &mut String, l: &L7) {
    let _ = writeln!(
        md,
        "\nMemory per idle keep-alive connection: {IDLE_CONNECTIONS} connections opened to the \
         proxy, one request answered on each, then (`VmRSS` while they are open - `VmRSS` \
         before) / {IDLE_CONNECTIONS}, once per round before the load runs; the upstream \
         column counts the lb's established connections to the backends meanwhile.\n\n\
         | proxy | RSS before | bytes per idle connection | upstream connections |\n\
         |---|---|---|---|"
    );
    for proxy in Proxy::ALL {
        let idle: Vec<_> = l
            .runs
            .iter()
            .filter(|r| r.proxy == proxy)
            .filter_map(|r| r.idle)
            .collect();
        let before: Vec<f64> = idle.iter().map(|m| m.rss_before as f64).collect();
        let upstream: Vec<f64> = idle.iter().map(|m| m.upstream as f64).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            proxy.name(),
            spread(&before, |b| format!("{:.1} MiB", b / (1024.0 * 1024.0))),
            spread(&l.idle_bytes(proxy), |b| format!("{b:.0}")),
            spread(&upstream, |u| format!("{u:.0}")),
        );
    }
    md.push('\n');
}

fn runs_table(md: &mut String, l: &L7) {
    let mut head = "| proxy | round |".to_string();
    let mut sep = "|---|---|".to_string();
    for case in Case::ALL {
        let _ = write!(head, " {} |", case.name());
        sep.push_str("---|");
    }
    let _ = writeln!(
        md,
        "Every run (req/s, p50/p99 ms, how busy all CPUs were and how much of it was other \
         work):\n\n{head} problems |\n{sep}---|"
    );
    for run in &l.runs {
        let mut line = format!("| {} | {} |", run.proxy.name(), run.round + 1);
        let mut problems = run.errors.clone();
        for case in Case::ALL {
            let h: Option<&HttpResult> = run.http.iter().find(|(c, _)| *c == case).map(|(_, h)| h);
            match h {
                Some(h) => {
                    let _ = write!(
                        line,
                        " {:.0}, {:.2}/{:.2}{} |",
                        h.rps,
                        h.p50_ms,
                        h.p99_ms,
                        busy(h.cpu)
                    );
                    let pr = http_problems(h);
                    if !pr.is_empty() {
                        problems.push(format!("{}: {pr}", case.name()));
                    }
                }
                None => line.push_str(" - |"),
            }
        }
        if let Some(c) = &run.counters {
            problems.push(format!("agent: {c}"));
        }
        let problems: Vec<String> = problems
            .iter()
            .map(|p| p.replace('\n', " ").replace('|', "/"))
            .collect();
        let _ = writeln!(md, "{line} {} |", problems.join("; "));
    }
    md.push('\n');
}

fn profiles(md: &mut String, l: &L7) {
    let profiled: Vec<(String, &Vec<perf::Sample>)> = l
        .runs
        .iter()
        .filter_map(|r| match &r.profile {
            Some(Ok(s)) => Some((r.proxy.name(), s)),
            _ => None,
        })
        .collect();
    if profiled.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Where the CPU goes, HTTP proxies (perf, system-wide, first small keep-alive run)\n"
    );
    let names: Vec<String> = profiled.iter().map(|(n, _)| n.clone()).collect();
    let procs: Vec<_> = profiled.iter().map(|(_, s)| perf::by_process(s)).collect();
    share_table(md, "process", &names, &procs);
    let cats: Vec<_> = profiled
        .iter()
        .map(|(_, s)| perf::by_category(&perf::own_samples(s), perf::category))
        .collect();
    share_table(md, "category (bench processes only)", &names, &cats);
    for (name, samples) in &profiled {
        let proxy = samples.iter().filter(|s| {
            matches!(
                s.comm.as_deref().and_then(perf::bench_process),
                Some("balancer agent" | "haproxy")
            )
        });
        let _ = writeln!(
            md,
            "Top symbols of the proxy, {name}: {}.\n",
            top_symbols(proxy)
        );
    }
}
