//! A bounded UDP load generator: small datagrams to echo servers from many sockets, as fast
//! as the replies come back (a window of datagrams in flight), for a fixed time.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// How to load.
#[derive(Clone, Debug)]
pub struct UdpLoad {
    /// Socket `i` sends to `targets[i % targets.len()]`.
    pub targets: Vec<SocketAddrV4>,
    /// Distinct source ports (flows).
    pub sockets: usize,
    /// Datagrams in flight at most (sent, not answered yet).
    pub window: usize,
    /// UDP payload bytes.
    pub payload: usize,
    pub duration: Duration,
}

/// What a load run counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpResult {
    pub sent: u64,
    pub received: u64,
    /// Times no reply came for `STALL` and the window was reset (datagrams presumed lost).
    pub stalls: u64,
    /// Send or receive errors (e.g. ICMP port unreachable).
    pub errors: u64,
    pub secs: f64,
}

impl UdpResult {
    /// Replies per second: the round-trip rate through the path.
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.secs
    }

    /// Share of the sent datagrams that got no reply.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - (self.received as f64 / self.sent as f64).min(1.0)
        }
    }
}

/// After this long without any reply, the datagrams in flight are presumed lost.
const STALL: Duration = Duration::from_millis(5);

/// Runs the load from the calling thread's network namespace. Sends at most `window`
/// datagrams ahead of the replies, round-robin over the sockets, and stops by itself after
/// `duration` (or when `stop()` says so).
pub fn run(load: &UdpLoad, stop: impl Fn() -> bool) -> Result<UdpResult> {
    let sockets: Vec<UdpSocket> = (0..load.sockets)
        .map(|i| -> Result<UdpSocket> {
            let s = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
            let target = load.targets[i % load.targets.len()];
            s.connect(target)
                .with_context(|| format!("connecting a UDP socket to {target}"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let payload = vec![b'u'; load.payload];
    let mut buf = [0u8; 2048];
    let mut r = UdpResult::default();
    let mut in_flight = 0usize;
    let mut next = 0usize;
    let started = Instant::now();
    let deadline = started + load.duration;
    let stall_ms = STALL.as_millis() as libc::c_int;
    while Instant::now() < deadline && !stop() {
        while in_flight < load.window {
            match sockets[next].send(&payload) {
                Ok(_) => {
                    r.sent += 1;
                    in_flight += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => r.errors += 1,
            }
            next = (next + 1) % sockets.len();
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, stall_ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if ready == 0 {
            r.stalls += 1;
            in_flight = 0;
            continue;
        }
        for (i, fd) in fds.iter_mut().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            fd.revents = 0;
            loop {
                match sockets[i].recv(&mut buf) {
                    Ok(_) => {
                        r.received += 1;
                        in_flight = in_flight.saturating_sub(1);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        r.errors += 1;
                        break;
                    }
                }
            }
        }
    }
    r.secs = started.elapsed().as_secs_f64();
    Ok(r)
}
