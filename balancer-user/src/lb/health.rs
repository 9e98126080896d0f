//! Health results applied to the model and the data plane.

use std::{net::SocketAddr, time::Instant};

use super::{model::backend_entry, Balancer, BalancerError};
use crate::{
    api::LastCheck,
    dataplane::Maps,
    health::{self, config::CheckConfig, Health, HealthEvent, LatestSlot},
};

impl<M: Maps> Balancer<M> {
    /// Every checked backend: (pool, address, check, current health or `None` when it was
    /// never checked), for the agent to keep its health checker in step.
    pub fn checks(&self) -> Vec<(String, SocketAddr, CheckConfig, Option<Health>)> {
        self.pools
            .iter()
            .flat_map(|(name, pool)| {
                pool.backends
                    .iter()
                    .filter(|b| b.check.is_enabled())
                    .map(move |b| {
                        let health = (!b.unchecked).then_some(b.health);
                        (name.clone(), b.addr, b.check.clone(), health)
                    })
            })
            .collect()
    }

    /// Gives a backend the slot where its check task keeps the newest check (see
    /// [`health::Checker::start`]); unknown backends are ignored.
    pub fn set_latest_slot(&mut self, pool: &str, backend: SocketAddr, slot: LatestSlot) {
        if let Some(b) = self.backend_mut(pool, backend) {
            b.check_task = health::latest(&slot).task;
            b.latest = Some(slot);
        }
    }

    /// Takes one health check result; a transition updates the ring and the backend's
    /// flags at once. Results for backends deleted meanwhile, and results of a check task
    /// that was replaced (a backend deleted and added again), are ignored.
    pub fn record_health(&mut self, event: &HealthEvent) -> Result<(), BalancerError> {
        let Some(pool) = self.pools.get_mut(&event.pool) else {
            return Ok(());
        };
        let policy = pool.on_backend_down;
        let Some(backend) = pool
            .backends
            .iter_mut()
            .find(|b| b.addr == event.backend && b.check_task == event.task)
        else {
            return Ok(());
        };
        let was_unchecked = std::mem::take(&mut backend.unchecked);
        backend.last_check = Some(LastCheck {
            ok: event.outcome.ok,
            latency_ms: event.outcome.latency.as_secs_f64() * 1000.0,
            reason: event.outcome.reason.clone(),
        });
        if backend.health == event.health {
            if was_unchecked {
                // Its first check, which left it down: no longer "added, not checked".
                backend.changed_at = Instant::now();
                backend.change_reason.clone_from(&event.outcome.reason);
            }
            return Ok(());
        }
        let old = std::mem::replace(&mut backend.health, event.health);
        let old_since = std::mem::replace(&mut backend.changed_at, Instant::now());
        let old_reason =
            std::mem::replace(&mut backend.change_reason, event.outcome.reason.clone());
        backend.transitions += 1;
        let (id, addr) = (backend.id, backend.addr);
        let entry = backend_entry(backend, policy);
        let pool_name = event.pool.clone();
        // A failed update leaves the backend in its old state, so that the next result
        // (the check task reports every change of outcome) tries the transition again.
        let revert = |lb: &mut Self| {
            if let Some(b) = lb.backend_mut(&pool_name, addr) {
                b.health = old;
                b.changed_at = old_since;
                b.change_reason.clone_from(&old_reason);
                b.transitions -= 1;
            }
        };
        // Down: leave the ring first, then flag the pinned flows. Up: the reverse.
        if event.health == Health::Down {
            self.apply_pool_or_undo(&pool_name, revert)?;
            if let Err(e) = self.maps.set_backend(id, &entry) {
                revert(self);
                self.reapply(&pool_name);
                return Err(e.into());
            }
        } else {
            if let Err(e) = self.maps.set_backend(id, &entry) {
                revert(self);
                return Err(e.into());
            }
            let flagged = self.apply_pool_or_undo(&pool_name, revert);
            if let Err(e) = flagged {
                if let Some(b) = self.backend_mut(&pool_name, addr) {
                    let entry = backend_entry(b, policy);
                    let _ = self.maps.set_backend(id, &entry);
                }
                return Err(e);
            }
        }
        // (The check task has logged the transition.)
        Ok(())
    }
}
