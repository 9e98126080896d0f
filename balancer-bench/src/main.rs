//! `bench`: measures the balancer (XDP per-packet cost, what one CPU forwards against the
//! kernel and nftables, end to end against direct, nftables and HAProxy, the HTTP proxy
//! against HAProxy in `mode http`, ring builds, CLI latency, map memory, the cost of a
//! metrics scrape) and writes `bench.md` and `bench.png`.
//!
//! ```text
//! bench [--out DIR] [--budget SECS] [--quick] [--only PARTS] [--skip PARTS] [--rounds N]
//!       [--http-secs N] [--udp-secs N] [--peers PATHS]
//! PARTS: comma-separated of xdp, profile, fulltable, forward, maglev, memory, health, scrape,
//!        e2e, l7
//! PATHS: comma-separated of direct, direct+xdp, balancer, balancer-generic, nftables, haproxy
//!        (the e2e paths; the end-to-end targets use balancer-generic)
//! ```
//! Run it through `cargo xtask bench` (root, release build, every package installed). The
//! whole run is bounded (16 minutes, or `--budget`); Ctrl-C stops it at the next step, and
//! every namespace and process it started is removed on every exit path.

mod asm;
mod e2e;
mod forward;
mod health;
mod maglev;
mod perf;
mod replay;
mod report;
mod scrape;
mod stats;
mod stop;
mod udpload;
mod xdp;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use balancer_tests::require_root;
use balancer_tests::util::{install_signal_handlers, interrupted};

use e2e::Params;
use report::{Environment, Part, Results};
use stop::{pin, Stop};
use xdp::Plan;

const USAGE: &str =
    "usage: bench [--out DIR] [--budget SECS] [--quick] [--only PARTS] [--skip PARTS] \
                     [--rounds N] [--http-secs N] [--udp-secs N] [--peers PATHS]\n\
                     PARTS: comma-separated of xdp, profile, fulltable, forward, maglev, memory, health, \
                     scrape, e2e, l7\n\
                     PATHS: comma-separated of direct, direct+xdp, balancer, balancer-generic, \
                     nftables, haproxy";
const PARTS: [&str; 10] = [
    "xdp",
    "profile",
    "fulltable",
    "forward",
    "maglev",
    "memory",
    "health",
    "scrape",
    "e2e",
    "l7",
];
/// By default the bench stops starting new steps after this long (`--budget SECS`).
const BUDGET: Duration = Duration::from_mins(16);

struct Args {
    out: PathBuf,
    budget: Duration,
    quick: bool,
    parts: Vec<&'static str>,
    xdp: Plan,
    forward: forward::Plan,
    ring_builds: usize,
    memory_entries: Vec<u32>,
    health: health::Plan,
    scrape: scrape::Plan,
    e2e: Params,
}

fn parse_args() -> Result<Args> {
    let mut out = PathBuf::from("results");
    let mut budget = BUDGET;
    let mut quick = false;
    let mut only: Option<String> = None;
    let mut skip: Option<String> = None;
    let mut rounds = None;
    let mut http_secs = None;
    let mut udp_secs = None;
    let mut peers = e2e::Peer::ALL.to_vec();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--out" => out = PathBuf::from(value()?),
            "--budget" => {
                budget = Duration::from_secs(value()?.parse::<u64>().context("--budget")?);
            }
            "--quick" => quick = true,
            "--only" => only = Some(value()?),
            "--skip" => skip = Some(value()?),
            "--rounds" => rounds = Some(value()?.parse::<usize>().context("--rounds")?),
            "--http-secs" => http_secs = Some(value()?.parse::<u64>().context("--http-secs")?),
            "--udp-secs" => udp_secs = Some(value()?.parse::<u64>().context("--udp-secs")?),
            "--peers" => {
                peers = value()?
                    .split(',')
                    .map(|p| {
                        e2e::Peer::by_name(p.trim())
                            .with_context(|| format!("unknown path {p:?}\n{USAGE}"))
                    })
                    .collect::<Result<_>>()?;
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let list = |s: &str| -> Result<Vec<&'static str>> {
        s.split(',')
            .map(|p| {
                PARTS
                    .iter()
                    .copied()
                    .find(|k| *k == p.trim())
                    .with_context(|| format!("unknown part {p:?}\n{USAGE}"))
            })
            .collect()
    };
    let mut parts: Vec<&'static str> = match &only {
        Some(s) => list(s)?,
        None => PARTS.to_vec(),
    };
    if let Some(s) = &skip {
        let skipped = list(s)?;
        parts.retain(|p| !skipped.contains(p));
    }
    let e2e = Params {
        rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        http_duration: Duration::from_secs(http_secs.unwrap_or(if quick { 3 } else { 10 })),
        udp_duration: Duration::from_secs(udp_secs.unwrap_or(if quick { 2 } else { 5 })),
        wrk_threads: 3,
        wrk_connections: 33,
        udp_sockets: 32,
        udp_window: 128,
        udp_payload: 18,
        testsrv_check: !quick,
        cli_repeats: if quick { 3 } else { 10 },
        profile_secs: Some(if quick { 2 } else { 5 }),
        peers,
    };
    Ok(Args {
        out,
        budget,
        quick,
        parts,
        xdp: if quick {
            Plan {
                rounds: 2,
                runs: 300,
            }
        } else {
            Plan {
                rounds: 5,
                runs: 2000,
            }
        },
        forward: forward::Plan {
            rounds: if quick { 1 } else { 3 },
            window: Duration::from_secs(if quick { 1 } else { 2 }),
        },
        ring_builds: if quick { 3 } else { 11 },
        memory_entries: if quick {
            vec![xdp::default_entries()]
        } else {
            vec![1_000_000, 10_000_000]
        },
        health: health::Plan {
            backends: 1000,
            window: Duration::from_secs(if quick { 5 } else { 10 }),
        },
        scrape: scrape::Plan {
            vips: 100,
            http_vips: 8,
            backends: 1000,
            scrapes: if quick { 30 } else { 200 },
            packets: Plan {
                rounds: if quick { 3 } else { 5 },
                runs: if quick { 300 } else { 2000 },
            },
        },
        e2e,
    })
}

fn say(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn first_line(path: &str, prefix: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(prefix))
                .map(|l| l.split_once(':').map_or(l, |(_, v)| v).trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".into(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

fn environment() -> Environment {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map_or_else(
            || "?".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        );
    Environment {
        date,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "?".into(), |s| s.trim().to_string()),
        cpu: first_line("/proc/cpuinfo", "model name"),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        load_start: loadavg(),
        ..Environment::default()
    }
}

/// Runs one part when it was asked for, printing how long it took.
fn part<T>(args: &Args, name: &str, stop: &Stop, f: impl FnOnce() -> Result<T>) -> Part<T> {
    if !args.parts.contains(&name) {
        return None;
    }
    if let Err(e) = stop.check() {
        return Some(Err(format!("{e:#}")));
    }
    say(&format!("{name}..."));
    let started = Instant::now();
    let r = f().map_err(|e| format!("{e:#}"));
    match &r {
        Ok(_) => say(&format!(
            "{name}: done in {:.1} s",
            started.elapsed().as_secs_f64()
        )),
        Err(e) => say(&format!("{name}: FAILED: {e}")),
    }
    Some(r)
}

fn run(args: &Args) -> Result<bool> {
    let started = Instant::now();
    let stop = Stop::new(started + args.budget);
    let mut r = Results {
        env: environment(),
        ..Results::default()
    };
    r.per_packet = part(args, "xdp", &stop, || xdp::per_packet(args.xdp, &stop));
    r.profile = part(args, "profile", &stop, || {
        xdp::profile(if args.quick { 2 } else { 5 }, &stop)
    });
    r.full_table = part(args, "fulltable", &stop, || {
        xdp::full_table(args.xdp, &stop)
    });
    r.forward = part(args, "forward", &stop, || forward::run(args.forward, &stop));
    r.rings = part(args, "maglev", &stop, || {
        maglev::ring_builds(args.ring_builds, &stop)
    });
    r.memory = part(args, "memory", &stop, || {
        args.memory_entries
            .iter()
            .map(|&n| xdp::map_memory(n))
            .collect()
    });
    r.health = part(args, "health", &stop, || {
        health::measure(args.health, &stop)
    });
    r.scrape = part(args, "scrape", &stop, || {
        scrape::measure(args.scrape, &stop)
    });
    r.e2e = part(args, "e2e", &stop, || e2e::run(&args.e2e, &stop));
    r.l7 = part(args, "l7", &stop, || e2e::l7::run(&args.e2e, &stop));
    r.env.load_end = loadavg();
    r.env.elapsed = started.elapsed();

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let md_path = args.out.join("bench.md");
    let png_path = args.out.join("bench.png");
    let md = report::markdown(&r);
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let chart = report::chart(&r, &png_path);
    println!("{md}");
    say(&format!("wrote {}", md_path.display()));
    match chart {
        Ok(()) => say(&format!("wrote {}", png_path.display())),
        Err(e) => say(&format!("could not draw {}: {e:#}", png_path.display())),
    }
    let failed = [
        r.per_packet.as_ref().map(std::result::Result::is_err),
        // The profile is optional (perf may be missing): it does not fail the run.
        r.full_table.as_ref().map(std::result::Result::is_err),
        r.forward.as_ref().map(std::result::Result::is_err),
        r.rings.as_ref().map(std::result::Result::is_err),
        r.memory.as_ref().map(std::result::Result::is_err),
        r.health.as_ref().map(std::result::Result::is_err),
        r.scrape.as_ref().map(std::result::Result::is_err),
        r.e2e.as_ref().map(std::result::Result::is_err),
        r.l7.as_ref().map(std::result::Result::is_err),
    ]
    .contains(&Some(true));
    Ok(!failed && !interrupted())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    require_root();
    install_signal_handlers();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            say("some parts failed or were interrupted (see the report)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
