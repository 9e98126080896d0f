//! The answer to a tunnel flow's packet that would not fit `Settings::tunnel_mtu` once
//! encapsulated: the frame becomes an ICMP "destination unreachable, fragmentation needed"
//! (RFC 792, RFC 1191) from the VIP to the client, giving the largest packet that fits and
//! quoting the packet's IPv4 header and first 8 bytes of payload (all the client needs to
//! find its socket), and goes back out of the interface it came in on.
use aya_ebpf::{
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
    EbpfContext,
};
use balancer_common::{stat, PROTO_ICMP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    csum,
    maps::{QUOTE, QUOTE_WORDS},
    parse::{ptr_at, Packet},
    DropReason,
};

/// The longest quote: an IPv4 header with every option, and 8 bytes after it.
const QUOTE_MAX: u32 = QUOTE_WORDS as u32 * 2;
const ICMP_HDR_LEN: usize = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// TTL of the error, as the stack would send it.
const TTL: u8 = 64;

/// Turns `pkt` into the error for its client, with next-hop MTU `mtu` (host byte order),
/// and returns the verdict that sends it.
#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Packet, mtu: u16) -> Result<u32, DropReason> {
    // The quote is copied out of the way (to this CPU's `QUOTE`) before the frame is
    // rewritten; its length is a multiple of 4, as `bpf_csum_diff` wants.
    let quote_len = (pkt.l4_off - pkt.ip_off + 8) as u32;
    // `black_box`: the verifier must see the bound on the register passed to the helpers.
    let len = core::hint::black_box(quote_len);
    if !(28..=QUOTE_MAX).contains(&len) {
        return Err(stat::DROP_MALFORMED);
    }
    let quote = QUOTE
        .get_ptr_mut(0)
        .ok_or(stat::DROP_MALFORMED)?
        .cast::<u8>();
    // SAFETY: this CPU's slot holds QUOTE_MAX >= len bytes; the helpers check the packet's
    // bounds.
    let quote_sum = unsafe {
        if bpf_xdp_load_bytes(ctx.as_ptr().cast(), pkt.ip_off as u32, quote.cast(), len) != 0 {
            return Err(stat::DROP_MALFORMED);
        }
        bpf_csum_diff(core::ptr::null_mut(), 0, quote.cast(), len, 0)
    };
    if quote_sum < 0 {
        return Err(stat::DROP_MALFORMED);
    }
    // The MACs as six 16-bit words: the destination's three, then the source's.
    let eth: *const [u16; 6] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let [d0, d1, d2, s0, s1, s2] = unsafe { eth.read_unaligned() };

    let ip_len = Ipv4Hdr::LEN + ICMP_HDR_LEN + quote_len as usize;
    let delta = (EthHdr::LEN + ip_len) as i64 - (ctx.data_end() - ctx.data()) as i64;
    // SAFETY: plain helper call; every packet pointer is derived again below.
    if unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta as i32) } != 0 {
        return Err(stat::DROP_MALFORMED);
    }

    let eth: *mut [u16; 7] = ptr_at(ctx, 0)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    let icmp: *mut [u16; 4] = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN)?;
    let (client, vip) = (pkt.key.src_addr, pkt.key.dst_addr);
    let ip_len = ip_len as u16;
    let ip_check = csum::ipv4_header(0, ip_len, 0, TTL, PROTO_ICMP, vip, client);
    // The ICMP header's words as they sit in memory (read in host order, as the sum is).
    let kind = u16::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED]);
    let mtu = mtu.to_be();
    let icmp_check = !csum::fold(quote_sum as u64 + u64::from(kind) + u64::from(mtu));
    // SAFETY: ptr_at checked the bounds of all three.
    unsafe {
        // Back where it came from: the source MAC becomes the destination.
        eth.write_unaligned([s0, s1, s2, d0, d1, d2, 0x0800u16.to_be()]);
        (*ip).vihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = ip_len.to_be_bytes();
        (*ip).id = [0, 0];
        (*ip).frags = [0, 0];
        (*ip).ttl = TTL;
        (*ip).proto = PROTO_ICMP;
        (*ip).check = ip_check.to_be_bytes();
        (*ip).src_addr = vip.to_ne_bytes();
        (*ip).dst_addr = client.to_ne_bytes();
        icmp.write_unaligned([kind, icmp_check, 0, mtu]);
    }
    let at = (EthHdr::LEN + Ipv4Hdr::LEN + ICMP_HDR_LEN) as u32;
    // SAFETY: the slot holds QUOTE_MAX >= len bytes; the helper checks the packet's bounds.
    if unsafe { bpf_xdp_store_bytes(ctx.as_ptr().cast(), at, quote.cast(), len) } != 0 {
        return Err(stat::DROP_MALFORMED);
    }
    // A redirect to the ingress interface rather than `XDP_TX`: on veth, frames sent by
    // `XDP_TX` after the tail moved never reached the peer (seen on 6.18), while a redirect
    // takes the path every forwarded packet takes.
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ctx.ingress_ifindex() as u32, 0) } as u32)
}
