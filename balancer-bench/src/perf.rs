//! `perf record` around a measurement and a flat profile by symbol, to say where time goes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result};

/// Whether `perf` can be run at all.
pub fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What to sample.
#[derive(Clone, Copy)]
pub enum Scope {
    /// One process (all its threads).
    Pid(u32),
    /// Every CPU.
    System,
}

/// A running `perf record ... -- sleep SECS`; it ends by itself.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

/// Starts `perf record` for `secs` seconds, writing `dir/name.data`.
pub fn record(scope: Scope, secs: u64, dir: &Path, name: &str) -> Result<Recording> {
    let data = dir.join(format!("{name}.data"));
    let mut cmd = Command::new("perf");
    cmd.arg("record").arg("-o").arg(&data);
    match scope {
        Scope::Pid(pid) => cmd.args(["-p", &pid.to_string()]),
        Scope::System => cmd.arg("-a"),
    };
    let child = cmd
        .args(["--", "sleep", &secs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    Ok(Recording { child, data })
}

impl Recording {
    /// Whether the recording has ended (successfully or not).
    pub fn done(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Waits for the end and returns the flat profile by symbol (and by command when
    /// `by_comm`), largest first, the `top` first ones.
    pub fn finish(mut self, top: usize, by_comm: bool) -> Result<Vec<Sample>> {
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "perf record failed ({status})");
        let out = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&self.data)
            .args([
                "--stdio",
                "--sort",
                if by_comm { "comm,sym" } else { "sym" },
            ])
            .args(["--percent-limit", "0.05"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .context("running perf report")?;
        Ok(parse_report(
            &String::from_utf8_lossy(&out.stdout),
            top,
            by_comm,
        ))
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One line of a flat profile.
#[derive(Clone, Debug)]
pub struct Sample {
    pub percent: f64,
    /// The command (thread name), when the report was sorted by it.
    pub comm: Option<String>,
    pub symbol: String,
    pub kernel: bool,
}

fn parse_report(text: &str, top: usize, by_comm: bool) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (pct, rest) = l.trim().split_once('%')?;
            let mut rest = rest.trim();
            let mut comm = None;
            if by_comm {
                let (c, r) = rest.split_once(char::is_whitespace)?;
                comm = Some(c.to_string());
                rest = r.trim();
            }
            let kernel = rest.starts_with("[k]");
            let symbol = rest
                .trim_start_matches("[k]")
                .trim_start_matches("[.]")
                .trim()
                .to_string();
            Some(Sample {
                percent: pct.trim().parse().ok()?,
                comm,
                symbol,
                kernel,
            })
        })
        .take(top)
        .collect()
}

/// Whether `symbol` is JIT code of a BPF program (`bpf_prog_<16 hex digits>_<name>`).
pub fn is_bpf_jit(symbol: &str) -> bool {
    symbol
        .strip_prefix("bpf_prog_")
        .and_then(|rest| rest.get(..17))
        .is_some_and(|tag| tag.ends_with('_') && tag[..16].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A coarse category of a symbol in a profile of `BPF_PROG_TEST_RUN` calls.
pub fn test_run_category(symbol: &str) -> &'static str {
    let s = symbol;
    if is_bpf_jit(s) {
        "XDP program (JIT code)"
    } else if s.contains("fib") || s.contains("neigh") {
        "FIB lookup (helper)"
    } else if s.contains("htab")
        || s.contains("lookup_nulls")
        || s.contains("lru")
        || s.contains("jhash")
    {
        "BPF map lookups (helpers)"
    } else if s.contains("redirect") || s.contains("ktime_get_coarse") {
        "other helpers"
    } else {
        "test-run harness (syscall, copies, timer)"
    }
}

/// Which part of an end-to-end run a command (thread name) belongs to; `None` for
/// processes that are not part of the bench (other work on a shared machine).
pub fn bench_process(comm: &str) -> Option<&'static str> {
    match comm {
        "wrk" => Some("wrk (client)"),
        "nginx" => Some("nginx (backends)"),
        "testsrv" => Some("testsrv (UDP echo)"),
        "haproxy" => Some("haproxy"),
        // tokio's worker threads: "tokio-rt-worker" now, "tokio-runtime-worker" (cut to
        // 15 bytes) in older releases.
        "balancer" | "tokio-rt-worker" | "tokio-runtime-w" => Some("balancer agent"),
        "bench" => Some("bench (UDP generator)"),
        "swapper" => Some("idle CPU and softirq on it (swapper)"),
        c if c.starts_with("ksoftirqd") => Some("ksoftirqd"),
        _ => None,
    }
}

/// A coarse category of a kernel or user symbol, for system-wide profiles of the packet path.
pub fn category(symbol: &str) -> &'static str {
    let s = symbol;
    if s.contains("idle")
        || s.contains("safe_halt")
        || s.contains("cpu_startup_entry")
        || s == "poll_idle"
    {
        "idle (CPU not busy)"
    } else if s.contains("pp_cow") || s.contains("page_pool") || s.contains("convert_skb_to_xdp") {
        "veth XDP: skb copied into an XDP buffer"
    } else if s.contains("build_skb") || s.contains("xdp_build_skb") {
        "veth XDP: skb rebuilt from an XDP frame"
    } else if is_bpf_jit(s) {
        "XDP program (JIT code)"
    } else if s.contains("fib") || s.contains("neigh") {
        "FIB lookup"
    } else if s.contains("htab")
        || s.contains("lookup_nulls")
        || s.contains("lru")
        || s.contains("jhash")
    {
        "BPF map lookups"
    } else if s.contains("xdp") || s.contains("redirect") || s.contains("veth") {
        "veth / XDP plumbing"
    } else if s.contains("ktime") || s.contains("read_tsc") {
        "clock reads"
    } else if s.contains("copy")
        || s.contains("memcpy")
        || s.contains("memset")
        || s.contains("memmove")
    {
        "copies"
    } else if s.contains("alloc") || s.contains("free") || s.contains("page") || s.contains("kmem")
    {
        "memory allocation"
    } else if s.contains("tcp") || s.contains("inet") || s.contains("ip_") || s.contains("__ip") {
        "TCP/IP stack"
    } else if s.contains("nf_") || s.contains("nft_") || s.contains("conntrack") {
        "netfilter"
    } else {
        "other"
    }
}

/// Shares (%) of `samples` summed by `key`, largest first.
pub fn shares(
    samples: &[Sample],
    key: impl Fn(&Sample) -> &'static str,
) -> Vec<(&'static str, f64)> {
    let mut sums: Vec<(&'static str, f64)> = Vec::new();
    for s in samples {
        let k = key(s);
        match sums.iter_mut().find(|(c, _)| *c == k) {
            Some((_, v)) => *v += s.percent,
            None => sums.push((k, s.percent)),
        }
    }
    sums.sort_by(|a, b| b.1.total_cmp(&a.1));
    sums
}

/// Shares summed by `category` of the symbol, largest first.
pub fn by_category(
    samples: &[Sample],
    category: fn(&str) -> &'static str,
) -> Vec<(&'static str, f64)> {
    shares(samples, |s| category(&s.symbol))
}

/// The group of processes a sample of a system-wide profile belongs to.
pub const OTHER_PROCESSES: &str = "other processes on the machine";

/// Shares summed by process group ([`bench_process`], or [`OTHER_PROCESSES`]), largest first.
pub fn by_process(samples: &[Sample]) -> Vec<(&'static str, f64)> {
    shares(samples, |s| {
        s.comm
            .as_deref()
            .and_then(bench_process)
            .unwrap_or(OTHER_PROCESSES)
    })
}

/// The samples of the bench's own processes (and the idle/softirq context).
pub fn own_samples(samples: &[Sample]) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.comm.as_deref().and_then(bench_process).is_some())
        .cloned()
        .collect()
}
