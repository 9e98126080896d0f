//! What the bench reads around a run: how busy the CPUs were and how much of it was other
//! work, the TCP counters (nstat) of the client and the backends, the TIME-WAIT sockets
//! removed before each run, and the agent's counters.

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, Result};
use balancer_tests::{netns::Netns, Agent, Topology};

use crate::say;

/// TCP counters that tell why connections stall (SYN retransmits, resets, TIME-WAIT
/// and listen-queue trouble, challenge ACKs).
const TCP_COUNTERS: &[&str] = &[
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpOutRsts",
    "TcpRetransSegs",
    "TcpExtTCPSynRetrans",
    "TcpExtTCPChallengeACK",
    "TcpExtPAWSEstab",
    "TcpExtPAWSActive",
    "TcpExtPAWSTimewait",
    "TcpExtPAWSOldAck",
    "TcpExtTCPSYNChallenge",
    "TcpExtTCPACKSkippedPAWS",
    "TcpExtTW",
    "TcpExtTWRecycled",
    "TcpExtTWKilled",
    "TcpExtTCPTimeWaitOverflow",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDrop",
    "TcpExtTCPAbortOnData",
    "TcpExtTCPACKSkippedSynRecv",
    "TcpExtTCPACKSkippedTimeWait",
    "TcpExtTCPACKSkippedChallenge",
];

/// `nstat` absolute counters of a namespace.
fn nstat(ns: &Netns) -> HashMap<String, u64> {
    let Ok(out) = ns.run(&["nstat", "-asz", "--json"]) else {
        return HashMap::new();
    };
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.get("kernel").cloned())
        .and_then(|k| k.as_object().cloned())
        .map(|k| {
            k.into_iter()
                .filter_map(|(name, v)| Some((name, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the TCP sockets in TIME-WAIT from every namespace of the topology
/// (`ss -K`, the kernel's `SOCK_DESTROY`) and returns how many there were.
///
/// A conn-per-request run leaves a great many of them on the backends. For the next 60 s
/// they lengthen the chains of the kernel's connection hash (one table, shared by all
/// namespaces), and their timers fire during the runs that follow: without this, a path
/// measured later in a round ran slower than the same path measured first.
fn forget_time_wait(topo: &Topology) -> Result<usize> {
    let mut killed = 0;
    for ns in namespaces(topo) {
        let out = ns
            .run(&["ss", "-K", "-H", "-t", "-n", "state", "time-wait"])
            .with_context(|| format!("removing TIME-WAIT sockets in {}", ns.name()))?;
        killed += out.lines().filter(|l| !l.trim().is_empty()).count();
    }
    Ok(killed)
}

/// Before a measured run: no TIME-WAIT sockets left by earlier runs ([`forget_time_wait`]);
/// a failure is the case's error.
pub(super) fn start_clean(topo: &Topology, errors: &mut Vec<String>) {
    match forget_time_wait(topo) {
        Ok(n) => say(&format!(
            "    removed {n} TIME-WAIT sockets of earlier runs"
        )),
        Err(e) => errors.push(format!("{e:#}")),
    }
}

/// The TCP counters of the client and of all backends (summed).
pub(super) fn tcp_snapshot(topo: &Topology) -> [HashMap<String, u64>; 2] {
    let mut backends: HashMap<String, u64> = HashMap::new();
    for b in topo.backends() {
        for (k, v) in nstat(b) {
            *backends.entry(k).or_default() += v;
        }
    }
    [nstat(topo.client()), backends]
}

pub(super) fn tcp_deltas(
    a: &[HashMap<String, u64>; 2],
    b: &[HashMap<String, u64>; 2],
) -> Vec<(&'static str, String, u64)> {
    let mut out = Vec::new();
    for (i, side) in ["client", "backends"].into_iter().enumerate() {
        for name in TCP_COUNTERS {
            let d = b[i]
                .get(*name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(a[i].get(*name).copied().unwrap_or(0));
            if d > 0 {
                out.push((side, name.to_string(), d));
            }
        }
    }
    out
}

/// (busy, total) jiffies from /proc/stat: of all CPUs (`None`, the first line) or of one.
pub fn cpu_jiffies(cpu: Option<usize>) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let label = cpu.map_or_else(|| "cpu".to_string(), |c| format!("cpu{c}"));
    let fields: Vec<u64> = stat
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut words| (words.next() == Some(label.as_str())).then_some(words))?
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime (jiffies) of every process that is not the bench's: neither this
/// process nor one inside the topology's namespaces.
fn foreign_jiffies(ours: &HashSet<u64>) -> HashMap<u32, u64> {
    let me = std::process::id();
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let ns = std::fs::read_link(entry.path().join("ns/net"))
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("net:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            });
        if ns.is_some_and(|ns| ours.contains(&ns)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) in parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            continue;
        };
        if let (Ok(u), Ok(s)) = (u.parse::<u64>(), s.parse::<u64>()) {
            out.insert(pid, u + s);
        }
    }
    out
}

/// How busy the machine's CPUs were during a run, and how much of that was not the bench.
pub(super) struct CpuMeter {
    ours: HashSet<u64>,
    stat: Option<(u64, u64)>,
    foreign: HashMap<u32, u64>,
}

/// Busy share of all CPUs, and the share used by processes outside the bench.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub busy: f64,
    pub foreign: f64,
}

impl CpuMeter {
    pub(super) fn start(ours: &HashSet<u64>) -> CpuMeter {
        CpuMeter {
            ours: ours.clone(),
            stat: cpu_jiffies(None),
            foreign: foreign_jiffies(ours),
        }
    }

    pub(super) fn stop(self) -> Option<CpuUse> {
        let (busy1, total1) = cpu_jiffies(None)?;
        let (busy0, total0) = self.stat?;
        let total = total1.checked_sub(total0).filter(|&t| t > 0)? as f64;
        let foreign: u64 = foreign_jiffies(&self.ours)
            .iter()
            .map(|(pid, &j)| j.saturating_sub(self.foreign.get(pid).copied().unwrap_or(0)))
            .sum();
        Some(CpuUse {
            busy: busy1.saturating_sub(busy0) as f64 / total,
            foreign: (foreign as f64 / total).min(1.0),
        })
    }
}

/// The network-namespace inodes of the topology.
/// Every namespace of the topology.
fn namespaces(topo: &Topology) -> impl Iterator<Item = &Netns> {
    [topo.client(), topo.lb(), topo.switch()]
        .into_iter()
        .chain(topo.backends())
}

pub(super) fn namespace_inodes(topo: &Topology) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt as _;
    namespaces(topo)
        .filter_map(|ns| std::fs::metadata(ns.path()).ok().map(|m| m.ino()))
        .collect()
}

/// The balancer's non-zero counters other than the plain verdicts.
pub fn agent_counters(agent: &Agent) -> Vec<(String, u64)> {
    let out = agent.cli(&["status", "--json"]);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    json.get("global")
        .and_then(|g| g.as_object())
        .map(|g| {
            g.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(_, v)| *v > 0)
                .collect()
        })
        .unwrap_or_default()
}
