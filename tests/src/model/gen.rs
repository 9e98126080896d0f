//! The structure-aware packet generator: frames with valid headers and random fields
//! (addresses and ports mostly those of the fixture's VIPs, backends and clients, so that
//! flows are opened, continued, answered and quoted), then mutated: 802.1Q and `QinQ` tags,
//! IP options, fragments, every TCP flag combination, TCP options, bad lengths and
//! checksums, trailers, truncation at any offset; and ICMP errors quoting the tuples of
//! live flows or random ones. Every choice comes from the seeded [`Rng`].

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use balancer_wire::checksum::{checksum, PseudoHeader};
use balancer_wire::IpProtocol;

use super::reference::{Tuple, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SNAT_PORTS};
use super::rng::Rng;
use crate::fixtures::frames::{
    BACKEND_ROUTER, CLIENT_MAC, CLIENT_ROUTER, DNS_BACKEND, DNS_BACKEND_MAC, LB_BACKEND_MAC,
    LB_CLIENT_MAC, SNAT, VIP, WEB_BACKEND, WEB_BACKEND_MAC,
};
use crate::fixtures::Side;

/// Bytes of Ethernet header before the first tag or the `EtherType`.
const ETH_ADDRS: usize = 12;
/// The smallest frame `BPF_PROG_TEST_RUN` accepts for XDP (an Ethernet header).
pub const MIN_FRAME: usize = 14;
/// Clients: addresses on the client segment (the FIB has a route, not always a neighbour)
/// and ports, few enough that flows recur and never exhaust the SNAT ports.
const CLIENT_HOSTS: u8 = 32;
const CLIENT_PORTS: u16 = 32;

/// A generated frame: where it arrives, and how it was made (for a finding's report).
pub struct Generated {
    pub frame: Vec<u8>,
    pub side: Side,
    pub what: String,
}

/// An IPv4 header to build.
struct Ip {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    tos: u8,
    ident: u16,
    /// Flags and fragment offset.
    frags: u16,
    options: Vec<u8>,
}

impl Ip {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ip {
        Ip {
            src,
            dst,
            proto,
            ttl: 64,
            tos: 0,
            ident: 0,
            frags: 0x4000,
            options: Vec::new(),
        }
    }

    /// The datagram: header (valid checksum) and `payload`.
    fn datagram(&self, payload: &[u8]) -> Vec<u8> {
        let ihl = 20 + self.options.len();
        let mut d = vec![0u8; ihl];
        d[0] = 0x40 | (ihl / 4) as u8;
        d[1] = self.tos;
        d[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
        d[4..6].copy_from_slice(&self.ident.to_be_bytes());
        d[6..8].copy_from_slice(&self.frags.to_be_bytes());
        d[8] = self.ttl;
        d[9] = self.proto;
        d[12..16].copy_from_slice(&self.src.octets());
        d[16..20].copy_from_slice(&self.dst.octets());
        d[20..].copy_from_slice(&self.options);
        let check = checksum(&d);
        d[10..12].copy_from_slice(&check.to_be_bytes());
        d.extend_from_slice(payload);
        d
    }
}

/// A TCP segment with a valid checksum.
fn tcp_segment(
    t: &Tuple,
    (seq, ack, flags): (u32, u32, u8),
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let doff = 20 + options.len();
    let mut s = vec![0u8; doff];
    s[0..2].copy_from_slice(&t.sport.to_be_bytes());
    s[2..4].copy_from_slice(&t.dport.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[12] = ((doff / 4) as u8) << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    s[20..].copy_from_slice(options);
    s.extend_from_slice(payload);
    let check = PseudoHeader::from((t.src, t.dst)).checksum(IpProtocol::TCP, &s);
    s[16..18].copy_from_slice(&check.to_be_bytes());
    s
}

/// A UDP datagram with a valid checksum, or none (zero).
fn udp_datagram(t: &Tuple, payload: &[u8], with_checksum: bool) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[0..2].copy_from_slice(&t.sport.to_be_bytes());
    d[2..4].copy_from_slice(&t.dport.to_be_bytes());
    d[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(payload);
    if with_checksum {
        let check = match PseudoHeader::from((t.src, t.dst)).checksum(IpProtocol::UDP, &d) {
            0 => 0xffff,
            c => c,
        };
        d[6..8].copy_from_slice(&check.to_be_bytes());
    }
    d
}

/// An ICMP message with a valid checksum.
fn icmp_message(kind: u8, code: u8, rest: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest.to_be_bytes());
    m.extend_from_slice(body);
    let check = checksum(&m);
    m[2..4].copy_from_slice(&check.to_be_bytes());
    m
}

/// The generator: its random numbers (everything it makes follows from the seed and the
/// flows it is given).
pub struct Generator {
    rng: Rng,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: Rng::new(seed),
        }
    }

    /// The next frame; `flows` are the live flows the model knows (client tuple, reply
    /// tuple), so that replies and ICMP errors can be about them.
    pub fn next(&mut self, flows: &[(Tuple, Tuple)]) -> Generated {
        let mut what = String::new();
        let r = &mut self.rng;
        let (ip, l4, side) = match r.below(100) {
            0..40 => client_packet(r, &mut what),
            40..65 => backend_packet(r, flows, &mut what),
            65..80 => icmp_error(r, flows, &mut what),
            _ => random_packet(r, &mut what),
        };
        let mut frame = self.frame(ip, &l4, side, &mut what);
        self.mutate_lengths(&mut frame, &mut what);
        Generated { frame, side, what }
    }

    /// The Ethernet frame around `ip` and its payload `l4`, with the header mutations.
    fn frame(&mut self, mut ip: Ip, l4: &[u8], side: Side, what: &mut String) -> Vec<u8> {
        let r = &mut self.rng;
        let (dst_mac, src_mac) = match side {
            Side::Client => (LB_CLIENT_MAC, CLIENT_MAC),
            Side::Backend => (
                LB_BACKEND_MAC,
                if ip.src == DNS_BACKEND {
                    DNS_BACKEND_MAC
                } else {
                    WEB_BACKEND_MAC
                },
            ),
        };
        let mut frame = Vec::with_capacity(96 + l4.len());
        frame.extend_from_slice(&dst_mac.0);
        frame.extend_from_slice(&src_mac.0);
        match r.below(100) {
            0..8 => {
                let _ = write!(what, " vlan");
                frame.extend_from_slice(&[0x81, 0x00]);
                frame.extend_from_slice(&r.u16().to_be_bytes());
            }
            8..11 => {
                let _ = write!(what, " qinq");
                frame.extend_from_slice(&[0x88, 0xa8]);
                frame.extend_from_slice(&r.u16().to_be_bytes());
                frame.extend_from_slice(&[0x81, 0x00]);
                frame.extend_from_slice(&r.u16().to_be_bytes());
            }
            _ => {}
        }
        let ether_type: u16 = match r.below(100) {
            0..3 => {
                let any = r.u16();
                let t = r.pick(&[0x0806, 0x86dd, 0x8100, 0x88a8, any]);
                let _ = write!(what, " ethertype={t:#06x}");
                t
            }
            _ => 0x0800,
        };
        frame.extend_from_slice(&ether_type.to_be_bytes());
        ip.ttl = match r.below(100) {
            0..3 => 0,
            3..6 => 1,
            6..20 => r.u8(),
            _ => 64,
        };
        ip.tos = if r.percent(10) { r.u8() } else { 0 };
        ip.ident = r.u16();
        if r.percent(10) {
            // NOPs, an EOL, or random bytes; 4 to 40 bytes.
            let len = 4 * (1 + r.below(10));
            ip.options = match r.below(3) {
                0 => vec![1; len],
                1 => {
                    let mut o = vec![0; len];
                    o[0] = 1;
                    o
                }
                _ => r.bytes(len),
            };
            let _ = write!(what, " ip-options={len}");
        }
        match r.below(100) {
            0..3 => ip.frags = 0x2000 | (r.u16() & 0x1fff), // MF, any offset
            3..6 => ip.frags = 1 + (r.u16() % 0x1fff),      // a later, last fragment
            6..8 => ip.frags = r.u16(),
            _ => {}
        }
        let _ = write!(what, " ttl={} frags={:#06x}", ip.ttl, ip.frags);
        let ip_off = frame.len();
        frame.extend_from_slice(&ip.datagram(l4));
        let ihl = 20 + ip.options.len();
        // Header fields no builder writes wrong, and checksums made wrong.
        match r.below(100) {
            0 => {
                frame[ip_off] = (r.u8() & 0xf0) | (frame[ip_off] & 0x0f);
                let _ = write!(what, " version={}", frame[ip_off] >> 4);
            }
            1 => {
                frame[ip_off] = (frame[ip_off] & 0xf0) | (r.u8() & 0x0f);
                let _ = write!(what, " ihl={}", frame[ip_off] & 0x0f);
            }
            2..5 => {
                frame[ip_off + 10] ^= 1 << r.below(8);
                let _ = write!(what, " bad-ip-checksum");
            }
            5..8 => {
                let check_off = match ip.proto {
                    PROTO_TCP => Some(16),
                    PROTO_UDP => Some(6),
                    PROTO_ICMP => Some(2),
                    _ => None,
                };
                if let Some(off) = check_off.filter(|off| off + 2 <= l4.len()) {
                    frame[ip_off + ihl + off + r.below(2)] ^= 1 << r.below(8);
                    let _ = write!(what, " bad-l4-checksum");
                }
            }
            _ => {}
        }
        frame
    }

    /// Lengths made wrong: the IPv4 total length, a trailer after the datagram, a
    /// truncation at any offset.
    fn mutate_lengths(&mut self, frame: &mut Vec<u8>, what: &mut String) {
        let r = &mut self.rng;
        let ip_off = ip_offset(frame);
        if let Some(ip_off) = ip_off.filter(|&o| frame.len() >= o + 20) {
            match r.below(100) {
                0..2 => {
                    let room = (frame.len() - ip_off + 8) as u16;
                    let len = r.u16() % room;
                    frame[ip_off + 2..ip_off + 4].copy_from_slice(&len.to_be_bytes());
                    let _ = write!(what, " tot_len={len}");
                }
                // Keeps the header checksum valid: the field and the checksum move together.
                2..4 => {
                    let room = (frame.len() - ip_off + 8) as u16;
                    let len = r.u16() % room;
                    fix_ip_len(frame, ip_off, len, what);
                }
                _ => {}
            }
        }
        if r.percent(4) {
            let n = 1 + r.below(32);
            frame.extend(r.bytes(n));
            let _ = write!(what, " trailer={n}");
        }
        if r.percent(6) && frame.len() > MIN_FRAME {
            let at = MIN_FRAME + r.below(frame.len() - MIN_FRAME);
            frame.truncate(at);
            let _ = write!(what, " truncated-at={at}");
        }
    }
}

/// Sets the IPv4 total length and corrects the header checksum.
fn fix_ip_len(frame: &mut [u8], ip_off: usize, len: u16, what: &mut String) {
    frame[ip_off + 2..ip_off + 4].copy_from_slice(&len.to_be_bytes());
    let ihl = usize::from(frame[ip_off] & 0x0f) * 4;
    if ihl >= 20 && ip_off + ihl <= frame.len() {
        frame[ip_off + 10..ip_off + 12].fill(0);
        let check = checksum(&frame[ip_off..ip_off + ihl]);
        frame[ip_off + 10..ip_off + 12].copy_from_slice(&check.to_be_bytes());
    }
    let _ = write!(what, " tot_len={len}(checksum fixed)");
}

/// Where the IPv4 header would start (after up to two tags), if the frame says IPv4.
fn ip_offset(frame: &[u8]) -> Option<usize> {
    let mut off = ETH_ADDRS;
    while frame.len() >= off + 2 {
        match u16::from_be_bytes([frame[off], frame[off + 1]]) {
            0x8100 | 0x88a8 => off += 4,
            0x0800 => return Some(off + 2),
            _ => return None,
        }
    }
    None
}

/// Any of 64 addresses: martians (unspecified, broadcast, loopback, multicast, the client
/// segment's broadcast) and others spread over the address space.
fn any_addr(r: &mut Rng) -> Ipv4Addr {
    match r.below(64) {
        0 => Ipv4Addr::UNSPECIFIED,
        1 => Ipv4Addr::BROADCAST,
        2 => Ipv4Addr::LOCALHOST,
        3 => Ipv4Addr::new(224, 0, 0, 18),
        4 => Ipv4Addr::new(10, 0, 1, 255),
        n => Ipv4Addr::from((n as u32).wrapping_mul(0x9e37_79b1)),
    }
}

/// A client's address and port from the fixed pool, now and then any address or port.
fn client_tuple(r: &mut Rng) -> (Ipv4Addr, u16) {
    if r.percent(3) {
        // Any host of the segment (the network and broadcast addresses, the balancer's
        // own), from one port: a few more flows.
        return (Ipv4Addr::new(10, 0, 1, r.u8()), 40_000);
    }
    let addr = Ipv4Addr::new(10, 0, 1, 2 + r.below(usize::from(CLIENT_HOSTS)) as u8);
    (addr, 40_000 + (r.u16() % CLIENT_PORTS))
}

/// TCP flags: often a common combination, else any of the 256.
fn tcp_flags(r: &mut Rng) -> u8 {
    if r.percent(50) {
        r.pick(&[0x02, 0x10, 0x18, 0x11, 0x12, 0x14, 0x04])
    } else {
        r.u8()
    }
}

/// The transport bytes for `t`: TCP with random flags and sometimes options or a wrong
/// data offset, UDP with or without a checksum, or `proto`'s random bytes.
fn transport(r: &mut Rng, t: &Tuple, what: &mut String) -> Vec<u8> {
    let len = r.below(64);
    let payload = r.bytes(len);
    match t.proto {
        PROTO_TCP => {
            let flags = tcp_flags(r);
            let options = if r.percent(10) {
                let len = 4 * (1 + r.below(10));
                r.bytes(len)
            } else {
                Vec::new()
            };
            let mut s = tcp_segment(t, (r.u32(), r.u32(), flags), &options, &payload);
            let _ = write!(what, " flags={flags:#04x} tcp-options={}", options.len());
            if r.percent(2) {
                // The checksum does not cover a wrong data offset's effect: fix it.
                s[12] = (r.u8() & 0xf0) | (s[12] & 0x0f);
                s[16..18].fill(0);
                let check = PseudoHeader::from((t.src, t.dst)).checksum(IpProtocol::TCP, &s);
                s[16..18].copy_from_slice(&check.to_be_bytes());
                let _ = write!(what, " doff={}", s[12] >> 4);
            }
            s
        }
        PROTO_UDP => {
            let with_checksum = !r.percent(5);
            let mut d = udp_datagram(t, &payload, with_checksum);
            if r.percent(2) {
                let len = r.u16() % 80;
                d[4..6].copy_from_slice(&len.to_be_bytes());
                let _ = write!(what, " udp-len={len}");
            }
            let _ = write!(what, " udp-checksum={with_checksum}");
            d
        }
        _ => payload,
    }
}

/// A packet of `t` arriving on `side`, described as `kind`.
fn packet(r: &mut Rng, kind: &str, t: Tuple, side: Side, what: &mut String) -> (Ip, Vec<u8>, Side) {
    let _ = write!(what, "{kind} {t}");
    let l4 = transport(r, &t, what);
    (Ip::new(t.src, t.dst, t.proto), l4, side)
}

/// From a client to the VIP: the web, DNS or empty VIP's port, or another.
fn client_packet(r: &mut Rng, what: &mut String) -> (Ip, Vec<u8>, Side) {
    let (src, sport) = client_tuple(r);
    let (dport, mut proto) = match r.below(100) {
        0..45 => (80, PROTO_TCP),
        45..80 => (5300, PROTO_UDP),
        80..85 => (81, PROTO_TCP),
        _ => (r.u16(), r.pick(&[PROTO_TCP, PROTO_UDP])),
    };
    if r.percent(5) {
        let any = r.u8();
        proto = r.pick(&[PROTO_TCP, PROTO_UDP, any]);
    }
    let t = Tuple {
        src,
        dst: VIP,
        sport,
        dport,
        proto,
    };
    packet(r, "client", t, Side::Client, what)
}

/// From a backend to the SNAT address: a reply on a live flow's tuple, or on any port.
fn backend_packet(r: &mut Rng, flows: &[(Tuple, Tuple)], what: &mut String) -> (Ip, Vec<u8>, Side) {
    let t = if !flows.is_empty() && r.percent(75) {
        flows[r.below(flows.len())].1
    } else {
        let (src, sport, proto) = if r.percent(50) {
            (WEB_BACKEND, 80, PROTO_TCP)
        } else {
            (DNS_BACKEND, 5300, PROTO_UDP)
        };
        let dport = if r.percent(70) {
            SNAT_PORTS.start() + r.u16() % (SNAT_PORTS.end() - SNAT_PORTS.start() + 1)
        } else {
            r.u16()
        };
        Tuple {
            src,
            dst: SNAT,
            sport,
            dport,
            proto,
        }
    };
    packet(r, "backend", t, Side::Backend, what)
}

/// Anything: random addresses, ports and protocol.
fn random_packet(r: &mut Rng, what: &mut String) -> (Ip, Vec<u8>, Side) {
    let addr = |r: &mut Rng| {
        let any = any_addr(r);
        r.pick(&[
            VIP,
            SNAT,
            WEB_BACKEND,
            DNS_BACKEND,
            Ipv4Addr::new(10, 0, 1, 2),
            any,
        ])
    };
    let t = Tuple {
        src: addr(r),
        dst: addr(r),
        // Few source ports: those to a VIP open flows, and all flows must fit the SNAT
        // ports (a full range drops new flows, which the model does not predict).
        sport: 1024 + r.u16() % 16,
        dport: {
            let any = r.u16();
            r.pick(&[80, 81, 5300, any])
        },
        proto: {
            let any = r.u8();
            r.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP, any])
        },
    };
    let side = if r.percent(50) {
        Side::Client
    } else {
        Side::Backend
    };
    packet(r, "random", t, side, what)
}

/// An ICMP error quoting a packet the balancer sent (to a backend or to a client) of a
/// live flow, or a random tuple; from the peer or a router, to the quote's source or not.
fn icmp_error(r: &mut Rng, flows: &[(Tuple, Tuple)], what: &mut String) -> (Ip, Vec<u8>, Side) {
    let (quoted, side) = if !flows.is_empty() && r.percent(80) {
        let (client, reply) = flows[r.below(flows.len())];
        if r.percent(50) {
            // The packet the balancer sent to the backend: the reply tuple reversed.
            (reply.reversed(), Side::Backend)
        } else {
            // The reply the balancer sent to the client: the client's tuple reversed.
            (client.reversed(), Side::Client)
        }
    } else {
        let (any_src, any_dst) = (Ipv4Addr::from(r.u32()), Ipv4Addr::from(r.u32()));
        let t = Tuple {
            src: r.pick(&[VIP, SNAT, any_src]),
            dst: r.pick(&[WEB_BACKEND, Ipv4Addr::new(10, 0, 1, 2), any_dst]),
            sport: r.u16(),
            dport: r.u16(),
            proto: r.pick(&[PROTO_TCP, PROTO_UDP]),
        };
        (
            t,
            if r.percent(50) {
                Side::Client
            } else {
                Side::Backend
            },
        )
    };
    let from = match (side, r.percent(50)) {
        (_, true) => quoted.dst,
        (Side::Backend, false) => BACKEND_ROUTER,
        (Side::Client, false) => CLIENT_ROUTER,
    };
    let to = if r.percent(90) {
        quoted.src
    } else {
        Ipv4Addr::from(r.u32())
    };
    let (kind, code) = match r.below(100) {
        0..40 => (3, 4),
        40..60 => (3, r.pick(&[0, 1, 3, 13])),
        60..75 => (11, r.below(2) as u8),
        75..85 => (12, 0),
        _ => {
            let any = r.u8();
            (r.pick(&[0, 8, 5, any]), r.u8())
        }
    };
    let any = r.u16();
    let mtu: u16 = r.pick(&[0, 68, 576, 1279, 1280, 1400, 1500, any]);
    let mut inner = Ip::new(quoted.src, quoted.dst, quoted.proto);
    if r.percent(10) {
        inner.options = vec![1; 4 * (1 + r.below(3))];
    }
    if r.percent(5) {
        inner.frags = r.u16();
    }
    if r.percent(3) {
        inner.proto = r.u8();
    }
    let mut quote_what = String::new();
    let inner_l4 = transport(r, &quoted, &mut quote_what);
    let datagram = inner.datagram(&inner_l4);
    let ihl = 20 + inner.options.len();
    // RFC 792's minimum, Linux's usual (the whole packet within 576 bytes), or any cut.
    let quote_len = match r.below(100) {
        0..40 => ihl + 8,
        40..80 => datagram.len(),
        _ => r.below(datagram.len() + 1),
    }
    .min(datagram.len());
    let body = &datagram[..quote_len];
    let _ = write!(
        what,
        "icmp type={kind} code={code} mtu={mtu} {from} -> {to} quoting {quoted} ({quote_len} of {} bytes{quote_what})",
        datagram.len()
    );
    let message = icmp_message(kind, code, u32::from(mtu), body);
    (Ip::new(from, to, PROTO_ICMP), message, side)
}
