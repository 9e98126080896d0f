//! The report of synthetic runs: sections that did not run, and findings computed from the
//! figures (rankings, ratios, margins).

use std::time::Duration;

use super::{markdown, Results};
use crate::e2e::l7::{Case, IdleMemory, L7Run, Proxy, L7};
use crate::e2e::{CaseRun, E2e, HttpResult, Params, Peer};
use crate::forward::{Cell, Forward, Path, Sample, FLOWS};
use crate::stats::summarize;
use crate::xdp::{CaseResult, Measured, PerPacket, Plan, ProgramFacts};

/// A case whose rounds had these medians.
fn case(name: &'static str, verdict: &'static str, rounds: &[f64]) -> CaseResult {
    CaseResult {
        name,
        verdict,
        summary: summarize(rounds),
        round_medians: rounds.to_vec(),
        unexpected: 0,
    }
}

fn measured(floor: &[f64], cases: Vec<CaseResult>) -> Measured {
    Measured {
        floor: case("empty XDP program (floor)", "XDP_PASS", floor),
        cases,
    }
}

const EST: &str = "TCP established (conn-table hit)";

fn per_packet() -> PerPacket {
    PerPacket {
        plan: Plan {
            rounds: 3,
            runs: 10,
        },
        single: measured(
            &[30.0, 31.0, 29.0],
            vec![
                case(EST, "XDP_REDIRECT", &[130.0, 131.0, 129.0]),
                case(
                    "TCP SYN, new flow (Maglev, SNAT port)",
                    "XDP_REDIRECT",
                    &[330.0, 331.0, 329.0],
                ),
            ],
        ),
        replayed: measured(
            &[10.0, 10.0, 10.0],
            vec![
                case(EST, "XDP_REDIRECT", &[70.0, 72.0, 68.0]),
                case(
                    "NAT reply (backend to client)",
                    "XDP_REDIRECT",
                    &[90.0, 90.0, 90.0],
                ),
                case("not for a VIP (XDP_PASS)", "XDP_PASS", &[15.0, 15.0, 15.0]),
            ],
        ),
        repeat: 10_000,
        replay_plan: Plan { rounds: 3, runs: 4 },
        many: measured(
            &[30.0, 30.0, 30.0],
            vec![
                case(
                    "UDP established, 1 flow",
                    "XDP_REDIRECT",
                    &[90.0, 90.0, 90.0],
                ),
                case(
                    "UDP established, 1M flows (random order)",
                    "XDP_REDIRECT",
                    &[330.0, 330.0, 330.0],
                ),
            ],
        ),
        program: ProgramFacts::default(),
    }
}

fn e2e(keepalive: &[(Peer, f64)]) -> E2e {
    let runs = keepalive
        .iter()
        .map(|&(peer, rps)| CaseRun {
            keepalive: Some(HttpResult {
                rps,
                ..HttpResult::default()
            }),
            ..CaseRun::new(peer, 0)
        })
        .collect();
    E2e {
        params: Params {
            rounds: 1,
            http_duration: Duration::from_secs(1),
            udp_duration: Duration::from_secs(1),
            wrk_threads: 1,
            wrk_connections: 1,
            udp_sockets: 1,
            udp_window: 1,
            udp_payload: 18,
            testsrv_check: false,
            cli_repeats: 1,
            profile_secs: None,
            peers: Peer::ALL.to_vec(),
        },
        runs,
        testsrv_direct: None,
        cli: None,
        cli_error: None,
        backends: 3,
    }
}

#[test]
fn a_run_that_measured_nothing_says_so() {
    let md = markdown(&Results::default());
    assert!(md.contains("## 1. XDP program cost per packet"), "{md}");
    assert!(
        md.contains("## 2. End to end in namespaces\n\nnot run"),
        "{md}"
    );
    assert!(md.contains("### Map memory\n\nnot run"), "{md}");
    assert!(
        md.contains("- 0 of 13 targets met, 0 missed, 13 not measured."),
        "{md}"
    );
    assert!(
        !md.contains("### XDP per packet"),
        "no findings without figures"
    );
}

#[test]
fn per_packet_findings_come_from_the_figures() {
    let md = markdown(&Results {
        per_packet: Some(Ok(per_packet())),
        ..Results::default()
    });
    // Nets per round: established 60, 62, 58 (median 60), NAT reply 80, not a VIP 5.
    assert!(
        md.contains(
            "In bursts, net of the floor, costliest first: NAT reply 80 ns, TCP established \
             60 ns, not a VIP (pass) 5 ns."
        ),
        "{md}"
    );
    assert!(md.contains("**met** (40 ns to spare)"), "{md}");
    assert!(
        md.contains("- 1 of 13 targets met, 0 missed, 12 not measured."),
        "{md}"
    );
    assert!(
        md.contains("A new flow's SYN costs 3.0x an established TCP packet"),
        "{md}"
    );
    assert!(
        md.contains("net: TCP established 100 against 60 ns (1.7x)."),
        "{md}"
    );
    assert!(
        md.contains("Established TCP in bursts, net per round: 58 to 62 ns over 3 rounds."),
        "{md}"
    );
    // Many flows: 300 ns net against one flow's 60.
    assert!(
        md.contains("- UDP established, 1M flows (random order): 5.00 x the net cost of one flow"),
        "{md}"
    );
    assert!(md.contains("the redirect and the transmit"), "{md}");
}

#[test]
fn end_to_end_findings_rank_the_paths_and_size_the_gaps() {
    let md = markdown(&Results {
        e2e: Some(Ok(e2e(&[
            (Peer::Direct, 30_000.0),
            (Peer::Nftables, 28_000.0),
            (Peer::BalancerGeneric, 21_000.0),
        ]))),
        ..Results::default()
    });
    assert!(
        md.contains(
            "HTTP keep-alive req/s, best rounds, highest first: direct 30.0k, nftables 28.0k \
             (0.93x direct), balancer-generic 21.0k (0.70x direct)."
        ),
        "{md}"
    );
    // 1.3 x 28000 / 30000 = 1.21 of direct asked, 0.70 reached: 21000 / 36400 = 58%.
    assert!(
        md.contains(
            "1.3x nftables (keep-alive) needs 1.21 of direct; balancer-generic reached 0.70, \
             58% of that."
        ),
        "{md}"
    );
    assert!(
        md.contains("- Missed: HTTP keep-alive req/s through balancer vs nftables (goal >= 1.3x)"),
        "{md}"
    );
}

/// The HTTP proxy comparison: balancer and HAProxy (2 threads) in two rounds, every case.
fn l7(balancer: [f64; 2], haproxy: [f64; 2]) -> L7 {
    let run = |proxy, round: usize, rps: f64, idle_bytes: u64| L7Run {
        proxy,
        round,
        http: Case::ALL
            .iter()
            .map(|&c| {
                let h = HttpResult {
                    rps,
                    p50_ms: 1.0,
                    p99_ms: 100_000.0 / rps,
                    ..HttpResult::default()
                };
                (c, h)
            })
            .collect(),
        idle: Some(IdleMemory {
            connections: 1000,
            rss_before: 1 << 20,
            rss_after: (1 << 20) + idle_bytes * 1000,
            upstream: 2,
        }),
        errors: Vec::new(),
        counters: None,
        profile: None,
    };
    let mut runs = Vec::new();
    for round in 0..2 {
        runs.push(run(Proxy::Balancer, round, balancer[round], 30_000));
        runs.push(run(Proxy::REFERENCE, round, haproxy[round], 10_000));
    }
    L7 {
        params: e2e(&[]).params,
        runs,
    }
}

#[test]
fn http_proxy_targets_compare_medians_with_haproxy() {
    let md = markdown(&Results::default());
    assert!(
        md.contains("## 4. HTTP proxy (L7) beside HAProxy\n\nnot run"),
        "{md}"
    );
    assert!(
        !md.contains("HTTP proxy, keep-alive"),
        "no L7 targets unless asked: {md}"
    );

    // Medians: balancer 9000, HAProxy 10000 req/s; p99 11.25 against 10.10 ms.
    let md = markdown(&Results {
        l7: Some(Ok(l7([8000.0, 10_000.0], [9000.0, 11_000.0]))),
        ..Results::default()
    });
    assert!(
        md.contains(
            "| HTTP proxy, keep-alive, small: req/s vs HAProxy (2 threads) | >= 1.0x | 0.90x \
             (medians) | **missed** by 0.10 |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| keep-alive, small | 9.0k (8.0k-10.0k) | n/a | 10.0k (9.0k-11.0k) | 0.90 |"),
        "{md}"
    );
    assert!(
        md.contains("p99 latency vs HAProxy (2 threads) | <= 1.0x | 1.11x"),
        "{md}"
    );
    // 30000 against 10000 bytes per idle connection: 3.0x, over the 2.0x allowed.
    assert!(
        md.contains(
            "| HTTP proxy: memory per idle connection vs HAProxy (2 threads) | <= 2.0x | 3.00x \
             (medians) | **missed** by 1.00 |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| balancer (2 threads) | 1.0 MiB | 30000 | 2 |"),
        "{md}"
    );
}

#[test]
fn the_scrape_target_is_judged_at_p99() {
    let scrape = |p99_ms| crate::scrape::ScrapeCost {
        vips: 100,
        http_vips: 8,
        backends: 1000,
        bytes: 400 * 1024,
        series: 9000,
        ms: summarize(&[4.0, 5.0, 6.0]),
        p99_ms,
        agent_cpu_ms: 3.5,
        packet_quiet: summarize(&[100.0]),
        packet_scraping: summarize(&[110.0]),
    };
    let md = markdown(&Results {
        scrape: Some(Ok(scrape(8.0))),
        ..Results::default()
    });
    assert!(
        md.contains(
            "| 5.0 ms median, 8.0 ms p99 (3 scrapes, 100 VIPs, 1000 backends); an established \
             packet 100 ns without scrapes, 110 ns with | **met** (42.0 ms to spare at p99) |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| established TCP packet, scrapes running: median (p10-p90) ns | 110 (110-110) |"
        ),
        "{md}"
    );
    let md = markdown(&Results {
        scrape: Some(Ok(scrape(61.0))),
        ..Results::default()
    });
    assert!(md.contains("**missed** by 11.0 ms at p99"), "{md}");
    let md = markdown(&Results {
        scrape: Some(Ok(crate::scrape::ScrapeCost {
            vips: 32,
            ..scrape(8.0)
        })),
        ..Results::default()
    });
    assert!(
        md.contains("| not measured (at 32 VIPs and 1000 backends, below the target's scale) |"),
        "{md}"
    );
}

fn forward() -> Forward {
    let cell = |path, flows, pps: &[f64], busy: f64| Cell {
        path,
        flows,
        samples: pps.iter().map(|&pps| Sample { pps, busy }).collect(),
    };
    let mut cells = Vec::new();
    for flows in FLOWS {
        cells.push(cell(
            Path::BalancerSkb,
            Some(flows),
            &[1.2e6, 1.3e6, 1.1e6],
            0.98,
        ));
        cells.push(cell(Path::BalancerDriver, Some(flows), &[1.0e6], 0.99));
        cells.push(cell(Path::Kernel, Some(flows), &[2.0e6], 0.97));
        cells.push(cell(Path::Nftables, Some(flows), &[0.8e6], 0.98));
    }
    cells.push(cell(Path::BalancerSkb, None, &[500e3], 0.99));
    cells.push(cell(Path::Nftables, None, &[250e3], 0.5));
    Forward {
        plan: crate::forward::Plan {
            rounds: 3,
            window: Duration::from_secs(2),
        },
        cells,
        conntrack_max: Some(262_144),
    }
}

#[test]
fn the_forwarder_bound_tables_give_rates_ratios_and_who_was_the_limit() {
    let md = markdown(&Results {
        forward: Some(Ok(forward())),
        ..Results::default()
    });
    assert!(md.contains("## 5. Forwarder-bound"), "{md}");
    assert!(
        md.contains("| balancer, skb mode | 1.20M (1.10M-1.30M) | 1.20M (1.10M-1.30M) |"),
        "{md}"
    );
    // 98% of a second over 1.2M packets.
    assert!(md.contains("| balancer, skb mode | 817 ns (98%) |"), "{md}");
    assert!(
        md.contains(
            "| balancer, skb mode / kernel forwarding (routing, no NAT) | 0.60 | 0.60 | 0.60 | 0.60 |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| balancer, skb mode / nftables DNAT + masquerade | 1.50 |"),
        "{md}"
    );
    assert!(
        md.contains("| balancer, skb mode | 500.0k (500.0k-500.0k) | 1980 ns | 99% | 2.00 |"),
        "{md}"
    );
    assert!(
        md.contains(
            "**Not forwarder-bound** (CPU 1 under 90% busy, so the figure is a floor): \
                     nftables DNAT + masquerade, new flows (50% busy)."
        ),
        "{md}"
    );
}
