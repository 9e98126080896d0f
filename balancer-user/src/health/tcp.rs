//! The TCP check socket a backend's check task keeps from one check to the next (when TCP
//! checks cannot be bare SYNs from a raw socket, see [`super::syn`]).
//!
//! A TCP check is a connect followed by a reset (HAProxy's zero-linger close). Doing that
//! with a new socket each time costs `socket()`, `setsockopt(SO_LINGER)` and a `close()`
//! that tears down an inode, a file and a socket. Linux lets one TCP socket be connected
//! again after `connect()` to an `AF_UNSPEC` address dissolves its connection
//! (`tcp_disconnect`: a reset when it was established, nothing when the SYN is still
//! unanswered), so each check is `connect()`, the wake-up, `getpeername()`, and the
//! `connect(AF_UNSPEC)` + `getsockopt(SO_ERROR)` that leave the socket clean for the next
//! check.
//!
//! The socket has `TCP_DEFER_ACCEPT` set, which on a connecting socket delays the
//! handshake's last ACK (expecting data to carry it): the reset follows the SYN-ACK at
//! once, so a check is three packets (SYN, SYN-ACK, RST) instead of four, and the backend
//! never gets a connection to accept (no accept/close per check in its logs). What the
//! check learns is the same: the backend's kernel answered for a listening socket.
//!
//! The socket is registered with the runtime only while it connects: tokio keeps a hang-up
//! as a final readiness state, and a dissolved connection reports one, so a socket kept
//! registered would look writable forever after its first check.
//!
//! [`connect_reason`] words a failed connect for every TCP check (HTTP checks and the SYN
//! engine too).

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Why a TCP connect failed, as shown in a check's reason.
pub(super) fn connect_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".to_owned(),
        _ => format!("connect failed: {e}"),
    }
}

/// A descriptor registered with the runtime but owned elsewhere (not closed on drop).
struct Unowned(RawFd);

impl AsRawFd for Unowned {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A non-blocking TCP socket for repeated connect checks to one address family.
pub struct CheckSocket {
    fd: OwnedFd,
}

/// `target` as a `sockaddr_storage` and its length.
fn sockaddr(target: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match target {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn connect_raw(fd: RawFd, addr: &libc::sockaddr_storage, len: libc::socklen_t) -> io::Result<()> {
    // SAFETY: `addr` points to `len` valid bytes of a socket address.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::from_ref::<libc::sockaddr_storage>(addr).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl CheckSocket {
    /// A new socket for targets of `target`'s address family.
    pub fn new(target: SocketAddr) -> io::Result<CheckSocket> {
        let domain = match target {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: plain socket(2); the result is checked.
        let raw = unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A connecting socket with TCP_DEFER_ACCEPT set delays the handshake's last ACK
        // (expecting data to carry it); the reset that ends the check comes first, so the
        // ACK is never sent.
        let seconds: libc::c_int = 1;
        // SAFETY: `seconds` is a valid c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw const seconds).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CheckSocket { fd })
    }

    /// The registered descriptor.
    #[cfg(test)]
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Connects to `target` and returns once the connection is established (or failed);
    /// must run within a tokio runtime. The caller bounds the time and calls
    /// [`CheckSocket::reset`] afterwards in every case.
    pub async fn connect(&mut self, target: SocketAddr) -> io::Result<()> {
        let (addr, len) = sockaddr(target);
        match connect_raw(self.fd.as_raw_fd(), &addr, len) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        // Registered for this wait only (see the module's note); dropping the AsyncFd
        // deregisters the descriptor without closing it.
        // SAFETY: `self.fd` stays open and unchanged while `registered` lives: both are
        // borrowed by this call, which drops `registered` before it returns.
        let registered = unsafe {
            AsyncFd::register_with_interest(Unowned(self.fd.as_raw_fd()), Interest::WRITABLE)
        }
        .map_err(io::Error::from)?;
        loop {
            let mut ready = registered.writable().await?;
            if self.is_connected() {
                return Ok(());
            }
            if let Some(e) = self.take_error()? {
                return Err(e);
            }
            ready.clear_ready();
        }
    }

    /// Dissolves the connection (a reset when established, silence while the SYN is
    /// unanswered) and clears the error that leaves, so the socket is ready for the next
    /// [`CheckSocket::connect`].
    pub fn reset(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: an all-zero sockaddr with family AF_UNSPEC is what connect(2) expects
        // to dissolve an association.
        let mut unspec: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unspec.ss_family = libc::AF_UNSPEC as libc::sa_family_t;
        connect_raw(fd, &unspec, size_of::<libc::sockaddr>() as libc::socklen_t)?;
        self.take_error().map(drop)
    }

    fn is_connected(&self) -> bool {
        // SAFETY: an all-zero sockaddr_storage is valid; getpeername writes at most `len`.
        let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `peer` and `len` are valid for writes.
        let rc = unsafe {
            libc::getpeername(
                self.fd.as_raw_fd(),
                (&raw mut peer).cast::<libc::sockaddr>(),
                &raw mut len,
            )
        };
        rc == 0
    }

    /// The socket's pending error (`SO_ERROR`), which reading clears.
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
    }
}
