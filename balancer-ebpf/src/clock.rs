//! The data plane's clock and the agent's settings: read once per packet, then passed on.
use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use balancer_common::{stat, Settings, REPLY_TICK_SHIFT};

use crate::{maps::SETTINGS, DropReason};

/// The agent's knobs (timeouts, SNAT port range): read once per packet by the caller.
#[inline(always)]
pub fn settings() -> Result<&'static Settings, DropReason> {
    SETTINGS.get(0).ok_or(stat::DROP_CONN_TABLE)
}

/// The data plane's clock, in ns: `bpf_jiffies64()` (which the verifier inlines as one
/// load) times the tick length the agent gives in `Settings::ns_per_tick`; without one,
/// `bpf_ktime_get_coarse_ns` (a real helper call per packet, which the inlined load
/// avoids). Both advance once per tick.
#[inline(always)]
pub fn now(settings: &Settings) -> u64 {
    let tick = u64::from(settings.ns_per_tick);
    // SAFETY: plain helper calls.
    unsafe {
        if tick != 0 {
            bpf_jiffies64().wrapping_mul(tick)
        } else {
            bpf_ktime_get_coarse_ns()
        }
    }
}

/// The data plane's clock in units of `2^REPLY_TICK_SHIFT` ns (`NatEntry::touched`).
#[inline(always)]
pub fn reply_tick(now: u64) -> u32 {
    (now >> REPLY_TICK_SHIFT) as u32
}
