//! Header parsing: Ethernet (tagged frames pass), IPv4 (with options), IPv6 (with up to
//! `MAX_IPV6_EXT_HEADERS` extension headers), TCP, UDP, and ICMP errors with the header
//! they quote.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use balancer_common::{
    stat, Addr, FlowKey, MAX_IPV6_EXT_HEADERS, PROTO_ICMP, PROTO_TCP, PROTO_UDP, V4, V6,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{family::addr6, stats, DropReason};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// IPv6 extension headers skipped on the way to TCP/UDP (RFC 8200 4.1), and the fragment
/// header, which ends the search (the packet is passed).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_FRAGMENT: u8 = 44;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IPv4 "more fragments" flag and fragment offset bits.
const IP_MF_OFFSET: u16 = 0x3fff;
/// IPv4 fragment offset bits.
const IP_OFFSET: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// Offsets of the data-offset and flags bytes in the TCP header.
const TCP_DOFF_OFF: usize = 12;
const TCP_FLAGS_OFF: usize = 13;
/// Offsets of the checksum field in the TCP and UDP headers.
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

/// ICMP types that quote the packet they are about (RFC 792): destination unreachable
/// (with "fragmentation needed", RFC 1191), time exceeded, parameter problem.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Code of "fragmentation needed" (RFC 1191) among destination unreachables.
const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMP header: type, code, checksum and four more bytes, then the quote.
const ICMP_HDR_LEN: usize = 8;
/// Offset of the checksum in the ICMP header.
pub const ICMP_CHECK_OFF: usize = 2;
/// Bytes of the quoted packet's TCP/UDP header every ICMP error carries (RFC 792).
const QUOTED_L4_LEN: usize = 8;

/// A frame's network protocol ([`ether`]).
pub enum Ether {
    Ipv4,
    Ipv6,
    /// Anything else (tagged frames included): passed.
    Other,
}

/// What the program does with an IP packet ([`parse4`], [`parse6`]).
pub enum Parsed<A = V4> {
    /// A TCP or UDP packet, not a fragment (IPv4: not a later one).
    Flow(Packet<A>),
    /// An ICMP error about an IPv4 TCP or UDP packet.
    IcmpError(IcmpError),
    /// Anything else: passed.
    Other,
}

/// An ICMP error and the start of the packet it quotes (RFC 792: its IPv4 header and the
/// first 8 bytes after it, often more).
pub struct IcmpError {
    /// Offsets of the IPv4 header, the ICMP header, and the quoted IPv4 and TCP/UDP
    /// headers.
    pub ip_off: usize,
    pub icmp_off: usize,
    pub quote_ip_off: usize,
    pub quote_l4_off: usize,
    /// End of the IPv4 datagram (offset): the quote ends there at the latest.
    pub ip_end: usize,
    /// The error's own addresses, network byte order.
    pub src_addr: u32,
    pub dst_addr: u32,
    /// Whether it is a "fragmentation needed" (1) or not (0), and its next-hop MTU (host
    /// byte order; 0 from a router that predates RFC 1191). (Not an `Option<u16>`: its
    /// undefined payload when `None` trips the verifier, "!`read_ok`".)
    pub frag_needed: u8,
    pub mtu: u16,
    /// The quoted packet's tuple as it was sent (addresses and ports in network byte order).
    pub quote: FlowKey,
}

/// What the rest of the program needs to know about a parsed packet.
pub struct Packet<A = V4> {
    /// Offset of the IP header from the start of the frame.
    pub ip_off: usize,
    /// Offset of the TCP/UDP header (after IPv4 options or IPv6 extension headers).
    pub l4_off: usize,
    /// The tuple as received (addresses and ports in network byte order).
    pub key: FlowKey<A>,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers, network byte order (0 for UDP): the
    /// connection table follows the handshake with them (`timeouts::touch`).
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// Frame length in bytes (for counters).
    pub len: u64,
    /// The IP datagram's length, headers included (IPv4's total length; IPv6's payload
    /// length plus its header), host byte order (for the FIB's MTU check).
    pub ip_len: u16,
    /// IPv4 TOS or IPv6 traffic class.
    pub tos: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
}

/// The one bounds-checked accessor: a pointer to a `T` at `offset`, or a drop reason when
/// the frame is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, DropReason> {
    // An offset read back from a map (an IPv6 packet's description lives in one) is an
    // unknown number to the verifier, which refuses it in pointer arithmetic unless
    // bounded, and learns nothing from a check of a pointer that may pass 2^16 with its
    // size: no offset in a frame reaches 2^15.
    let offset = offset & 0x7fff;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(stat::DROP_MALFORMED);
    }
    Ok((start + offset) as *mut T)
}

/// The frame's network protocol; `Err` when it has no Ethernet header.
#[inline(always)]
pub fn ether(ctx: &XdpContext) -> Result<Ether, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    Ok(match ether_type {
        ETH_P_IP => Ether::Ipv4,
        ETH_P_IPV6 => Ether::Ipv6,
        ETH_P_8021Q | ETH_P_8021AD => {
            // Routed, a tagged frame would leave with its tag, into the backends' segment
            // (VLAN hopping); the stack drops it unless a VLAN device takes it.
            stats::count(stat::PASS_VLAN);
            Ether::Other
        }
        _ => Ether::Other,
    })
}

/// The IPv4 packet after the Ethernet header. `Err`: a malformed IPv4 TCP/UDP packet,
/// drop it. (An ICMP error is only looked at: one whose quote does not parse is `Other`,
/// passed untouched.)
#[inline(always)]
pub fn parse4(ctx: &XdpContext) -> Result<Parsed<V4>, DropReason> {
    let ip_off = EthHdr::LEN;

    let ip: *const Ipv4Hdr = ptr_at(ctx, ip_off)?;
    // SAFETY: ptr_at checked the bounds.
    let (vihl, frags, tot_len, proto, tos, ttl, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            u16::from_be_bytes((*ip).tot_len),
            (*ip).proto,
            (*ip).tos,
            (*ip).ttl,
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || (tot_len as usize) < ihl {
        return Err(stat::DROP_MALFORMED);
    }
    if ctx.data() + ip_off + tot_len as usize > ctx.data_end() {
        return Err(stat::DROP_MALFORMED);
    }
    if frags & IP_MF_OFFSET != 0 {
        // Only the first fragment carries ports: fragments are not balanced.
        stats::count(stat::PASS_FRAGMENT);
        return Ok(Parsed::Other);
    }

    let l4_off = ip_off + ihl;
    if proto == PROTO_ICMP {
        let ip_end = ip_off + tot_len as usize;
        return Ok(icmp_error(ctx, (ip_off, l4_off, ip_end), src, dst));
    }
    let Some(l4) = transport(ctx, proto, l4_off, tot_len as usize - ihl)? else {
        return Ok(Parsed::Other);
    };
    Ok(Parsed::Flow(packet(
        ctx,
        (ip_off, l4_off),
        (src, dst),
        proto,
        &l4,
        (tot_len, tos, ttl),
    )))
}

/// The IPv6 packet after the Ethernet header, described in `pkt` when it is a flow's
/// (`Ok(true)`): its extension headers skipped (at most
/// `MAX_IPV6_EXT_HEADERS`), a TCP/UDP packet is a flow; a fragment is passed and counted
/// as IPv4 fragments are; anything else (`ICMPv6`, neighbour discovery included) is passed.
#[inline(always)]
pub fn parse6(ctx: &XdpContext, pkt: &mut Packet<V6>) -> Result<bool, DropReason> {
    let ip_off = EthHdr::LEN;
    let ip: *const Ipv6Hdr = ptr_at(ctx, ip_off)?;
    // SAFETY: ptr_at checked the bounds.
    let (vcf, payload_len, first, hop_limit) = unsafe {
        // The addresses go to `pkt` at once: held in registers through the rest of the
        // parse, their 32 bytes were spilled to the stack a byte per slot.
        pkt.key.src_addr = addr6(&(*ip).src_addr);
        pkt.key.dst_addr = addr6(&(*ip).dst_addr);
        (
            (*ip).vcf,
            u16::from_be_bytes((*ip).payload_len),
            (*ip).next_hdr,
            (*ip).hop_limit,
        )
    };
    if vcf[0] >> 4 != 6 {
        return Err(stat::DROP_MALFORMED);
    }
    let ip_end = ip_off + Ipv6Hdr::LEN + payload_len as usize;
    if ctx.data() + ip_end > ctx.data_end() {
        return Err(stat::DROP_MALFORMED);
    }
    let mut l4_off = ip_off + Ipv6Hdr::LEN;
    let next = skip_extensions(ctx.ctx, first, &mut l4_off);
    if next == MALFORMED {
        return Err(stat::DROP_MALFORMED);
    }
    let next = next as u8;
    if next == IPV6_FRAGMENT {
        stats::count(stat::PASS_FRAGMENT);
        return Ok(false);
    }
    if next == IPV6_HOP_BY_HOP || next == IPV6_ROUTING || next == IPV6_DEST_OPTIONS {
        stats::count(stat::PASS_IPV6_EXT_HEADERS);
        return Ok(false);
    }
    if l4_off > ip_end {
        return Err(stat::DROP_MALFORMED);
    }
    let Some(l4) = transport(ctx, next, l4_off, ip_end - l4_off)? else {
        return Ok(false);
    };
    // Traffic class: the 8 bits after the version nibble.
    let tclass = (vcf[0] << 4) | (vcf[1] >> 4);
    let ip_len = (ip_end - ip_off) as u16;
    // Field by field: a whole `Packet` built first would take stack room.
    pkt.ip_off = ip_off;
    pkt.l4_off = l4_off;
    pkt.key.src_port = l4.src_port;
    pkt.key.dst_port = l4.dst_port;
    pkt.key.proto = next;
    pkt.key._pad0 = 0;
    pkt.key._pad1 = 0;
    pkt.tcp_flags = l4.tcp_flags;
    pkt.tcp_seq = l4.tcp_seq;
    pkt.tcp_ack = l4.tcp_ack;
    pkt.len = (ctx.data_end() - ctx.data()) as u64;
    pkt.ip_len = ip_len;
    pkt.tos = tclass;
    pkt.ttl = hop_limit;
    Ok(true)
}

/// [`skip_extensions`]'s answer for an extension header that is not in the frame.
const MALFORMED: u32 = u32::MAX;

/// Skips up to `MAX_IPV6_EXT_HEADERS` extension headers (hop-by-hop, routing,
/// destination options) from `off`, the first of type `first`: the type of the header
/// after them (still an extension header when there were more), its offset left in
/// `off`; [`MALFORMED`] when one is cut short. A BPF function of its own: inlined, the
/// loop's every way out got a copy of the rest of the parse, and of its stack.
#[inline(never)]
fn skip_extensions(ctx: *mut xdp_md, first: u8, off: &mut usize) -> u32 {
    let ctx = XdpContext::new(ctx);
    let mut next = first;
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        if next != IPV6_HOP_BY_HOP && next != IPV6_ROUTING && next != IPV6_DEST_OPTIONS {
            break;
        }
        // Next header and length in 8-byte units, not counting the first 8.
        let Ok(ext) = ptr_at::<[u8; 2]>(&ctx, *off) else {
            return MALFORMED;
        };
        // SAFETY: ptr_at checked the bounds.
        let (following, len) = unsafe { ((*ext)[0], (*ext)[1]) };
        next = following;
        *off += (usize::from(len) + 1) * 8;
        i += 1;
    }
    u32::from(next)
}

/// What [`transport`] reads from a TCP or UDP header: ports (network byte order), TCP
/// flags, sequence and acknowledgement numbers (network byte order; 0 for UDP).
struct Transport {
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    tcp_seq: u32,
    tcp_ack: u32,
}

/// The TCP or UDP header at `l4_off`, whose segment or datagram may take `l4_len` bytes;
/// `None` for another protocol. `Err` when the header does not fit.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    proto: u8,
    l4_off: usize,
    l4_len: usize,
) -> Result<Option<Transport>, DropReason> {
    Ok(Some(match proto {
        PROTO_TCP => {
            // One pointer for every TCP field read: the verifier tracks bounds per pointer.
            let tcp: *const [u8; TcpHdr::LEN] = ptr_at(ctx, l4_off)?;
            // SAFETY: ptr_at checked the bounds.
            let tcp = unsafe { &*tcp };
            let doff = (tcp[TCP_DOFF_OFF] >> 4) as usize * 4;
            if doff < TcpHdr::LEN || doff > l4_len {
                return Err(stat::DROP_MALFORMED);
            }
            Transport {
                src_port: u16::from_ne_bytes([tcp[0], tcp[1]]),
                dst_port: u16::from_ne_bytes([tcp[2], tcp[3]]),
                tcp_flags: tcp[TCP_FLAGS_OFF],
                tcp_seq: u32::from_ne_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
                tcp_ack: u32::from_ne_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            }
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4_off)?;
            // SAFETY: ptr_at checked the bounds.
            unsafe {
                let udp_len = u16::from_be_bytes((*udp).len) as usize;
                if udp_len < UdpHdr::LEN || udp_len > l4_len {
                    return Err(stat::DROP_MALFORMED);
                }
                Transport {
                    src_port: u16::from_ne_bytes((*udp).src),
                    dst_port: u16::from_ne_bytes((*udp).dst),
                    tcp_flags: 0,
                    tcp_seq: 0,
                    tcp_ack: 0,
                }
            }
        }
        _ => return Ok(None),
    }))
}

/// A parsed packet of either family: offsets (IP, L4), addresses, protocol, what its
/// transport header says, and (IP length, TOS or traffic class, TTL or hop limit).
#[inline(always)]
fn packet<A: Addr>(
    ctx: &XdpContext,
    (ip_off, l4_off): (usize, usize),
    (src_addr, dst_addr): (A, A),
    proto: u8,
    l4: &Transport,
    (ip_len, tos, ttl): (u16, u8, u8),
) -> Packet<A> {
    Packet {
        ip_off,
        l4_off,
        key: FlowKey {
            src_addr,
            dst_addr,
            src_port: l4.src_port,
            dst_port: l4.dst_port,
            proto,
            _pad0: 0,
            _pad1: 0,
        },
        tcp_flags: l4.tcp_flags,
        tcp_seq: l4.tcp_seq,
        tcp_ack: l4.tcp_ack,
        len: (ctx.data_end() - ctx.data()) as u64,
        ip_len,
        tos,
        ttl,
    }
}

/// The ICMP message at `icmp_off` of the datagram at `ip_off`..`ip_end`, if it is an error
/// quoting a TCP or UDP packet (not a later fragment: those carry no ports).
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    (ip_off, icmp_off, ip_end): (usize, usize, usize),
    src: u32,
    dst: u32,
) -> Parsed<V4> {
    let Ok(icmp) = ptr_at::<[u8; ICMP_HDR_LEN]>(ctx, icmp_off) else {
        return Parsed::Other;
    };
    // SAFETY: ptr_at checked the bounds.
    let (kind, code, mtu) = unsafe { ((*icmp)[0], (*icmp)[1], [(*icmp)[6], (*icmp)[7]]) };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETER_PROBLEM {
        return Parsed::Other;
    }
    let quote_ip_off = icmp_off + ICMP_HDR_LEN;
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, quote_ip_off) else {
        return Parsed::Other;
    };
    // SAFETY: ptr_at checked the bounds.
    let (vihl, frags, proto, quote_src, quote_dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4
        || ihl < Ipv4Hdr::LEN
        || frags & IP_OFFSET != 0
        || (proto != PROTO_TCP && proto != PROTO_UDP)
    {
        return Parsed::Other;
    }
    let quote_l4_off = quote_ip_off + ihl;
    let Ok(l4) = ptr_at::<[u16; QUOTED_L4_LEN / 2]>(ctx, quote_l4_off) else {
        return Parsed::Other;
    };
    // Within the datagram, not only the frame (which may carry a trailer). (After the
    // frame's check: before it, this one implies it, and the compiler would drop the
    // check the verifier needs.)
    if quote_l4_off + QUOTED_L4_LEN > ip_end {
        return Parsed::Other;
    }
    // SAFETY: ptr_at checked the bounds.
    let (src_port, dst_port) = unsafe { ((*l4)[0], (*l4)[1]) };
    Parsed::IcmpError(IcmpError {
        ip_off,
        icmp_off,
        quote_ip_off,
        quote_l4_off,
        ip_end,
        src_addr: src,
        dst_addr: dst,
        frag_needed: u8::from(kind == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED),
        mtu: u16::from_be_bytes(mtu),
        quote: FlowKey {
            src_addr: quote_src,
            dst_addr: quote_dst,
            src_port,
            dst_port,
            proto,
            _pad0: 0,
            _pad1: 0,
        },
    })
}
