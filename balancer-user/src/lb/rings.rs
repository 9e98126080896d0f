//! Rings: rebuilding a VIP's ring into its inactive slice and flipping to it.

use balancer_common::{
    VipMeta, MAX_RING_SIZE, NO_BACKEND, RING_SLICES_PER_VIP, SCHED_MAGLEV, SCHED_ROUND_ROBIN,
    VIP_F_DSR, VIP_F_GUE, VIP_F_PASS_ALL_DOWN, VIP_F_TUNNEL,
};

use super::{Balancer, BalancerError};
use crate::{
    config::{AllDownPolicy, Encapsulation, Forwarding, Scheduler},
    dataplane::Maps,
    ring::{self, RingBackend},
};

impl<M: Maps> Balancer<M> {
    /// Rebuilds the rings of every VIP that uses `pool`.
    pub(super) fn apply_pool(&mut self, pool: &str) -> Result<(), BalancerError> {
        let names: Vec<String> = self
            .vips
            .values()
            .filter(|v| v.config.pool == pool)
            .map(|v| v.config.name.clone())
            .collect();
        for name in names {
            self.apply_ring(&name)?;
        }
        Ok(())
    }

    /// [`Self::apply_pool`] after a change to `pool`. If that fails, `undo` reverts the
    /// change and the rings are rebuilt from the reverted pool, so that the agent's state
    /// and the data plane stay as they were; the first error is returned.
    pub(super) fn apply_pool_or_undo(
        &mut self,
        pool: &str,
        undo: impl FnOnce(&mut Self),
    ) -> Result<(), BalancerError> {
        let Err(e) = self.apply_pool(pool) else {
            return Ok(());
        };
        undo(self);
        self.reapply(pool);
        Err(e)
    }

    /// Rebuilds `pool`'s rings after a change was reverted; a failure here is only logged
    /// (the caller reports the first one). A VIP whose ring was not rebuilt keeps serving
    /// its active slice, which the failed update never touched.
    pub(super) fn reapply(&mut self, pool: &str) {
        if let Err(e) = self.apply_pool(pool) {
            log::error!("pool {pool}: restoring the rings after a failed update: {e}");
        }
    }

    /// Builds the VIP's ring, writes it to the inactive slice (only the slots that differ
    /// from what that slice holds), then flips the VIP to it in one map update.
    pub(super) fn apply_ring(&mut self, name: &str) -> Result<(), BalancerError> {
        let vip = self.vips.get(name).expect("caller checked");
        let pool = self.pools.get(&vip.config.pool).expect("VIP pools exist");
        let backends: Vec<RingBackend> = pool
            .backends
            .iter()
            .map(|b| RingBackend {
                id: b.id,
                key: ring::backend_key(b.addr.ip(), b.addr.port()),
                weight: if b.usable() { b.weight } else { 0 },
            })
            .collect();
        let active = &vip.slices[vip.active_slice as usize];
        let table = match vip.config.scheduler {
            Scheduler::Maglev => {
                let prev = (!pool.fresh_rings && active.len() == vip.config.ring_size as usize)
                    .then_some(&active[..]);
                ring::maglev(&backends, vip.config.ring_size, prev)
            }
            Scheduler::RoundRobin => ring::round_robin(&backends, MAX_RING_SIZE),
        };
        let usable = table.iter().any(|&id| id != NO_BACKEND);

        let target = 1 - vip.active_slice;
        let base = (vip.id * RING_SLICES_PER_VIP + target) * MAX_RING_SIZE;
        let key = vip.key();
        let meta = VipMeta {
            vip_id: vip.id,
            scheduler: match vip.config.scheduler {
                Scheduler::Maglev => SCHED_MAGLEV,
                Scheduler::RoundRobin => SCHED_ROUND_ROBIN,
            },
            ring_base: base,
            ring_size: if usable { table.len() as u32 } else { 0 },
            flags: match vip.config.on_all_down {
                AllDownPolicy::Drop => 0,
                AllDownPolicy::Pass => VIP_F_PASS_ALL_DOWN,
            } | match vip.config.forwarding {
                Forwarding::Nat => 0,
                Forwarding::Dsr => VIP_F_DSR,
                Forwarding::Tunnel => match vip.config.encapsulation {
                    Encapsulation::Ipip => VIP_F_TUNNEL,
                    Encapsulation::Gue => VIP_F_TUNNEL | VIP_F_GUE,
                },
            },
            generation: vip.generation,
        };
        // What the inactive slice holds is unknown while it is being written.
        let shadow =
            std::mem::take(&mut self.vips.get_mut(name).expect("checked").slices[target as usize]);
        for (slot, &id) in table.iter().enumerate() {
            if shadow.get(slot) != Some(&id) {
                self.maps.set_ring_slot(base + slot as u32, id)?;
            }
        }
        let vip = self.vips.get_mut(name).expect("caller checked");
        vip.slices[target as usize] = table;
        self.maps.set_vip(&key, &meta)?;
        vip.active_slice = target;
        Ok(())
    }
}
