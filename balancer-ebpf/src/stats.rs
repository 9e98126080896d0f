//! Per-CPU counters: verdicts and reasons, and traffic per VIP and per backend.
use aya_ebpf::bindings::xdp_action;
use balancer_common::{stat, FlowStats};

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, VIP_STATS};

/// Adds one to a global counter (`balancer_common::stat`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_verdict(verdict: u32) {
    let index = match verdict {
        xdp_action::XDP_PASS => stat::XDP_PASS,
        xdp_action::XDP_TX => stat::XDP_TX,
        xdp_action::XDP_REDIRECT => stat::XDP_REDIRECT,
        xdp_action::XDP_DROP => stat::XDP_DROP,
        _ => stat::XDP_ABORTED,
    };
    count(index);
}

/// Direction of a counted packet.
#[derive(Clone, Copy)]
pub enum Dir {
    ToBackend,
    ToClient,
}

/// Counts one packet of `bytes` for a VIP and a backend.
#[inline(always)]
pub fn count_flow(vip_id: u32, backend_id: u32, bytes: u64, dir: Dir, new_flow: bool) {
    // Two separate lookups: the verifier rejects code that merges the two map pointers.
    if let Some(counters) = VIP_STATS.get_ptr_mut(vip_id) {
        add(counters, bytes, dir, new_flow);
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        add(counters, bytes, dir, new_flow);
    }
}

#[inline(always)]
fn add(counters: *mut FlowStats, bytes: u64, dir: Dir, new_flow: bool) {
    // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
    let c = unsafe { &mut *counters };
    match dir {
        Dir::ToBackend => {
            c.packets += 1;
            c.bytes += bytes;
        }
        Dir::ToClient => {
            c.reply_packets += 1;
            c.reply_bytes += bytes;
        }
    }
    if new_flow {
        c.new_flows += 1;
    }
}
