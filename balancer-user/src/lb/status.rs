//! The agent's state as the control protocol shows it.

use std::net::SocketAddr;

use balancer_common::stat;

use super::{Balancer, BalancerError};
use crate::{
    api::{BackendStatus, PoolStatus, Source, Status, VipStatus},
    dataplane::Maps,
    health::Health,
};

impl<M: Maps> Balancer<M> {
    /// How many backends of VIP `name`'s pool (an L4 or an HTTP VIP) take new flows;
    /// `None` when there is no such VIP.
    pub fn usable_backends(&self, name: &str) -> Option<usize> {
        let pool = match self.vips.get(name) {
            Some(vip) => &vip.config.pool,
            None => self.http_vips.get(name)?,
        };
        Some(self.usable_backends_of(pool).map_or(0, |b| b.len()))
    }

    /// The backends of pool `name` that take new requests, with their weights (for the
    /// HTTP proxy's pools); `None` when there is no such pool.
    pub fn usable_backends_of(&self, name: &str) -> Option<Vec<(SocketAddr, u32)>> {
        let pool = self.pools.get(name)?;
        Some(
            pool.backends
                .iter()
                .filter(|b| b.usable())
                .map(|b| (b.addr, b.weight))
                .collect(),
        )
    }

    pub fn status(&self) -> Result<Status, BalancerError> {
        let mut vips = Vec::new();
        for vip in self.vips.values() {
            let c = &vip.config;
            let active_backends = self
                .pools
                .get(&c.pool)
                .map_or(0, |p| p.backends.iter().filter(|b| b.usable()).count());
            vips.push(VipStatus {
                config: c.clone(),
                active_backends,
                counters: self.maps.vip_stats(vip.id)?.into(),
                active_flows: self.vip_active_flows(&c.name, vip.generation),
                source: Source::File,
            });
        }
        let mut pools = Vec::new();
        for (name, pool) in &self.pools {
            let mut backends = Vec::new();
            for b in &pool.backends {
                let state = if b.unchecked {
                    "unchecked"
                } else if b.health == Health::Down {
                    "down"
                } else if b.weight == 0 {
                    "drained"
                } else {
                    "active"
                };
                backends.push(BackendStatus {
                    address: b.addr.ip(),
                    port: b.addr.port(),
                    weight: b.weight,
                    state: state.to_string(),
                    health: b.health,
                    check: b.check.kind.check_type().to_string(),
                    last_check: b.newest_check(),
                    since_change_secs: b.changed_at.elapsed().as_secs_f64(),
                    change_reason: b.change_reason.clone(),
                    transitions: b.transitions,
                    counters: self.maps.backend_stats(b.id)?.into(),
                    active_flows: self.backend_active_flows(name, b.addr),
                    source: Source::File,
                    snat_ports_in_use: b.snat_use.estimate,
                });
            }
            pools.push(PoolStatus {
                name: name.clone(),
                on_backend_down: pool.on_backend_down,
                backends,
                source: Source::File,
                discovery: None,
            });
        }
        let global = self
            .maps
            .global_stats()?
            .into_iter()
            .enumerate()
            .map(|(i, v)| (stat::NAMES[i].to_string(), v))
            .collect();
        // (The agent, which knows the file, says where each comes from.)
        Ok(Status {
            vips,
            pools,
            global,
            // The agent adds the interfaces and VRRP instances, which are not the balancer's.
            interfaces: Vec::new(),
            vrrp: Vec::new(),
            http: Vec::new(),
            config: None,
            flow_census: self.census_status(),
            // (The agent adds flow sync, which is not the balancer's either.)
            sync: None,
        })
    }
}
