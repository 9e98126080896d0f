//! The backends' decapsulation program (`balancer decap`): an IPIP or GUE packet whose
//! outer destination is one of `DECAP_ADDRS` loses its outer headers and goes to the stack
//! as the inner packet (for a VIP the backend holds on `lo`), so a backend needs no kernel
//! tunnel device. Every other packet passes untouched. Each outcome is counted in
//! `DECAP_STATS` (`balancer_common::decap_stat`).
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext,
};
use balancer_common::{decap_stat, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::{
    maps::{DECAP_ADDRS, DECAP_SETTINGS, DECAP_STATS},
    parse::ptr_at,
};

const ETH_P_IP: u16 = 0x0800;
const PROTO_IPIP: u8 = 4;
/// IPv4 "more fragments" flag and fragment offset bits.
const IP_MF_OFFSET: u16 = 0x3fff;

/// The program's body: always passes; returns the `decap_stat` index to count.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match try_run(ctx) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

#[inline(always)]
fn try_run(ctx: &XdpContext) -> Result<u32, u32> {
    // The MACs as six 16-bit words then the EtherType, read here where the verifier
    // knows the header's bounds; the MACs go in front of the inner packet.
    let eth: *const [u16; 7] = ptr_at(ctx, 0).map_err(|_| decap_stat::OTHER)?;
    // SAFETY: ptr_at checked the bounds.
    let [m0, m1, m2, m3, m4, m5, ether_type] = unsafe { eth.read_unaligned() };
    if u16::from_be(ether_type) != ETH_P_IP {
        return Err(decap_stat::OTHER);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).map_err(|_| decap_stat::OTHER)?;
    // SAFETY: ptr_at checked the bounds.
    let (vihl, frags, proto, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(decap_stat::OTHER);
    }
    let (overhead, outcome) = match proto {
        PROTO_IPIP => (ihl, decap_stat::IPIP),
        PROTO_UDP => {
            let udp: *const UdpHdr =
                ptr_at(ctx, EthHdr::LEN + ihl).map_err(|_| decap_stat::OTHER)?;
            let gue_port = DECAP_SETTINGS.get(0).map_or(0, |s| s.gue_port);
            // SAFETY: ptr_at checked the bounds.
            if gue_port == 0 || u16::from_ne_bytes(unsafe { (*udp).dst }) != gue_port {
                return Err(decap_stat::OTHER);
            }
            (ihl + size_of::<UdpHdr>(), decap_stat::GUE)
        }
        _ => return Err(decap_stat::OTHER),
    };
    // SAFETY: a plain hash-map lookup.
    if unsafe { DECAP_ADDRS.get(&dst) }.is_none() {
        return Err(decap_stat::NOT_OURS);
    }
    // A fragment of the outer packet: only the stack can put it together (and, without a
    // tunnel device, drops it); the encapsulator never fragments.
    if frags & IP_MF_OFFSET != 0 {
        return Err(decap_stat::MALFORMED);
    }
    let inner: *const Ipv4Hdr =
        ptr_at(ctx, EthHdr::LEN + overhead).map_err(|_| decap_stat::MALFORMED)?;
    // SAFETY: ptr_at checked the bounds.
    if unsafe { (*inner).vihl } >> 4 != 4 {
        return Err(decap_stat::MALFORMED);
    }
    // The verifier needs the delta bounded: an outer header has at most 60 + 8 bytes.
    let delta = core::hint::black_box(overhead as i32);
    if !(0..=68).contains(&delta) {
        return Err(decap_stat::MALFORMED);
    }
    // SAFETY: plain helper call; the packet pointers are derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), delta) } != 0 {
        return Err(decap_stat::MALFORMED);
    }
    let eth: *mut [u16; 7] = ptr_at(ctx, 0).map_err(|_| decap_stat::MALFORMED)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { eth.write_unaligned([m0, m1, m2, m3, m4, m5, ether_type]) };
    Ok(outcome)
}

/// Counts `outcome` in this CPU's `DECAP_STATS`.
#[inline(always)]
pub fn count(outcome: u32) {
    if let Some(counter) = DECAP_STATS.get_ptr_mut(outcome) {
        // SAFETY: this CPU's slot.
        unsafe { *counter += 1 };
    }
}

/// The verdict for every packet: the stack takes it from here.
pub const VERDICT: u32 = xdp_action::XDP_PASS;
