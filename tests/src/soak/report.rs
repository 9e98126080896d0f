//! What a soak found: requests by stream and by whether they failed before or after a
//! fault was detected, long-lived flows and what broke them, the faults, and the agent's
//! memory and descriptors over time; and the targets it missed.

use std::{collections::BTreeMap, fmt, time::Duration};

use super::{
    faults::{Fault, FaultKind},
    load::{Flow, Request, Stream, Traffic, Transport},
    usage::Sample,
};

/// After a fault is over, a flow that breaks within this long is still put down to it (a
/// TCP flow notices at its next request, which may wait for retransmissions).
const FLOW_GRACE: Duration = Duration::from_secs(1);
/// An agent's descriptors may grow this much over its life before the soak calls it a leak.
pub const FD_SLACK: usize = 16;

/// What broke a long-lived flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// Its own backend was killed: expected.
    ItsBackendKilled,
    /// Another fault was in progress.
    During(FaultKind),
    /// No fault was in progress.
    Unexplained,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::ItsBackendKilled => f.write_str("its backend was killed (expected)"),
            Cause::During(kind) => write!(f, "during \"{kind}\""),
            Cause::Unexplained => f.write_str("while no fault was in progress"),
        }
    }
}

pub struct Report {
    pub duration: Duration,
    pub backends: usize,
    pub faults: Vec<Fault>,
    pub traffic: Traffic,
    pub usage: Vec<Sample>,
    /// The logs of every agent the soak ran, oldest first (to print when a target is missed).
    pub agent_logs: String,
}

impl Report {
    /// The fault whose undetected phase `request` overlapped, if any.
    fn before_detection(&self, request: &Request) -> Option<&Fault> {
        self.faults
            .iter()
            .find(|f| request.at <= f.detected && request.end >= f.start)
    }

    /// Failed requests that no undetected fault explains.
    pub fn failed_after_detection(&self) -> Vec<&Request> {
        self.traffic
            .requests
            .iter()
            .filter(|r| r.error.is_some() && self.before_detection(r).is_none())
            .collect()
    }

    pub fn cause(&self, flow: &Flow) -> Option<Cause> {
        let (at, _) = flow.broken.as_ref()?;
        let during = self
            .faults
            .iter()
            .filter(|f| f.start <= *at && *at <= f.over + FLOW_GRACE);
        let mut cause = Cause::Unexplained;
        for fault in during {
            if fault.kind == FaultKind::BackendKilled && fault.target == flow.backend {
                return Some(Cause::ItsBackendKilled);
            }
            cause = Cause::During(fault.kind);
        }
        Some(cause)
    }

    /// The flows broken by something other than the death of their own backend.
    pub fn flows_broken_unexpectedly(&self) -> Vec<(&Flow, Cause)> {
        self.traffic
            .flows
            .iter()
            .filter_map(|flow| Some((flow, self.cause(flow)?)))
            .filter(|(_, cause)| *cause != Cause::ItsBackendKilled)
            .collect()
    }

    /// Agents (by pid) whose descriptors grew by more than [`FD_SLACK`] over their life,
    /// with their first and last count.
    pub fn descriptor_growth(&self) -> Vec<(u32, usize, usize)> {
        let mut by_pid: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for s in &self.usage {
            by_pid
                .entry(s.pid)
                .and_modify(|(_, last)| *last = s.fds)
                .or_insert((s.fds, s.fds));
        }
        by_pid
            .into_iter()
            .filter(|(_, (first, last))| *last > first + FD_SLACK)
            .map(|(pid, (first, last))| (pid, first, last))
            .collect()
    }

    /// The soak's targets it missed, one line each; empty when it passed.
    pub fn misses(&self) -> Vec<String> {
        let mut misses = Vec::new();
        let failed = self.failed_after_detection();
        if let Some(first) = failed.first() {
            misses.push(format!(
                "{} request(s) failed with no undetected fault to explain them; the first, \
                 {} at {:.2} s: {}",
                failed.len(),
                first.stream.label(),
                first.at.as_secs_f64(),
                first.error.as_deref().unwrap_or_default()
            ));
        }
        for (flow, cause) in self.flows_broken_unexpectedly() {
            let (at, how) = flow.broken.as_ref().expect("a broken flow");
            misses.push(format!(
                "a long-lived {:?} flow on {} broke at {:.2} s {cause}: {how}",
                flow.transport,
                flow.backend,
                at.as_secs_f64()
            ));
        }
        for (pid, first, last) in self.descriptor_growth() {
            misses.push(format!(
                "agent {pid}: open descriptors grew from {first} to {last}"
            ));
        }
        for kind in FaultKind::ALL {
            if !self.faults.iter().any(|f| f.kind == kind) {
                misses.push(format!("the fault \"{kind}\" was never injected"));
            }
        }
        if self.traffic.requests.is_empty() {
            misses.push("no request was sent".into());
        }
        misses
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak: {} s, {} backends, {} faults",
            self.duration.as_secs(),
            self.backends,
            self.faults.len()
        )?;
        writeln!(
            f,
            "\n| requests | sent | failed | before detection | after detection |"
        )?;
        writeln!(f, "|---|---|---|---|---|")?;
        let mut streams: BTreeMap<Stream, [usize; 4]> = BTreeMap::new();
        for r in &self.traffic.requests {
            let row = streams.entry(r.stream).or_default();
            row[0] += 1;
            if r.error.is_some() {
                row[1] += 1;
                row[if self.before_detection(r).is_some() {
                    2
                } else {
                    3
                }] += 1;
            }
        }
        for (stream, [sent, failed, before, after]) in &streams {
            writeln!(
                f,
                "| {} | {sent} | {failed} | {before} | {after} |",
                stream.label()
            )?;
        }

        writeln!(f, "\n| long-lived flows | opened | answers | broken | by its backend's death | otherwise |")?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for transport in [Transport::Tcp, Transport::Udp] {
            let flows: Vec<&Flow> = self
                .traffic
                .flows
                .iter()
                .filter(|fl| fl.transport == transport)
                .collect();
            let broken = flows.iter().filter(|fl| fl.broken.is_some()).count();
            let expected = flows
                .iter()
                .filter(|fl| self.cause(fl) == Some(Cause::ItsBackendKilled))
                .count();
            writeln!(
                f,
                "| {transport:?} | {} | {} | {broken} | {expected} | {} |",
                flows.len(),
                flows.iter().map(|fl| fl.answered).sum::<u64>(),
                broken - expected
            )?;
        }

        writeln!(
            f,
            "\n| fault | target | at (s) | detected after (s) | over after (s) | failed requests |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for fault in &self.faults {
            let failed = self
                .traffic
                .requests
                .iter()
                .filter(|r| r.error.is_some() && r.at <= fault.detected && r.end >= fault.start)
                .count();
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {failed} |",
                fault.kind,
                fault.target,
                secs(fault.start),
                secs(fault.detected_after()),
                secs(fault.lasted()),
            )?;
        }

        writeln!(f, "\n| agent at (s) | pid | RSS (KiB) | open descriptors |")?;
        writeln!(f, "|---|---|---|---|")?;
        // At most about 20 rows, always the first and last sample of each agent.
        let step = (self.usage.len() / 20).max(1);
        for (k, s) in self.usage.iter().enumerate() {
            let edge = k == 0
                || k + 1 == self.usage.len()
                || self.usage[k - 1].pid != s.pid
                || self.usage[k + 1].pid != s.pid;
            if edge || k % step == 0 {
                writeln!(
                    f,
                    "| {} | {} | {} | {} |",
                    secs(s.at),
                    s.pid,
                    s.rss_kib,
                    s.fds
                )?;
            }
        }

        let misses = self.misses();
        if misses.is_empty() {
            writeln!(f, "\nsoak: every target met")?;
        } else {
            writeln!(f, "\nsoak: {} target(s) missed:", misses.len())?;
            for miss in misses {
                writeln!(f, "- {miss}")?;
            }
        }
        Ok(())
    }
}
