//! Periodic checks: the [`Checker`] runs one task per checked backend on a runtime of its
//! own, spreads the checks with jitter and starts them on shared ticks, keeps each
//! backend's newest result in a [`LatestSlot`] and sends a [`HealthEvent`] when a result
//! changes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
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
    pub backend: SocketAddrV4,
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
    tasks: HashMap<(String, SocketAddrV4), AbortHandle>,
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
        backend: SocketAddrV4,
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
    pub fn stop(&mut self, pool: &str, backend: SocketAddrV4) {
        if let Some(task) = self.tasks.remove(&(pool.to_owned(), backend)) {
            task.abort();
        }
    }

    /// Whether a check task was started for the backend (and not stopped since).
    #[must_use]
    pub fn is_checking(&self, pool: &str, backend: SocketAddrV4) -> bool {
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
    backend: SocketAddrV4,
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
        let target = SocketAddr::V4(check.target(backend));
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
    backend: SocketAddrV4,
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
mod tests {
    use super::super::config::CheckKind;
    use super::super::testing::{closed_port, ms, LOCALHOST};
    use super::*;
    use std::net::Ipv4Addr;
    use tokio::net::TcpListener;

    #[test]
    fn jitter_stays_in_bounds() {
        let mut j = Jitter::seeded(7);
        let d = ms(1000);
        let mut below = Vec::new();
        for _ in 0..1000 {
            let b = j.below(d);
            assert!(b < d);
            below.push(b);
            let a = j.around(d);
            assert!(a >= ms(900) && a <= ms(1100), "{a:?}");
        }
        assert_eq!(j.below(Duration::ZERO), Duration::ZERO);
        // Spread over the range, not constant.
        assert!(below.iter().any(|b| *b < ms(200)));
        assert!(below.iter().any(|b| *b > ms(800)));
        let _ = j.around(Duration::MAX);
    }

    #[test]
    fn deadlines_fall_on_ticks_and_keep_the_interval_on_average() {
        const N: u32 = 1000;
        let epoch = Instant::now();
        let mut jitter = Jitter::seeded(7);
        let pause = ms(1000);
        let tick = TICK.as_nanos();
        let mut total = 0i128;
        for _ in 0..N {
            let now = epoch + jitter.below(Duration::from_hours(1));
            let deadline = aligned_deadline(epoch, now, pause);
            let offset = (deadline - epoch).as_nanos();
            assert_eq!(offset % tick, 0, "on a tick");
            let late = (deadline - now).as_nanos() as i128 - pause.as_nanos() as i128;
            assert!(late.unsigned_abs() <= tick / 2, "{late} ns off");
            total += late;
        }
        // Rounding to the nearest tick neither delays nor hastens checks on average.
        let mean = total / i128::from(N);
        assert!(mean.unsigned_abs() < tick / 10, "mean {mean} ns off");

        // A pause shorter than half a tick still ends after now.
        let now = epoch + ms(10);
        assert!(aligned_deadline(epoch, now, Duration::from_micros(100)) > now);
        assert!(aligned_deadline(epoch, now, Duration::ZERO) > now);
    }

    #[test]
    fn check_task_is_small() {
        // One task per backend, up to 4096 of them: its future must not hold buffers.
        let (tx, _events) = mpsc::channel(1);
        let task = CheckTask {
            pool: "p".into(),
            backend: SocketAddrV4::new(LOCALHOST, 80),
            check: CheckConfig::default(),
            initial: Some(Health::Up),
            events: tx,
            latest: LatestSlot::default(),
            jitter: Jitter::seeded(1),
            epoch: Instant::now(),
            syn: None,
            task: 1,
            hold: Arc::default(),
        }
        .run();
        let size = size_of_val(&task);
        assert!(size < 4096, "a check task's future takes {size} bytes");
    }

    async fn next_event(events: &mut mpsc::Receiver<HealthEvent>) -> HealthEvent {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a health event within 5s")
            .expect("the checker is alive")
    }

    /// Receives events until a transition; returns it and how many checks in a row, up to
    /// and including it, agreed with it (from the event that began the run: events come
    /// only when a result changes).
    async fn until_transition(events: &mut mpsc::Receiver<HealthEvent>) -> (HealthEvent, u64) {
        let mut run_start: Option<u64> = None;
        loop {
            let event = next_event(events).await;
            let towards = event.outcome.ok;
            if event.transition.is_some() {
                let start = run_start.unwrap_or(event.check);
                return (event.clone(), event.check - start + 1);
            }
            // A result that differs from the current health starts a run; one that
            // agrees with it ends the run.
            let against = towards != (event.health == Health::Up);
            run_start = if against {
                run_start.or(Some(event.check))
            } else {
                None
            };
        }
    }

    /// Checks the task ran so far.
    fn checks_run(slot: &LatestSlot) -> u64 {
        latest(slot).checks
    }

    /// A listening backend on localhost, and a checker checking it with `check` (up at
    /// first) as backend `addr` of pool "web", its events and its slot.
    async fn checked_listener(
        check: &CheckConfig,
    ) -> (
        TcpListener,
        SocketAddrV4,
        Checker,
        mpsc::Receiver<HealthEvent>,
        LatestSlot,
    ) {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let (tx, events) = mpsc::channel(64);
        let mut checker = Checker::new(tx);
        let slot = checker
            .start("web", addr, check, Some(Health::Up))
            .expect("a check task");
        (listener, addr, checker, events, slot)
    }

    #[tokio::test]
    async fn checker_follows_a_backend_down_and_up() {
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: ms(50),
            fastinter: ms(20),
            downinter: ms(50),
            timeout: ms(50),
            rise: 2,
            fall: 3,
            ..CheckConfig::default()
        };
        let (listener, addr, mut checker, mut events, slot) = checked_listener(&check).await;
        assert!(checker.is_checking("web", addr));

        // The first check reports; the same result again only updates the slot.
        let event = next_event(&mut events).await;
        assert_eq!((event.pool.as_str(), event.backend), ("web", addr));
        assert!(event.outcome.ok, "{event:?}");
        assert_eq!(
            (event.transition, event.health, event.check),
            (None, Health::Up, 1)
        );
        tokio::time::sleep(ms(150)).await;
        assert!(
            events.try_recv().is_err(),
            "an unchanged result sends no event"
        );
        let latest_now = latest(&slot);
        assert!(latest_now.checks >= 2, "{latest_now:?}");
        assert!(latest_now.outcome.is_some_and(|o| o.ok));

        drop(listener);
        let (event, run) = until_transition(&mut events).await;
        assert_eq!(event.transition, Some((Health::Up, Health::Down)));
        assert_eq!(event.health, Health::Down);
        assert_eq!(run, 3, "down after exactly `fall` failures");
        assert!(event.outcome.reason.contains("refused"), "{event:?}");

        let listener = TcpListener::bind(addr).await.unwrap();
        let (event, run) = until_transition(&mut events).await;
        assert_eq!(event.transition, Some((Health::Down, Health::Up)));
        assert_eq!(event.health, Health::Up);
        assert_eq!(run, 2, "up after exactly `rise` successes");

        checker.stop("web", addr);
        assert!(!checker.is_checking("web", addr));
        tokio::time::sleep(ms(20)).await;
        let stopped_at = checks_run(&slot);
        tokio::time::sleep(ms(200)).await;
        assert_eq!(checks_run(&slot), stopped_at, "no checks after stop");
        drop(listener);
    }

    #[tokio::test]
    async fn held_failures_change_no_state_until_released() {
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: ms(20),
            timeout: ms(50),
            fall: 2,
            ..CheckConfig::default()
        };
        let (listener, _, checker, mut events, slot) = checked_listener(&check).await;
        assert!(next_event(&mut events).await.outcome.ok);
        assert!(checker.hold_failures(true), "the setting changed");
        assert!(!checker.hold_failures(true), "set already");
        drop(listener);

        // Many failed checks, each shown, none counted.
        let failed = next_event(&mut events).await;
        assert!(!failed.outcome.ok, "{failed:?}");
        assert!(failed.outcome.reason.contains("not counted"), "{failed:?}");
        tokio::time::sleep(ms(200)).await;
        while let Ok(event) = events.try_recv() {
            assert_eq!(
                (event.transition, event.health),
                (None, Health::Up),
                "{event:?}"
            );
        }
        assert!(latest(&slot).checks >= 5, "{:?}", latest(&slot));

        // Released, they count again: down after `fall` of them.
        assert!(checker.hold_failures(false));
        let (down, _) = until_transition(&mut events).await;
        assert_eq!(
            down.transition,
            Some((Health::Up, Health::Down)),
            "{down:?}"
        );
        assert!(!down.outcome.reason.contains("not counted"), "{down:?}");
    }

    #[tokio::test]
    async fn checker_initial_down_and_restart() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        // The backend address is not listening; the check's port override is.
        let backend = SocketAddrV4::new(LOCALHOST, closed_port().port());
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: ms(30),
            timeout: ms(100),
            rise: 2,
            port: Some(addr.port()),
            ..CheckConfig::default()
        };
        let (tx, mut events) = mpsc::channel(16);
        let mut checker = Checker::new(tx);
        let first_slot = checker
            .start("p", backend, &check, Some(Health::Down))
            .expect("a check task");
        let first = next_event(&mut events).await;
        assert_eq!((first.health, first.transition), (Health::Down, None));
        let second = next_event(&mut events).await;
        assert_eq!(second.transition, Some((Health::Down, Health::Up)));

        // Restarting replaces the task (the old one stops) and takes the given state;
        // type none stops it.
        let slot = checker
            .start("p", backend, &check, Some(Health::Up))
            .expect("a check task");
        assert!(checker.is_checking("p", backend));
        tokio::time::sleep(ms(20)).await;
        let old_task_at = checks_run(&first_slot);
        tokio::time::sleep(ms(100)).await;
        assert_eq!(
            checks_run(&first_slot),
            old_task_at,
            "the replaced task stopped"
        );
        assert!(checks_run(&slot) >= 1, "the new task checks");
        assert!(checker
            .start("p", backend, &CheckConfig::default(), Some(Health::Up))
            .is_none());
        assert!(!checker.is_checking("p", backend));
        tokio::time::sleep(ms(20)).await;
        let stopped_at = checks_run(&slot);
        tokio::time::sleep(ms(150)).await;
        assert_eq!(checks_run(&slot), stopped_at, "type none stops the checks");
        checker.stop("p", backend);
        checker.stop("nope", backend);
        drop(listener);
    }

    #[tokio::test]
    async fn checker_stops_when_dropped() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: ms(20),
            ..CheckConfig::default()
        };
        let (tx, mut events) = mpsc::channel(16);
        let mut checker = Checker::new(tx);
        checker.start("p", addr, &check, Some(Health::Up));
        next_event(&mut events).await;
        drop(checker);
        // Every sender is gone once the task is aborted: the channel closes.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while events.recv().await.is_some() {}
        })
        .await;
        assert!(closed.is_ok(), "the check task outlived its checker");
        drop(listener);
    }

    #[test]
    fn checker_works_outside_a_runtime() {
        // The checker brings its own runtime: no tokio context is needed to start
        // checks, and events arrive on a plain thread.
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let (tx, mut events) = mpsc::channel(16);
        let mut checker = Checker::new(tx);
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: ms(20),
            ..CheckConfig::default()
        };
        checker.start("p", addr, &check, Some(Health::Up));
        assert!(checker.is_checking("p", addr));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let event = loop {
            match events.try_recv() {
                Ok(event) => break event,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(ms(5));
                }
                Err(e) => panic!("no event within 5s: {e}"),
            }
        };
        assert!(event.outcome.ok, "{event:?}");
        drop(checker);
        drop(listener);
    }

    /// CPU cost of 1000 TCP-checked backends at a 1 s interval, over 10 s, over loopback
    /// (an upper bound: the listening side's half of each handshake runs in the checker's
    /// context; `cargo xtask bench -- --only health` measures the agent against backends
    /// handled by another CPU); run with
    /// `cargo test -j1 --release -p balancer-user --lib -- --ignored health_cpu --nocapture`.
    #[test]
    #[ignore = "takes 10 s; measures CPU cost"]
    fn health_cpu_1000_tcp_backends() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        /// User and system CPU time of `who`.
        fn cpu(who: libc::c_int) -> [Duration; 2] {
            // SAFETY: getrusage only writes the struct it is given.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: as above; `usage` is a valid, writable rusage.
            let rc = unsafe { libc::getrusage(who, &raw mut usage) };
            assert_eq!(rc, 0);
            let tv = |t: libc::timeval| {
                Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
            };
            [tv(usage.ru_utime), tv(usage.ru_stime)]
        }

        const BACKENDS: u32 = 1000;
        const RUN: Duration = Duration::from_secs(10);

        // The listener accepts whatever reaches its queue (nothing: checks reset before the
        // handshake's last ACK), in its own thread so its CPU time can be told apart.
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_listener = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            let mut accepted = 0u64;
            for stream in listener.incoming() {
                if stop_listener.load(Ordering::Relaxed) {
                    break;
                }
                if stream.is_ok() {
                    accepted += 1;
                }
            }
            (accepted, cpu(libc::RUSAGE_THREAD))
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (checks, failures, process) = runtime.block_on(async {
            let (tx, mut events) = mpsc::channel::<HealthEvent>(1024);
            let counter = tokio::spawn(async move {
                let mut failures = 0u64;
                while let Some(event) = events.recv().await {
                    failures += u64::from(!event.outcome.ok);
                }
                failures
            });
            let check = CheckConfig {
                kind: CheckKind::Tcp,
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                address: Some(LOCALHOST),
                port: Some(port),
                ..CheckConfig::default()
            };
            let mut checker = Checker::new(tx);
            let start = cpu(libc::RUSAGE_SELF);
            let slots: Vec<LatestSlot> = (0..BACKENDS)
                .map(|i| {
                    let [_, _, hi, lo] = (0x0ac8_0000 + i).to_be_bytes();
                    let backend = SocketAddrV4::new(Ipv4Addr::new(10, 200, hi, lo), 80);
                    checker
                        .start("cpu", backend, &check, Some(Health::Up))
                        .expect("a check task")
                })
                .collect();
            tokio::time::sleep(RUN).await;
            let end = cpu(libc::RUSAGE_SELF);
            let process = [
                end[0].checked_sub(start[0]).unwrap(),
                end[1].checked_sub(start[1]).unwrap(),
            ];
            drop(checker);
            let checks: u64 = slots.iter().map(|s| latest(s).checks).sum();
            let failures = counter.await.unwrap();
            (checks, failures, process)
        });
        stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect((LOCALHOST, port));
        let (accepted, listener_cpu) = server.join().unwrap();

        let percent = |d: Duration| 100.0 * d.as_secs_f64() / RUN.as_secs_f64();
        let [user, sys] = process;
        let checker = (user + sys).saturating_sub(listener_cpu[0] + listener_cpu[1]);
        println!(
            "health_cpu: {BACKENDS} backends, tcp checks every 1s for {}s: {checks} checks \
             ({failures} failed), {accepted} reached the listener's accept queue",
            RUN.as_secs(),
        );
        println!(
            "health_cpu: CPU in % of one core: process {:.2} (user {:.2}, sys {:.2}); \
             listener thread {:.2}; checker (process - listener) {:.2}",
            percent(user + sys),
            percent(user),
            percent(sys),
            percent(listener_cpu[0] + listener_cpu[1]),
            percent(checker),
        );
        assert!(checks >= u64::from(BACKENDS) * 8, "{checks} checks");
        assert_eq!(failures, 0);
    }
}
