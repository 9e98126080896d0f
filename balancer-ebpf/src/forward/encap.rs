//! Encapsulation of a tunnel flow's packet to its backend: an outer IPv4 header (IPIP,
//! RFC 2003), or an outer IPv4 and UDP header to `Settings::gue_port` (GUE variant 1,
//! RFC 8086 section 4: the inner IPv4 packet directly in UDP). The inner packet is not
//! changed. The outer source address (IPIP) and UDP source port (GUE) vary with the flow,
//! so that the backend's NIC spreads flows over its queues.
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use balancer_common::{
    stat, FlowKey, Settings, GUE_OVERHEAD, GUE_SPORT_BASE, GUE_SPORT_SPAN, IPIP_OVERHEAD, PROTO_UDP,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use super::fib::Via;
use crate::{
    csum,
    nat::Rewrite,
    parse::{ptr_at, Packet},
    DropReason,
};

const PROTO_IPIP: u8 = 4;
const ETH_P_IP: u16 = 0x0800;
/// The IPv4 "don't fragment" flag, copied from the inner header (RFC 2003 3.1).
const IP_DF: u16 = 0x4000;
/// Hop limit of the outer header (the inner packet keeps its own TTL).
const OUTER_TTL: u8 = 64;

/// Bytes the encapsulation adds.
#[inline(always)]
pub fn overhead(gue: bool) -> u16 {
    if gue {
        GUE_OVERHEAD
    } else {
        IPIP_OVERHEAD
    }
}

/// Puts `pkt` (whose IPv4 header starts right after an untagged Ethernet header) inside an
/// outer IPv4 header to `backend_addr` (network byte order), and a UDP header for GUE.
/// The MACs are left for the FIB to set. Returns the outer tuple and how the FIB is to
/// route it.
#[inline(always)]
pub fn push(
    ctx: &XdpContext,
    pkt: &Packet,
    gue: bool,
    backend_addr: u32,
    settings: &Settings,
) -> Result<(Rewrite, Via), DropReason> {
    let inner: *const Ipv4Hdr = ptr_at(ctx, pkt.ip_off)?;
    // SAFETY: ptr_at checked the bounds.
    let df = u16::from_be_bytes(unsafe { (*inner).frags }) & IP_DF;
    let spread = spread(&pkt.key);
    let src_addr =
        (settings.tunnel_src & !settings.tunnel_src_mask) | (spread & settings.tunnel_src_mask);
    let overhead = overhead(gue);
    // SAFETY: plain helper call; every packet pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), -i32::from(overhead)) } != 0 {
        return Err(stat::DROP_MALFORMED);
    }
    let tot_len = pkt.ip_len.wrapping_add(overhead);
    let (proto, src_port, dst_port) = if gue {
        let sport = (GUE_SPORT_BASE + (spread as u16 & (GUE_SPORT_SPAN - 1))).to_be();
        (PROTO_UDP, sport, settings.gue_port)
    } else {
        (PROTO_IPIP, 0, 0)
    };

    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    let check = csum::ipv4_header(
        pkt.tos,
        tot_len,
        df,
        OUTER_TTL,
        proto,
        src_addr,
        backend_addr,
    );
    // SAFETY: ptr_at checked the bounds of both.
    unsafe {
        (*eth).ether_type = ETH_P_IP.to_be();
        (*ip).vihl = 0x45;
        (*ip).tos = pkt.tos;
        (*ip).tot_len = tot_len.to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = df.to_be_bytes();
        (*ip).ttl = OUTER_TTL;
        (*ip).proto = proto;
        (*ip).check = check.to_be_bytes();
        (*ip).src_addr = src_addr.to_ne_bytes();
        (*ip).dst_addr = backend_addr.to_ne_bytes();
    }
    if gue {
        let udp: *mut UdpHdr = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            (*udp).src = src_port.to_ne_bytes();
            (*udp).dst = dst_port.to_ne_bytes();
            (*udp).len = (pkt.ip_len.wrapping_add(8)).to_be_bytes();
            // No checksum (allowed over IPv4, RFC 768): the inner packet carries its own.
            (*udp).check = [0, 0];
        }
    }
    let outer = Rewrite {
        src_addr,
        dst_addr: backend_addr,
        src_port,
        dst_port,
    };
    Ok((outer, Via::Tunnel(proto, tot_len)))
}

/// A mix of the client's address and ports: the varying part of the outer source.
#[inline(always)]
fn spread(key: &FlowKey) -> u32 {
    let ports = (u32::from(key.src_port) << 16) | u32::from(key.dst_port);
    let h = (key.src_addr ^ ports).wrapping_mul(0x9e37_79b1);
    h ^ (h >> 15)
}
