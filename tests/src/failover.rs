//! A client that opens a new TCP connection to a VIP at a fixed pace (every 50 ms) while a test fails a balancer over, and the longest gap in service it saw.

use crate::client::http_get;
use crate::netns::{enter_netns_path, Netns};
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The pace the VRRP tests use: a new connection every 50 ms.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long one attempt may take (connect and answer) before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it started, from the prober's start.
    pub at: Duration,
    /// How long it took to succeed or fail.
    pub took: Duration,
    /// The name of the server that answered (the test servers answer with theirs), or why
    /// it failed.
    pub outcome: Result<String, String>,
}

impl Attempt {
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The server that answered, if one did.
    pub fn answered_by(&self) -> Option<&str> {
        self.outcome.as_deref().ok()
    }
}

/// A run of failed attempts between two answered ones (or the run's start or end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Start of the last answered attempt before the failures (of the first failure when
    /// none was answered before).
    pub from: Duration,
    /// Start of the first answered attempt after the failures, or the end of the last
    /// attempt when service never came back ([`Gap::recovered`] is false).
    pub to: Duration,
    /// Failed attempts in the run.
    pub failed: usize,
    /// Whether an attempt was answered after the failures.
    pub recovered: bool,
}

impl Gap {
    /// How long the service was not seen up: an upper bound of the outage, by at most one
    /// probe interval.
    pub fn duration(&self) -> Duration {
        self.to.saturating_sub(self.from)
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ms ({} failed attempts between {:.2} s and {:.2} s{})",
            self.duration().as_millis(),
            self.failed,
            self.from.as_secs_f64(),
            self.to.as_secs_f64(),
            if self.recovered {
                ""
            } else {
                ", never recovered"
            }
        )
    }
}

/// Every attempt of a probe run, in start order.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub attempts: Vec<Attempt>,
}

impl ProbeReport {
    /// A report of `attempts` (sorted by start).
    pub fn new(mut attempts: Vec<Attempt>) -> ProbeReport {
        attempts.sort_by_key(|a| a.at);
        ProbeReport { attempts }
    }

    /// Attempts answered.
    pub fn ok(&self) -> usize {
        self.attempts.iter().filter(|a| a.ok()).count()
    }

    /// Attempts failed.
    pub fn failed(&self) -> usize {
        self.attempts.len() - self.ok()
    }

    /// How many attempts each server answered.
    pub fn tally(&self) -> BTreeMap<String, usize> {
        let mut tally = BTreeMap::new();
        for name in self.attempts.iter().filter_map(Attempt::answered_by) {
            *tally.entry(name.to_string()).or_default() += 1;
        }
        tally
    }

    /// Start of the first attempt `name` answered at or after `since`.
    pub fn first_answer_by(&self, name: &str, since: Duration) -> Option<Duration> {
        self.attempts
            .iter()
            .find(|a| a.at >= since && a.answered_by() == Some(name))
            .map(|a| a.at)
    }

    /// Start of the first attempt answered (by any server) at or after `since`.
    pub fn first_answer(&self, since: Duration) -> Option<Duration> {
        self.attempts
            .iter()
            .find(|a| a.at >= since && a.ok())
            .map(|a| a.at)
    }

    /// How long the service was out at most between `from` and `to` (attempt start times):
    /// the longest run of failures overlapping them, zero if none. Panics (showing the
    /// attempts) when the service never came back.
    pub fn outage(&self, from: Duration, to: Duration) -> Duration {
        self.longest_gap_within(from, to)
            .map_or(Duration::ZERO, |g| {
                assert!(g.recovered, "the service never came back:\n{self}");
                g.duration()
            })
    }

    /// The longest run of failed attempts that overlaps `from..=to` (attempt start times).
    pub fn longest_gap_within(&self, from: Duration, to: Duration) -> Option<Gap> {
        self.gaps()
            .into_iter()
            .filter(|g| g.to >= from && g.from <= to)
            .max_by_key(Gap::duration)
    }

    /// Start of the last attempt `name` answered.
    pub fn last_answer_by(&self, name: &str) -> Option<Duration> {
        self.attempts
            .iter()
            .rev()
            .find(|a| a.answered_by() == Some(name))
            .map(|a| a.at)
    }

    /// Every run of failed attempts, in order.
    pub fn gaps(&self) -> Vec<Gap> {
        let mut gaps = Vec::new();
        let mut last_ok: Option<Duration> = None;
        let mut open: Option<Gap> = None;
        for a in &self.attempts {
            if a.ok() {
                if let Some(mut gap) = open.take() {
                    gap.to = a.at;
                    gap.recovered = true;
                    gaps.push(gap);
                }
                last_ok = Some(a.at);
            } else {
                let gap = open.get_or_insert(Gap {
                    from: last_ok.unwrap_or(a.at),
                    to: a.at,
                    failed: 0,
                    recovered: false,
                });
                gap.failed += 1;
                gap.to = gap.to.max(a.at + a.took);
            }
        }
        gaps.extend(open);
        gaps
    }

    /// The longest run of failed attempts (by [`Gap::duration`]), if any attempt failed.
    pub fn longest_gap(&self) -> Option<Gap> {
        self.gaps().into_iter().max_by_key(Gap::duration)
    }

    /// The runs of attempts with the same outcome (server, or failure), for messages.
    fn runs(&self) -> Vec<(Duration, Duration, String, usize)> {
        let mut runs: Vec<(Duration, Duration, String, usize)> = Vec::new();
        for a in &self.attempts {
            let what = match &a.outcome {
                Ok(name) => name.clone(),
                Err(_) => "failed".to_string(),
            };
            match runs.last_mut() {
                Some(run) if run.2 == what => {
                    run.1 = a.at;
                    run.3 += 1;
                }
                _ => runs.push((a.at, a.at, what, 1)),
            }
        }
        runs
    }
}

impl fmt::Display for ProbeReport {
    /// The timeline (`0.00-3.10 s lb1 x62`, one run per line), then the first failure's
    /// reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} attempts, {} answered, {} failed",
            self.attempts.len(),
            self.ok(),
            self.failed()
        )?;
        for (from, to, what, n) in self.runs() {
            write!(
                f,
                "\n  {:6.2}-{:6.2} s  {what} x{n}",
                from.as_secs_f64(),
                to.as_secs_f64()
            )?;
        }
        if let Some(Err(why)) = self
            .attempts
            .iter()
            .map(|a| &a.outcome)
            .find(|o| o.is_err())
        {
            write!(f, "\n  first failure: {why}")?;
        }
        Ok(())
    }
}

/// A probe run in progress: a thread in the client's namespace starts an attempt (an HTTP
/// GET on a new connection, each on its own thread so that a slow one does not delay the
/// pace) every interval until the duration is over or [`Prober::stop`] is called.
pub struct Prober {
    started: Instant,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    pacer: Option<thread::JoinHandle<Result<()>>>,
}

impl Prober {
    /// Starts probing `addr` from namespace `ns`: a new connection every `interval` for at
    /// most `duration`, each allowed `timeout`.
    pub fn start(
        ns: &Netns,
        addr: SocketAddrV4,
        interval: Duration,
        duration: Duration,
        timeout: Duration,
    ) -> Result<Prober> {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (stop2, attempts2) = (Arc::clone(&stop), Arc::clone(&attempts));
        let pacer = thread::Builder::new()
            .name(format!("prober-{}", ns.name()))
            .spawn(move || -> Result<()> {
                // Threads spawned from here inherit the namespace.
                enter_netns_path(&path)?;
                let mut workers = Vec::new();
                for k in 0u32.. {
                    let at = interval * k;
                    if at >= duration || stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Some(wait) = (started + at).checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let attempts = Arc::clone(&attempts2);
                    workers.push(thread::spawn(move || {
                        let begin = Instant::now();
                        let outcome = http_get(addr, timeout).map_err(|e| format!("{e:#}"));
                        let attempt = Attempt {
                            at: begin - started,
                            took: begin.elapsed(),
                            outcome,
                        };
                        attempts
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(attempt);
                    }));
                }
                for w in workers {
                    let _ = w.join();
                }
                Ok(())
            })
            .context("spawning the prober thread")?;
        Ok(Prober {
            started,
            stop,
            attempts,
            pacer: Some(pacer),
        })
    }

    /// [`Prober::start`] with the VRRP tests' pace and timeout.
    pub fn every_50ms(ns: &Netns, addr: SocketAddrV4, duration: Duration) -> Result<Prober> {
        Prober::start(ns, addr, PROBE_INTERVAL, duration, PROBE_TIMEOUT)
    }

    /// Time since the prober started (the clock of [`Attempt::at`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The attempts finished so far.
    pub fn snapshot(&self) -> ProbeReport {
        ProbeReport::new(
            self.attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// Waits (at most `timeout`) until an attempt started at or after `since` is answered
    /// by `name`; returns that attempt's start.
    pub fn wait_answer_by(
        &self,
        name: &str,
        since: Duration,
        timeout: Duration,
    ) -> Option<Duration> {
        self.wait_for(timeout, |report| report.first_answer_by(name, since))
    }

    /// Waits (at most `timeout`) until an attempt started at or after `since` is answered
    /// by any server; returns that attempt's start.
    pub fn wait_answer(&self, since: Duration, timeout: Duration) -> Option<Duration> {
        self.wait_for(timeout, |report| report.first_answer(since))
    }

    fn wait_for(
        &self,
        timeout: Duration,
        found: impl Fn(&ProbeReport) -> Option<Duration>,
    ) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = found(&self.snapshot()) {
                return Some(at);
            }
            if Instant::now() >= deadline
                || self
                    .pacer
                    .as_ref()
                    .is_none_or(thread::JoinHandle::is_finished)
            {
                return found(&self.snapshot());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops starting attempts, waits for those under way and returns them all.
    pub fn stop(mut self) -> Result<ProbeReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()?;
        Ok(self.snapshot())
    }

    /// Waits until the duration is over and returns every attempt.
    pub fn finish(mut self) -> Result<ProbeReport> {
        self.join()?;
        Ok(self.snapshot())
    }

    fn join(&mut self) -> Result<()> {
        match self.pacer.take() {
            Some(pacer) => pacer
                .join()
                .map_err(|_| anyhow!("the prober thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ok(at: u64, name: &str) -> Attempt {
        Attempt {
            at: ms(at),
            took: ms(2),
            outcome: Ok(name.to_string()),
        }
    }

    fn failed(at: u64, took: u64) -> Attempt {
        Attempt {
            at: ms(at),
            took: ms(took),
            outcome: Err("connecting: timed out".to_string()),
        }
    }

    #[test]
    fn the_longest_gap_runs_from_the_last_answer_to_the_next() {
        let report = ProbeReport::new(vec![
            ok(0, "lb1"),
            ok(50, "lb1"),
            failed(100, 500),
            failed(150, 500),
            failed(200, 500),
            ok(250, "lb2"),
            failed(300, 10),
            ok(350, "lb2"),
        ]);
        let gaps = report.gaps();
        assert_eq!(gaps.len(), 2, "{gaps:?}");
        assert_eq!(
            report.longest_gap(),
            Some(Gap {
                from: ms(50),
                to: ms(250),
                failed: 3,
                recovered: true
            })
        );
        assert_eq!(report.longest_gap().unwrap().duration(), ms(200));
        assert_eq!(report.first_answer_by("lb2", ms(0)), Some(ms(250)));
        assert_eq!(report.first_answer_by("lb2", ms(300)), Some(ms(350)));
        assert_eq!(report.last_answer_by("lb1"), Some(ms(50)));
        assert_eq!(report.tally().get("lb2"), Some(&2));
        assert_eq!((report.ok(), report.failed()), (4, 4));
    }

    #[test]
    fn a_gap_without_recovery_lasts_to_the_last_failure_s_end() {
        let report = ProbeReport::new(vec![failed(50, 500), ok(0, "lb1"), failed(100, 500)]);
        let gap = report.longest_gap().unwrap();
        assert!(!gap.recovered);
        assert_eq!((gap.from, gap.to, gap.failed), (ms(0), ms(600), 2));
        let text = report.to_string();
        assert!(
            text.contains("lb1 x1") && text.contains("failed x2"),
            "{text}"
        );
    }

    #[test]
    fn no_failure_no_gap() {
        let report = ProbeReport::new(vec![ok(0, "lb1"), ok(50, "lb2")]);
        assert_eq!(report.longest_gap(), None);
        assert_eq!(ProbeReport::default().longest_gap(), None);
    }
}
