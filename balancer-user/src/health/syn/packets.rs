//! The packets of a SYN check, built and read with `balancer_wire`: the SYN, and the
//! answers (SYN-ACK, reset, ICMP destination unreachable) with what each says.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use balancer_wire::icmpv4::{self, unreachable};
use balancer_wire::tcp::{self, Flags};
use balancer_wire::{ipv4, IpProtocol, Options};

/// Why a check failed, as in [`crate::health::CheckOutcome::reason`].
pub(super) type Probe = Result<(), String>;

/// Source ports of the SYNs: this many consecutive ports, reserved by bound sockets. The
/// checks of one target take them in turn, so that checks of the same target in flight
/// at once (two pools checking one backend, in one batch) are different connections to
/// the backend: on one port, the backend would answer the second SYN with the first
/// one's SYN-ACK (RFC 9293 3.10.7.4), and the second check would go unanswered.
pub const SOURCE_PORTS: u16 = 8;
/// The SYN's maximum segment size option (the value every Ethernet host sends).
const MSS: u16 = 1460;
/// The SYN's window (what Linux advertises in a SYN: 44 segments of [`MSS`]).
const WINDOW: u16 = 64_240;
/// Bytes of the SYN packet: IPv4 header, TCP header and its MSS option.
pub(super) const SYN_LEN: usize = ipv4::HEADER_LEN + tcp::HEADER_LEN + 4;
/// Bytes kept of each answer: IPv4 header with options, ICMP header, quoted IPv4 header
/// with options and the quoted TCP ports and sequence number.
pub(super) const SNAP: usize = 160;

/// An IPv4 packet with a SYN from `source`:`port` to `target` with sequence number
/// `seq`, and its MSS option. Identification 0: the kernel picks one, and writes the
/// header checksum again.
pub(super) fn syn_packet(
    source: Ipv4Addr,
    port: u16,
    target: SocketAddrV4,
    seq: u32,
) -> [u8; SYN_LEN] {
    let syn = tcp::Repr {
        src_port: port,
        dst_port: target.port(),
        seq_number: seq,
        ack_number: 0,
        flags: Flags::SYN,
        window_len: WINDOW,
        urgent_pointer: 0,
        options: Options::new(&tcp::mss_option(MSS)).expect("an MSS option is one word"),
        payload: &[],
    };
    let ip = ipv4::Repr {
        src_addr: source,
        dst_addr: *target.ip(),
        protocol: IpProtocol::TCP,
        payload_len: syn.buffer_len(),
        ..ipv4::Repr::default()
    };
    let mut packet = [0u8; SYN_LEN];
    let mut header = ipv4::Packet::new_unchecked(&mut packet[..]);
    ip.emit(&mut header);
    syn.emit(
        &mut tcp::Packet::new_unchecked(header.payload_mut()),
        &ip.pseudo_header(),
    );
    packet
}

/// What an answer says about a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// SYN-ACK: the port listens.
    Up,
    /// Reset: nothing listens on the port.
    Refused,
    /// ICMP destination unreachable with this code.
    Unreachable(u8),
}

/// An answer to the check that sent `seq` to `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub target: SocketAddrV4,
    pub seq: u32,
    pub verdict: Verdict,
}

impl Verdict {
    pub(super) fn probe(self) -> Probe {
        match self {
            Verdict::Up => Ok(()),
            Verdict::Refused => Err("connect refused".to_owned()),
            Verdict::Unreachable(code) => {
                Err(crate::health::connect_reason(&unreachable_error(code)))
            }
        }
    }
}

/// The error a connecting socket gets for an ICMP destination-unreachable `code` (the
/// kernel's `icmp_err_convert`).
fn unreachable_error(code: u8) -> io::Error {
    let errno = match code {
        unreachable::NET
        | unreachable::NET_UNKNOWN
        | unreachable::NET_PROHIBITED
        | unreachable::NET_TOS => libc::ENETUNREACH,
        unreachable::PROTOCOL => libc::ENOPROTOOPT,
        unreachable::PORT => libc::ECONNREFUSED,
        unreachable::FRAG_NEEDED => libc::EMSGSIZE,
        unreachable::SOURCE_ROUTE_FAILED => libc::EOPNOTSUPP,
        unreachable::HOST_UNKNOWN => libc::EHOSTDOWN,
        unreachable::SOURCE_HOST_ISOLATED => libc::ENONET,
        _ => libc::EHOSTUNREACH,
    };
    io::Error::from_raw_os_error(errno)
}

/// Whether `port` is one of the [`SOURCE_PORTS`] from `first` on.
fn is_source_port(port: u16, first: u16) -> bool {
    port.wrapping_sub(first) < SOURCE_PORTS
}

/// The IPv4 packet at the start of `bytes`, if its header is whole and it is not a later
/// fragment (which has no transport header); what follows may be cut at [`SNAP`] bytes.
fn first_fragment(bytes: &[u8]) -> Option<ipv4::Packet<&[u8]>> {
    let packet = ipv4::Packet::new_header_checked(bytes).ok()?;
    (packet.frag_offset() == 0).then_some(packet)
}

/// The answer `packet` (an IPv4 packet from its header on) carries for a check sent from
/// the source ports from `first` on, if it is one: a SYN-ACK or reset to one of them, or
/// an ICMP destination-unreachable quoting a segment from one of them.
pub(super) fn parse_answer(packet: &[u8], first: u16) -> Option<Answer> {
    let ip = first_fragment(packet)?;
    match ip.protocol() {
        IpProtocol::TCP => {
            let segment = tcp::Packet::new_checked(ip.payload()).ok()?;
            if !is_source_port(segment.dst_port(), first) {
                return None;
            }
            let verdict = match segment
                .flags()
                .masked(Flags::FIN | Flags::SYN | Flags::RST | Flags::ACK)
            {
                f if f == Flags::SYN | Flags::ACK => Verdict::Up,
                f if f == Flags::RST | Flags::ACK => Verdict::Refused,
                _ => return None,
            };
            Some(Answer {
                target: SocketAddrV4::new(ip.src_addr(), segment.src_port()),
                seq: segment.ack_number().wrapping_sub(1),
                verdict,
            })
        }
        IpProtocol::ICMP => {
            let message = icmpv4::Packet::new_checked(ip.payload()).ok()?;
            if message.msg_type() != icmpv4::Message::DST_UNREACHABLE {
                return None;
            }
            let quote = message.quote().ok()?;
            // The quote holds the SYN's first 8 bytes: its ports and sequence number.
            let syn = tcp::Packet::new_unchecked(quote.payload);
            if quote.header.protocol() != IpProtocol::TCP
                || quote.header.frag_offset() != 0
                || !is_source_port(syn.src_port(), first)
            {
                return None;
            }
            Some(Answer {
                target: SocketAddrV4::new(quote.header.dst_addr(), syn.dst_port()),
                seq: syn.seq_number(),
                verdict: Verdict::Unreachable(message.code()),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use balancer_wire::icmpv4::Message;

    use super::*;

    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const TARGET: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 11), 80);

    /// An IPv4 packet (no options) from `source` to `destination` carrying `payload` of
    /// `protocol`.
    fn ipv4_packet(
        source: Ipv4Addr,
        destination: Ipv4Addr,
        protocol: IpProtocol,
        payload: &[u8],
    ) -> Vec<u8> {
        let ip = ipv4::Repr {
            src_addr: source,
            dst_addr: destination,
            protocol,
            payload_len: payload.len(),
            ..ipv4::Repr::default()
        };
        let mut packet = vec![0; ip.buffer_len()];
        let mut header = ipv4::Packet::new_unchecked(&mut packet[..]);
        ip.emit(&mut header);
        header.payload_mut().copy_from_slice(payload);
        packet
    }

    /// A TCP header from `from` to `port` with `flags` and acknowledgment number `ack`.
    fn tcp_answer(from: SocketAddrV4, port: u16, flags: Flags, ack: u32) -> Vec<u8> {
        let answer = tcp::Repr {
            src_port: from.port(),
            dst_port: port,
            seq_number: 77,
            ack_number: ack,
            flags,
            window_len: 0,
            urgent_pointer: 0,
            options: Options::NONE,
            payload: &[],
        };
        let mut segment = vec![0; answer.buffer_len()];
        let pseudo = (*from.ip(), SOURCE).into();
        answer.emit(&mut tcp::Packet::new_unchecked(&mut segment[..]), &pseudo);
        ipv4_packet(*from.ip(), SOURCE, IpProtocol::TCP, &segment)
    }

    /// An ICMP error of `msg_type` and `code` from `from`, quoting `quoted`.
    fn icmp_error(from: Ipv4Addr, msg_type: Message, code: u8, quoted: &[u8]) -> Vec<u8> {
        let error = icmpv4::Repr {
            msg_type,
            code,
            rest: 0,
            data: quoted,
        };
        let mut message = vec![0; error.buffer_len()];
        error.emit(&mut icmpv4::Packet::new_unchecked(&mut message[..]));
        ipv4_packet(from, SOURCE, IpProtocol::ICMP, &message)
    }

    #[test]
    fn syn_is_a_valid_segment() {
        let packet = syn_packet(SOURCE, 40000, TARGET, 0xdead_beef);
        let ip = ipv4::Packet::new_checked(&packet[..]).unwrap();
        assert_eq!(ip.header_len(), ipv4::HEADER_LEN);
        assert_eq!(usize::from(ip.total_len()), SYN_LEN);
        assert_eq!(ip.protocol(), IpProtocol::TCP);
        assert_eq!(ip.src_addr(), SOURCE);
        assert_eq!(ip.dst_addr(), *TARGET.ip());
        assert!(ip.dont_frag());
        let syn = tcp::Packet::new_checked(ip.payload()).unwrap();
        // A segment with its checksum in place sums to zero with its pseudo-header.
        assert!(syn.verify_checksum(&ip.pseudo_header()));
        assert_eq!(syn.src_port(), 40000);
        assert_eq!(syn.dst_port(), 80);
        assert_eq!(syn.seq_number(), 0xdead_beef);
        assert_eq!(syn.header_len(), 24, "data offset: 24 bytes");
        assert_eq!(syn.flags(), Flags::SYN);
        assert_eq!(syn.options(), &[2, 4, 0x05, 0xb4], "MSS 1460");
        // What the kernel completes (identification, header checksum) is what an answer
        // quotes back: the packet parses as the SYN it is.
        assert_eq!(first_fragment(&packet).map(|ip| ip.header_len()), Some(20));
    }

    #[test]
    fn answers_are_recognised() {
        let port = 40000;
        let syn_ack = tcp_answer(TARGET, port, Flags::SYN | Flags::ACK, 1001);
        assert_eq!(
            parse_answer(&syn_ack, port),
            Some(Answer {
                target: TARGET,
                seq: 1000,
                verdict: Verdict::Up
            })
        );
        let reset = tcp_answer(TARGET, port, Flags::RST | Flags::ACK, 0);
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
        let router = Ipv4Addr::new(10, 0, 0, 254);
        let unreachable = icmp_error(
            router,
            Message::DST_UNREACHABLE,
            unreachable::HOST,
            &quoted[..ipv4::HEADER_LEN + icmpv4::QUOTED_PAYLOAD_LEN],
        );
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
        let syn_ack = Flags::SYN | Flags::ACK;
        // To a port outside the source ports (either side); a bare ACK; a SYN; a FIN-ACK.
        let last = port + SOURCE_PORTS - 1;
        assert!(parse_answer(&tcp_answer(TARGET, last, syn_ack, 1), port).is_some());
        for other in [port - 1, last + 1] {
            assert_eq!(
                parse_answer(&tcp_answer(TARGET, other, syn_ack, 1), port),
                None,
                "to port {other}"
            );
        }
        for flags in [Flags::ACK, Flags::SYN, Flags::FIN | Flags::ACK] {
            assert_eq!(
                parse_answer(&tcp_answer(TARGET, port, flags, 1), port),
                None,
                "{flags:?}"
            );
        }
        // Truncated anywhere, or not IPv4, or a later fragment.
        let answer = tcp_answer(TARGET, port, syn_ack, 1);
        for len in 0..answer.len() - 6 {
            assert_eq!(parse_answer(&answer[..len], port), None, "{len} bytes");
        }
        let mut v6 = answer.clone();
        v6[0] = 0x65;
        assert_eq!(parse_answer(&v6, port), None);
        let mut fragment = answer.clone();
        fragment[7] = 1;
        assert_eq!(parse_answer(&fragment, port), None);
        // ICMP that is not destination-unreachable, or quotes a segment from another port.
        let quoted = syn_packet(SOURCE, port + SOURCE_PORTS, TARGET, 1);
        let quoted = &quoted[..ipv4::HEADER_LEN + icmpv4::QUOTED_PAYLOAD_LEN];
        let other_port = icmp_error(SOURCE, Message::DST_UNREACHABLE, 1, quoted);
        assert_eq!(parse_answer(&other_port, port), None);
        let time_exceeded = icmp_error(SOURCE, Message::TIME_EXCEEDED, 1, quoted);
        assert_eq!(parse_answer(&time_exceeded, port), None);
    }
}
