//! The engine task: takes the queued checks, writes their SYNs in batches, matches the
//! answers to the checks waiting for them, and sends unanswered SYNs again.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

use super::packets::{parse_answer, syn_packet, Probe, SNAP, SOURCE_PORTS, SYN_LEN};
use super::sockets::{receive_batch, send_batch, sockaddr_in, Outgoing, Sockets, BATCH};

/// How long a learnt source address for a target address is used before it is looked up
/// again (routes and addresses change rarely; a lookup is a UDP `connect()`).
pub const SOURCE_TTL: Duration = Duration::from_secs(10);
/// How long a SYN waits for its answer before it is sent again (the kernel's initial
/// retransmission timeout, `TCP_TIMEOUT_INIT`), doubling each time, as `connect()` does:
/// one lost SYN or SYN-ACK does not fail a check whose timeout allows a resend.
const FIRST_RESEND: Duration = Duration::from_secs(1);
/// How often the engine resends due SYNs and forgets checks whose callers gave up.
const MAINTAIN: Duration = Duration::from_millis(250);

/// A check waiting for its SYN to be sent.
struct Request {
    target: SocketAddrV4,
    reply: oneshot::Sender<Probe>,
}

/// Counters of the engine (for tests and status).
#[derive(Debug, Default)]
pub struct SynStats {
    /// SYNs written.
    pub sent: AtomicU64,
    /// Answers matched to a waiting check.
    pub answered: AtomicU64,
    /// Packets that passed the filter but answer no check (late or foreign).
    pub unmatched: AtomicU64,
    /// SYNs sent again for want of an answer.
    pub resent: AtomicU64,
}

/// What the checks' tasks and the engine share.
struct Shared {
    queue: Mutex<Vec<Request>>,
    wake: Notify,
    stats: SynStats,
    /// Set when the engine task has ended (its answer socket failed, or it was stopped).
    failed: AtomicBool,
}

/// Sends the TCP checks of any task of the checker's runtime; cheap to clone.
#[derive(Clone)]
pub struct SynClient {
    shared: Arc<Shared>,
}

impl SynClient {
    /// Sends a SYN to `target` (with the next batch, again after 1 s, 3 s, ... without
    /// an answer) and waits for the answer: `Ok` for a SYN-ACK, the reason for a reset or
    /// an ICMP error. Waits forever when nothing answers: the caller bounds the time.
    /// `None` when the engine has stopped (the caller checks another way).
    pub async fn probe(&self, target: SocketAddrV4) -> Option<Probe> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Under the lock that the engine's end takes to set the flag and empty the
            // queue: a request is either emptied out (its answer fails) or never queued.
            if self.shared.failed.load(Ordering::Relaxed) {
                return None;
            }
            queue.push(Request { target, reply });
            queue.len() == 1
        };
        if first {
            self.shared.wake.notify_one();
        }
        answer.await.ok()
    }

    /// The engine's counters.
    #[cfg(test)]
    pub fn stats(&self) -> &SynStats {
        &self.shared.stats
    }
}

/// The engine task of SYN checks; stops it when dropped.
pub struct SynProber {
    client: SynClient,
    first_port: u16,
    task: AbortHandle,
}

impl SynProber {
    /// Opens the sockets and starts the engine on `runtime`.
    pub fn start(runtime: &tokio::runtime::Handle) -> io::Result<SynProber> {
        let (sockets, answers) = {
            let _context = runtime.enter();
            Sockets::open()?
        };
        let first_port = sockets.first_port;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            stats: SynStats::default(),
            failed: AtomicBool::new(false),
        });
        let engine = Engine {
            answers,
            buffers: Box::new([[0; SNAP]; BATCH]),
            state: State {
                sockets,
                shared: Arc::clone(&shared),
                pending: HashMap::new(),
                unsent: Vec::new(),
                sources: HashMap::new(),
                turns: Turns::default(),
                seqs: RandomState::new(),
                next: 0,
            },
            stopped: Stopped(Arc::clone(&shared)),
        };
        let task = runtime.spawn(engine.run()).abort_handle();
        Ok(SynProber {
            client: SynClient { shared },
            first_port,
            task,
        })
    }

    /// A client for the checks' tasks.
    pub fn client(&self) -> SynClient {
        self.client.clone()
    }

    /// The source ports of the SYNs.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.first_port..=self.first_port + (SOURCE_PORTS - 1)
    }
}

impl std::fmt::Debug for SynProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynProber")
            .field("ports", &self.ports())
            .finish_non_exhaustive()
    }
}

impl Drop for SynProber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// For each target, which of the [`SOURCE_PORTS`] its next check takes: they go round, so
/// up to that many checks of one target in flight at once are different connections.
#[derive(Default)]
struct Turns(HashMap<SocketAddrV4, (u16, Instant)>);

impl Turns {
    /// The offset from the first source port for a check of `target` now.
    fn next(&mut self, target: SocketAddrV4, now: Instant) -> u16 {
        let turn = self.0.entry(target).or_insert((0, now));
        let offset = turn.0 % SOURCE_PORTS;
        *turn = (turn.0.wrapping_add(1), now);
        offset
    }

    /// Forgets the targets not checked for `age`.
    fn forget_older_than(&mut self, now: Instant, age: Duration) {
        self.0
            .retain(|_, (_, used)| now.duration_since(*used) < age);
    }
}

/// Marks the engine stopped when dropped, and fails the checks still queued (dropping
/// their senders; the pending ones fail as the engine's state is dropped): each gets
/// `None` from [`SynClient::probe`] and checks another way.
struct Stopped(Arc<Shared>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let mut queue = self
            .0
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.0.failed.store(true, Ordering::Relaxed);
        queue.clear();
    }
}

/// A check whose SYN was sent: where its answer goes, and how to send the SYN again.
struct Pending {
    reply: oneshot::Sender<Probe>,
    packet: [u8; SYN_LEN],
    to: libc::sockaddr_in,
    /// When the SYN is sent again without an answer, and the wait after that.
    resend_at: Instant,
    wait: Duration,
}

/// The engine task: the socket answers arrive on, where they are read to, and the rest.
struct Engine {
    answers: AsyncFd<OwnedFd>,
    buffers: Box<[[u8; SNAP]; BATCH]>,
    state: State,
    /// Dropped with the engine's future, even one never polled.
    stopped: Stopped,
}

/// The engine's sockets for sending, its pending checks and their sequence numbers.
struct State {
    sockets: Sockets,
    shared: Arc<Shared>,
    /// Checks whose SYN was sent, by target and sequence number.
    pending: HashMap<(SocketAddrV4, u32), Pending>,
    /// SYNs the kernel had no room for (a full send buffer): written with the next batch.
    unsent: Vec<Outgoing>,
    /// Source address for each target address, and when it was learnt.
    sources: HashMap<Ipv4Addr, (Ipv4Addr, Instant)>,
    /// Which of the source ports each target's next check takes.
    turns: Turns,
    /// Keys the sequence numbers, so that they cannot be guessed from outside.
    seqs: RandomState,
    next: u64,
}

impl Engine {
    async fn run(self) {
        // However the task ends (an error, a panic, aborted, never started): the clients
        // see it at once, when `_stopped` is dropped.
        let Engine {
            answers,
            mut buffers,
            mut state,
            stopped: _stopped,
        } = self;
        let mut maintain = tokio::time::interval(MAINTAIN);
        maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = answers.readable() => match ready {
                    Ok(mut guard) => {
                        // Reads until the queue is empty; then the readiness is cleared.
                        while let Ok(result) =
                            guard.try_io(|fd| receive_batch(fd.as_raw_fd(), &mut buffers))
                        {
                            match result {
                                Ok(lengths) => state.answer(&buffers[..], &lengths),
                                Err(e) => {
                                    // Not ready again until the socket says so.
                                    guard.clear_ready();
                                    log::warn!("TCP checks: reading answers: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        log::error!(
                            "TCP checks: the answer socket failed ({e}); checks connect a \
                             socket per backend from now on"
                        );
                        return;
                    }
                },
                () = state.shared.wake.notified() => state.send_queued(),
                _ = maintain.tick() => state.maintain(),
            }
        }
    }
}

impl State {
    fn answer(&mut self, buffers: &[[u8; SNAP]], lengths: &[usize]) {
        for (buffer, &len) in buffers.iter().zip(lengths) {
            let waiting = parse_answer(&buffer[..len], self.sockets.first_port)
                .and_then(|a| Some((a, self.pending.remove(&(a.target, a.seq))?)));
            match waiting {
                Some((answer, pending)) => {
                    self.shared.stats.answered.fetch_add(1, Ordering::Relaxed);
                    // The caller may have given up (timed out) already.
                    let _ = pending.reply.send(answer.verdict.probe());
                }
                None => {
                    self.shared.stats.unmatched.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The source address for `target`, learnt at most [`SOURCE_TTL`] ago.
    fn source(&mut self, target: SocketAddrV4, now: Instant) -> io::Result<Ipv4Addr> {
        match self.sources.get(target.ip()) {
            Some(&(source, learnt)) if now.duration_since(learnt) < SOURCE_TTL => Ok(source),
            _ => {
                let source = self.sockets.source_for(target)?;
                self.sources.insert(*target.ip(), (source, now));
                Ok(source)
            }
        }
    }

    fn send_queued(&mut self) {
        let requests = std::mem::take(
            &mut *self
                .shared
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let now = Instant::now();
        let mut batch = std::mem::take(&mut self.unsent);
        for request in requests {
            let source = match self.source(request.target, now) {
                Ok(source) => source,
                Err(e) => {
                    let _ = request.reply.send(Err(crate::health::connect_reason(&e)));
                    continue;
                }
            };
            // A sequence number no other pending check of the target has.
            let seq = loop {
                self.next = self.next.wrapping_add(1);
                let seq = self.seqs.hash_one(self.next) as u32;
                if !self.pending.contains_key(&(request.target, seq)) {
                    break seq;
                }
            };
            let port = self.sockets.first_port + self.turns.next(request.target, now);
            let packet = syn_packet(source, port, request.target, seq);
            let to = sockaddr_in(request.target);
            self.pending.insert(
                (request.target, seq),
                Pending {
                    reply: request.reply,
                    packet,
                    to,
                    resend_at: now + FIRST_RESEND,
                    wait: FIRST_RESEND,
                },
            );
            batch.push((packet, to, (request.target, seq)));
        }
        self.send(batch);
    }

    /// Forgets the checks whose callers gave up and the targets not checked for a while,
    /// and sends again the SYNs left unanswered for their wait (which then doubles).
    fn maintain(&mut self) {
        let now = Instant::now();
        self.pending.retain(|_, pending| !pending.reply.is_closed());
        self.sources
            .retain(|_, (_, learnt)| now.duration_since(*learnt) < SOURCE_TTL);
        self.turns.forget_older_than(now, SOURCE_TTL);
        let mut batch = std::mem::take(&mut self.unsent);
        for (key, pending) in &mut self.pending {
            if pending.resend_at <= now {
                pending.wait *= 2;
                pending.resend_at = now + pending.wait;
                batch.push((pending.packet, pending.to, *key));
                self.shared.stats.resent.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.send(batch);
    }

    /// Writes `batch`, [`BATCH`] SYNs per `sendmmsg()`. A SYN the kernel refuses fails its
    /// check with the error (the kernel's route or neighbour error, as `connect()` would
    /// report it); when the send buffer is full, the rest wait for the next batch.
    fn send(&mut self, mut batch: Vec<Outgoing>) {
        // Only SYNs of checks still waiting, each once (a resend may meet its own unsent
        // first copy): a stale SYN on a reused source port could disturb a live check.
        let mut keys = std::collections::HashSet::with_capacity(batch.len());
        batch.retain(|(_, _, key)| self.pending.contains_key(key) && keys.insert(*key));
        let mut start = 0;
        while start < batch.len() {
            let end = batch.len().min(start + BATCH);
            let segments = &batch[start..end];
            // sendmmsg stops at the first message that fails, and reports its error only
            // when it is the first: the next round starts with it and learns the error.
            let error = match send_batch(self.sockets.send.as_raw_fd(), segments) {
                Ok(0) => io::Error::other("sendmmsg wrote nothing"),
                Ok(sent) => {
                    self.shared
                        .stats
                        .sent
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    start += sent;
                    continue;
                }
                Err(e) => e,
            };
            if error.kind() == io::ErrorKind::WouldBlock {
                log::debug!(
                    "TCP checks: send buffer full, {} SYNs wait for the next batch",
                    batch.len() - start
                );
                self.unsent.extend_from_slice(&batch[start..]);
                return;
            }
            let key = batch[start].2;
            if let Some(pending) = self.pending.remove(&key) {
                let _ = pending
                    .reply
                    .send(Err(crate::health::connect_reason(&error)));
            }
            start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 11), 80);

    #[test]
    fn checks_of_one_target_take_the_source_ports_in_turn() {
        let mut turns = Turns::default();
        let now = Instant::now();
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 12), 80);
        let offsets: Vec<u16> = (0..2 * SOURCE_PORTS)
            .map(|i| {
                // Another target's checks in between change nothing for this one.
                if i % 3 == 0 {
                    turns.next(other, now);
                }
                turns.next(TARGET, now)
            })
            .collect();
        let expected: Vec<u16> = (0..2 * SOURCE_PORTS).map(|i| i % SOURCE_PORTS).collect();
        assert_eq!(offsets, expected);
        // A target not checked for a while starts again at the first port.
        turns.forget_older_than(now + SOURCE_TTL, SOURCE_TTL);
        assert_eq!(turns.next(TARGET, now + SOURCE_TTL), 0);
    }

    /// An engine on the test's runtime.
    fn engine() -> SynProber {
        SynProber::start(&tokio::runtime::Handle::current())
            .expect("raw and packet sockets need CAP_NET_RAW: run the tests as root")
    }

    /// A listener on 127.0.0.1 with an accept queue of `backlog`.
    fn listener(backlog: u32) -> (tokio::net::TcpListener, SocketAddrV4) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let listener = socket.listen(backlog).unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        (listener, addr)
    }

    #[tokio::test]
    async fn syn_checks_find_listening_refusing_and_silent_ports() {
        let engine = engine();
        let client = engine.client();
        let ms = Duration::from_millis;

        // A listener with room for one connection in its accept queue.
        let (tiny, target) = listener(0);
        assert_eq!(client.probe(target).await, Some(Ok(())));
        // SYN, SYN-ACK and the kernel's reset: nothing reaches the accept queue.
        assert!(
            tokio::time::timeout(ms(200), tiny.accept()).await.is_err(),
            "a check left a connection for the backend to accept"
        );

        // A full accept queue drops SYNs silently: no answer, the caller's timeout.
        let queued = tokio::net::TcpStream::connect(target).await.unwrap();
        assert!(tokio::time::timeout(ms(300), client.probe(target))
            .await
            .is_err());
        drop(tiny.accept().await.unwrap());
        drop(queued);

        drop(tiny);
        assert_eq!(
            client.probe(target).await,
            Some(Err("connect refused".to_owned()))
        );

        // A route the kernel refuses (broadcast without SO_BROADCAST): the error of
        // `connect()`; the engine goes on.
        let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 80);
        let refused = client.probe(broadcast).await.expect("running").unwrap_err();
        assert!(
            refused.starts_with("connect failed: Permission denied"),
            "{refused}"
        );

        // Many checks at once: several sendmmsg and recvmmsg batches, every one answered.
        let (_open, open) = listener(1024);
        let checks: Vec<_> = (0..3 * BATCH)
            .map(|i| {
                let client = client.clone();
                let target = if i % 3 == 0 { target } else { open };
                tokio::spawn(async move { (target, client.probe(target).await) })
            })
            .collect();
        for check in checks {
            let (to, result) = check.await.unwrap();
            let expected = if to == target {
                Err("connect refused".to_owned())
            } else {
                Ok(())
            };
            assert_eq!(result, Some(expected), "{to}");
        }

        let stats = client.stats();
        let sent = stats.sent.load(Ordering::Relaxed);
        assert_eq!(sent, 3 + 3 * BATCH as u64, "SYNs written");
        assert_eq!(
            stats.answered.load(Ordering::Relaxed),
            sent - 1,
            "all but the dropped"
        );
        assert_eq!(
            stats.unmatched.load(Ordering::Relaxed),
            0,
            "the filter let through packets that answer no check"
        );
    }

    #[tokio::test]
    async fn concurrent_checks_of_one_target_are_all_answered() {
        // Two pools can check the same backend, and their checks can fall in one batch:
        // each must be matched to its own answer (by sequence number). (Over loopback a
        // SYN is answered and reset before the next is sent; that checks in flight at
        // once use different source ports is `checks_of_one_target_take_the_source_ports_
        // in_turn`.)
        let engine = engine();
        let client = engine.client();
        let (_listener, target) = listener(1024);
        for round in 0..5 {
            let checks: Vec<_> = (0..4)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        tokio::time::timeout(Duration::from_millis(500), client.probe(target)).await
                    })
                })
                .collect();
            for check in checks {
                let result = check.await.unwrap();
                assert_eq!(
                    result,
                    Ok(Some(Ok(()))),
                    "round {round}: a check got no answer"
                );
            }
        }
    }

    #[tokio::test]
    async fn an_unanswered_syn_is_sent_again_after_a_second() {
        let engine = engine();
        let client = engine.client();
        // A full accept queue drops the first SYN, as a lossy network would.
        let (tiny, target) = listener(0);
        let queued = tokio::net::TcpStream::connect(target).await.unwrap();
        let started = Instant::now();
        let check = tokio::spawn({
            let client = client.clone();
            async move { client.probe(target).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tiny.accept().await.unwrap());
        drop(queued);
        // The queue has room again; the SYN sent again at about 1 s is answered.
        let result = tokio::time::timeout(Duration::from_secs(3), check)
            .await
            .expect("an answer within 3 s")
            .unwrap();
        assert_eq!(result, Some(Ok(())));
        let waited = started.elapsed();
        assert!(
            waited >= FIRST_RESEND.checked_sub(MAINTAIN).unwrap()
                && waited < FIRST_RESEND + 3 * MAINTAIN,
            "answered after {waited:?}"
        );
        assert_eq!(client.stats().resent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn checks_use_a_socket_once_the_engine_has_stopped() {
        let engine = engine();
        let client = engine.client();
        let (_listener, target) = listener(1024);
        assert_eq!(client.probe(target).await, Some(Ok(())));
        drop(engine);
        // The abort takes effect when the runtime next gets to the engine task.
        for _ in 0..100 {
            if client.shared.failed.load(Ordering::Relaxed) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            client.probe(target).await,
            None,
            "a stopped engine takes no check"
        );

        let mut prober = crate::health::Prober::with_syn(Some(client));
        let tcp = crate::health::config::CheckConfig {
            kind: crate::health::config::CheckKind::Tcp,
            timeout: Duration::from_millis(500),
            ..crate::health::config::CheckConfig::default()
        };
        let outcome = prober.check(&tcp, std::net::SocketAddr::V4(target)).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(prober.syn.is_none(), "the prober left the stopped engine");
        assert!(prober.tcp.is_some(), "and checked with its own socket");
    }

    #[tokio::test]
    async fn an_engine_stopped_before_it_ran_takes_no_check() {
        // On this current-thread runtime the engine's task has not been polled yet.
        let engine = engine();
        let client = engine.client();
        drop(engine);
        for _ in 0..100 {
            if client.shared.failed.load(Ordering::Relaxed) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (_listener, target) = listener(16);
        let probe = tokio::time::timeout(Duration::from_secs(1), client.probe(target));
        assert_eq!(
            probe.await,
            Ok(None),
            "a check waited for an engine that never ran"
        );
    }
}
