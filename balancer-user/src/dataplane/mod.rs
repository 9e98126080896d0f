//! The data plane: the only module that talks to the kernel through aya. It loads and
//! attaches the XDP program ([`loader`]), follows the configured interfaces and the
//! program on each ([`links`], told by [`rtnetlink`]), keeps its state pinned across
//! agents ([`pins`]),
//! and puts its maps behind the [`Maps`] trait: [`AyaMaps`] writes the kernel's,
//! [`FakeMaps`] keeps them in memory for unit tests. The connection table is read whole,
//! off the event loop, through [`FlowTable`] ([`batch`]: `BPF_MAP_LOOKUP_BATCH`; [`clock`]:
//! the data plane's clock). Nothing else imports aya; nothing here decides what the maps
//! should hold (that is [`crate::lb`]).

mod aya_maps;
pub mod batch;
pub mod clock;
pub mod decap;
mod fake;
pub mod family;
pub mod links;
pub mod loader;
pub mod pins;
pub mod rtnetlink;

use std::{collections::HashMap, sync::Arc};

use balancer_common::{Conn, FlowKey, FlowStats, NatEntry, Settings, VipMeta};

pub use aya_maps::AyaMaps;
pub use fake::{FakeFlows, FakeMaps};
pub use family::{AnyBackend, AnyVipKey, FlowEntry};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {0} is missing from the XDP object")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Aya {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {message}")]
    Other { map: &'static str, message: String },
}

/// Everything the agent writes to or reads from the data plane.
pub trait Maps {
    fn set_settings(&mut self, settings: &Settings) -> Result<(), MapsError>;
    /// Writes a VIP into its family's map (`VIPS` or `VIPS6`).
    fn set_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<(), MapsError>;
    fn del_vip(&mut self, key: &AnyVipKey) -> Result<(), MapsError>;
    /// Writes backend `id` into its family's map (`BACKENDS` or `BACKENDS6`); the other
    /// family's entry of `id` must be empty (see [`Maps::clear_backend`]).
    fn set_backend(&mut self, id: u32, backend: &AnyBackend) -> Result<(), MapsError>;
    /// Empties backend `id` in both families' maps (the backend is gone).
    fn clear_backend(&mut self, id: u32) -> Result<(), MapsError>;
    fn set_ring_slot(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError>;
    /// Counters summed over CPUs.
    fn vip_stats(&self, vip_id: u32) -> Result<FlowStats, MapsError>;
    fn backend_stats(&self, backend_id: u32) -> Result<FlowStats, MapsError>;
    fn clear_vip_stats(&mut self, vip_id: u32) -> Result<(), MapsError>;
    fn clear_backend_stats(&mut self, backend_id: u32) -> Result<(), MapsError>;
    /// `balancer_common::stat::COUNT` counters summed over CPUs.
    fn global_stats(&self) -> Result<Vec<u64>, MapsError>;
    /// `VIP_GENS`, the generation of the VIP holding each id (0: none), as the data plane
    /// holds it: pinned, it comes from the previous agent at first.
    fn vip_gens(&self) -> Result<Vec<u32>, MapsError>;
    /// `VIP_GENS[id] = generation` (0: no VIP holds `id`), for ids the previous agent's
    /// VIPs held: the VIPs' own are written with them.
    fn write_vip_gen(&mut self, id: u32, generation: u32) -> Result<(), MapsError>;
    /// The connection tables (`CONNS`, `CONNS6`), to read from another thread.
    fn flow_table(&self) -> Arc<dyn FlowTable>;
}

/// The connection tables (`CONNS` and `CONNS6`, and `NAT` for flow sync) as the agent
/// sees them: read whole (a full table takes a while: never on the event loop), and
/// written only with the flows a VRRP peer sent (flow sync, on a blocking thread too;
/// IPv4 flows only, so far).
pub trait FlowTable: Send + Sync {
    /// The data plane's clock now (ns), as the program given `settings` reads it: what a
    /// flow's `last_seen_ns` is compared with.
    ///
    /// # Errors
    /// When the kernel's clock cannot be read.
    fn now_ns(&self, settings: &Settings) -> Result<u64, MapsError>;
    /// Calls `each` on every entry of both families; returns how many there were.
    ///
    /// # Errors
    /// When a table cannot be read.
    fn walk(&self, each: &mut dyn FnMut(&FlowEntry)) -> Result<usize, MapsError>;
    /// Writes a flow a peer sent: its `CONNS` entry, then its `NAT` entry (`reply`: key
    /// and entry) when it has one, the order in which the data plane claims a SNAT port (a
    /// CPU that finds the reply entry finds its flow too).
    ///
    /// # Errors
    /// When a table cannot be written.
    fn put(
        &self,
        key: &FlowKey,
        conn: &Conn,
        reply: Option<&(FlowKey, NatEntry)>,
    ) -> Result<(), MapsError>;
    /// Deletes flow `key`, and the `NAT` entry of key `reply` if it still names that flow
    /// (another flow may hold the port since).
    ///
    /// # Errors
    /// When a table cannot be written.
    fn remove(&self, key: &FlowKey, reply: Option<&FlowKey>) -> Result<(), MapsError>;
}

/// Whether reply entry `holder` is the one of client flow `key`.
fn names_client(holder: &NatEntry, key: &FlowKey) -> bool {
    (
        holder.client_addr,
        holder.client_port,
        holder.vip_addr,
        holder.vip_port,
    ) == (key.src_addr, key.src_port, key.dst_addr, key.dst_port)
}

/// The VIPs present in the kernel, for the two arrays that let it skip the `VIPS` hash:
/// `VIP_ADDRS` (how many VIPs of either family have an address in each
/// [`balancer_common::addr_slot`]) and `VIP_GENS` (the generation of the VIP holding each
/// id). Both map implementations keep one. A VIP is
/// counted in (and its generation written) before its `VIPS` entry, recorded here once
/// that entry is written, and counted out after it is deleted, so the kernel never skips a
/// present VIP.
#[derive(Debug, Default)]
pub struct PresentVips {
    /// Key -> (VIP id, generation).
    vips: HashMap<AnyVipKey, (u32, u32)>,
    counts: HashMap<u32, u32>,
}

/// What setting a VIP must write to the two arrays.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VipWrites {
    /// `VIP_ADDRS[slot] = count`, before the `VIPS` entry: the VIP is new.
    pub count: Option<(u32, u32)>,
    /// `VIP_GENS[id] = generation`, before the `VIPS` entry: the VIP is new or its id or
    /// generation changed.
    pub generation: Option<(u32, u32)>,
    /// `VIP_GENS[id] = 0`, after the `VIPS` entry: the key's previous, other id.
    pub clear: Option<u32>,
}

impl PresentVips {
    /// What setting VIP `key` with `vip_id` and `generation` must write (changes nothing).
    fn writes_for(&self, key: AnyVipKey, vip_id: u32, generation: u32) -> VipWrites {
        let before = self.vips.get(&key).copied();
        let slot = key.slot();
        VipWrites {
            count: before.is_none().then(|| (slot, self.count(slot) + 1)),
            generation: (before != Some((vip_id, generation))).then_some((vip_id, generation)),
            clear: before.map(|(id, _)| id).filter(|&id| id != vip_id),
        }
    }

    /// The `VIPS` entry of `key` was written.
    fn record(&mut self, key: AnyVipKey, vip_id: u32, generation: u32) {
        if self.vips.insert(key, (vip_id, generation)).is_none() {
            *self.counts.entry(key.slot()).or_default() += 1;
        }
    }

    /// A VIP was deleted: `Some((slot, new count, its id))` when it was present.
    fn removed(&mut self, key: AnyVipKey) -> Option<(u32, u32, u32)> {
        let (vip_id, _) = self.vips.remove(&key)?;
        let slot = key.slot();
        let count = self.counts.entry(slot).or_default();
        *count = count.saturating_sub(1);
        Some((slot, *count, vip_id))
    }

    /// The count of a slot.
    pub fn count(&self, slot: u32) -> u32 {
        self.counts.get(&slot).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn key(addr: [u8; 4], port: u16) -> AnyVipKey {
        AnyVipKey::new(addr.into(), port, balancer_common::PROTO_TCP)
    }

    #[test]
    fn present_vips_count_addresses_and_remember_ids() {
        let mut c = PresentVips::default();
        let (web, dns) = (key([10, 0, 100, 1], 80), key([10, 0, 100, 1], 53));
        let slot = web.slot();
        let writes = |count, generation, clear| VipWrites {
            count,
            generation,
            clear,
        };
        assert_eq!(
            c.writes_for(web, 3, 7),
            writes(Some((slot, 1)), Some((3, 7)), None)
        );
        c.record(web, 3, 7);
        // Setting a present VIP again (a ring flip) writes nothing.
        assert_eq!(c.writes_for(web, 3, 7), writes(None, None, None));
        assert_eq!(
            c.writes_for(dns, 4, 8),
            writes(Some((slot, 2)), Some((4, 8)), None),
            "same address, another port"
        );
        c.record(dns, 4, 8);
        // The same key under another id and generation: the old id is cleared.
        assert_eq!(c.writes_for(web, 5, 9), writes(None, Some((5, 9)), Some(3)));
        assert_eq!(c.removed(web), Some((slot, 1, 3)));
        assert_eq!(
            c.removed(web),
            None,
            "deleting an absent VIP counts nothing"
        );
        assert_eq!(c.count(slot), 1);
        assert_eq!(c.removed(dns), Some((slot, 0, 4)));
        assert_eq!(c.count(slot), 0);
    }
}
