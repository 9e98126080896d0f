//! Header parsing: Ethernet (with one 802.1Q/802.1ad tag), IPv4 (with options), TCP, UDP,
//! and ICMP errors with the header they quote.

use aya_ebpf::programs::XdpContext;
use balancer_common::{stat, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::{stats, DropReason};

const ETH_P_IP: u16 = 0x0800;
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

/// What the program does with a frame ([`parse`]).
pub enum Parsed {
    /// An IPv4 TCP or UDP packet, not a later fragment.
    Flow(Packet),
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
pub struct Packet {
    /// Offset of the IPv4 header from the start of the frame.
    pub ip_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// The tuple as received (addresses and ports in network byte order).
    pub key: FlowKey,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers, network byte order (0 for UDP): the
    /// connection table follows the handshake with them (`timeouts::touch`).
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// Frame length in bytes (for counters).
    pub len: u64,
    /// IPv4 total length, host byte order (for the FIB's MTU check).
    pub ip_len: u16,
    pub tos: u8,
    pub ttl: u8,
}

/// The one bounds-checked accessor: a pointer to a `T` at `offset`, or a drop reason when
/// the frame is too short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, DropReason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(stat::DROP_MALFORMED);
    }
    Ok((start + offset) as *mut T)
}

/// `Err`: a malformed IPv4 TCP/UDP packet, drop it. (An ICMP error is only looked at: one
/// whose quote does not parse is `Other`, passed untouched.)
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, DropReason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let ip_off = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // Routed, a tagged frame would leave with its tag, into the backends' segment
        // (VLAN hopping); the stack drops it unless a VLAN device takes it.
        stats::count(stat::PASS_VLAN);
        return Ok(Parsed::Other);
    }
    if ether_type != ETH_P_IP {
        return Ok(Parsed::Other);
    }

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
    let (src_port, dst_port, tcp_flags, tcp_seq, tcp_ack) = match proto {
        PROTO_TCP => {
            // One pointer for every TCP field read: the verifier tracks bounds per pointer.
            let tcp: *const [u8; TcpHdr::LEN] = ptr_at(ctx, l4_off)?;
            // SAFETY: ptr_at checked the bounds.
            let tcp = unsafe { &*tcp };
            let doff = (tcp[TCP_DOFF_OFF] >> 4) as usize * 4;
            if doff < TcpHdr::LEN || doff > tot_len as usize - ihl {
                return Err(stat::DROP_MALFORMED);
            }
            (
                u16::from_ne_bytes([tcp[0], tcp[1]]),
                u16::from_ne_bytes([tcp[2], tcp[3]]),
                tcp[TCP_FLAGS_OFF],
                u32::from_ne_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
                u32::from_ne_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
            )
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4_off)?;
            // SAFETY: ptr_at checked the bounds.
            unsafe {
                let udp_len = u16::from_be_bytes((*udp).len) as usize;
                if udp_len < UdpHdr::LEN || udp_len > tot_len as usize - ihl {
                    return Err(stat::DROP_MALFORMED);
                }
                (
                    u16::from_ne_bytes((*udp).src),
                    u16::from_ne_bytes((*udp).dst),
                    0,
                    0,
                    0,
                )
            }
        }
        PROTO_ICMP => {
            let ip_end = ip_off + tot_len as usize;
            return Ok(icmp_error(ctx, (ip_off, l4_off, ip_end), src, dst));
        }
        _ => return Ok(Parsed::Other),
    };

    Ok(Parsed::Flow(Packet {
        ip_off,
        l4_off,
        key: FlowKey {
            src_addr: src,
            dst_addr: dst,
            src_port,
            dst_port,
            proto,
            _pad0: 0,
            _pad1: 0,
        },
        tcp_flags,
        tcp_seq,
        tcp_ack,
        len: (ctx.data_end() - ctx.data()) as u64,
        ip_len: tot_len,
        tos,
        ttl,
    }))
}

/// The ICMP message at `icmp_off` of the datagram at `ip_off`..`ip_end`, if it is an error
/// quoting a TCP or UDP packet (not a later fragment: those carry no ports).
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    (ip_off, icmp_off, ip_end): (usize, usize, usize),
    src: u32,
    dst: u32,
) -> Parsed {
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
