//! `demo`: builds a test network, runs the balancer agent in it, sends 300 HTTP requests through the VIP and shows how they were spread.

use balancer_tests::util::{install_signal_handlers, interrupted};
use balancer_tests::{default_config, require_root, Agent, Topology, DEFAULT_TIMEOUT};
use std::process::ExitCode;
use std::time::Instant;

const BACKENDS: usize = 3;
const REQUESTS: usize = 300;

fn main() -> ExitCode {
    require_root();
    install_signal_handlers();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every request succeeded.
fn run() -> anyhow::Result<bool> {
    println!("==> building the test network: client | balancer | bridge | {BACKENDS} backends");
    let topo = Topology::new(BACKENDS)?;
    println!(
        "    namespaces {}-{{cli,lb,sw,b1..b{BACKENDS}}}; client {}, VIP {}",
        topo.prefix(),
        balancer_tests::CLIENT_ADDR,
        Topology::vip_http()
    );
    if interrupted() {
        println!("interrupted, cleaning up");
        return Ok(false);
    }

    println!("==> starting test servers in the backend namespaces");
    let _servers = topo.start_backends()?;
    for i in 1..=BACKENDS {
        println!(
            "    {} answering on {}",
            topo.backend_name(i),
            topo.backend_http(i)
        );
    }
    if interrupted() {
        println!("interrupted, cleaning up");
        return Ok(false);
    }

    println!("==> starting the balancer agent (maglev) in the lb namespace");
    let agent = Agent::start(&topo, &default_config(&topo, "maglev"))?;
    println!(
        "    agent running, control socket {}",
        agent.socket().display()
    );

    println!(
        "==> sending {REQUESTS} HTTP requests, each on a new connection, to {}",
        Topology::vip_http()
    );
    let client = topo.client_ns()?;
    let started = Instant::now();
    let mut tally = balancer_tests::Tally::default();
    for n in 1..=REQUESTS {
        if interrupted() {
            println!("interrupted after {} requests, cleaning up", n - 1);
            break;
        }
        tally.record(client.http_get(Topology::vip_http(), DEFAULT_TIMEOUT));
        if n % 50 == 0 {
            println!(
                "    {n}/{REQUESTS} sent ({} failed so far)",
                tally.failures.len()
            );
        }
    }
    let elapsed = started.elapsed();

    println!();
    println!("    backend  address       answers   share");
    for i in 1..=BACKENDS {
        let name = topo.backend_name(i);
        let count = tally.count(&name);
        println!(
            "    {name:<8} {:<13} {count:>7}  {:>5.1}%",
            topo.backend_addr(i).to_string(),
            100.0 * count as f64 / tally.total().max(1) as f64
        );
    }
    for (name, count) in &tally.counts {
        if topo.backend_index(name).is_none() {
            println!("    {name:<8} {:<13} {count:>7}", "(unknown)");
        }
    }
    println!("    failed   {:<13} {:>7}", "", tally.failures.len());
    println!(
        "    {} requests in {:.2} s",
        tally.total(),
        elapsed.as_secs_f64()
    );
    for msg in tally.failures.iter().take(5) {
        println!("    failure: {msg}");
    }
    println!();

    println!("==> balancer status");
    let status = agent.cli(&["status"]);
    print!("{}", status.stdout);
    if !status.success() {
        println!("`balancer status` failed: {status}");
    }

    println!("==> tearing down");
    drop(client);
    drop(agent);
    let ok = tally.failures.is_empty() && tally.total() == REQUESTS;
    if interrupted() {
        println!("demo interrupted after {} requests", tally.total());
    } else if ok {
        println!("demo finished: all {REQUESTS} requests were answered");
    } else {
        println!(
            "demo finished: {} of {REQUESTS} requests failed",
            tally.failures.len()
        );
    }
    Ok(ok)
}
