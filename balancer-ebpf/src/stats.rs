//! Per-CPU counters: verdicts and reasons, and traffic per VIP and per backend.
use aya_ebpf::bindings::xdp_action;
use balancer_common::{stat, FlowStats};

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, LOG_AT, VIP_STATS};

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

/// Whether a line that may repeat per packet may be logged now: at most one a second over
/// all CPUs (a race lets two through at worst), so that a flood cannot fill the agent's log.
#[inline(always)]
pub fn log_due(now: u64) -> bool {
    let Some(at) = LOG_AT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a map value; single aligned 8-byte loads and stores.
    unsafe {
        let last = core::ptr::read_volatile(at);
        if last != 0 && now.wrapping_sub(last) < 1_000_000_000 {
            return false;
        }
        core::ptr::write_volatile(at, now);
    }
    true
}

/// Counts a new flow's first SNAT probe towards backend `backend_id`, and whether the port
/// was taken (see `FlowStats::snat_first_taken`).
#[inline(always)]
pub fn count_first_probe(backend_id: u32, taken: bool) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: this CPU's slot; no other writer while the program runs here.
        unsafe {
            (*s).snat_first_probes += 1;
            (*s).snat_first_taken += u64::from(taken);
        }
    }
}
