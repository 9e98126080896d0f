//! Health checks of backends: the rise/fall state machine ([`Tracker`]), single TCP, HTTP
//! and UDP probes ([`check_once`]), and the [`Checker`] that runs them periodically on tokio
//! and reports every result to the agent's owner task as a [`HealthEvent`].
//!
//! The semantics are HAProxy's `check` (and keepalived's real-server checks):
//!
//! * A backend that is up goes down after `fall` consecutive failed checks; a backend that
//!   is down comes up after `rise` consecutive successful checks. A result that agrees with
//!   the current state resets the count of the opposite results, so a flapping backend
//!   (alternating results) never changes state while `rise`, `fall` > 1.
//! * Checks run every `interval`; every `fastinter` while a transition is pending (some
//!   opposite results seen, not yet enough); every `downinter` while the backend is down.
//! * The first check of a backend is delayed by a random fraction of `interval`, and every
//!   later delay is varied by +-10%, so that many backends are not checked in lock step.
//!   Start times are then rounded up to a tick (a 16th of the pause, at most 50 ms), so that
//!   the checks of many backends run in batches: one wake-up of the runtime, and for TCP
//!   checks one `sendmmsg()`, per batch rather than per check (and the owner task hears
//!   only of results that changed).
//! * One check (connect, request, response) never takes longer than `timeout`.
//! * TCP and HTTP check connections are closed with a reset (zero linger), as HAProxy
//!   does, so that checks leave no `TIME_WAIT` sockets behind on the balancer host. A TCP
//!   check of an IPv4 target is a bare SYN sent in a batch from a raw socket, whose SYN-ACK
//!   the kernel resets (see [`syn`]); without raw sockets (no `CAP_NET_RAW`) or for IPv6, it
//!   reuses one socket per backend and resets before the handshake's last ACK (see
//!   [`tcp`]).
//!
//! Type `none` means "not checked": the backend is always up and no task runs.
//!
//! The checks run on a current-thread tokio runtime in a thread of the [`Checker`]'s own.
//! Measured cost (`cargo xtask bench -- --only health`: the real agent, 1000 TCP-checked
//! backends at 1 s in another namespace whose packets another CPU handles, 2-vCPU VM):
//! about 2% of one core for the agent process with SYN checks (6.0-6.8% with a socket per
//! backend); `health_cpu_1000_tcp_backends` measures the same over loopback, where the
//! listening side's half of each handshake is billed to the checker too.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use humantime_serde::re::humantime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub mod config;
mod syn;
mod tcp;

use config::{CheckConfig, CheckKind, HttpCheck, UdpCheck, MIN_CHECK_DURATION};
use syn::{SynClient, SynProber};
use tcp::CheckSocket;

use crate::spelling::config_words;

/// Most bytes of an HTTP response's status line and headers that are read.
pub const MAX_HTTP_HEAD: usize = 16 * 1024;
/// Most bytes of an HTTP response body searched for `expect_body`.
pub const MAX_HTTP_BODY: usize = 64 * 1024;
/// Largest UDP reply that is read whole.
const MAX_UDP_REPLY: usize = 64 * 1024;
/// The `User-Agent` of HTTP checks.
const USER_AGENT: &str = "balancer-health-check";

// ---------------------------------------------------------------------------
// Health and the rise/fall tracker
// ---------------------------------------------------------------------------

/// Whether a backend takes new flows as far as health checks are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Up,
    Down,
}

config_words!(Health, "initial state", "\"up\" or \"down\"", { Up => "up", Down => "down" });

impl Health {
    /// `"UP"` or `"DOWN"`, as state changes are logged.
    #[must_use]
    pub const fn as_upper_str(self) -> &'static str {
        match self {
            Health::Up => "UP",
            Health::Down => "DOWN",
        }
    }
}

/// Rise/fall state machine of one backend (HAProxy's semantics: a backend that is Up goes
/// Down after `fall` consecutive failures; Down goes Up after `rise` consecutive successes;
/// a success while Up resets the failure count and vice versa).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    health: Health,
    rise: u32,
    fall: u32,
    /// Consecutive results that disagree with `health` (failures while up, successes
    /// while down).
    opposite: u32,
}

impl Tracker {
    /// A tracker in state `initial`; `rise` and `fall` below 1 count as 1.
    #[must_use]
    pub fn new(initial: Health, rise: u32, fall: u32) -> Self {
        Tracker {
            health: initial,
            rise: rise.max(1),
            fall: fall.max(1),
            opposite: 0,
        }
    }

    /// The current state.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health
    }

    /// Consecutive successes needed to go up.
    #[must_use]
    pub fn rise(&self) -> u32 {
        self.rise
    }

    /// Consecutive failures needed to go down.
    #[must_use]
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Records one check result; returns `Some((old, new))` on a state change.
    pub fn record(&mut self, ok: bool) -> Option<(Health, Health)> {
        let (agrees, needed, next) = match self.health {
            Health::Up => (ok, self.fall, Health::Down),
            Health::Down => (!ok, self.rise, Health::Up),
        };
        if agrees {
            self.opposite = 0;
            return None;
        }
        self.opposite = self.opposite.saturating_add(1);
        if self.opposite < needed {
            return None;
        }
        let old = self.health;
        self.health = next;
        self.opposite = 0;
        Some((old, next))
    }

    /// Whether a transition is pending (some opposite results seen but not enough).
    #[must_use]
    pub fn in_transition(&self) -> bool {
        self.opposite > 0
    }
}

// ---------------------------------------------------------------------------
// One check
// ---------------------------------------------------------------------------

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// From the start of the check to its result.
    pub latency: Duration,
    /// `"ok"`, or why the check failed: `"connect refused"`, `"status 503"`,
    /// `"body lacks \"ok\""`, `"timeout after 1s"`, `"no reply (timeout after 1s)"`, ...
    pub reason: String,
}

/// Runs one check of `check.kind` against `target` with `check.timeout`, never panics,
/// never takes longer than the timeout (+ scheduling slack).
///
/// `target` is probed as given: [`CheckConfig::target`] applies the check's `address`
/// and `port` overrides to a backend's address (the [`Checker`] does that itself).
/// Type `none` succeeds at once without touching the network. (The [`Checker`]'s tasks
/// use a [`Prober`] each, which keeps its TCP check socket between checks.)
pub async fn check_once(check: &CheckConfig, target: SocketAddr) -> CheckOutcome {
    Prober::default().check(check, target).await
}

/// Runs the checks of one backend (one target address), one after the other, keeping what
/// can be reused between them: the socket of TCP checks (see [`tcp`]), unless TCP checks
/// of IPv4 targets go to a SYN engine (see [`syn`]).
#[derive(Default)]
pub struct Prober {
    tcp: Option<CheckSocket>,
    syn: Option<SynClient>,
}

impl Prober {
    /// A prober whose TCP checks of IPv4 targets are sent by `syn`'s engine.
    fn with_syn(syn: Option<SynClient>) -> Prober {
        Prober { tcp: None, syn }
    }

    /// Like [`check_once`].
    pub async fn check(&mut self, check: &CheckConfig, target: SocketAddr) -> CheckOutcome {
        let start = Instant::now();
        let result = match &check.kind {
            CheckKind::Tcp => self.tcp_probe(check, target).await,
            kind => {
                let probe = async {
                    match kind {
                        CheckKind::Http(http) => http_probe(http, target).await,
                        CheckKind::Udp(udp) => udp_probe(udp, target).await,
                        CheckKind::None | CheckKind::Tcp => Ok(()),
                    }
                };
                tokio::time::timeout(check.timeout, probe)
                    .await
                    .unwrap_or_else(|_| Err(timeout_reason(check)))
            }
        };
        let latency = start.elapsed();
        match result {
            Ok(()) => CheckOutcome {
                ok: true,
                latency,
                reason: "ok".to_owned(),
            },
            Err(reason) => CheckOutcome {
                ok: false,
                latency,
                reason,
            },
        }
    }

    /// Sends a SYN through the engine (IPv4 targets, while there is one); otherwise connects
    /// the kept socket (a new one the first time, or after an error), then resets the
    /// connection. Both within the check's timeout.
    async fn tcp_probe(&mut self, check: &CheckConfig, target: SocketAddr) -> Probe {
        let deadline = Instant::now() + check.timeout;
        if let (Some(syn), SocketAddr::V4(v4)) = (&self.syn, target) {
            match tokio::time::timeout_at(deadline, syn.probe(v4)).await {
                Ok(Some(result)) => return result,
                // The engine has stopped: this check and the next ones use the socket.
                Ok(None) => self.syn = None,
                Err(_) => return Err(timeout_reason(check)),
            }
        }
        let mut socket = match self.tcp.take() {
            Some(socket) => socket,
            None => CheckSocket::new(target).map_err(|e| format!("cannot create a socket: {e}"))?,
        };
        let result = match tokio::time::timeout_at(deadline, socket.connect(target)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(connect_reason(&e)),
            Err(_) => Err(timeout_reason(check)),
        };
        // A socket that cannot be reset is dropped (closed); the next check makes another.
        match socket.reset() {
            Ok(()) => self.tcp = Some(socket),
            Err(e) => log::debug!("{target}: resetting the check socket: {e}"),
        }
        result
    }
}

fn timeout_reason(check: &CheckConfig) -> String {
    let after = humantime::format_duration(check.timeout);
    match check.kind {
        CheckKind::Udp(_) => format!("no reply (timeout after {after})"),
        _ => format!("timeout after {after}"),
    }
}

/// Why a probe failed, as shown in [`CheckOutcome::reason`].
type Probe = Result<(), String>;

fn connect_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".to_owned(),
        _ => format!("connect failed: {e}"),
    }
}

async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| connect_reason(&e))?;
    // Close with RST rather than FIN, as HAProxy does: no TIME_WAIT per check on this
    // host. A zero linger never blocks the closing thread.
    let _ = stream.set_zero_linger();
    Ok(stream)
}

/// The `Host` header when the check gives none: the address, with the port unless 80.
fn default_host(target: SocketAddr) -> String {
    match (target, target.port()) {
        (SocketAddr::V4(a), 80) => a.ip().to_string(),
        (SocketAddr::V6(a), 80) => format!("[{}]", a.ip()),
        (a, _) => a.to_string(),
    }
}

/// The bytes of the request an HTTP check sends. HTTP/1.0, so that the body is never
/// chunked; `Host` for virtual hosts; `Connection: close` for servers that keep 1.0
/// connections alive anyway.
fn http_request(http: &HttpCheck, target: SocketAddr) -> String {
    let host = http.host.clone().unwrap_or_else(|| default_host(target));
    format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.method, http.path
    )
}

/// Reads more of the response into `buf`, at most up to `limit` bytes in all.
/// Returns how many bytes were added (0 at end of stream). Reads straight into `buf`:
/// a buffer on the stack would live in every check task's future.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    const CHUNK: usize = 8192;
    let old = buf.len();
    let room = limit.saturating_sub(old).min(CHUNK);
    if room == 0 {
        return Ok(0);
    }
    buf.resize(old + room, 0);
    let read = match buf.get_mut(old..) {
        Some(spare) => stream.read(spare).await,
        None => Ok(0),
    };
    buf.truncate(old + *read.as_ref().unwrap_or(&0));
    read
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`, without the line end).
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let rest = rest.get(space + 1..)?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// A short printable rendering of bytes received, for a failure reason.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes.get(..bytes.len().min(40)).unwrap_or_default());
    let mut out: String = text.chars().filter(|c| !c.is_control()).collect();
    if bytes.len() > 40 {
        out.push_str("...");
    }
    out
}

async fn http_probe(http: &HttpCheck, target: SocketAddr) -> Probe {
    let mut stream = connect(target).await?;
    stream
        .write_all(http_request(http, target).as_bytes())
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let read_failed = |e: io::Error| format!("receive failed: {e}");

    // The status line.
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let status = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.get(..end).unwrap_or_default();
            break parse_status_line(line)
                .ok_or_else(|| format!("bad status line \"{}\"", excerpt(line)))?;
        }
        if buf.len() >= MAX_HTTP_HEAD {
            return Err(format!("status line longer than {MAX_HTTP_HEAD} bytes"));
        }
        if read_more(&mut stream, &mut buf, MAX_HTTP_HEAD)
            .await
            .map_err(read_failed)?
            == 0
        {
            return Err(if buf.is_empty() {
                "connection closed without a response".to_owned()
            } else {
                format!("bad status line \"{}\"", excerpt(&buf))
            });
        }
    };
    if !http.expect_status.contains(status) {
        return Err(format!("status {status}"));
    }
    let Some(expected) = &http.expect_body else {
        return Ok(());
    };

    // The end of the headers.
    let body_start = loop {
        let crlf = find(&buf, b"\r\n\r\n").map(|i| i + 4);
        let lf = find(&buf, b"\n\n").map(|i| i + 2);
        if let Some(start) = match (crlf, lf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        } {
            break start;
        }
        if buf.len() >= MAX_HTTP_HEAD {
            return Err(format!("headers longer than {MAX_HTTP_HEAD} bytes"));
        }
        if read_more(&mut stream, &mut buf, MAX_HTTP_HEAD)
            .await
            .map_err(read_failed)?
            == 0
        {
            return Err("connection closed inside the headers".to_owned());
        }
    };

    // The body, up to MAX_HTTP_BODY bytes, searched as it arrives.
    let needle = expected.as_bytes();
    let limit = body_start.saturating_add(MAX_HTTP_BODY);
    let mut searched = body_start;
    loop {
        let end = buf.len().min(limit);
        if find(buf.get(searched..end).unwrap_or_default(), needle).is_some() {
            return Ok(());
        }
        // The next search starts where a match could still begin.
        searched = end
            .saturating_sub(needle.len().saturating_sub(1))
            .max(body_start);
        if end >= limit {
            return Err(format!(
                "body lacks {expected:?} (in its first {} KiB)",
                MAX_HTTP_BODY / 1024
            ));
        }
        if read_more(&mut stream, &mut buf, limit)
            .await
            .map_err(read_failed)?
            == 0
        {
            return Err(format!("body lacks {expected:?}"));
        }
    }
}

async fn udp_probe(udp: &UdpCheck, target: SocketAddr) -> Probe {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("socket failed: {e}"))?;
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    // ICMP port unreachable shows up as ECONNREFUSED on a connected UDP socket.
    let unreachable = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused => "port unreachable".to_owned(),
        _ => format!("receive failed: {e}"),
    };
    socket
        .send(udp.payload.as_bytes())
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => "port unreachable".to_owned(),
            _ => format!("send failed: {e}"),
        })?;
    let mut reply = Vec::with_capacity(MAX_UDP_REPLY);
    socket.recv_buf(&mut reply).await.map_err(unreachable)?;
    match &udp.expect {
        Some(expected) if find(&reply, expected.as_bytes()).is_none() => {
            Err(format!("reply lacks {expected:?}"))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Periodic checks
// ---------------------------------------------------------------------------

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
        (d - tenth).saturating_add(self.below(tenth.saturating_mul(2)))
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
            _stop: stop,
        }
    }

    /// Starts (or restarts with the new config) checking one backend; the first check runs
    /// after a random jitter in `[0, interval)` so checks are spread in time; every later
    /// interval gets +-10% jitter too. `initial` is the starting health.
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
        initial: Health,
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
/// a batch's packets between CPUs): `cargo xtask bench -- --only health` measured
/// 3.1-4.6% of one core with a 10 ms tick, 2.4-2.5% with 25 ms and 1.7-1.9% with 50 ms.
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
    initial: Health,
    events: mpsc::Sender<HealthEvent>,
    latest: LatestSlot,
    jitter: Jitter,
    /// Origin of the ticks that checks start on (see [`aligned_deadline`]).
    epoch: Instant,
    /// The engine of TCP checks to IPv4 targets, if any.
    syn: Option<SynClient>,
    /// The task's number ([`HealthEvent::task`]).
    task: u64,
}

impl CheckTask {
    /// The loop of the task; ends when the event receiver is gone.
    async fn run(mut self) {
        let (pool, backend, check) = (&self.pool, self.backend, &self.check);
        let target = SocketAddr::V4(check.target(backend));
        let mut tracker = Tracker::new(self.initial, check.rise, check.fall);
        let mut prober = Prober::with_syn(self.syn.take());
        let first = self.jitter.below(check.interval);
        tokio::time::sleep_until(aligned_deadline(self.epoch, Instant::now(), first)).await;
        loop {
            let outcome = prober.check(check, target).await;
            let transition = tracker.record(outcome.ok);
            if let Some((old, new)) = transition {
                log_transition(pool, backend, old, new, &tracker, &outcome.reason);
            }
            // The slot holds the previous check: an event only when the result changed.
            let event = {
                let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
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
        "pool {pool}: backend {backend} {} -> {} ({reason}, {count} consecutive {what}{plural})",
        old.as_upper_str(),
        new.as_upper_str(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::StatusRanges;
    use tokio::net::{TcpListener, UdpSocket};
    use tokio::task::JoinHandle;

    const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn check(kind: CheckKind, timeout: Duration) -> CheckConfig {
        CheckConfig {
            kind,
            timeout,
            ..CheckConfig::default()
        }
    }

    fn http(expect_body: Option<&str>) -> CheckKind {
        CheckKind::Http(HttpCheck {
            path: "/health".into(),
            expect_body: expect_body.map(str::to_owned),
            ..HttpCheck::default()
        })
    }

    fn udp(payload: &str, expect: Option<&str>) -> CheckKind {
        CheckKind::Udp(UdpCheck {
            payload: payload.into(),
            expect: expect.map(str::to_owned),
        })
    }

    /// A port on 127.0.0.1 that nothing listens on (bound, then closed).
    fn closed_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap()
    }

    /// An HTTP server for one request: answers `response` and returns the request.
    async fn http_server(response: &'static str) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&request, b"\r\n\r\n").is_none() {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before the end of the request");
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (addr, task)
    }

    // -- Tracker --------------------------------------------------------------

    #[test]
    fn tracker_falls_after_fall_failures_from_up() {
        let mut t = Tracker::new(Health::Up, 2, 3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert!(t.in_transition());
        assert_eq!(t.health(), Health::Up);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
        assert_eq!(t.health(), Health::Down);
        assert!(!t.in_transition());
        // More failures keep it down without further transitions.
        assert_eq!(t.record(false), None);
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn tracker_rises_after_rise_successes_from_down() {
        let mut t = Tracker::new(Health::Down, 2, 3);
        assert_eq!(t.record(true), None);
        assert!(t.in_transition());
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
        assert_eq!(t.health(), Health::Up);
        assert!(!t.in_transition());
        assert_eq!(t.record(true), None);
        // And back down after `fall` failures.
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
    }

    #[test]
    fn tracker_opposite_result_resets_the_count() {
        let mut t = Tracker::new(Health::Up, 2, 3);
        t.record(false);
        t.record(false);
        assert_eq!(t.record(true), None);
        assert!(!t.in_transition());
        // The count starts over: three more failures are needed.
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));

        let mut t = Tracker::new(Health::Down, 3, 3);
        t.record(true);
        t.record(true);
        assert_eq!(t.record(false), None);
        assert!(!t.in_transition());
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
    }

    #[test]
    fn tracker_flapping_never_transitions() {
        for initial in [Health::Up, Health::Down] {
            let mut t = Tracker::new(initial, 2, 3);
            for i in 0..100 {
                assert_eq!(t.record(i % 2 == 0), None, "check {i} from {initial}");
                assert_eq!(t.health(), initial);
            }
        }
    }

    #[test]
    fn tracker_rise_and_fall_of_one() {
        let mut t = Tracker::new(Health::Up, 1, 1);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
        assert!(!t.in_transition());
        // 0 counts as 1.
        let mut t = Tracker::new(Health::Up, 0, 0);
        assert_eq!((t.rise(), t.fall()), (1, 1));
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
    }

    #[test]
    fn health_words() {
        assert_eq!("UP".parse::<Health>(), Ok(Health::Up));
        assert_eq!("down".parse::<Health>(), Ok(Health::Down));
        assert_eq!(
            "sideways".parse::<Health>().unwrap_err().to_string(),
            "invalid initial state \"sideways\": expected \"up\" or \"down\""
        );
        assert_eq!(Health::Down.to_string(), "down");
        assert_eq!(serde_json::to_string(&Health::Up).unwrap(), "\"up\"");
    }

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
        let epoch = Instant::now();
        let mut jitter = Jitter::seeded(7);
        let pause = ms(1000);
        let tick = TICK.as_nanos();
        let mut total = 0i128;
        const N: u32 = 1000;
        for _ in 0..N {
            let now = epoch + jitter.below(Duration::from_secs(3600));
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
            initial: Health::Up,
            events: tx,
            latest: LatestSlot::default(),
            jitter: Jitter::seeded(1),
            epoch: Instant::now(),
            syn: None,
            task: 1,
        }
        .run();
        let size = std::mem::size_of_val(&task);
        assert!(size < 4096, "a check task's future takes {size} bytes");
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/2 404 Not Found"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH_9.2"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    // -- check_once -----------------------------------------------------------

    #[tokio::test]
    async fn tcp_check_ok() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        let outcome = check_once(&check(CheckKind::Tcp, ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "ok");
        assert!(outcome.latency < ms(1000));
    }

    #[tokio::test]
    async fn tcp_check_refused() {
        let outcome = check_once(&check(CheckKind::Tcp, ms(1000)), closed_port()).await;
        assert!(!outcome.ok);
        assert!(outcome.reason.contains("refused"), "{outcome:?}");
    }

    /// The kept socket's descriptor, asserting there is one.
    fn kept_fd(prober: &Prober) -> i32 {
        use std::os::fd::AsRawFd as _;
        prober
            .tcp
            .as_ref()
            .expect("a kept TCP socket")
            .fd()
            .as_raw_fd()
    }

    /// A listener whose accept queue holds one connection (backlog 0), so a second SYN
    /// before an accept is dropped silently.
    fn tiny_listener(port: u16) -> TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from((LOCALHOST, port))).unwrap();
        socket.listen(0).unwrap()
    }

    #[tokio::test]
    async fn prober_keeps_one_socket_through_success_timeout_and_refusal() {
        let tcp = check(CheckKind::Tcp, ms(300));
        let listener = tiny_listener(0);
        let target = listener.local_addr().unwrap();
        let mut prober = Prober::default();

        let first = prober.check(&tcp, target).await;
        assert!(first.ok, "{first:?}");
        let fd = kept_fd(&prober);
        // The handshake's last ACK was never sent (the reset came first): nothing reaches
        // the backend's accept queue.
        assert!(
            tokio::time::timeout(ms(200), listener.accept())
                .await
                .is_err(),
            "a check left a connection for the backend to accept"
        );
        assert!(prober.check(&tcp, target).await.ok);

        // A full accept queue drops SYNs silently: the check times out.
        let queued = tokio::net::TcpStream::connect(target).await.unwrap();
        let timed_out = prober.check(&tcp, target).await;
        assert_eq!(timed_out.reason, "timeout after 300ms", "{timed_out:?}");
        assert_eq!(kept_fd(&prober), fd);
        drop(listener.accept().await.unwrap());
        drop(queued);
        let after_timeout = prober.check(&tcp, target).await;
        assert!(after_timeout.ok, "{after_timeout:?}");

        drop(listener);
        let refused = prober.check(&tcp, target).await;
        assert!(refused.reason.contains("refused"), "{refused:?}");
        assert_eq!(kept_fd(&prober), fd);

        let _listener = tiny_listener(target.port());
        let back = prober.check(&tcp, target).await;
        assert!(back.ok, "{back:?}");
        assert_eq!(kept_fd(&prober), fd, "one socket for every check");
    }

    #[tokio::test]
    async fn http_check_times_out_when_server_never_answers() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        // Accepts and holds the connection, never answering.
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        });
        let outcome = check_once(&check(http(None), ms(200)), target).await;
        server.abort();
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "timeout after 200ms");
        assert!(outcome.latency >= ms(200), "{outcome:?}");
        assert!(outcome.latency < ms(1000), "{outcome:?}");
    }

    #[tokio::test]
    async fn http_check_ok_and_request_shape() {
        let (target, server) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /health HTTP/1.0\r\n"), "{request}");
        assert!(
            request.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", target.port())),
            "{request}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
    }

    #[tokio::test]
    async fn http_check_host_and_method() {
        let (target, server) = http_server("HTTP/1.0 204 No Content\r\n\r\n").await;
        let kind = CheckKind::Http(HttpCheck {
            method: "HEAD".into(),
            host: Some("example.org".into()),
            ..HttpCheck::default()
        });
        let outcome = check_once(&check(kind, ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        let request = server.await.unwrap();
        assert!(request.starts_with("HEAD / HTTP/1.0\r\n"), "{request}");
        assert!(request.contains("\r\nHost: example.org\r\n"), "{request}");
    }

    #[tokio::test]
    async fn http_check_bad_status() {
        let (target, _server) =
            http_server("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "status 500");

        // The same status is fine when listed.
        let (target, _server) = http_server("HTTP/1.1 500 Oops\r\n\r\n").await;
        let kind = CheckKind::Http(HttpCheck {
            expect_status: "200,500-503".parse::<StatusRanges>().unwrap(),
            ..HttpCheck::default()
        });
        assert!(check_once(&check(kind, ms(1000)), target).await.ok);
    }

    #[tokio::test]
    async fn http_check_body() {
        let (target, _server) = http_server("HTTP/1.1 200 OK\r\n\r\nnot ready").await;
        let outcome = check_once(&check(http(Some("ok")), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "body lacks \"ok\"");

        let (target, _server) = http_server("HTTP/1.1 200 OK\r\nX-Ok: no\r\n\r\nall is ok\n").await;
        let outcome = check_once(&check(http(Some("ok")), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");

        // The text in a header does not count.
        let (target, _server) = http_server("HTTP/1.1 200 OK\r\nX-Ok: ok\r\n\r\nnope").await;
        assert!(
            !check_once(&check(http(Some("ok")), ms(1000)), target)
                .await
                .ok
        );
    }

    #[tokio::test]
    async fn http_check_body_across_reads() {
        // A body larger than one read, with the text straddling read boundaries.
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            stream.write_all(&[b'x'; 20_000]).await.unwrap();
            stream.write_all(b"sta").await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(ms(20)).await;
            stream.write_all(b"tus: green").await.unwrap();
        });
        let outcome = check_once(&check(http(Some("status: green")), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
    }

    #[tokio::test]
    async fn http_check_not_http() {
        let (target, _server) = http_server("SSH-2.0-OpenSSH_9.2\r\n").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "bad status line \"SSH-2.0-OpenSSH_9.2\"");

        let (target, _server) = http_server("").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert_eq!(outcome.reason, "connection closed without a response");

        let outcome = check_once(&check(http(None), ms(1000)), closed_port()).await;
        assert_eq!(outcome.reason, "connect refused");
    }

    #[tokio::test]
    async fn udp_check_echo() {
        let server = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                let reply: &[u8] = if &buf[..n] == b"ping" {
                    b"pong"
                } else {
                    &buf[..n]
                };
                server.send_to(reply, from).await.unwrap();
            }
        });
        let outcome = check_once(&check(udp("ping", Some("pong")), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        // An empty datagram, any reply.
        let outcome = check_once(&check(udp("", None), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        // A reply without the expected text.
        let outcome = check_once(&check(udp("hello", Some("pong")), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "reply lacks \"pong\"");
    }

    #[tokio::test]
    async fn udp_check_no_reply() {
        // Bound, so no ICMP unreachable comes back, but never answers.
        let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let target = silent.local_addr().unwrap();
        let outcome = check_once(&check(udp("ping", None), ms(150)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "no reply (timeout after 150ms)");
        assert!(outcome.latency >= ms(150));
        drop(silent);
    }

    #[tokio::test]
    async fn udp_check_port_unreachable() {
        let closed = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let target = closed.local_addr().unwrap();
        drop(closed);
        let outcome = check_once(&check(udp("ping", None), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "port unreachable");
    }

    #[tokio::test]
    async fn none_check_is_always_ok() {
        let outcome = check_once(&CheckConfig::default(), closed_port()).await;
        assert!(outcome.ok);
    }

    // -- Checker --------------------------------------------------------------

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

    #[tokio::test]
    async fn checker_follows_a_backend_down_and_up() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
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
        let (tx, mut events) = mpsc::channel(16);
        let mut checker = Checker::new(tx);
        let slot = checker
            .start("web", addr, &check, Health::Up)
            .expect("a check task");
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
            .start("p", backend, &check, Health::Down)
            .expect("a check task");
        let first = next_event(&mut events).await;
        assert_eq!((first.health, first.transition), (Health::Down, None));
        let second = next_event(&mut events).await;
        assert_eq!(second.transition, Some((Health::Down, Health::Up)));

        // Restarting replaces the task (the old one stops) and takes the given state;
        // type none stops it.
        let slot = checker
            .start("p", backend, &check, Health::Up)
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
            .start("p", backend, &CheckConfig::default(), Health::Up)
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
        checker.start("p", addr, &check, Health::Up);
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
        checker.start("p", addr, &check, Health::Up);
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
            let rc = unsafe { libc::getrusage(who, &mut usage) };
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
                        .start("cpu", backend, &check, Health::Up)
                        .expect("a check task")
                })
                .collect();
            tokio::time::sleep(RUN).await;
            let end = cpu(libc::RUSAGE_SELF);
            let process = [end[0] - start[0], end[1] - start[1]];
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
