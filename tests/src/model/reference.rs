//! The reference model: what the XDP program must do with a frame, written again from the
//! rules the program's documentation states (README, `parse.rs` and `icmp.rs`), not by
//! calling its code. It parses a frame as the program
//! must (Ethernet with one tag, IPv4, TCP, UDP, ICMP errors and their quotes) and says
//! which verdict classes are right, given the flows it has seen opened: it learns each
//! flow's SNAT port and backend from the program's own output (it does not predict them),
//! and then knows which replies and ICMP errors belong to a flow.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use crate::fixtures::frames::{DNS_BACKEND, SNAT, VIP, WEB_BACKEND};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// The fixture's SNAT ports (the default `nat.port_range`).
pub const SNAT_PORTS: RangeInclusive<u16> = 20_000..=32_767;
/// Below this next-hop MTU a "fragmentation needed" is not passed on to a backend.
const PMTU_FLOOR: u16 = balancer_common::PMTU_FLOOR;
const TCP_RST: u8 = 0x04;
const TCP_FIN: u8 = 0x01;

/// A packet's addresses, ports and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{} proto {}",
            self.src, self.sport, self.dst, self.dport, self.proto
        )
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// A TCP or UDP packet the program balances or leaves alone.
#[derive(Clone, Debug)]
pub struct Flow {
    pub ip_off: usize,
    pub l4_off: usize,
    /// End of the IPv4 datagram (the frame may have a trailer).
    pub ip_end: usize,
    pub tuple: Tuple,
    pub tcp_flags: u8,
    pub ttl: u8,
    pub tagged: bool,
}

/// An ICMP error quoting a TCP or UDP packet.
#[derive(Clone, Debug)]
pub struct IcmpError {
    pub ip_off: usize,
    pub icmp_off: usize,
    pub quote_ip_off: usize,
    pub quote_l4_off: usize,
    pub ip_end: usize,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub frag_needed: bool,
    pub mtu: u16,
    pub quote: Tuple,
    pub ttl: u8,
    pub tagged: bool,
}

/// What a frame is to the program.
#[derive(Clone, Debug)]
pub enum Parsed {
    /// Must be dropped: an IPv4 TCP/UDP packet whose headers do not hold together.
    Malformed(&'static str),
    /// Not the program's business: passed as it is.
    Other(&'static str),
    /// An IPv6 packet whose header holds together. The model has no IPv6 VIPs, so it is
    /// passed as it is, or dropped when its extension or TCP/UDP headers do not hold
    /// together (which the model does not check).
    Ipv6(&'static str),
    Flow(Flow),
    IcmpError(IcmpError),
}

/// The IPv6 packet at `ip_off` of `f`: malformed when its fixed header is cut, is not
/// version 6, or claims more payload than the frame holds.
fn ipv6(f: &[u8], ip_off: usize) -> Parsed {
    if f.len() < ip_off + 40 {
        return Parsed::Malformed("IPv6 header cut");
    }
    if f[ip_off] >> 4 != 6 {
        return Parsed::Malformed("IPv6 version");
    }
    if ip_off + 40 + usize::from(be16(f, ip_off + 4)) > f.len() {
        return Parsed::Malformed("IPv6 payload length beyond the frame");
    }
    Parsed::Ipv6("IPv6, for no VIP")
}

/// Parses a frame as the program must.
pub fn parse(f: &[u8]) -> Parsed {
    use Parsed::{Malformed, Other};
    if f.len() < 14 {
        return Malformed("shorter than an Ethernet header");
    }
    let ether_type = be16(f, 12);
    let ip_off = 14;
    let tagged = ether_type == 0x8100 || ether_type == 0x88a8;
    if tagged {
        // Not balanced (a routed tag would hop VLANs): passed whatever it holds.
        return Other("VLAN-tagged");
    }
    if ether_type == 0x86dd {
        return ipv6(f, ip_off);
    }
    if ether_type != 0x0800 {
        return Other("not IPv4 or IPv6 (or a second tag)");
    }
    if f.len() < ip_off + 20 {
        return Malformed("IPv4 header cut");
    }
    let ihl = usize::from(f[ip_off] & 0x0f) * 4;
    let tot_len = usize::from(be16(f, ip_off + 2));
    if f[ip_off] >> 4 != 4 || ihl < 20 || tot_len < ihl {
        return Malformed("IPv4 version, header length or total length");
    }
    let ip_end = ip_off + tot_len;
    if ip_end > f.len() {
        return Malformed("IPv4 total length beyond the frame");
    }
    if be16(f, ip_off + 6) & 0x3fff != 0 {
        return Other("a fragment");
    }
    let (proto, src, dst, ttl) = (
        f[ip_off + 9],
        addr(f, ip_off + 12),
        addr(f, ip_off + 16),
        f[ip_off + 8],
    );
    let l4_off = ip_off + ihl;
    let l4_room = tot_len - ihl;
    let tcp_flags = match proto {
        PROTO_TCP => {
            if f.len() < l4_off + 20 {
                return Malformed("TCP header cut");
            }
            let doff = usize::from(f[l4_off + 12] >> 4) * 4;
            if doff < 20 || doff > l4_room {
                return Malformed("TCP data offset");
            }
            f[l4_off + 13]
        }
        PROTO_UDP => {
            if f.len() < l4_off + 8 {
                return Malformed("UDP header cut");
            }
            let len = usize::from(be16(f, l4_off + 4));
            if len < 8 || len > l4_room {
                return Malformed("UDP length");
            }
            0
        }
        PROTO_ICMP => return icmp_error(f, (ip_off, l4_off, ip_end), (src, dst, ttl), tagged),
        _ => return Other("neither TCP, UDP nor ICMP"),
    };
    Parsed::Flow(Flow {
        ip_off,
        l4_off,
        ip_end,
        tuple: Tuple {
            src,
            dst,
            sport: be16(f, l4_off),
            dport: be16(f, l4_off + 2),
            proto,
        },
        tcp_flags,
        ttl,
        tagged,
    })
}

fn icmp_error(
    f: &[u8],
    (ip_off, icmp_off, ip_end): (usize, usize, usize),
    (src, dst, ttl): (Ipv4Addr, Ipv4Addr, u8),
    tagged: bool,
) -> Parsed {
    if f.len() < icmp_off + 8 {
        return Parsed::Other("ICMP header cut");
    }
    let (kind, code) = (f[icmp_off], f[icmp_off + 1]);
    if ![3, 11, 12].contains(&kind) {
        return Parsed::Other("ICMP, not an error");
    }
    let quote_ip_off = icmp_off + 8;
    if f.len() < quote_ip_off + 20 {
        return Parsed::Other("ICMP error's quoted IPv4 header cut");
    }
    let ihl = usize::from(f[quote_ip_off] & 0x0f) * 4;
    let proto = f[quote_ip_off + 9];
    if f[quote_ip_off] >> 4 != 4
        || ihl < 20
        || be16(f, quote_ip_off + 6) & 0x1fff != 0
        || (proto != PROTO_TCP && proto != PROTO_UDP)
    {
        return Parsed::Other("ICMP error quoting no TCP/UDP first fragment");
    }
    let quote_l4_off = quote_ip_off + ihl;
    if f.len() < quote_l4_off + 8 || quote_l4_off + 8 > ip_end {
        return Parsed::Other("ICMP error's quoted ports cut");
    }
    Parsed::IcmpError(IcmpError {
        ip_off,
        icmp_off,
        quote_ip_off,
        quote_l4_off,
        ip_end,
        src,
        dst,
        frag_needed: kind == 3 && code == 4,
        mtu: be16(f, icmp_off + 6),
        quote: Tuple {
            src: addr(f, quote_ip_off + 12),
            dst: addr(f, quote_ip_off + 16),
            sport: be16(f, quote_l4_off),
            dport: be16(f, quote_l4_off + 2),
            proto,
        },
        ttl,
        tagged,
    })
}

/// How a forwarded packet must leave: its new tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaves {
    /// To the backend (any SNAT port of the range: the model learns it from the output).
    ToBackend { backend: Ipv4Addr, port: u16 },
    /// To the client, exactly this tuple.
    ToClient(Tuple),
}

/// The verdict classes the model allows for a frame.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Dropped.
    pub drop: bool,
    /// Passed unchanged.
    pub pass: bool,
    /// Translated and sent (redirected, transmitted, or passed rewritten when the
    /// neighbour is not known yet): how.
    pub forward: Option<Leaves>,
    /// For an ICMP error about a flow: passed, translated as given (outer source and
    /// destination, and the quoted tuple).
    pub icmp: Option<(Ipv4Addr, Ipv4Addr, Tuple)>,
    /// Why, for a finding's report.
    pub why: String,
}

/// What the model knows of the flows the program opened.
#[derive(Default)]
pub struct Model {
    /// A client's tuple -> the reply tuple of its flow (backend -> SNAT address:port), as
    /// last seen in the program's output. (Ordered: the generator picks flows from it, and
    /// a seed must give the same frames.)
    by_client: BTreeMap<Tuple, Tuple>,
    /// A reply tuple -> the client tuple whose flow last took it.
    by_reply: HashMap<Tuple, Tuple>,
}

impl Model {
    /// The flows seen opened, each with its latest reply tuple: (client tuple, reply tuple).
    pub fn flows(&self) -> Vec<(Tuple, Tuple)> {
        self.by_client.iter().map(|(c, r)| (*c, *r)).collect()
    }

    pub fn flow_count(&self) -> usize {
        self.by_client.len()
    }

    /// The program forwarded client tuple `client`'s packet with reply tuple `reply`.
    pub fn opened(&mut self, client: Tuple, reply: Tuple) {
        self.by_client.insert(client, reply);
        self.by_reply.insert(reply, client);
    }

    /// Whether the program opened a flow on `flow`'s client tuple (as far as the model
    /// knows: it may have idled out since).
    pub fn knows(&self, flow: &Flow) -> bool {
        self.by_client.contains_key(&flow.tuple)
    }

    /// What may become of a TCP/UDP packet; `checks_ok`: whether it would pass the checks
    /// of a packet that starts a flow.
    pub fn expect_flow(&self, flow: &Flow, checks_ok: bool) -> Expect {
        let t = flow.tuple;
        if flow.ttl <= 1 {
            return pass("TTL 0 or 1: not to be forwarded (the stack answers it)");
        }
        let rst = t.proto == PROTO_TCP && flow.tcp_flags & TCP_RST != 0;
        let closes = t.proto == PROTO_TCP && flow.tcp_flags & (TCP_RST | TCP_FIN) != 0;
        if t.dst == VIP {
            let backend = match (t.dport, t.proto) {
                (80, PROTO_TCP) => Some((WEB_BACKEND, 80)),
                (5300, PROTO_UDP) => Some((DNS_BACKEND, 5300)),
                (81, PROTO_TCP) => {
                    return Expect {
                        drop: true,
                        why: "the empty VIP has no backend".into(),
                        ..Expect::default()
                    }
                }
                _ => None,
            };
            if let Some((backend, port)) = backend {
                let known = self.by_client.contains_key(&t);
                let first = t.src.octets()[0];
                if !known && (first == 0 || first == 127 || first >= 224) {
                    return Expect {
                        drop: true,
                        why: "a new flow from a martian source".into(),
                        ..Expect::default()
                    };
                }
                if !known && !checks_ok {
                    return Expect {
                        drop: true,
                        why: "a new flow with a bad checksum".into(),
                        ..Expect::default()
                    };
                }
                return Expect {
                    // A RST starts no flow; on a known flow it may have ended already.
                    drop: rst,
                    forward: (!rst || known).then_some(Leaves::ToBackend { backend, port }),
                    why: format!("for a VIP with a backend (rst {rst}, known flow {known})"),
                    ..Expect::default()
                };
            }
            return pass("for the VIP's address, not one of its ports");
        }
        if t.dst == SNAT && SNAT_PORTS.contains(&t.dport) {
            if let Some(client) = self.by_reply.get(&t) {
                return Expect {
                    // A closing reply on a tuple its client moved away from is stale; a
                    // reply to an address the FIB has no route to is dropped.
                    drop: closes || !routable(client.src),
                    forward: Some(Leaves::ToClient(client.reversed())),
                    why: format!("a reply of the flow of {client}"),
                    ..Expect::default()
                };
            }
            return pass("to a SNAT port no flow took");
        }
        pass("not for a VIP nor a reply")
    }

    /// What may become of an ICMP error: passed, translated when it is about a flow's
    /// current tuple.
    pub fn expect_icmp(&self, e: &IcmpError) -> Expect {
        let q = e.quote;
        if e.dst != q.src {
            return pass("an error not sent to the quoted packet's source");
        }
        let flow = q.reversed();
        if SNAT_PORTS.contains(&flow.dport) {
            if let Some(client) = self.by_reply.get(&flow) {
                if self.by_client.get(client) != Some(&flow) {
                    return pass("about a reply tuple its client moved away from");
                }
                return Expect {
                    icmp: Some((VIP, client.src, *client)),
                    why: format!("about the packet sent to the backend of {client}"),
                    ..Expect::default()
                };
            }
        }
        if flow.dst == VIP {
            if let Some(reply) = self.by_client.get(&flow) {
                if self.by_reply.get(reply) != Some(&flow) {
                    return pass("about a client tuple whose SNAT port another flow took");
                }
                if e.frag_needed && e.mtu < PMTU_FLOOR {
                    return pass("a 'fragmentation needed' below the PMTU floor");
                }
                return Expect {
                    icmp: Some((SNAT, reply.src, *reply)),
                    why: format!("about the reply sent to the client of {flow}"),
                    ..Expect::default()
                };
            }
        }
        pass("about no flow")
    }
}

fn pass(why: &str) -> Expect {
    Expect {
        pass: true,
        why: why.into(),
        ..Expect::default()
    }
}

/// Whether the FIB of the fixture's namespace forwards to `addr`: a host on one of its two
/// segments other than the balancer itself. (The program takes flows from any source; a
/// reply to a martian one is dropped by the FIB lookup.)
fn routable(addr: Ipv4Addr) -> bool {
    let [a, b, c, d] = addr.octets();
    (a, b) == (10, 0) && (c == 1 || c == 2) && !matches!(d, 0 | 1 | 255)
}
