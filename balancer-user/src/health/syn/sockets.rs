//! The engine's sockets: the raw socket SYNs are written to, the packet socket answers are
//! read from, the bound sockets that reserve the source ports, and batched I/O on them.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

use super::filter::answer_filter;
use super::packets::{SNAP, SOURCE_PORTS, SYN_LEN};
pub(super) use crate::sys::sockaddr_in;
use crate::sys::{check, local_addr, setsockopt, socket};

/// Most SYNs written by one `sendmmsg()`, and most answers read by one `recvmmsg()`.
pub(super) const BATCH: usize = 64;
/// Send buffer of the raw socket and receive buffer of the packet socket: room for the
/// SYNs and the answers of a few thousand checks.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// A SYN to write: the packet, its destination, and the check it is for (target and
/// sequence number).
pub(super) type Outgoing = ([u8; SYN_LEN], libc::sockaddr_in, (SocketAddrV4, u32));

/// The engine's sockets.
pub(super) struct Sockets {
    /// Raw `IPPROTO_RAW` socket the SYN packets are written to, IPv4 header included. (An
    /// `IPPROTO_TCP` raw socket would also get a clone of every TCP packet the host
    /// receives; an `IPPROTO_RAW` one receives nothing.)
    pub send: OwnedFd,
    /// UDP socket connected to a target to learn the source address routing picks.
    route: OwnedFd,
    /// TCP sockets bound to the source ports and never listening: keep other sockets off
    /// the ports, so the kernel resets every SYN-ACK that reaches them.
    _reserved: Vec<OwnedFd>,
    /// The first of the [`SOURCE_PORTS`].
    pub first_port: u16,
}

/// A TCP socket bound to `port` of any address (0: a free port the kernel picks).
fn bound_tcp_socket(port: u16) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
    let any = sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    // SAFETY: `any` is a valid sockaddr_in of the length passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const any).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Reserves [`SOURCE_PORTS`] consecutive ports: the kernel picks a free first one, the
/// others are bound after it; when one of them is taken, another first port is tried.
fn reserve_ports() -> io::Result<(u16, Vec<OwnedFd>)> {
    for _ in 0..64 {
        let first = bound_tcp_socket(0)?;
        let port = local_addr(&first)?.port();
        if port > u16::MAX - (SOURCE_PORTS - 1) {
            continue;
        }
        let mut reserved = vec![first];
        for next in port + 1..=port + (SOURCE_PORTS - 1) {
            match bound_tcp_socket(next) {
                Ok(fd) => reserved.push(fd),
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => break,
                Err(e) => return Err(e),
            }
        }
        if reserved.len() == usize::from(SOURCE_PORTS) {
            return Ok((port, reserved));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no {SOURCE_PORTS} consecutive free ports for TCP check SYNs"),
    ))
}

impl Sockets {
    /// Opens the sockets, and the `AF_PACKET` socket of incoming IPv4 packets, filtered to
    /// the answers to SYNs from the source ports; must run in a tokio runtime's context.
    pub fn open() -> io::Result<(Sockets, AsyncFd<OwnedFd>)> {
        let (first_port, reserved) = reserve_ports()?;
        let send = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        // SO_SNDBUF alone is capped at net.core.wmem_max (about 600 SYNs by default).
        if setsockopt(
            &send,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &SOCKET_BUFFER,
        )
        .is_err()
        {
            setsockopt(&send, libc::SOL_SOCKET, libc::SO_SNDBUF, &SOCKET_BUFFER)?;
        }
        // Protocol 0: the socket receives nothing until it is bound below, after its
        // filter is in place (bound at once, it would queue whatever arrived before).
        let answers = socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0)?;
        let filter = answer_filter(first_port);
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        setsockopt(&answers, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)?;
        // SAFETY: an all-zero sockaddr_ll is valid; ifindex 0 means every interface.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: `ll` is a valid sockaddr_ll of the length passed.
        check(unsafe {
            libc::bind(
                answers.as_raw_fd(),
                (&raw const ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        if setsockopt(
            &answers,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &SOCKET_BUFFER,
        )
        .is_err()
        {
            setsockopt(&answers, libc::SOL_SOCKET, libc::SO_RCVBUF, &SOCKET_BUFFER)?;
        }
        let route = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        // SAFETY: the AsyncFd owns the descriptor, which stays open as long as it does.
        let answers =
            unsafe { AsyncFd::register_with_interest(answers, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        let sockets = Sockets {
            send,
            route,
            _reserved: reserved,
            first_port,
        };
        Ok((sockets, answers))
    }

    /// The source address the kernel picks for packets to `target`.
    pub fn source_for(&self, target: SocketAddrV4) -> io::Result<Ipv4Addr> {
        let addr = sockaddr_in(target);
        // SAFETY: `addr` is a valid sockaddr_in of the length passed.
        check(unsafe {
            libc::connect(
                self.route.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        Ok(*local_addr(&self.route)?.ip())
    }
}

/// `sendmmsg()` of `segments` to their targets; the number written, which is less than
/// `segments.len()` when the one after them failed.
pub(super) fn send_batch(fd: RawFd, segments: &[Outgoing]) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = segments
        .iter()
        .map(|(segment, _, _)| libc::iovec {
            iov_base: segment.as_ptr().cast_mut().cast(),
            iov_len: SYN_LEN,
        })
        .collect();
    // SAFETY: an all-zero mmsghdr is valid (no name, no buffers).
    let mut messages: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; segments.len()];
    for ((message, iovec), (_, to, _)) in messages.iter_mut().zip(&mut iovecs).zip(segments) {
        message.msg_hdr.msg_name = std::ptr::from_ref::<libc::sockaddr_in>(to)
            .cast_mut()
            .cast();
        message.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        message.msg_hdr.msg_iov = iovec;
        message.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every message points to a live address and buffer of the lengths given;
    // the kernel only reads them (and writes `msg_len`).
    let sent =
        unsafe { libc::sendmmsg(fd, messages.as_mut_ptr(), messages.len() as libc::c_uint, 0) };
    check(sent).map(|n| n as usize)
}

/// Reads up to [`BATCH`] packets into `buffers`; their lengths.
pub(super) fn receive_batch(
    fd: RawFd,
    buffers: &mut [[u8; SNAP]; BATCH],
) -> io::Result<Vec<usize>> {
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buffer| libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: SNAP,
        })
        .collect();
    // SAFETY: an all-zero mmsghdr is valid (no name, no buffers).
    let mut messages: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for (message, iovec) in messages.iter_mut().zip(&mut iovecs) {
        message.msg_hdr.msg_iov = iovec;
        message.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every message points to a writable buffer of SNAP bytes; no timeout.
    let received = check(unsafe {
        libc::recvmmsg(
            fd,
            messages.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    })?;
    Ok(messages[..received as usize]
        .iter()
        .map(|m| (m.msg_len as usize).min(SNAP))
        .collect())
}
