//! Long-lived flows through a VIP that keep exchanging data and check it, for the flow-sync
//! tests: TCP connections in the test server's echo mode (`Upgrade: echo`), each sending a
//! counter and reading it back, and UDP flows (one socket, so one client port, each) whose
//! every answer must come from the backend that answered first. Each flow runs in a thread
//! of its own inside the client namespace and records when it last succeeded, the longest
//! time between two successes, and the error that ended it, if any.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{enter_netns_path, Netns};

/// How often each flow exchanges a message.
const PACE: Duration = Duration::from_millis(100);
/// One read's wait: short, so that a stopping flow notices soon.
const READ_WAIT: Duration = Duration::from_millis(100);

/// What one flow saw.
#[derive(Debug, Clone)]
pub struct FlowState {
    /// `tcp N` or `udp N`.
    pub name: String,
    /// The backend that served it (its test server's name).
    pub backend: String,
    /// Messages sent and checked back.
    pub exchanged: u64,
    /// When the last one came back.
    pub last_ok: Instant,
    /// The longest time between two that came back, and when that gap ended.
    pub longest_gap: Duration,
    pub longest_gap_end: Option<Instant>,
    /// What ended the flow (a reset, wrong data, another backend).
    pub error: Option<String>,
}

/// Long-lived flows running until dropped (or [`LongFlows::stop`]).
pub struct LongFlows {
    stop: Arc<AtomicBool>,
    states: Vec<Arc<Mutex<FlowState>>>,
    threads: Vec<JoinHandle<()>>,
}

impl LongFlows {
    /// Opens `tcp` echo connections to `http` and `udp` flows to `dns` from `ns`, and
    /// returns once each exchanged its first message (within 5 s).
    pub fn start(
        ns: &Netns,
        http: SocketAddrV4,
        tcp: usize,
        dns: SocketAddrV4,
        udp: usize,
    ) -> Result<LongFlows> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut flows = LongFlows {
            stop: Arc::clone(&stop),
            states: Vec::new(),
            threads: Vec::new(),
        };
        let kinds = (0..tcp)
            .map(|i| (format!("tcp {i}"), true))
            .chain((0..udp).map(|i| (format!("udp {i}"), false)));
        for (name, is_tcp) in kinds {
            let state = Arc::new(Mutex::new(FlowState {
                name: name.clone(),
                backend: String::new(),
                exchanged: 0,
                last_ok: Instant::now(),
                longest_gap: Duration::ZERO,
                longest_gap_end: None,
                error: None,
            }));
            let (path, stop, shared) = (ns.path(), Arc::clone(&stop), Arc::clone(&state));
            flows.threads.push(thread::spawn(move || {
                let outcome = enter_netns_path(&path).and_then(|()| {
                    if is_tcp {
                        run_tcp(http, &stop, &shared)
                    } else {
                        run_udp(dns, &stop, &shared)
                    }
                });
                if let Err(e) = outcome {
                    lock(&shared).error = Some(format!("{e:#}"));
                }
            }));
            flows.states.push(state);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while flows
            .states()
            .iter()
            .any(|s| s.exchanged == 0 && s.error.is_none())
        {
            if Instant::now() > deadline {
                bail!("flows not started within 5 s: {:?}", flows.states());
            }
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(failed) = flows.states().iter().find(|s| s.error.is_some()) {
            bail!("{} failed at start: {:?}", failed.name, failed.error);
        }
        Ok(flows)
    }

    /// Every flow now.
    pub fn states(&self) -> Vec<FlowState> {
        self.states.iter().map(|s| lock(s).clone()).collect()
    }

    /// Panics unless every flow is alive and exchanged a message after `since`, and none
    /// went longer than `max_gap` without one; returns the longest gap seen.
    pub fn assert_alive(&self, since: Instant, max_gap: Duration, what: &str) -> Duration {
        let states = self.states();
        let broken: Vec<&FlowState> = states.iter().filter(|s| s.error.is_some()).collect();
        assert!(
            broken.is_empty(),
            "{what}: {} flow(s) broke: {broken:#?}",
            broken.len()
        );
        let stuck: Vec<&FlowState> = states.iter().filter(|s| s.last_ok < since).collect();
        assert!(
            stuck.is_empty(),
            "{what}: {} flow(s) exchanged nothing since: {stuck:#?}",
            stuck.len()
        );
        let longest = states
            .iter()
            .map(|s| s.longest_gap)
            .max()
            .unwrap_or_default();
        assert!(
            longest <= max_gap,
            "{what}: a flow went {longest:?} without an answer, more than {max_gap:?}: {:#?}",
            states.iter().max_by_key(|s| s.longest_gap)
        );
        longest
    }

    /// Resets each flow's longest gap (to measure the next event alone).
    pub fn reset_gaps(&self) {
        for s in &self.states {
            let mut s = lock(s);
            s.longest_gap = Duration::ZERO;
            s.longest_gap_end = None;
        }
    }

    /// Stops every flow and waits for the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for LongFlows {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(state: &Mutex<FlowState>) -> std::sync::MutexGuard<'_, FlowState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One more message came back.
fn exchanged(state: &Mutex<FlowState>) {
    let mut s = lock(state);
    let now = Instant::now();
    if s.exchanged > 0 {
        let gap = now - s.last_ok;
        if gap > s.longest_gap {
            s.longest_gap = gap;
            s.longest_gap_end = Some(now);
        }
    }
    s.exchanged += 1;
    s.last_ok = now;
}

/// A TCP connection in the test server's echo mode: each message is a counter, sent and
/// read back whole (however long the network takes: TCP retransmits).
fn run_tcp(addr: SocketAddrV4, stop: &AtomicBool, state: &Mutex<FlowState>) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(READ_WAIT))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )?;
    let head = read_head(&mut stream, stop)?;
    if !head.starts_with("HTTP/1.1 101") {
        bail!("no upgrade: {head:?}");
    }
    let backend = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Backend: "))
        .unwrap_or("?");
    backend.clone_into(&mut lock(state).backend);
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let message = n.to_be_bytes();
        stream.write_all(&message).context("sending")?;
        let mut back = [0u8; 8];
        let mut got = 0;
        while got < back.len() {
            match stream.read(&mut back[got..]) {
                Ok(0) => bail!("the connection was closed after {n} messages"),
                Ok(k) => got += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e).context(format!("reading echo {n}")),
            }
        }
        if back != message {
            bail!("echo {n} came back as {back:?}");
        }
        exchanged(state);
        thread::sleep(PACE);
    }
    Ok(())
}

/// The response head of the upgrade.
fn read_head(stream: &mut TcpStream, stop: &AtomicBool) -> Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(2);
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => bail!("closed during the upgrade"),
            Ok(_) => head.push(byte[0]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    bail!("no upgrade answer");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A UDP flow: one socket (one client port), a counter per datagram, the backend's name
/// back; a lost datagram is sent again at the next beat.
fn run_udp(addr: SocketAddrV4, stop: &AtomicBool, state: &Mutex<FlowState>) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(READ_WAIT))?;
    let mut buf = [0u8; 256];
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        socket.send(&n.to_be_bytes()).context("sending")?;
        match socket.recv(&mut buf) {
            Ok(k) => {
                let name = String::from_utf8_lossy(&buf[..k]).into_owned();
                let first = {
                    let mut s = lock(state);
                    if s.backend.is_empty() {
                        s.backend.clone_from(&name);
                    }
                    s.backend.clone()
                };
                if name != first {
                    bail!("answered by {name} after {first}: the flow moved");
                }
                exchanged(state);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // (An ICMP error while no balancer has the VIP: try again.)
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e).context(format!("datagram {n}")),
        }
        thread::sleep(PACE);
    }
    Ok(())
}
