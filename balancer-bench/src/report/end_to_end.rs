//! Section 2 of the report: end to end in namespaces, every path's best round, the ratios
//! between paths, every run, the TCP and balancer counters, and the system-wide profiles.

use std::fmt::Write as _;

use super::{figures, Results};
use crate::e2e::{self, http_problems, CpuUse, E2e, HttpResult, Metric, Peer};
use crate::perf;

/// A share table: one row per key, one column per profile (named in `names`).
pub(super) fn share_table(
    md: &mut String,
    head: &str,
    names: &[impl AsRef<str>],
    cols: &[Vec<(&'static str, f64)>],
) {
    let mut line = format!("| {head} |");
    let mut sep = "|---|".to_string();
    for name in names {
        let _ = write!(line, " {} |", name.as_ref());
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

fn profile_tables(md: &mut String, profiles: &[(Peer, &Result<Vec<perf::Sample>, String>)]) {
    let _ = writeln!(
        md,
        "### Where the CPU goes under HTTP keep-alive load (perf, system-wide)\n\n\
         `perf record -a` during the first keep-alive run of a path, by process (softirq work \
         counts for the process it interrupted), then by category of symbol for the bench's \
         own processes (shares of all samples):\n"
    );
    let peers: Vec<&str> = profiles.iter().map(|(p, _)| p.short()).collect();
    let ok_samples: Vec<Vec<perf::Sample>> = profiles
        .iter()
        .map(|(_, p)| p.as_ref().cloned().unwrap_or_default())
        .collect();
    let procs: Vec<_> = ok_samples.iter().map(|s| perf::by_process(s)).collect();
    share_table(md, "process", &peers, &procs);
    let cats: Vec<_> = ok_samples
        .iter()
        .map(|s| perf::by_category(&perf::own_samples(s), perf::category))
        .collect();
    share_table(md, "category (bench processes only)", &peers, &cats);
    for (peer, p) in profiles {
        match p {
            Ok(samples) => {
                let top = top_symbols(&perf::own_samples(samples));
                let _ = writeln!(md, "Top symbols, {}: {top}.\n", peer.short());
            }
            Err(err) => {
                let _ = writeln!(md, "{}: not profiled ({err}).\n", peer.short());
            }
        }
    }
}

/// The first 15 of `samples`: symbol (command, user or kernel) and share.
pub(super) fn top_symbols<'a>(samples: impl IntoIterator<Item = &'a perf::Sample>) -> String {
    let top: Vec<String> = samples
        .into_iter()
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
    top.join(", ")
}

pub fn section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 2. End to end in namespaces\n");
    let Some(e) = figures(md, &r.e2e) else {
        return;
    };
    let p = &e.params;
    let _ = writeln!(
        md,
        "`client | lb | switch | {} backends` in namespaces (`balancer_tests::Topology`); the \
         backends run nginx (HTTP) and testsrv (UDP echo). Paths:\n",
        e.backends
    );
    for peer in Peer::ALL {
        let _ = writeln!(md, "- **{}**: {}", peer.short(), peer.what());
    }
    let _ = writeln!(
        md,
        "\nLoad from the client namespace: `wrk -t{} -c{} -d{}s --latency`, with keep-alive and \
         with `Connection: close`; UDP: {} sockets sending {}-byte datagrams, at most {} in \
         flight, for {} s. {} rounds, the paths interleaved; the tables show each path's best \
         round, every round is listed below. Before each run the TIME-WAIT sockets of every \
         namespace are removed; the client has `tcp_tw_reuse = 1`; the lb's own connections \
         (HAProxy's, health checks) use ports {}. Everything shares {} CPUs.\n",
        p.wrk_threads,
        p.wrk_connections,
        p.http_duration.as_secs(),
        p.udp_sockets,
        p.udp_payload,
        p.udp_window,
        p.udp_duration.as_secs(),
        p.rounds,
        e2e::LB_LOCAL_PORTS.replace(' ', "-"),
        r.env.cpus
    );
    best_table(md, e);
    ratio_tables(md, e);
    runs_table(md, e);
    counters(md, e);
    let profiles: Vec<(Peer, &Result<Vec<perf::Sample>, String>)> = e
        .runs
        .iter()
        .filter_map(|r| r.profile.as_ref().map(|p| (r.peer, p)))
        .collect();
    if !profiles.is_empty() {
        profile_tables(md, &profiles);
    }
    backend_check(md, e);
}

/// Every path's best round, and its ratio to direct.
fn best_table(md: &mut String, e: &E2e) {
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
}

/// For each metric, the ratio of each path to each other path.
fn ratio_tables(md: &mut String, e: &E2e) {
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
}

/// Every run of every path, with its problems.
fn runs_table(md: &mut String, e: &E2e) {
    let _ = writeln!(
        md,
        "Every run (latency p50/p99 from wrk; UDP: echoes/s, sent, loss; how busy all CPUs \
         of the machine were during the run, from /proc/stat, and how much of that was work \
         of processes outside the bench, from /proc/<pid>/stat):\n\n\
         | path | round | keep-alive | conn/request | UDP | problems |\n|---|---|---|---|---|---|"
    );
    for run in &e.runs {
        let http = |h: &Option<HttpResult>| {
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
}

/// The TCP counters of each conn-per-request run and the balancer's counters of each run.
fn counters(md: &mut String, e: &E2e) {
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
}

/// Whether testsrv, as the HTTP backend, would have been the bottleneck.
fn backend_check(md: &mut String, e: &E2e) {
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
pub(super) fn busy(c: Option<CpuUse>) -> String {
    c.map_or(String::new(), |c| {
        format!(
            ", CPUs {:.0}% busy ({:.0}% other work)",
            c.busy * 100.0,
            c.foreign * 100.0
        )
    })
}
