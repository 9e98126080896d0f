//! `results/bench.md` and `results/bench.png` from the figures of one run: a table for every
//! part, the targets met or missed with their margins, findings computed from the figures,
//! and a chart of the same figures.

mod chart;
mod end_to_end;
mod findings;
mod forward;
mod l7;
mod per_packet;
mod scale;
mod targets;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::time::Duration;

use crate::e2e::l7::L7;
use crate::e2e::E2e;
use crate::forward::Forward;
use crate::health::HealthCpu;
use crate::maglev::RingBuild;
use crate::scrape::ScrapeCost;
use crate::stats::Summary;
use crate::xdp::{FullTable, MapMemory, PerPacket, Profile};

pub use chart::chart;

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
    pub forward: Part<Forward>,
    pub rings: Part<Vec<RingBuild>>,
    pub memory: Part<Vec<MapMemory>>,
    pub health: Part<HealthCpu>,
    pub scrape: Part<ScrapeCost>,
    pub e2e: Part<E2e>,
    pub l7: Part<L7>,
}

/// The results of a part that ran and succeeded.
#[expect(clippy::ref_option, reason = "a part as `Results` holds it")]
fn ok<T>(p: &Part<T>) -> Option<&T> {
    p.as_ref().and_then(|r| r.as_ref().ok())
}

/// The results of a part; without them, writes why (not run, or failed) and returns `None`.
#[expect(clippy::ref_option, reason = "a part as `Results` holds it")]
fn figures<'a, T>(md: &mut String, p: &'a Part<T>) -> Option<&'a T> {
    let note = match p {
        Some(Ok(figures)) => return Some(figures),
        None => "not run".to_string(),
        Some(Err(e)) => format!("failed: {e}"),
    };
    let _ = writeln!(md, "{note}\n");
    None
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

/// `median (p10-p90)`, in whole units.
fn ns(s: &Summary) -> String {
    format!("{:.0} ({:.0}-{:.0})", s.p50, s.p10, s.p90)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `a / b` with two decimals, or `?` when either is missing or `b` is not positive.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "?".into(),
    }
}

/// A case's name as short as a chart label.
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

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
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
    let targets = targets::targets(r);
    targets::table(&mut md, &targets);
    per_packet::section(&mut md, r);
    end_to_end::section(&mut md, r);
    scale::section(&mut md, r);
    l7::section(&mut md, r);
    forward::section(&mut md, r);
    findings::section(&mut md, r, &targets);
    md
}
