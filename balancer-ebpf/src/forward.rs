//! Next hop from the kernel's FIB: rewrite the MACs and transmit (XDP_TX on the ingress
//! interface, redirect to another one). Without a neighbour entry the rewritten packet
//! goes to the stack, which resolves the neighbour (ARP) and forwards it; later packets
//! then take the fast path.
use core::mem;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use balancer_common::stat;
use network_types::eth::EthHdr;

use crate::{parse::Packet, stats, DropReason};

const AF_INET: u8 = 2;

/// Sends the (already rewritten) packet towards `dst_addr`.
#[inline(always)]
pub fn transmit(
    ctx: &XdpContext,
    pkt: &Packet,
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
) -> Result<u32, DropReason> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: bpf_fib_lookup = unsafe { mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.key.proto;
    params.sport = src_port;
    params.dport = dst_port;
    params.__bindgen_anon_1.tot_len = pkt.ip_len;
    params.__bindgen_anon_2.tos = pkt.tos;
    params.__bindgen_anon_3.ipv4_src = src_addr;
    params.__bindgen_anon_4.ipv4_dst = dst_addr;
    let ingress = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress;

    // SAFETY: params is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let eth: *mut EthHdr = crate::parse::ptr_at(ctx, 0)?;
            // SAFETY: ptr_at checked the bounds.
            unsafe {
                (*eth).dst_addr = params.dmac;
                (*eth).src_addr = params.smac;
            }
            if params.ifindex == ingress {
                Ok(xdp_action::XDP_TX)
            } else {
                // SAFETY: plain helper call.
                Ok(unsafe { bpf_redirect(params.ifindex, 0) } as u32)
            }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            stats::count(stat::PASS_NO_NEIGH);
            Ok(xdp_action::XDP_PASS)
        }
        _ => Err(stat::DROP_FIB),
    }
}
