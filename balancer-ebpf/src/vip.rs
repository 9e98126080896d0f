//! Which VIP a packet may be for: the `VIP_ADDRS` filter in front of `VIPS`, and the
//! `VIPS` key.
use balancer_common::{addr_slot, Addr, FlowKey, VipKey};

use crate::maps::VIP_ADDRS;

/// Whether some VIP may have this address: `VIP_ADDRS` counts one in its slot. (The
/// agent counts a VIP in before adding it and out after deleting it.)
#[inline(always)]
pub fn maybe_vip<A: Addr>(addr: &A) -> bool {
    VIP_ADDRS
        .get(addr_slot(addr))
        .is_some_and(|&count| count != 0)
}

/// The `VIPS` key of the VIP a client packet with tuple `key` is for.
#[inline(always)]
pub fn vip_key<A: Addr>(key: &FlowKey<A>) -> VipKey<A> {
    VipKey {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    }
}
