//! Backend selection for new flows: 5-tuple hash into the VIP's Maglev ring, or the next
//! step of its weighted round-robin sequence. Both rings are built in userspace; the kernel
//! only indexes them (O(1)).
use balancer_common::{Addr, FlowKey, VipMeta, NO_BACKEND, SCHED_ROUND_ROBIN};

use crate::maps::{RING, RR_STATE};

/// A well-mixed 64-bit hash of the flow tuple (MurmurHash3's finalizer over two words).
/// Deterministic, so another balancer with the same ring picks the same backend.
#[inline(always)]
pub fn flow_hash<A: Addr>(key: &FlowKey<A>) -> u64 {
    // (An IPv6 address by its words folded.)
    let addrs = (u64::from(key.src_addr.folded()) << 32) | u64::from(key.dst_addr.folded());
    let rest =
        (u64::from(key.src_port) << 32) | (u64::from(key.dst_port) << 16) | u64::from(key.proto);
    fmix64(addrs ^ fmix64(rest ^ 0x9e37_79b9_7f4a_7c15))
}

#[inline(always)]
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The backend id for a new flow of `vip`, or `None` when the VIP has no usable backend.
#[inline(always)]
pub fn pick_backend(vip: &VipMeta, hash: u64) -> Option<u32> {
    let size = vip.ring_size;
    if size == 0 {
        return None;
    }
    let slot = if vip.scheduler == SCHED_ROUND_ROBIN {
        let state = RR_STATE.get_ptr_mut(vip.vip_id)?;
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe {
            let slot = if (*state).next < size {
                (*state).next
            } else {
                0
            };
            (*state).next = slot + 1;
            slot
        }
    } else {
        (hash % u64::from(size)) as u32
    };
    let index = vip.ring_base.wrapping_add(slot);
    let pair = RING.get(index / 2)?;
    let id = if index & 1 == 0 { pair[0] } else { pair[1] };
    if id == NO_BACKEND {
        None
    } else {
        Some(id)
    }
}
