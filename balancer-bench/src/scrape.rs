//! Cost of a Prometheus scrape: the real agent (release build) with issue 21's 100 VIPs (L4
//! and HTTP-mode ones) and 1000 backends serves `/metrics` on its telemetry listener; the bench times whole scrapes (connect to last byte) from inside
//! the lb namespace, reads the agent's CPU over them, and times an established TCP
//! packet through `BPF_PROG_TEST_RUN` with and without a scrape loop running.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use balancer_common::MAX_VIPS;
use balancer_tests::{agent::agent_and_nat, Agent, Topology};

use crate::health::{process_jiffies, ticks_per_sec};
use crate::stats::{summarize, Summary};
use crate::{xdp, Stop};

const LISTEN: &str = "127.0.0.1:9901";
/// The first backend: 10.0.8.1 onwards (nothing answers there: no checks are configured).
const FIRST_BACKEND: u32 = u32::from_be_bytes([10, 0, 8, 1]);
/// The HTTP-mode VIPs listen on one address, one port each from here.
const FIRST_HTTP_PORT: u16 = 8000;

/// How the measurement is made.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub vips: usize,
    /// Of `vips`, those in HTTP mode (the rest are L4).
    pub http_vips: usize,
    pub backends: usize,
    pub scrapes: usize,
    /// The per-packet runs with and without scrapes.
    pub packets: xdp::Plan,
}

/// What the bench measured.
#[derive(Clone, Debug)]
pub struct ScrapeCost {
    pub vips: usize,
    pub http_vips: usize,
    pub backends: usize,
    /// Size of one exposition, and its series (sample lines).
    pub bytes: usize,
    pub series: usize,
    /// Whole scrapes, in ms.
    pub ms: Summary,
    pub p99_ms: f64,
    /// The agent process's CPU (user + system) per scrape, in ms.
    pub agent_cpu_ms: f64,
    /// An established TCP packet through the program, without and with a scrape loop
    /// (back to back scrapes) running, in ns per run.
    pub packet_quiet: Summary,
    pub packet_scraping: Summary,
}

fn config(topo: &Topology, plan: Plan) -> String {
    let l4 = plan.vips - plan.http_vips;
    let mut text = agent_and_nat(topo);
    let _ = writeln!(text, "\n[telemetry]\nlisten = \"{LISTEN}\"\n");
    for v in 0..plan.vips {
        let backends: Vec<String> = (v..plan.backends)
            .step_by(plan.vips)
            .map(|b| {
                let addr = std::net::Ipv4Addr::from(FIRST_BACKEND + b as u32);
                format!("{{ address = \"{addr}\", port = 80 }}")
            })
            .collect();
        let _ = writeln!(
            text,
            "[[pool]]\nname = \"p{v}\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        let (address, port, mode) = if v < l4 {
            (format!("10.0.100.{}", v + 1), 80, "l4")
        } else {
            ("10.0.101.1".to_owned(), FIRST_HTTP_PORT + v as u16, "http")
        };
        let _ = writeln!(
            text,
            "[[vip]]\nname = \"v{v}\"\naddress = \"{address}\"\nport = {port}\n\
             protocol = \"tcp\"\nmode = \"{mode}\"\nscheduler = \"round-robin\"\npool = \"p{v}\"\n"
        );
    }
    text
}

/// One `GET /metrics` on a fresh connection, as a scraper without keep-alive makes it.
fn scrape(to: SocketAddr) -> Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).context("connecting")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("an answer without a head")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "/metrics answered {head}");
    Ok(body.to_owned())
}

/// Scrapes back to back, in the lb namespace, while `busy` is set, until `done`.
fn scrape_loop(
    ns: std::path::PathBuf,
    to: SocketAddr,
    busy: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<Result<usize>> {
    thread::spawn(move || {
        balancer_tests::netns::enter_netns_path(&ns)?;
        let mut scrapes = 0;
        while !done.load(Ordering::Relaxed) {
            if busy.load(Ordering::Relaxed) {
                scrape(to)?;
                scrapes += 1;
            } else {
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(scrapes)
    })
}

/// The timed scrapes (ms), the last exposition, the agent's (user, system) jiffies before
/// and after them.
type Timed = (Vec<f64>, String, (u64, u64), (u64, u64));

pub fn measure(plan: Plan, stop: &Stop) -> Result<ScrapeCost> {
    ensure!(
        plan.vips <= MAX_VIPS as usize && plan.http_vips <= plan.vips,
        "at most {MAX_VIPS} VIPs, of which HTTP at most all"
    );
    let topo = Topology::new(1)?;
    let agent = Agent::start(&topo, &config(&topo, plan))?;
    let pid = agent.pid().context("the agent has no pid")?;
    let to: SocketAddr = LISTEN.parse().expect("a socket address");
    let ns = topo.lb().path();

    // Timed scrapes, one after another, from a thread in the lb namespace.
    let timed = {
        let ns = ns.clone();
        let scrapes = plan.scrapes;
        thread::spawn(move || -> Result<Timed> {
            balancer_tests::netns::enter_netns_path(&ns)?;
            let mut text = scrape(to).context("the first scrape")?; // warm-up
            let before = process_jiffies(pid)?;
            let mut ms = Vec::with_capacity(scrapes);
            for _ in 0..scrapes {
                let started = Instant::now();
                text = scrape(to)?;
                ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            Ok((ms, text, before, process_jiffies(pid)?))
        })
    };
    let (ms, text, (u0, s0), (u1, s1)) = timed
        .join()
        .map_err(|_| anyhow::anyhow!("the scrape thread panicked"))??;
    let weights = text
        .lines()
        .filter(|l| l.starts_with("balancer_backend_weight{"))
        .count();
    ensure!(
        weights == plan.backends,
        "/metrics has {weights} backends, not {}",
        plan.backends
    );
    let cpu_ms = ((u1 - u0) + (s1 - s0)) as f64 / ticks_per_sec() * 1e3;

    stop.check()?;
    let busy = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let looping = scrape_loop(ns, to, Arc::clone(&busy), Arc::clone(&done));
    let packets = xdp::established_tcp_while(plan.packets, &busy, stop);
    done.store(true, Ordering::Relaxed);
    let looped = looping
        .join()
        .map_err(|_| anyhow::anyhow!("the scrape loop panicked"))??;
    let (packet_quiet, packet_scraping) = packets?;
    ensure!(looped > 0, "the scrape loop never scraped");

    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1];
    Ok(ScrapeCost {
        vips: plan.vips,
        http_vips: plan.http_vips,
        backends: plan.backends,
        bytes: text.len(),
        series: text.lines().filter(|l| !l.starts_with('#')).count(),
        ms: summarize(&ms),
        p99_ms: p99,
        agent_cpu_ms: cpu_ms / plan.scrapes as f64,
        packet_quiet,
        packet_scraping,
    })
}
