//! This CPU's exact-match cache of established flows (`FLOW_CACHE`): copies of `CONNS`
//! entries with their translation and checksum changes worked out, each valid under the
//! [`Stamp`] it was made under. `FLOW_EVICTIONS`, part of the stamp, is changed here.
use aya_ebpf::helpers::bpf_get_smp_processor_id;
use balancer_common::{flow_slot, Addr, Conn, FlowCacheEntry, FlowKey, Settings, FLOW_DSR};

use crate::{
    csum,
    family::Family,
    forward::Send,
    maps::{EVICTION_SEQ, FLOW_EVICTIONS},
    nat::Rewrite,
    parse::Packet,
    timeouts,
};

/// What a `FLOW_CACHE` copy must have been made under to be used: the agent's
/// `flow_epoch` and the `FLOW_EVICTIONS` value.
#[derive(Clone, Copy)]
pub struct Stamp {
    epoch: u32,
    evictions: u32,
}

/// The current [`Stamp`], read once per packet before any check whose result a copy
/// records (a change after this read then makes the copy stale at once).
#[inline(always)]
pub fn stamp(settings: &Settings) -> Stamp {
    // SAFETY: volatile reads of map values: loaded here, not later where they are used.
    unsafe {
        Stamp {
            epoch: core::ptr::read_volatile(&raw const settings.flow_epoch),
            evictions: FLOW_EVICTIONS
                .get_ptr(0)
                .map_or(0, |count| core::ptr::read_volatile(count)),
        }
    }
}

/// A packet of an established flow that this CPU's `FLOW_CACHE` holds and may serve (see
/// [`timeouts::cache_serves`]), copied under the current [`Stamp`] (so still its VIP's,
/// its backend not to be left, as checked when the copy was made, and its SNAT port not
/// given to another flow): it goes to the backend, without the `CONNS`, `VIP_GENS` and
/// `BACKENDS` lookups. `None` otherwise (the caller then tries `conntrack::established`).
#[inline(always)]
pub fn cached<A: Family>(
    pkt: &Packet<A>,
    settings: &Settings,
    stamp: Stamp,
    now: u64,
) -> Option<Send<A>> {
    if !A::CACHED {
        return None;
    }
    let slot = A::flow_cache().get_ptr(flow_slot(&pkt.key))?;
    // SAFETY: per-CPU map value, written only by this CPU (not while this program runs).
    let cached = unsafe { &*slot };
    if !A::same(&cached.key, &pkt.key)
        || cached.epoch != stamp.epoch
        || cached.evictions != stamp.evictions
    {
        return None;
    }
    if !timeouts::cache_serves(cached.state, cached.last_seen_ns, pkt, settings, now) {
        return None;
    }
    let ids = (cached.vip_id, cached.backend_id);
    if cached.state & FLOW_DSR != 0 {
        return Some(Send::untranslated(
            ids,
            &pkt.key,
            &cached.backend_addr,
            cached.state,
            false,
        ));
    }
    let to = Rewrite {
        src_addr: cached.snat_addr,
        dst_addr: cached.backend_addr,
        src_port: cached.snat_port,
        dst_port: cached.backend_port,
    };
    let diffs = (
        csum::Diff::from_folded(cached.ip_csum_diff),
        csum::Diff::from_folded(cached.l4_csum_diff),
    );
    Some(Send::to_backend(ids, to, diffs, false))
}

/// Keeps what forwarding the flow's packets needs, from its `CONNS` entry, in this CPU's
/// `FLOW_CACHE`, under `stamp` (read before the VIP and backend checks the caller did).
#[inline(always)]
pub fn remember<A: Family>(
    key: &FlowKey<A>,
    conn: &Conn<A>,
    stamp: Stamp,
    diffs: (csum::Diff, csum::Diff),
) {
    if !A::CACHED {
        return;
    }
    if let Some(slot) = A::flow_cache().get_ptr_mut(flow_slot(key)) {
        let (ip_diff, l4_diff) = diffs;
        // SAFETY: per-CPU map value; no other writer while this program runs on this CPU.
        unsafe {
            *slot = FlowCacheEntry {
                key: copy_key(key),
                backend_addr: conn.backend_addr,
                snat_addr: conn.snat_addr,
                backend_port: conn.backend_port,
                snat_port: conn.snat_port,
                ip_csum_diff: ip_diff.folded(),
                l4_csum_diff: l4_diff.folded(),
                backend_id: conn.backend_id,
                vip_id: conn.vip_id,
                state: conn.state,
                _pad: 0,
                last_seen_ns: conn.last_seen_ns,
                epoch: stamp.epoch,
                evictions: stamp.evictions,
            }
        };
    }
}

/// A copy of `key`, field by field: a copy of the whole key becomes a memmove call on BPF.
#[inline(always)]
pub fn copy_key<A: Addr>(key: &FlowKey<A>) -> FlowKey<A> {
    FlowKey {
        src_addr: key.src_addr,
        dst_addr: key.dst_addr,
        src_port: key.src_port,
        dst_port: key.dst_port,
        proto: key.proto,
        _pad0: 0,
        _pad1: 0,
    }
}

/// Changes `FLOW_EVICTIONS` to a value it never had: this CPU's number and a count of
/// this CPU's own (a per-CPU slot, so no race). Whatever order racing CPUs store in, the
/// last store is new, so no copy was stamped with it. (An increment of the shared value
/// could be undone by a racing CPU's older store; the BPF target has no atomic add in
/// Rust's `core`.) The count wraps after 2^20 evictions of one CPU, long after every
/// copy of that time (at most 250 ms old) is gone.
#[inline(always)]
pub fn count_eviction() {
    let Some(own) = EVICTION_SEQ.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; no other writer while the program runs here.
    let seq = unsafe {
        *own = (*own).wrapping_add(1);
        *own
    };
    // SAFETY: plain helper call.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if let Some(shared) = FLOW_EVICTIONS.get_ptr_mut(0) {
        // SAFETY: map value; a single aligned 4-byte store.
        unsafe { core::ptr::write_volatile(shared, (cpu << 20) | (seq & 0xf_ffff)) };
    }
}
