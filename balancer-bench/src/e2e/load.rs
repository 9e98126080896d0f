//! The load of a run, from the client namespace: wrk (HTTP, keep-alive or a connection per
//! request) and the UDP generator.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use balancer_tests::{netns::Netns, util::output_with_timeout, Topology};

use super::observe::CpuMeter;
use super::{HttpResult, Params};
use crate::udpload::{self, UdpLoad, UdpResult};
use crate::Stop;

fn parse_latency_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|x| x * scale)
}

/// Parses wrk's report (with `--latency`).
pub fn parse_wrk(out: &str) -> Result<HttpResult> {
    let mut r = HttpResult::default();
    let mut rps = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_ms = parse_latency_ms(v).unwrap_or(f64::NAN);
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = parse_latency_ms(v).unwrap_or(f64::NAN);
        } else if line.contains(" requests in ") {
            r.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                let mut words = part.split_whitespace();
                let (kind, n) = (
                    words.next(),
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                );
                if let (Some(kind), Some(n)) = (kind, n) {
                    r.socket_errors += n;
                    if kind == "timeout" {
                        r.timeouts = n;
                    }
                }
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    r.rps = rps.context("no `Requests/sec:` line in wrk's output")?;
    Ok(r)
}

pub(super) struct WrkRun<'a> {
    pub(super) client: &'a Netns,
    /// The topology's namespaces (for [`CpuMeter`]).
    pub(super) ours: HashSet<u64>,
    pub(super) url: String,
    pub(super) script: Option<PathBuf>,
    pub(super) close: bool,
    pub(super) threads: usize,
    pub(super) connections: usize,
    pub(super) duration: Duration,
}

pub(super) fn wrk(run: &WrkRun<'_>) -> Result<HttpResult> {
    let mut cmd = run.client.command("wrk");
    cmd.arg(format!("-t{}", run.threads))
        .arg(format!("-c{}", run.connections))
        .arg(format!("-d{}s", run.duration.as_secs().max(1)))
        .args(["--timeout", "2s", "--latency"]);
    if let Some(script) = &run.script {
        cmd.arg("-s").arg(script);
    }
    if run.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&run.url);
    let meter = CpuMeter::start(&run.ours);
    let out = output_with_timeout(&mut cmd, run.duration + Duration::from_secs(30))?;
    let cpu = meter.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut r = parse_wrk(&stdout).with_context(|| format!("wrk printed:\n{stdout}"))?;
    r.cpu = cpu;
    Ok(r)
}

pub(super) fn udp_load(
    topo: &Topology,
    targets: Vec<SocketAddrV4>,
    p: &Params,
    stop: &Stop,
) -> Result<UdpResult> {
    let load = UdpLoad {
        targets,
        sockets: p.udp_sockets,
        window: p.udp_window,
        payload: p.udp_payload,
        duration: p.udp_duration,
    };
    topo.client()
        .in_thread(|| udpload::run(&load, || stop.stopped()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_report_is_parsed() {
        let out = "Running 10s test @ http://10.0.100.1/\n  3 threads and 33 connections\n\
                   \x20 Latency Distribution\n     50%  386.00us\n     75%  500.00us\n\
                   \x20    90%    1.00ms\n     99%    2.28ms\n\
                   \x20 123456 requests in 10.00s, 17.31MB read\n\
                   \x20 Socket errors: connect 0, read 3, write 0, timeout 2\n\
                   \x20 Non-2xx or 3xx responses: 5\nRequests/sec:  12345.67\n\
                   Transfer/sec:      1.73MB\n";
        let r = parse_wrk(out).unwrap();
        assert!((r.rps - 12345.67).abs() < 1e-6);
        assert_eq!(
            (r.requests, r.socket_errors, r.timeouts, r.non_2xx),
            (123_456, 5, 2, 5)
        );
        assert!((r.p50_ms - 0.386).abs() < 1e-9 && (r.p99_ms - 2.28).abs() < 1e-9);
        assert!(parse_wrk("no report").is_err());
    }
}
