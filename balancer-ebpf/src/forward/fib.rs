//! Next hop from the kernel's FIB: rewrite the MACs and transmit (`XDP_TX` on the ingress
//! interface, redirect to another one). Without a neighbour entry the rewritten packet
//! goes to the stack, which resolves the neighbour (ARP) and forwards it; later packets
//! then take the fast path. A direct-server-return packet goes only to a backend on a link
//! of the balancer (no gateway between them), and only once its neighbour is known. Next
//! hops are cached per CPU: per backend, and for replies per client address in a small
//! direct-mapped table, each asked again of the FIB every second. A tunnelled packet goes
//! to its backend by any route, and only if it fits the interface's MTU.
use core::mem;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use balancer_common::{addr_slot, stat, NextHop, NEXT_HOP_TTL_NS};
use network_types::eth::EthHdr;

use crate::{
    family::Family,
    nat::Rewrite,
    parse::Packet,
    stats::{self, Dir},
    DropReason,
};

/// What next hop a packet may take.
#[derive(Clone, Copy)]
pub enum Via {
    /// Any route; the packet's IP protocol and total length (for the FIB's MTU check).
    Routed(u8, u16),
    /// A direct-server-return packet: only a next hop that is its backend itself.
    OnLink,
    /// An encapsulated packet: any route; the outer protocol and total length. A packet
    /// that does not fit the interface's MTU is dropped (`DROP_TUNNEL_MTU`).
    Tunnel(u8, u16),
}

impl Via {
    #[inline(always)]
    fn on_link(self) -> bool {
        matches!(self, Via::OnLink)
    }
}

/// Sends a rewritten packet: to backend `backend_id` at `to.dst_addr` through this CPU's
/// slot of `NEXT_HOPS` for it, or to a client at `to.dst_addr` through this CPU's slot of
/// `CLIENT_HOPS` for that address (see [`transmit_cached`]), as `via` allows.
#[inline(always)]
pub fn transmit<A: Family>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    to: &Rewrite<A>,
    dir: Dir,
    backend_id: u32,
    via: Via,
    now: u64,
) -> Result<u32, DropReason> {
    let cache = match dir {
        Dir::ToBackend => A::next_hops().get_ptr_mut(backend_id),
        Dir::ToClient => A::client_hops().get_ptr_mut(addr_slot(&to.dst_addr)),
    };
    transmit_cached(ctx, pkt, to, cache, via, now)
}

/// Sends a rewritten packet towards `to.dst_addr` by the next hop cached in `cache` while it
/// is fresh and for that address, otherwise by a FIB lookup whose result refreshes the
/// cache. (A cached hop is keyed by destination only and skips the FIB's MTU check; it
/// lives at most `NEXT_HOP_TTL_NS`.)
#[inline(always)]
fn transmit_cached<A: Family>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    to: &Rewrite<A>,
    cache: Option<*mut NextHop<A>>,
    via: Via,
    now: u64,
) -> Result<u32, DropReason> {
    if let Some(hop) = cache {
        // SAFETY: this CPU's slot; no other writer while the program runs here.
        let hop = unsafe { &*hop };
        if hop.addr == to.dst_addr
            && hop.ifindex != 0
            && (!via.on_link() || hop.on_link != 0)
            && now.wrapping_sub(hop.at_ns) < NEXT_HOP_TTL_NS
        {
            let eth: *mut EthHdr = crate::parse::ptr_at(ctx, 0)?;
            // SAFETY: ptr_at checked the bounds.
            unsafe { set_macs(eth, &hop.dmac, &hop.smac) };
            return Ok(send(ctx, hop.ifindex));
        }
    }
    let refresh = cache.map(|hop| (hop, now));
    transmit_via_fib(ctx, pkt, to, refresh, via)
}

/// `XDP_TX` back out of the ingress interface, else a redirect to `ifindex`.
#[inline(always)]
fn send(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}

/// The FIB lookup path; a successful result is stored in `refresh` (cache slot, now)
/// when given.
#[inline(always)]
fn transmit_via_fib<A: Family>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    to: &Rewrite<A>,
    refresh: Option<(*mut NextHop<A>, u64)>,
    via: Via,
) -> Result<u32, DropReason> {
    let mut storage = mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: zero_params writes all 64 bytes; all-zero is a valid bpf_fib_lookup.
    let params = unsafe {
        zero_params(storage.as_mut_ptr());
        &mut *storage.as_mut_ptr()
    };
    let (proto, tot_len) = match via {
        Via::Routed(proto, len) | Via::Tunnel(proto, len) => (proto, len),
        Via::OnLink => (pkt.key.proto, pkt.ip_len),
    };
    A::fib_params(params, &to.src_addr, &to.dst_addr, pkt.tos);
    params.l4_protocol = proto;
    params.sport = to.src_port;
    params.dport = to.dst_port;
    params.__bindgen_anon_1.tot_len = tot_len;
    let ingress = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress;

    // SAFETY: params is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), params, size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // The lookup leaves the gateway, if there is one, in place of the destination.
            let on_link = A::fib_dst(params) == to.dst_addr;
            if via.on_link() && !on_link {
                return Err(stat::DROP_DSR_NOT_ON_LINK);
            }
            let eth: *mut EthHdr = crate::parse::ptr_at(ctx, 0)?;
            // SAFETY: ptr_at checked the bounds.
            unsafe { set_macs(eth, &params.dmac, &params.smac) };
            if let Some((hop, now)) = refresh {
                // SAFETY: this CPU's slot of NEXT_HOPS or CLIENT_HOPS.
                unsafe {
                    (*hop).addr = to.dst_addr;
                    (*hop).ifindex = params.ifindex;
                    copy_mac(&mut (*hop).dmac, &params.dmac);
                    copy_mac(&mut (*hop).smac, &params.smac);
                    (*hop).on_link = u32::from(on_link);
                    (*hop).at_ns = now;
                }
            }
            Ok(send(ctx, params.ifindex))
        }
        // The stack cannot resolve the neighbour of an untranslated packet for us (it would
        // route it to the VIP): the backend's health checks do that.
        // (Nor would it encapsulate a tunnelled one: the health checks resolve it too.)
        BPF_FIB_LKUP_RET_NO_NEIGH if !matches!(via, Via::Routed(..)) => Err(stat::DROP_FIB),
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            stats::count(stat::PASS_NO_NEIGH);
            Ok(xdp_action::XDP_PASS)
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED if matches!(via, Via::Tunnel(..)) => {
            Err(stat::DROP_TUNNEL_MTU)
        }
        _ => Err(stat::DROP_FIB),
    }
}

/// Copies a MAC byte by byte (an array assignment becomes a memmove call on BPF).
#[inline(always)]
fn copy_mac(to: &mut [u8; 6], from: &[u8; 6]) {
    let mut i = 0;
    while i < 6 {
        to[i] = from[i];
        i += 1;
    }
}

/// Writes both MACs with six single-byte stores each (an array assignment becomes a
/// memmove call on the BPF target).
#[inline(always)]
unsafe fn set_macs(eth: *mut EthHdr, dst: &[u8; 6], src: &[u8; 6]) {
    let frame = eth.cast::<u8>();
    let mut i = 0;
    while i < 6 {
        // SAFETY: the caller passes a bounds-checked Ethernet header (12 bytes of MACs).
        unsafe {
            *frame.add(i) = dst[i];
            *frame.add(6 + i) = src[i];
        }
        i += 1;
    }
}

const _: () = assert!(size_of::<bpf_fib_lookup>() == 64);

/// Zeroes a `bpf_fib_lookup` in place by eight 8-byte stores: `mem::zeroed()` (or any
/// copy of a zeroed value) becomes a memset call on the BPF target.
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "BPF stack slots are 8-byte aligned, and the verifier refuses a misaligned stack \
              store: a program where this was wrong would not load"
)]
unsafe fn zero_params(params: *mut bpf_fib_lookup) {
    let words = params.cast::<u64>();
    let mut i = 0;
    while i < 8 {
        // SAFETY: eight u64 words are exactly the 64 bytes of the struct (asserted above).
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}
