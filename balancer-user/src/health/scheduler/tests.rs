use super::super::config::CheckKind;
use super::super::testing::{closed_port, ms, LOCALHOST};
use super::*;
use std::net::{Ipv4Addr, SocketAddr};
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
        backend: SocketAddr::from((LOCALHOST, 80)),
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
    SocketAddr,
    Checker,
    mpsc::Receiver<HealthEvent>,
    LatestSlot,
) {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
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
    let addr = listener.local_addr().unwrap();
    // The backend address is not listening; the check's port override is.
    let backend = SocketAddr::from((LOCALHOST, closed_port().port()));
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
    let addr = listener.local_addr().unwrap();
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
    let addr = listener.local_addr().unwrap();
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
            address: Some(LOCALHOST.into()),
            port: Some(port),
            ..CheckConfig::default()
        };
        let mut checker = Checker::new(tx);
        let start = cpu(libc::RUSAGE_SELF);
        let slots: Vec<LatestSlot> = (0..BACKENDS)
            .map(|i| {
                let [_, _, hi, lo] = (0x0ac8_0000 + i).to_be_bytes();
                let backend = SocketAddr::from((Ipv4Addr::new(10, 200, hi, lo), 80));
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
