//! TCP checks of IPv4 targets as bare SYNs: sent in batches from a raw socket, answered
//! SYN-ACKs and resets read from a packet socket, the half-open connection ended by the
//! kernel's own reset.
//!
//! A TCP check asks one thing: does the backend's kernel answer a SYN for the port with a
//! SYN-ACK (up) or a reset (refused)? A socket per check (or per backend, [`super::tcp`])
//! pays the whole connect path for that: a `connect()`, a readiness registration and
//! wake-up, a `getpeername()` and a reset, all per check. Here the checks of a batch (the
//! tasks that wake on one tick) are queued to one engine task, which
//!
//! * writes their SYNs with one `sendmmsg()` on a raw IPPROTO_RAW socket, from a few
//!   consecutive source ports reserved by bound (never listening) TCP sockets and taken in
//!   turn by each target's checks, each SYN with a random sequence number that identifies
//!   the check;
//! * reads the answers with `recvmmsg()` from an `AF_PACKET` socket whose classic BPF
//!   filter lets through only TCP segments to those ports with SYN+ACK or RST set and ICMP
//!   destination-unreachable messages (which quote the SYN); the filter runs before the
//!   packet is cloned, so other traffic costs almost nothing;
//! * leaves the answer to the kernel: a SYN-ACK to a port with no connection gets a reset,
//!   so a check is SYN, SYN-ACK, RST, as with the kept socket, and the backend never has a
//!   connection to accept.
//!
//! The check's source address is the one the kernel's routing picks for the target
//! (learnt from a connected UDP socket, refreshed every [`SOURCE_TTL`]); it is needed for
//! the TCP checksum. Answers are matched by the target's address and port and the
//! acknowledged (or, in an ICMP error, quoted) sequence number. A SYN without an answer
//! is sent again (same port and sequence number) after 1 s, then 2 s more, and so on, as
//! `connect()` does, until the caller's timeout ends the check. Opening the raw and packet
//! sockets needs `CAP_NET_RAW`; without it, or once the engine has stopped, the checker
//! uses [`super::tcp`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Notify};
use tokio::task::AbortHandle;

/// How long a learnt source address for a target address is used before it is looked up
/// again (routes and addresses change rarely; a lookup is a UDP `connect()`).
pub const SOURCE_TTL: Duration = Duration::from_secs(10);
/// Most SYNs written by one `sendmmsg()`, and most answers read by one `recvmmsg()`.
const BATCH: usize = 64;
/// Bytes kept of each answer: IPv4 header with options, ICMP header, quoted IPv4 header
/// with options and the quoted TCP ports and sequence number.
const SNAP: usize = 160;
/// Send buffer of the raw socket and receive buffer of the packet socket: room for the
/// SYNs and the answers of a few thousand checks.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// The SYN's maximum segment size option (the value every Ethernet host sends).
const MSS: u16 = 1460;
/// Bytes of the SYN's IPv4 header.
const IPV4_LEN: usize = 20;
/// Bytes of the SYN's segment: a 20-byte TCP header and the 4-byte MSS option.
const TCP_LEN: usize = 24;
/// Bytes of the SYN packet.
const SYN_LEN: usize = IPV4_LEN + TCP_LEN;
/// Source ports of the SYNs: this many consecutive ports, reserved by bound sockets. The
/// checks of one target take them in turn, so that checks of the same target in flight
/// at once (two pools checking one backend, in one batch) are different connections to
/// the backend: on one port, the backend would answer the second SYN with the first
/// one's SYN-ACK (RFC 9293 3.10.7.4), and the second check would go unanswered.
pub const SOURCE_PORTS: u16 = 8;
/// How long a SYN waits for its answer before it is sent again (the kernel's initial
/// retransmission timeout, `TCP_TIMEOUT_INIT`), doubling each time, as `connect()` does:
/// one lost SYN or SYN-ACK does not fail a check whose timeout allows a resend.
const FIRST_RESEND: Duration = Duration::from_secs(1);
/// How often the engine resends due SYNs and forgets checks whose callers gave up.
const MAINTAIN: Duration = Duration::from_millis(250);

const TCP_FIN_SYN_RST_ACK: u8 = 0x17;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_DEST_UNREACH: u8 = 3;

/// Why a check failed, as in [`super::CheckOutcome::reason`].
type Probe = Result<(), String>;

// ---------------------------------------------------------------------------
// The wire: the SYN, the answers and the filter
// ---------------------------------------------------------------------------

/// The Internet checksum (RFC 1071) of `parts`, concatenated (every part but the last of
/// even length).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(u16::from_be_bytes([*last, 0]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv4 pseudo-header of a TCP segment of `len` bytes (RFC 9293, 3.1).
fn pseudo_header(source: Ipv4Addr, destination: Ipv4Addr, len: usize) -> [u8; 12] {
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&source.octets());
    header[4..8].copy_from_slice(&destination.octets());
    header[9] = libc::IPPROTO_TCP as u8;
    header[10..].copy_from_slice(&(len as u16).to_be_bytes());
    header
}

/// An IPv4 packet with a SYN from `source`:`port` to `target` with sequence number
/// `seq`: the IPv4 header (identification and header checksum left to the kernel), the
/// TCP header and its MSS option.
fn syn_packet(source: Ipv4Addr, port: u16, target: SocketAddrV4, seq: u32) -> [u8; SYN_LEN] {
    let mut packet = [0u8; SYN_LEN];
    packet[0] = 0x45; // Version 4, 5 words of header.
    packet[2..4].copy_from_slice(&(SYN_LEN as u16).to_be_bytes());
    packet[6] = 0x40; // Don't fragment.
    packet[8] = 64;
    packet[9] = libc::IPPROTO_TCP as u8;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&target.ip().octets());
    let segment = &mut packet[IPV4_LEN..];
    segment[0..2].copy_from_slice(&port.to_be_bytes());
    segment[2..4].copy_from_slice(&target.port().to_be_bytes());
    segment[4..8].copy_from_slice(&seq.to_be_bytes());
    // Bytes 8..12: acknowledgment number, 0.
    segment[12] = ((TCP_LEN / 4) as u8) << 4;
    segment[13] = TCP_SYN;
    segment[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // Bytes 16..18: checksum, below; 18..20: urgent pointer, 0.
    segment[20] = 2; // Maximum segment size, RFC 9293 3.2.
    segment[21] = 4;
    segment[22..24].copy_from_slice(&MSS.to_be_bytes());
    let sum = checksum(&[&pseudo_header(source, *target.ip(), TCP_LEN), segment]);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// What an answer says about a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// SYN-ACK: the port listens.
    Up,
    /// Reset: nothing listens on the port.
    Refused,
    /// ICMP destination unreachable with this code.
    Unreachable(u8),
}

/// An answer to the check that sent `seq` to `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Answer {
    target: SocketAddrV4,
    seq: u32,
    verdict: Verdict,
}

impl Verdict {
    fn probe(self) -> Probe {
        match self {
            Verdict::Up => Ok(()),
            Verdict::Refused => Err("connect refused".to_owned()),
            Verdict::Unreachable(code) => Err(super::connect_reason(&unreachable_error(code))),
        }
    }
}

/// The error a connecting socket gets for an ICMP destination-unreachable `code` (the
/// kernel's `icmp_err_convert`).
fn unreachable_error(code: u8) -> io::Error {
    let errno = match code {
        0 | 6 | 9 | 11 => libc::ENETUNREACH,
        2 => libc::ENOPROTOOPT,
        3 => libc::ECONNREFUSED,
        4 => libc::EMSGSIZE,
        5 => libc::EOPNOTSUPP,
        7 => libc::EHOSTDOWN,
        8 => libc::ENONET,
        _ => libc::EHOSTUNREACH,
    };
    io::Error::from_raw_os_error(errno)
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn ipv4(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    be32(bytes, at).map(Ipv4Addr::from)
}

/// An IPv4 packet's header length, protocol, source and destination, if `packet` starts
/// with a whole IPv4 header of an unfragmented (or first-fragment) packet.
fn ipv4_header(packet: &[u8]) -> Option<(usize, u8, Ipv4Addr, Ipv4Addr)> {
    let first = *packet.first()?;
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < 20 || packet.len() < header_len {
        return None;
    }
    if be16(packet, 6)? & 0x1fff != 0 {
        return None;
    }
    Some((header_len, packet[9], ipv4(packet, 12)?, ipv4(packet, 16)?))
}

/// Whether `port` is one of the [`SOURCE_PORTS`] from `first` on.
fn is_source_port(port: u16, first: u16) -> bool {
    port.wrapping_sub(first) < SOURCE_PORTS
}

/// The answer `packet` (an IPv4 packet from its header on) carries for a check sent from
/// the source ports from `first` on, if it is one: a SYN-ACK or reset to one of them, or
/// an ICMP destination-unreachable quoting a segment from one of them.
fn parse_answer(packet: &[u8], first: u16) -> Option<Answer> {
    let (header_len, protocol, source, _) = ipv4_header(packet)?;
    let payload = &packet[header_len..];
    match i32::from(protocol) {
        libc::IPPROTO_TCP => {
            if !is_source_port(be16(payload, 2)?, first) {
                return None;
            }
            let flags = *payload.get(13)? & TCP_FIN_SYN_RST_ACK;
            let verdict = match flags {
                f if f == TCP_SYN | TCP_ACK => Verdict::Up,
                f if f == TCP_RST | TCP_ACK => Verdict::Refused,
                _ => return None,
            };
            Some(Answer {
                target: SocketAddrV4::new(source, be16(payload, 0)?),
                seq: be32(payload, 8)?.wrapping_sub(1),
                verdict,
            })
        }
        libc::IPPROTO_ICMP => {
            if *payload.first()? != ICMP_DEST_UNREACH {
                return None;
            }
            let code = *payload.get(1)?;
            let quoted = payload.get(8..)?;
            let (quoted_len, quoted_protocol, _, target) = ipv4_header(quoted)?;
            let segment = &quoted[quoted_len..];
            if i32::from(quoted_protocol) != libc::IPPROTO_TCP
                || !is_source_port(be16(segment, 0)?, first)
            {
                return None;
            }
            Some(Answer {
                target: SocketAddrV4::new(target, be16(segment, 2)?),
                seq: be32(segment, 4)?,
                verdict: Verdict::Unreachable(code),
            })
        }
        _ => None,
    }
}

/// A classic BPF instruction that does not jump.
fn op(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump at index `at` to index `yes` when true and `no` when false.
fn jump(at: usize, code: u32, k: u32, yes: usize, no: usize) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | code | libc::BPF_K) as u16,
        jt: (yes - at - 1) as u8,
        jf: (no - at - 1) as u8,
        k,
    }
}

/// The packet socket's filter (offsets from the IPv4 header): TCP segments to the
/// [`SOURCE_PORTS`] from `first` on with SYN+ACK or RST set, and ICMP
/// destination-unreachable messages, of packets that are not a later fragment; everything
/// else is dropped before it is queued.
fn answer_filter(first: u16) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JGT, BPF_JSET, BPF_K,
        BPF_LD, BPF_LDX, BPF_MSH, BPF_RET, BPF_SUB,
    };
    const ICMP: usize = 12;
    const ACCEPT: usize = 18;
    const DROP: usize = 19;
    vec![
        /* 0 */ op(BPF_LD | BPF_B | BPF_ABS, 9),
        /* 1 */ jump(1, BPF_JEQ, libc::IPPROTO_TCP as u32, 2, ICMP),
        /* 2 */ op(BPF_LD | BPF_H | BPF_ABS, 6),
        /* 3 */ jump(3, BPF_JSET, 0x1fff, DROP, 4),
        /* 4 */ op(BPF_LDX | BPF_B | BPF_MSH, 0),
        /* 5 */ op(BPF_LD | BPF_H | BPF_IND, 2),
        // Destination port - first, as an unsigned 32-bit number: below the range wraps.
        /* 6 */
        op(BPF_ALU | BPF_SUB | BPF_K, u32::from(first)),
        /* 7 */ jump(7, BPF_JGT, u32::from(SOURCE_PORTS - 1), DROP, 8),
        /* 8 */ op(BPF_LD | BPF_B | BPF_IND, 13),
        /* 9 */ jump(9, BPF_JSET, u32::from(TCP_RST), ACCEPT, 10),
        /* 10 */ op(BPF_ALU | BPF_AND | BPF_K, u32::from(TCP_SYN | TCP_ACK)),
        /* 11 */ jump(11, BPF_JEQ, u32::from(TCP_SYN | TCP_ACK), ACCEPT, DROP),
        /* 12 */ jump(ICMP, BPF_JEQ, libc::IPPROTO_ICMP as u32, 13, DROP),
        /* 13 */ op(BPF_LD | BPF_H | BPF_ABS, 6),
        /* 14 */ jump(14, BPF_JSET, 0x1fff, DROP, 15),
        /* 15 */ op(BPF_LDX | BPF_B | BPF_MSH, 0),
        /* 16 */ op(BPF_LD | BPF_B | BPF_IND, 0),
        /* 17 */ jump(17, BPF_JEQ, u32::from(ICMP_DEST_UNREACH), ACCEPT, DROP),
        /* 18 */ op(BPF_RET | BPF_K, SNAP as u32),
        /* 19 */ op(BPF_RET | BPF_K, 0),
    ]
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = check(unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a valid `T` of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddrV4> {
    // SAFETY: an all-zero sockaddr_in is valid; getsockname writes at most `len` bytes.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes.
    check(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) })?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(addr.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(addr.sin_port),
    ))
}

/// The engine's sockets.
struct Sockets {
    /// Raw IPPROTO_RAW socket the SYN packets are written to, IPv4 header included. (An
    /// IPPROTO_TCP raw socket would also get a clone of every TCP packet the host
    /// receives; an IPPROTO_RAW one receives nothing.)
    send: OwnedFd,
    /// UDP socket connected to a target to learn the source address routing picks.
    route: OwnedFd,
    /// TCP sockets bound to the source ports and never listening: keep other sockets off
    /// the ports, so the kernel resets every SYN-ACK that reaches them.
    _reserved: Vec<OwnedFd>,
    /// The first of the [`SOURCE_PORTS`].
    first_port: u16,
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
    fn open() -> io::Result<(Sockets, AsyncFd<OwnedFd>)> {
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
    fn source_for(&self, target: SocketAddrV4) -> io::Result<Ipv4Addr> {
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
fn send_batch(fd: RawFd, segments: &[Outgoing]) -> io::Result<usize> {
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
        message.msg_hdr.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
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
fn receive_batch(fd: RawFd, buffers: &mut [[u8; SNAP]; BATCH]) -> io::Result<Vec<usize>> {
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

// ---------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------

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
            let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut queue = self.0.queue.lock().unwrap_or_else(|e| e.into_inner());
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

/// A SYN to write: the packet, its destination, and the check it is for.
type Outgoing = ([u8; SYN_LEN], libc::sockaddr_in, (SocketAddrV4, u32));

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
        let requests =
            std::mem::take(&mut *self.shared.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let now = Instant::now();
        let mut batch = std::mem::take(&mut self.unsent);
        for request in requests {
            let source = match self.source(request.target, now) {
                Ok(source) => source,
                Err(e) => {
                    let _ = request.reply.send(Err(super::connect_reason(&e)));
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
                let _ = pending.reply.send(Err(super::connect_reason(&error)));
            }
            start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const TARGET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 11), 80);

    /// An IPv4 header (no options) of a packet from `source` to `destination` carrying
    /// `payload` of `protocol`.
    fn ipv4_packet(
        source: Ipv4Addr,
        destination: Ipv4Addr,
        protocol: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        packet[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&destination.octets());
        let sum = checksum(&[&packet]);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }

    /// A TCP header from `from` to `port` with `flags` and acknowledgment number `ack`.
    fn tcp_answer(from: SocketAddrV4, port: u16, flags: u8, ack: u32) -> Vec<u8> {
        let mut segment = vec![0u8; 20];
        segment[0..2].copy_from_slice(&from.port().to_be_bytes());
        segment[2..4].copy_from_slice(&port.to_be_bytes());
        segment[4..8].copy_from_slice(&77u32.to_be_bytes());
        segment[8..12].copy_from_slice(&ack.to_be_bytes());
        segment[12] = 5 << 4;
        segment[13] = flags;
        ipv4_packet(*from.ip(), SOURCE, libc::IPPROTO_TCP as u8, &segment)
    }

    #[test]
    fn syn_is_a_valid_segment() {
        let packet = syn_packet(SOURCE, 40000, TARGET, 0xdead_beef);
        assert_eq!(packet[0], 0x45);
        assert_eq!(be16(&packet, 2), Some(SYN_LEN as u16));
        assert_eq!(packet[9], 6, "TCP");
        assert_eq!(ipv4(&packet, 12), Some(SOURCE));
        assert_eq!(ipv4(&packet, 16), Some(*TARGET.ip()));
        let syn = &packet[IPV4_LEN..];
        // A segment with its checksum in place sums to zero with its pseudo-header.
        assert_eq!(
            checksum(&[&pseudo_header(SOURCE, *TARGET.ip(), TCP_LEN), syn]),
            0
        );
        assert_eq!(be16(syn, 0), Some(40000));
        assert_eq!(be16(syn, 2), Some(80));
        assert_eq!(be32(syn, 4), Some(0xdead_beef));
        assert_eq!(syn[12] >> 4, 6, "data offset: 24 bytes");
        assert_eq!(syn[13], TCP_SYN);
        assert_eq!(&syn[20..], &[2, 4, 0x05, 0xb4], "MSS 1460");
        // What the kernel completes (identification, header checksum) is what an answer
        // quotes back: the packet parses as the SYN it is.
        assert_eq!(ipv4_header(&packet).map(|h| h.0), Some(IPV4_LEN));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            !0xddf2
        );
        // An odd last part is padded with a zero byte.
        assert_eq!(checksum(&[&[0x01]]), !0x0100);
    }

    #[test]
    fn answers_are_recognised() {
        let port = 40000;
        let syn_ack = tcp_answer(TARGET, port, TCP_SYN | TCP_ACK, 1001);
        assert_eq!(
            parse_answer(&syn_ack, port),
            Some(Answer {
                target: TARGET,
                seq: 1000,
                verdict: Verdict::Up
            })
        );
        let reset = tcp_answer(TARGET, port, TCP_RST | TCP_ACK, 0);
        assert_eq!(
            parse_answer(&reset, port),
            Some(Answer {
                target: TARGET,
                seq: u32::MAX,
                verdict: Verdict::Refused
            })
        );
        assert_eq!(Verdict::Refused.probe(), Err("connect refused".to_owned()));
        assert_eq!(Verdict::Up.probe(), Ok(()));

        // ICMP host unreachable quoting the SYN (its IPv4 header and first 8 bytes).
        let quoted = syn_packet(SOURCE, port, TARGET, 4242);
        let quoted = &quoted[..IPV4_LEN + 8];
        let mut icmp = vec![ICMP_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let router = Ipv4Addr::new(10, 0, 0, 254);
        let unreachable = ipv4_packet(router, SOURCE, libc::IPPROTO_ICMP as u8, &icmp);
        assert_eq!(
            parse_answer(&unreachable, port),
            Some(Answer {
                target: TARGET,
                seq: 4242,
                verdict: Verdict::Unreachable(1)
            })
        );
        let reason = Verdict::Unreachable(1).probe().unwrap_err();
        assert!(
            reason.starts_with("connect failed: No route to host"),
            "{reason}"
        );
        assert_eq!(
            Verdict::Unreachable(3).probe(),
            Err("connect refused".to_owned())
        );
    }

    #[test]
    fn other_packets_are_not_answers() {
        let port = 40000;
        // To a port outside the source ports (either side); a bare ACK; a SYN; a FIN-ACK.
        let last = port + SOURCE_PORTS - 1;
        assert!(parse_answer(&tcp_answer(TARGET, last, TCP_SYN | TCP_ACK, 1), port).is_some());
        for other in [port - 1, last + 1] {
            assert_eq!(
                parse_answer(&tcp_answer(TARGET, other, TCP_SYN | TCP_ACK, 1), port),
                None,
                "to port {other}"
            );
        }
        assert_eq!(
            parse_answer(&tcp_answer(TARGET, port, TCP_ACK, 1), port),
            None
        );
        assert_eq!(
            parse_answer(&tcp_answer(TARGET, port, TCP_SYN, 1), port),
            None
        );
        assert_eq!(parse_answer(&tcp_answer(TARGET, port, 0x11, 1), port), None);
        // Truncated anywhere, or not IPv4, or a later fragment.
        let syn_ack = tcp_answer(TARGET, port, TCP_SYN | TCP_ACK, 1);
        for len in 0..syn_ack.len() - 6 {
            assert_eq!(parse_answer(&syn_ack[..len], port), None, "{len} bytes");
        }
        let mut v6 = syn_ack.clone();
        v6[0] = 0x65;
        assert_eq!(parse_answer(&v6, port), None);
        let mut fragment = syn_ack.clone();
        fragment[7] = 1;
        assert_eq!(parse_answer(&fragment, port), None);
        // ICMP that is not destination-unreachable, or quotes a segment from another port.
        let quoted = syn_packet(SOURCE, port + SOURCE_PORTS, TARGET, 1);
        let mut icmp = vec![ICMP_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[..IPV4_LEN + 8]);
        assert_eq!(
            parse_answer(&ipv4_packet(SOURCE, SOURCE, 1, &icmp), port),
            None
        );
        icmp[0] = 11;
        assert_eq!(
            parse_answer(&ipv4_packet(SOURCE, SOURCE, 1, &icmp), port),
            None
        );
    }

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

    #[test]
    fn filter_jumps_stay_inside_the_program() {
        let filter = answer_filter(40000);
        for (at, insn) in filter.iter().enumerate() {
            if insn.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(at + 1 + usize::from(insn.jt) < filter.len(), "insn {at}");
                assert!(at + 1 + usize::from(insn.jf) < filter.len(), "insn {at}");
            }
        }
        assert_eq!(filter.last().map(|i| i.k), Some(0), "ends with drop");
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
            waited >= FIRST_RESEND - MAINTAIN && waited < FIRST_RESEND + 3 * MAINTAIN,
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

        let mut prober = super::super::Prober::with_syn(Some(client));
        let tcp = crate::config::CheckConfig {
            kind: crate::config::CheckKind::Tcp,
            timeout: Duration::from_millis(500),
            ..crate::config::CheckConfig::default()
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
