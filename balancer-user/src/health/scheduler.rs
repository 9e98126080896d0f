//! Periodic checks: the [`Checker`] runs one task per checked backend on a runtime of its
//! own, spreads the checks with jitter and starts them on shared ticks, keeps each
//! backend's newest result in a [`LatestSlot`] and sends a [`HealthEvent`] when a result
//! changes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::config::{CheckConfig, MIN_CHECK_DURATION};
use super::probe::{CheckOutcome, Prober};
use super::state::{Health, Tracker};
use super::syn::{SynClient, SynProber};

/// Event sent to the agent's owner task after a backend's first check, after every check
/// whose result (`ok` and reason) differs from the previous check's, and after every check
/// that changed the backend's state. The other checks only update the backend's
/// [`LatestCheck`], so that a thousand steady backends cost the owner nothing.
#[derive(Clone, Debug)]
pub struct HealthEvent {
    pub pool: String,
    pub backend: SocketAddr,
    pub outcome: CheckOutcome,
    /// `Some((old, new))` only when this check changed the backend's state.
    pub transition: Option<(Health, Health)>,
    /// The state after this check.
    pub health: Health,
    /// Which check of the backend's task this was (1 = the first).
    pub check: u64,
    /// The task's number ([`LatestCheck::task`]): results of a replaced task that were
    /// already queued must not apply to the backend its successor checks.
    pub task: u64,
}

/// The newest check of one backend, written by its check task after every check.
#[derive(Clone, Debug, Default)]
pub struct LatestCheck {
    pub outcome: Option<CheckOutcome>,
    /// Checks run so far by the task.
    pub checks: u64,
    /// The number of the check task that writes this slot (never 0 for a started task;
    /// the checker numbers its tasks from 1).
    pub task: u64,
}

/// A backend's [`LatestCheck`], shared by its check task and the agent (`status`).
pub type LatestSlot = Arc<Mutex<LatestCheck>>;

/// A copy of the newest check in `slot` (none before the first check).
#[must_use]
pub fn latest(slot: &LatestSlot) -> LatestCheck {
    slot.lock().map(|l| l.clone()).unwrap_or_default()
}

/// A small pseudo-random generator (SplitMix64) for check jitter; seeded from the
/// standard library's per-process random hash keys, so no extra dependency is needed.
#[derive(Clone, Debug)]
struct Jitter(u64);

impl Jitter {
    fn seeded(salt: u64) -> Self {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(salt);
        Jitter(hasher.finish())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, d)` (zero for a zero `d`).
    fn below(&mut self, d: Duration) -> Duration {
        let nanos = u128::from(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let scaled = (nanos * u128::from(self.next_u64())) >> 64;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    /// `d` +-10%.
    fn around(&mut self, d: Duration) -> Duration {
        let tenth = d / 10;
        d.saturating_sub(tenth)
            .saturating_add(self.below(tenth.saturating_mul(2)))
    }
}

/// Runs the checks of many backends concurrently on tokio: one task per checked
/// backend, each keeping its [`LatestCheck`] and sending a [`HealthEvent`] when its result
/// changes. Dropping the checker
/// stops all its tasks.
///
/// The tasks run on a current-thread tokio runtime in a thread of the checker's own
/// (`health-checks`): checks never compete with the agent's control path, and one thread
/// polling them all costs less CPU than work-stealing between the agent's workers. If
/// that thread cannot be started, the tasks run on the runtime `start` is called from.
#[derive(Debug)]
pub struct Checker {
    events: mpsc::Sender<HealthEvent>,
    tasks: HashMap<(String, SocketAddr), AbortHandle>,
    /// Salts the jitter seed of each task.
    started: u64,
    /// Origin of the ticks that checks start on (see [`aligned_deadline`]).
    epoch: Instant,
    /// The checker's own runtime, if its thread started.
    runtime: Option<tokio::runtime::Handle>,
    /// The engine of TCP checks to IPv4 targets, if its raw sockets opened.
    syn: Option<SynProber>,
    /// While set, failed checks change no backend's state ([`Checker::hold_failures`]).
    hold: Arc<AtomicBool>,
    /// Dropped with the checker, which ends that thread (and its runtime with it).
    _stop: Option<oneshot::Sender<()>>,
}

impl Checker {
    /// A checker that reports to `events`. Starts the checker's thread (and waits
    /// the moment that takes).
    #[must_use]
    pub fn new(events: mpsc::Sender<HealthEvent>) -> Self {
        let (runtime, stop) = match spawn_runtime() {
            Ok((runtime, stop)) => (Some(runtime), Some(stop)),
            Err(e) => {
                log::warn!(
                    "cannot start the health check thread ({e}); checks share the agent's runtime"
                );
                (None, None)
            }
        };
        let syn = match runtime
            .clone()
            .map_or_else(tokio::runtime::Handle::try_current, Ok)
            .map_err(io::Error::other)
            .and_then(|runtime| SynProber::start(&runtime))
        {
            Ok(syn) => {
                let ports = syn.ports();
                log::info!(
                    "TCP checks of IPv4 backends: SYNs from a raw socket, source ports {}-{}",
                    ports.start(),
                    ports.end()
                );
                Some(syn)
            }
            Err(e) => {
                log::warn!("TCP checks connect a socket per backend: no raw sockets ({e})");
                None
            }
        };
        Checker {
            events,
            tasks: HashMap::new(),
            started: 0,
            epoch: Instant::now(),
            runtime,
            syn,
            hold: Arc::new(AtomicBool::new(false)),
            _stop: stop,
        }
    }

    /// While `hold` is set, a failed check is recorded and shown but does not count towards
    /// `fall`: the agent sets it while an interface of its own is gone, when every check
    /// through it fails for the balancer's sake, not the backends'. Marking them down would
    /// only move their flows elsewhere once the interface is back. Returns whether the
    /// setting changed.
    pub fn hold_failures(&self, hold: bool) -> bool {
        self.hold.swap(hold, Ordering::Relaxed) != hold
    }

    /// Starts (or restarts with the new config) checking one backend; the first check runs
    /// after a random jitter in `[0, interval)` so checks are spread in time; every later
    /// interval gets +-10% jitter too. `initial` is the starting health; `None`: the
    /// backend was never checked ([`Tracker::unchecked`]: down until its first check,
    /// which runs at once and decides).
    ///
    /// Type `none` starts nothing (and stops a previous check of the backend): the backend
    /// is simply up. Events of a replaced task that are already queued are still
    /// delivered; they carry that task's number ([`HealthEvent::task`]). (Without the checker's own thread, this must be called within a tokio
    /// runtime; outside one, the error is logged and nothing is started.)
    ///
    /// Returns the slot where the task keeps the backend's newest check (`None` when
    /// nothing was started).
    pub fn start(
        &mut self,
        pool: &str,
        backend: SocketAddr,
        check: &CheckConfig,
        initial: Option<Health>,
    ) -> Option<LatestSlot> {
        self.stop(pool, backend);
        if !check.is_enabled() {
            return None;
        }
        let runtime = match self
            .runtime
            .clone()
            .map_or_else(tokio::runtime::Handle::try_current, Ok)
        {
            Ok(runtime) => runtime,
            Err(e) => {
                log::error!("pool {pool}: backend {backend}: cannot start health checks: {e}");
                return None;
            }
        };
        self.started = self.started.wrapping_add(1).max(1);
        let latest = Arc::new(Mutex::new(LatestCheck {
            task: self.started,
            ..LatestCheck::default()
        }));
        let task = CheckTask {
            pool: pool.to_owned(),
            backend,
            check: check.clone(),
            initial,
            events: self.events.clone(),
            latest: Arc::clone(&latest),
            jitter: Jitter::seeded(self.started),
            epoch: self.epoch,
            syn: self.syn.as_ref().map(SynProber::client),
            task: self.started,
            hold: Arc::clone(&self.hold),
        };
        let handle = runtime.spawn(task.run());
        self.tasks
            .insert((pool.to_owned(), backend), handle.abort_handle());
        Some(latest)
    }

    /// Stops checking a backend (no-op if unknown).
    pub fn stop(&mut self, pool: &str, backend: SocketAddr) {
        if let Some(task) = self.tasks.remove(&(pool.to_owned(), backend)) {
            task.abort();
        }
    }

    /// Whether a check task was started for the backend (and not stopped since).
    #[must_use]
    pub fn is_checking(&self, pool: &str, backend: SocketAddr) -> bool {
        self.tasks.contains_key(&(pool.to_owned(), backend))
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
        // `_stop` is dropped next, which ends the thread.
    }
}

/// Starts the `health-checks` thread with a current-thread runtime; returns its handle
/// and the sender whose drop ends the thread. The runtime is built and dropped in that
/// thread only (dropping a runtime inside another runtime's task would panic).
fn spawn_runtime() -> io::Result<(tokio::runtime::Handle, oneshot::Sender<()>)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("health-checks".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            if ready_tx
                .send(Ok((runtime.handle().clone(), stop_tx)))
                .is_ok()
            {
                // Runs the check tasks until the checker is dropped.
                let _ = runtime.block_on(stop_rx);
            }
        })?;
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("the health check thread exited at once"))?
}

/// Longest tick that checks start on.
const TICK: Duration = Duration::from_millis(50);

/// `now + pause`, rounded to the nearest tick since `epoch` (never to `now` or earlier). A
/// tick is a 16th of `pause`, between 1 ms and [`TICK`]: checks of many backends then
/// start in batches, and the runtime wakes up once per batch instead of once per check
/// (with 1000 backends at a 1 s interval: at most 20 wake-ups a second instead of 1000),
/// each check at most half a tick early or late, and on time on average. With SYN checks
/// the cost is per batch more than per check (the wake-ups, and the interrupts that hand
/// a batch's packets between CPUs): `cargo xtask bench -- --only health` measured the
/// agent's CPU falling as the longest tick grew from 10 ms to 25 ms to 50 ms.
fn aligned_deadline(epoch: Instant, now: Instant, pause: Duration) -> Instant {
    let tick = (pause / 16)
        .clamp(Duration::from_millis(1), TICK)
        .as_nanos();
    let elapsed = now.saturating_duration_since(epoch).as_nanos();
    let since = elapsed.saturating_add(pause.as_nanos());
    let mut ticks = since.saturating_add(tick / 2) / tick;
    if ticks.saturating_mul(tick) <= elapsed {
        ticks += 1;
    }
    let rounded =
        Duration::from_nanos(u64::try_from(ticks.saturating_mul(tick)).unwrap_or(u64::MAX));
    epoch
        .checked_add(rounded)
        .or_else(|| now.checked_add(pause))
        .unwrap_or(now)
}

/// One backend's check task: what it checks and where it reports.
struct CheckTask {
    pool: String,
    backend: SocketAddr,
    check: CheckConfig,
    /// `None`: never checked (see [`Checker::start`]).
    initial: Option<Health>,
    events: mpsc::Sender<HealthEvent>,
    latest: LatestSlot,
    jitter: Jitter,
    /// Origin of the ticks that checks start on (see [`aligned_deadline`]).
    epoch: Instant,
    /// The engine of TCP checks to IPv4 targets, if any.
    syn: Option<SynClient>,
    /// The task's number ([`HealthEvent::task`]).
    task: u64,
    /// See [`Checker::hold_failures`].
    hold: Arc<AtomicBool>,
}

impl CheckTask {
    /// The loop of the task; ends when the event receiver is gone.
    async fn run(mut self) {
        let (pool, backend, check) = (&self.pool, self.backend, &self.check);
        let target = check.target(backend);
        let mut tracker = match self.initial {
            Some(initial) => Tracker::new(initial, check.rise, check.fall),
            None => Tracker::unchecked(check.rise, check.fall),
        };
        let mut prober = Prober::with_syn(self.syn.take());
        // A backend never checked takes no flows until it is: check it at once.
        let first = if tracker.is_unchecked() {
            Duration::ZERO
        } else {
            self.jitter.below(check.interval)
        };
        tokio::time::sleep_until(aligned_deadline(self.epoch, Instant::now(), first)).await;
        loop {
            let mut outcome = prober.check(check, target).await;
            let first = tracker.is_unchecked();
            let held = !first && !outcome.ok && self.hold.load(Ordering::Relaxed);
            let transition = if held {
                outcome
                    .reason
                    .push_str(" (not counted: an interface of the balancer is gone)");
                None
            } else {
                tracker.record(outcome.ok)
            };
            if first {
                log::info!(
                    event = "health",
                    pool:% = pool,
                    backend:% = backend,
                    to = tracker.health().as_upper_str(),
                    reason = outcome.reason.as_str();
                    "pool {pool}: backend {backend} {} after its first check ({})",
                    tracker.health().as_upper_str(),
                    outcome.reason
                );
            } else if let Some((old, new)) = transition {
                log_transition(pool, backend, old, new, &tracker, &outcome.reason);
            }
            // The slot holds the previous check: an event only when the result changed.
            let event = {
                let mut latest = self
                    .latest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                latest.checks += 1;
                let changed = transition.is_some()
                    || latest
                        .outcome
                        .as_ref()
                        .is_none_or(|p| p.ok != outcome.ok || p.reason != outcome.reason);
                let event = changed.then(|| HealthEvent {
                    pool: pool.clone(),
                    backend,
                    outcome: outcome.clone(),
                    transition,
                    health: tracker.health(),
                    check: latest.checks,
                    task: self.task,
                });
                latest.outcome = Some(outcome);
                event
            };
            if let Some(event) = event {
                // Let the other checks of this tick finish first, so that their events
                // reach the owner together and wake it once rather than once each.
                tokio::task::yield_now().await;
                if self.events.send(event).await.is_err() {
                    log::debug!("pool {pool}: backend {backend}: event receiver gone, checks stop");
                    return;
                }
            } else if self.events.is_closed() {
                return;
            }
            let pause = self.jitter.around(check.next_interval(&tracker));
            let pause = pause.max(MIN_CHECK_DURATION);
            tokio::time::sleep_until(aligned_deadline(self.epoch, Instant::now(), pause)).await;
        }
    }
}

/// Logs a state change: `pool web: backend 10.0.2.11:80 UP -> DOWN (connect refused, 3
/// consecutive failures)`.
fn log_transition(
    pool: &str,
    backend: SocketAddr,
    old: Health,
    new: Health,
    tracker: &Tracker,
    reason: &str,
) {
    let (count, what) = match new {
        Health::Down => (tracker.fall(), "failure"),
        Health::Up => (tracker.rise(), "success"),
    };
    let plural = match (count, new) {
        (1, _) => "",
        (_, Health::Down) => "s",
        (_, Health::Up) => "es",
    };
    log::info!(
        event = "health",
        pool = pool,
        backend:% = backend,
        from = old.as_upper_str(),
        to = new.as_upper_str(),
        reason = reason;
        "pool {pool}: backend {backend} {} -> {} ({reason}, {count} consecutive {what}{plural})",
        old.as_upper_str(),
        new.as_upper_str(),
    );
}

#[cfg(test)]
mod tests;
