//! What a reload needs beyond the CLI's operations: a VIP changed in place (it keeps its id
//! and generation, so the data plane keeps its flows), a pool's settings or a backend's
//! check changed, a pool deleted, the data plane's settings and the HTTP VIPs replaced.

use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

use balancer_common::Settings;

use super::{model::backend_entry, Balancer, BalancerError};
use crate::{
    config::{BackendConfig, PoolConfig, VipConfig},
    dataplane::{AnyBackend, Maps},
    health::{config::CheckConfig, Health},
};

impl<M: Maps> Balancer<M> {
    /// Writes new data plane settings (timeouts, SNAT port range, tunnels).
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), BalancerError> {
        self.maps.set_settings(settings)?;
        self.settings = *settings;
        Ok(())
    }

    /// The HTTP-mode VIPs (name -> default pool) are now `vips`.
    pub fn set_http_vips(&mut self, vips: BTreeMap<String, String>) {
        self.http_vips = vips;
    }

    /// Changes an L4 VIP's settings (scheduler, ring size, pool, down policy) keeping its
    /// key: it keeps its id and generation, so its established flows carry on; its ring is
    /// rebuilt from the pool it now uses (created empty if needed).
    pub fn update_vip(&mut self, config: VipConfig) -> Result<(), BalancerError> {
        let name = config.name.clone();
        let vip = self
            .vips
            .get(&name)
            .ok_or_else(|| BalancerError::UnknownVip(name.clone()))?;
        if vip.key() != super::model::vip_key(&config) {
            return Err(BalancerError::Invalid {
                what: "VIP change",
                why: format!("VIP {name:?}: its address, port or protocol cannot change in place"),
            });
        }
        self.add_pool(&config.pool)?;
        let vip = self.vips.get_mut(&name).expect("checked above");
        let old = std::mem::replace(&mut vip.config, config);
        if let Err(e) = self.apply_ring(&name) {
            self.vips.get_mut(&name).expect("checked above").config = old;
            let _ = self.apply_ring(&name);
            return Err(e);
        }
        log::info!("vip {name}: settings changed (its flows carry on)");
        Ok(())
    }

    /// Creates an empty pool; one of that name must not exist.
    pub fn create_pool(&mut self, name: &str) -> Result<(), BalancerError> {
        if self.pools.contains_key(name) {
            return Err(BalancerError::Invalid {
                what: "pool name",
                why: format!("pool {name:?} already exists"),
            });
        }
        self.add_pool(name)?;
        log::info!("pool {name}: added");
        Ok(())
    }

    /// Deletes a pool that no VIP uses, with its backends (as [`Self::del_backend`]
    /// does: their established flows are not moved).
    pub fn del_pool(&mut self, name: &str) -> Result<(), BalancerError> {
        let pool = self
            .pools
            .get(name)
            .ok_or_else(|| BalancerError::UnknownTarget(name.to_owned()))?;
        let users: Vec<&str> = self
            .vips
            .values()
            .map(|v| &v.config)
            .filter(|c| c.pool == name)
            .map(|c| c.name.as_str())
            .chain(
                self.http_vips
                    .iter()
                    .filter(|(_, pool)| *pool == name)
                    .map(|(vip, _)| vip.as_str()),
            )
            .collect();
        if !users.is_empty() {
            return Err(BalancerError::Invalid {
                what: "pool deletion",
                why: format!("pool {name:?} is used by VIP {}", users.join(", ")),
            });
        }
        let addrs: Vec<SocketAddr> = pool.backends.iter().map(|b| b.addr).collect();
        for addr in addrs {
            self.del_backend(name, addr)?;
        }
        self.pools.remove(name);
        log::info!("pool {name}: deleted");
        Ok(())
    }

    /// Pool names, in order.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// Sets a pool's check for backends added later and its down policy; a changed policy
    /// is written to the data plane entry of every backend of the pool.
    pub fn reconfigure_pool(&mut self, config: &PoolConfig) -> Result<(), BalancerError> {
        let old_policy = self.pools.get(&config.name).map(|p| p.on_backend_down);
        self.configure_pool(config)?;
        if old_policy.is_some_and(|p| p != config.on_backend_down) {
            let pool = &self.pools[&config.name];
            let entries: Vec<(u32, AnyBackend)> = pool
                .backends
                .iter()
                .map(|b| (b.id, backend_entry(b, pool.on_backend_down)))
                .collect();
            for (id, entry) in entries {
                self.maps.set_backend(id, &entry)?;
            }
        }
        Ok(())
    }

    /// Adds a backend as the configuration file describes it (with its own check).
    pub fn add_configured_backend(
        &mut self,
        pool: &str,
        backend: &BackendConfig,
    ) -> Result<(), BalancerError> {
        self.insert_backend(
            pool,
            backend.socket_addr(),
            backend.weight,
            backend.check.clone(),
            false,
        )
    }

    /// Adds a backend found by discovery: with its check, it takes no flows until its
    /// first check succeeds (as one added from the CLI).
    pub fn add_discovered_backend(
        &mut self,
        pool: &str,
        backend: &BackendConfig,
    ) -> Result<(), BalancerError> {
        self.insert_backend(
            pool,
            backend.socket_addr(),
            backend.weight,
            backend.check.clone(),
            true,
        )
    }

    /// Gives a backend another health check. Its health stays as it is until the new
    /// check decides (a backend that is no longer checked is up); the agent restarts its
    /// check task.
    pub fn set_check(
        &mut self,
        pool: &str,
        addr: SocketAddr,
        check: CheckConfig,
    ) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(pool)?;
        let index = self.backend_index(&pool_name, addr)?;
        let policy = self.pools[&pool_name].on_backend_down;
        let backend = &mut self.pool_mut(&pool_name).backends[index];
        let enabled = check.is_enabled();
        backend.check = check;
        backend.last_check = None;
        backend.latest = None;
        backend.check_task = 0;
        if enabled || backend.health == Health::Up {
            return Ok(());
        }
        backend.health = Health::Up;
        backend.changed_at = Instant::now();
        "check removed".clone_into(&mut backend.change_reason);
        let (id, entry) = (backend.id, backend_entry(backend, policy));
        self.maps.set_backend(id, &entry)?;
        self.apply_pool(&pool_name)
    }
}
