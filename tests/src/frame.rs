//! Test frames on top of `balancer_wire`: a short [`Spec`] of an Ethernet frame (an
//! optional 802.1Q tag) with IPv4 (options allowed) and TCP, UDP or ICMP, and the frames
//! the data plane sends back, parsed with every checksum verified from scratch, so that a
//! test catches any mistake in the data plane's incremental updates.

use std::net::Ipv4Addr;

use balancer_wire::ethernet::{self, VlanTag};
use balancer_wire::icmpv4::{self, Message};
use balancer_wire::tcp::{self, Flags};
use balancer_wire::{ipv4, udp, EtherType, IpProtocol, MacAddr, Options, PseudoHeader};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        flags: Flags,
        seq: u32,
        ack: u32,
    },
    /// `checksum: false` sends a zero ("no checksum") UDP checksum.
    Udp {
        checksum: bool,
    },
}

/// What to build; `Default` gives a TCP SYN with a small payload.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// The TCI of an 802.1Q tag.
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// IPv4 options (padded by the caller to a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
}

/// The window of every built TCP segment.
const WINDOW: u16 = 64_240;
/// The identification of every built IPv4 header.
const IDENT: u16 = 0x1234;

impl Default for Spec {
    fn default() -> Self {
        Spec {
            src_mac: MacAddr([0x02, 0, 0, 0, 0xaa, 0x01]),
            dst_mac: MacAddr([0x02, 0, 0, 0, 0xaa, 0x02]),
            vlan: None,
            src: Ipv4Addr::new(10, 0, 1, 2),
            dst: Ipv4Addr::new(10, 0, 100, 1),
            ttl: 64,
            ip_options: Vec::new(),
            sport: 40000,
            dport: 80,
            l4: L4::Tcp {
                flags: Flags::SYN,
                seq: 1000,
                ack: 0,
            },
            payload: b"hello".to_vec(),
        }
    }
}

/// The frame `spec` describes (IPv4 identification 0x1234, don't fragment).
pub fn build(spec: &Spec) -> Vec<u8> {
    match spec.l4 {
        L4::Tcp { flags, seq, ack } => {
            let segment = tcp::Repr {
                src_port: spec.sport,
                dst_port: spec.dport,
                seq_number: seq,
                ack_number: ack,
                flags,
                window_len: WINDOW,
                urgent_pointer: 0,
                options: Options::NONE,
                payload: &spec.payload,
            };
            ip_frame(
                spec,
                IpProtocol::TCP,
                segment.buffer_len(),
                |bytes, pseudo| {
                    segment.emit(&mut tcp::Packet::new_unchecked(bytes), pseudo);
                },
            )
        }
        L4::Udp { checksum } => {
            let datagram = udp::Repr {
                src_port: spec.sport,
                dst_port: spec.dport,
                payload: &spec.payload,
            };
            ip_frame(
                spec,
                IpProtocol::UDP,
                datagram.buffer_len(),
                |bytes, pseudo| {
                    let mut packet = udp::Packet::new_unchecked(bytes);
                    datagram.emit(&mut packet, pseudo);
                    if !checksum {
                        packet.set_checksum(0);
                    }
                },
            )
        }
    }
}

/// An ICMP message ([`build_icmp`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub kind: Message,
    pub code: u8,
    /// The header's last four bytes: unused, or the next-hop MTU (RFC 1191) in the low
    /// 16 bits of a "fragmentation needed".
    pub rest: u32,
    /// What follows the header: for an error, the quoted start of a datagram
    /// ([`ip_datagram`]).
    pub body: Vec<u8>,
}

impl Icmp {
    fn repr(&self) -> icmpv4::Repr<'_> {
        icmpv4::Repr {
            msg_type: self.kind,
            code: self.code,
            rest: self.rest,
            data: &self.body,
        }
    }
}

/// An Ethernet frame with an ICMP message; `spec` gives the Ethernet and IPv4 headers
/// (its ports, `l4` and payload are not used).
pub fn build_icmp(spec: &Spec, icmp: &Icmp) -> Vec<u8> {
    let message = icmp.repr();
    ip_frame(spec, IpProtocol::ICMP, message.buffer_len(), |bytes, _| {
        message.emit(&mut icmpv4::Packet::new_unchecked(bytes));
    })
}

/// The ICMP message alone, with its checksum (what a raw ICMP socket sends).
pub fn icmp_message(icmp: &Icmp) -> Vec<u8> {
    let message = icmp.repr();
    let mut bytes = vec![0; message.buffer_len()];
    message.emit(&mut icmpv4::Packet::new_unchecked(&mut bytes[..]));
    bytes
}

/// The IPv4 datagram in a frame: what an ICMP error quotes (the start of).
///
/// # Panics
/// When `frame` has no whole Ethernet header.
pub fn ip_datagram(frame: &[u8]) -> &[u8] {
    ethernet::Frame::new_checked(frame)
        .expect("an Ethernet frame")
        .payload()
}

/// Ethernet and IPv4 headers from `spec` around `l4_len` bytes of `protocol`, which
/// `emit_l4` writes (given the IPv4 pseudo-header for its checksum).
fn ip_frame(
    spec: &Spec,
    protocol: IpProtocol,
    l4_len: usize,
    emit_l4: impl FnOnce(&mut [u8], &PseudoHeader),
) -> Vec<u8> {
    let eth = ethernet::Repr {
        src_addr: spec.src_mac,
        dst_addr: spec.dst_mac,
        vlan: spec.vlan.map(VlanTag::dot1q),
        ethertype: EtherType::IPV4,
    };
    let ip = ipv4::Repr {
        src_addr: spec.src,
        dst_addr: spec.dst,
        protocol,
        payload_len: l4_len,
        ttl: spec.ttl,
        ident: IDENT,
        options: Options::new(&spec.ip_options).expect("IPv4 options must pad to 4 bytes"),
        ..ipv4::Repr::default()
    };
    let mut frame = vec![0; eth.header_len() + ip.buffer_len()];
    let mut ether = ethernet::Frame::new_unchecked(&mut frame[..]);
    eth.emit(&mut ether);
    let mut packet = ipv4::Packet::new_unchecked(ether.payload_mut());
    ip.emit(&mut packet);
    emit_l4(packet.payload_mut(), &ip.pseudo_header());
    frame
}

/// A parsed frame, with its checksums verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// The TCI of an 802.1Q tag.
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: IpProtocol,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: Flags,
    pub ip_checksum_ok: bool,
    /// `None` for a UDP datagram without checksum.
    pub l4_checksum_ok: Option<bool>,
    pub payload: Vec<u8>,
}

/// The Ethernet and IPv4 headers of a frame, and the datagram's payload.
struct Headers<'a> {
    eth: ethernet::Repr,
    ip: ipv4::Repr,
    ip_checksum_ok: bool,
    l4: &'a [u8],
}

fn headers(frame: &[u8]) -> Result<Headers<'_>, String> {
    let ether = ethernet::Frame::new_checked(frame).map_err(|e| e.to_string())?;
    let eth = ethernet::Repr::parse(&ether).map_err(|e| e.to_string())?;
    if eth.ethertype != EtherType::IPV4 {
        return Err(format!("ethertype {:#06x} is not IPv4", eth.ethertype.0));
    }
    let packet = ipv4::Packet::new_checked(ether.payload()).map_err(|e| e.to_string())?;
    Ok(Headers {
        eth,
        ip: ipv4::Repr::parse(&packet).map_err(|e| e.to_string())?,
        ip_checksum_ok: packet.verify_checksum(),
        l4: packet.payload(),
    })
}

/// A frame with a TCP segment or UDP datagram.
///
/// # Errors
/// A description of what does not parse.
pub fn parse(frame: &[u8]) -> Result<Parsed, String> {
    let Headers {
        eth,
        ip,
        ip_checksum_ok,
        l4,
    } = headers(frame)?;
    let pseudo = ip.pseudo_header();
    let (sport, dport, tcp_flags, l4_checksum_ok, payload) = match ip.protocol {
        IpProtocol::TCP => {
            let packet = tcp::Packet::new_checked(l4).map_err(|e| e.to_string())?;
            let segment = tcp::Repr::parse(&packet).map_err(|e| e.to_string())?;
            let ok = packet.verify_checksum(&pseudo);
            let (sport, dport) = (segment.src_port, segment.dst_port);
            (sport, dport, segment.flags, Some(ok), segment.payload)
        }
        IpProtocol::UDP => {
            let packet = udp::Packet::new_checked(l4).map_err(|e| e.to_string())?;
            let datagram = udp::Repr::parse(&packet).map_err(|e| e.to_string())?;
            let ok = (packet.checksum() != 0).then(|| packet.verify_checksum(&pseudo));
            let (sport, dport) = (datagram.src_port, datagram.dst_port);
            (sport, dport, Flags::default(), ok, datagram.payload)
        }
        other => return Err(format!("{other} is neither TCP nor UDP")),
    };
    Ok(Parsed {
        src_mac: eth.src_addr,
        dst_mac: eth.dst_addr,
        vlan: eth.vlan.map(|tag| tag.tci),
        src: ip.src_addr,
        dst: ip.dst_addr,
        ttl: ip.ttl,
        proto: ip.protocol,
        sport,
        dport,
        tcp_flags,
        ip_checksum_ok,
        l4_checksum_ok,
        payload: payload.to_vec(),
    })
}

/// A parsed ICMP frame, with its checksums verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIcmp {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub ip_checksum_ok: bool,
    pub icmp: Icmp,
    pub icmp_checksum_ok: bool,
}

/// A frame with an ICMP message (an error's quote must hold an IPv4 header and 8 bytes).
///
/// # Errors
/// A description of what does not parse.
pub fn parse_icmp(frame: &[u8]) -> Result<ParsedIcmp, String> {
    let h = headers(frame)?;
    if h.ip.protocol != IpProtocol::ICMP {
        return Err(format!("{} is not ICMP", h.ip.protocol));
    }
    let packet = icmpv4::Packet::new_checked(h.l4).map_err(|e| e.to_string())?;
    let message = icmpv4::Repr::parse(&packet).map_err(|e| e.to_string())?;
    Ok(ParsedIcmp {
        src_mac: h.eth.src_addr,
        dst_mac: h.eth.dst_addr,
        src: h.ip.src_addr,
        dst: h.ip.dst_addr,
        ttl: h.ip.ttl,
        ip_checksum_ok: h.ip_checksum_ok,
        icmp: Icmp {
            kind: message.msg_type,
            code: message.code,
            rest: message.rest,
            body: message.data.to_vec(),
        },
        icmp_checksum_ok: packet.verify_checksum(),
    })
}

#[cfg(test)]
mod tests {
    use balancer_wire::icmpv4::unreachable;

    use super::*;

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        for spec in [
            Spec::default(),
            Spec {
                vlan: Some(100),
                ip_options: vec![1, 1, 1, 0],
                ..Spec::default()
            },
            Spec {
                l4: L4::Udp { checksum: true },
                payload: b"odd".to_vec(),
                ..Spec::default()
            },
        ] {
            let p = parse(&build(&spec)).unwrap();
            assert!(p.ip_checksum_ok);
            assert_eq!(p.l4_checksum_ok, Some(true));
            assert_eq!(
                (p.src, p.dst, p.sport, p.dport),
                (spec.src, spec.dst, spec.sport, spec.dport)
            );
            assert_eq!(p.vlan, spec.vlan);
            assert_eq!(p.payload, spec.payload);
        }
    }

    #[test]
    fn icmp_errors_parse_back_with_their_quote() {
        let quoted = build(&Spec::default());
        let icmp = Icmp {
            kind: Message::DST_UNREACHABLE,
            code: unreachable::FRAG_NEEDED,
            rest: 1200,
            body: ip_datagram(&quoted)[..28].to_vec(),
        };
        let spec = Spec {
            vlan: Some(7),
            ..Spec::default()
        };
        let p = parse_icmp(&build_icmp(&spec, &icmp)).unwrap();
        assert!(p.ip_checksum_ok && p.icmp_checksum_ok);
        assert_eq!((p.src, p.dst, p.ttl), (spec.src, spec.dst, spec.ttl));
        assert_eq!(p.icmp.body[..20], quoted[14..34]);
        assert_eq!(
            (p.icmp.kind, p.icmp.code, p.icmp.rest),
            (Message::DST_UNREACHABLE, 4, 1200)
        );
        assert!(parse(&build_icmp(&spec, &icmp)).is_err());
    }

    #[test]
    fn corrupted_checksum_is_detected() {
        let mut frame = build(&Spec::default());
        let n = frame.len();
        frame[n - 1] ^= 0xff;
        assert_eq!(parse(&frame).unwrap().l4_checksum_ok, Some(false));
    }
}
