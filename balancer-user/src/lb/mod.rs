//! The balancer: the agent's view of VIPs, pools and backends (the source of truth), and an
//! API shaped like Katran's `KatranLb` (`add_vip`, `del_vip`, `add_backend`, ...) that keeps
//! the data plane's maps derived from it.

mod active_flows;
mod checks;
mod health;
mod ids;
mod model;
mod reconfigure;
mod rings;
mod settings;
mod snat_use;
mod status;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use balancer_common::{Settings, MAX_BACKENDS, MAX_RING_SIZE, MAX_VIPS};

pub use active_flows::{is_live, Census, FlowCensus};
pub use settings::{ns_per_tick, settings, SnatSource};

use crate::{
    config::{self, Config, PoolConfig, Protocol, VipConfig, VipMode, MAX_WEIGHT},
    dataplane::{Maps, MapsError},
    health::{config::CheckConfig, Health},
    ring,
};
use ids::{backend_hash, incarnation_of, vip_generation, vip_hash, HashedIds};
use model::{backend_entry, vip_key, Pool, PoolBackend, Vip};

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("unknown VIP {0:?}")]
    UnknownVip(String),
    #[error("no pool or VIP named {0:?}")]
    UnknownTarget(String),
    #[error("VIP {0:?} already exists")]
    DuplicateVip(String),
    #[error("VIP {name:?} already serves {}/{protocol}", SocketAddr::new(*address, *port))]
    DuplicateVipAddress {
        name: String,
        address: IpAddr,
        port: u16,
        protocol: Protocol,
    },
    #[error("backend {backend} is already in pool {pool:?}")]
    DuplicateBackend { pool: String, backend: SocketAddr },
    #[error("backend {backend} is not in pool {pool:?}")]
    UnknownBackend { pool: String, backend: SocketAddr },
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("too many VIPs (the data plane holds {MAX_VIPS})")]
    TooManyVips,
    #[error("too many backends (the data plane holds {MAX_BACKENDS} over all pools)")]
    TooManyBackends,
    #[error("no source address towards backend {backend}: {why}")]
    NoSourceAddress { backend: SocketAddr, why: String },
    #[error("data plane update failed: {0}")]
    Maps(#[from] MapsError),
    /// An error while applying one part of a configuration file.
    #[error("{place}: {error}")]
    In {
        place: String,
        error: Box<BalancerError>,
    },
}

/// The one owner of the data plane's maps.
pub struct Balancer<M: Maps> {
    maps: M,
    snat: SnatSource,
    pools: BTreeMap<String, Pool>,
    vips: BTreeMap<String, Vip>,
    vip_ids: HashedIds,
    backend_ids: HashedIds,
    /// How often each VIP (by key hash) was added in this agent: its next generation.
    incarnations: HashMap<u64, u32>,
    /// `VIP_GENS` as [`Balancer::from_config`] found it (pinned: from the previous
    /// agent), until the agent's program runs everywhere.
    found_gens: Vec<u32>,
    /// HTTP-mode VIPs (the proxy serves them): name -> default pool, for VRRP's VIP tracks.
    http_vips: BTreeMap<String, String>,
    /// What the data plane's settings are (the timeouts a census judges flows by).
    settings: Settings,
    /// The newest census of the connection table, and why the last attempt failed.
    census: Option<FlowCensus>,
    census_error: Option<String>,
}

impl<M: Maps> Balancer<M> {
    pub fn new(mut maps: M, settings: &Settings, snat: SnatSource) -> Result<Self, BalancerError> {
        maps.set_settings(settings)?;
        Ok(Self {
            maps,
            snat,
            pools: BTreeMap::new(),
            vips: BTreeMap::new(),
            vip_ids: HashedIds::new(MAX_VIPS),
            backend_ids: HashedIds::new(MAX_BACKENDS),
            incarnations: HashMap::new(),
            found_gens: Vec::new(),
            http_vips: BTreeMap::new(),
            settings: *settings,
            census: None,
            census_error: None,
        })
    }

    /// A balancer set up from a configuration file's contents.
    pub fn from_config(maps: M, config: &Config) -> Result<Self, BalancerError> {
        let snat = if config.nat.source_addresses.is_empty() {
            SnatSource::Route
        } else {
            SnatSource::Fixed(config.nat.source_addresses.clone())
        };
        let settings = settings(&config.timeouts, &config.nat, &config.tunnel);
        let mut lb = Self::new(maps, &settings, snat)?;
        let within = |place: String| {
            move |e| BalancerError::In {
                place,
                error: Box::new(e),
            }
        };
        for pool in &config.pools {
            lb.configure_pool(pool)
                .map_err(within(format!("pool {:?}", pool.name)))?;
            for b in &pool.backends {
                let addr = b.socket_addr();
                lb.insert_backend(&pool.name, addr, b.weight, b.check.clone(), false)
                    .map_err(within(format!("pool {:?}, backend {addr}", pool.name)))?;
            }
        }
        // A VIP that an earlier agent deleted and added again (pinned `VIP_GENS`) keeps
        // the generation its flows carry: they stay its flows, and those of its earlier
        // incarnations stay ended. Its generation is looked for along the ids it can get,
        // its own first (ids follow the VIP), so another VIP's rarely passes for its.
        lb.found_gens = lb.maps.vip_gens()?;
        let n = lb.found_gens.len();
        // HTTP-mode VIPs are the proxy's: the data plane passes their packets to the stack.
        for vip in config.vips.iter().filter(|v| v.mode == VipMode::Http) {
            lb.http_vips.insert(vip.name.clone(), vip.pool.clone());
        }
        for vip in config.vips.iter().filter(|v| v.mode == VipMode::L4) {
            let hash = vip_hash(vip_key(vip));
            let start = (hash % n.max(1) as u64) as usize;
            let found = (0..n)
                .map(|i| lb.found_gens[(start + i) % n])
                .find_map(|g| incarnation_of(hash, g));
            if let Some(k) = found.filter(|&k| k > 0) {
                log::info!(
                    "vip {}: keeps the generation an earlier agent gave it (re-added {k} times)",
                    vip.name
                );
                lb.incarnations.insert(hash, k);
            }
            if let Err(e) = lb.add_vip(vip.clone()) {
                lb.restore_vip_gens();
                return Err(within(format!("vip {:?}", vip.name))(e));
            }
        }
        Ok(lb)
    }

    /// Puts `VIP_GENS` back as [`Balancer::from_config`] found it, when the agent cannot
    /// start after all: the previous program may run on (a kept link), and the next agent
    /// must find the generations its flows carry.
    pub fn restore_vip_gens(&mut self) {
        for (id, generation) in (0u32..).zip(std::mem::take(&mut self.found_gens)) {
            if let Err(e) = self.maps.write_vip_gen(id, generation) {
                log::warn!("VIP id {id}: cannot put its generation {generation} back: {e}");
            }
        }
    }

    /// Clears the generation of every VIP id that no VIP holds: the pinned `VIP_GENS`
    /// still names the previous agent's VIPs, whose flows must end when this agent has
    /// not got them (or has them under other ids). The agent calls it once its program
    /// runs on every interface: until then a kept link still runs the previous program,
    /// whose VIPs these are.
    pub fn clear_other_vip_gens(&mut self) -> Result<(), BalancerError> {
        let held: HashSet<u32> = self.vips.values().map(|v| v.id).collect();
        for (id, generation) in (0u32..).zip(std::mem::take(&mut self.found_gens)) {
            if generation != 0 && !held.contains(&id) {
                self.maps.write_vip_gen(id, 0)?;
            }
        }
        Ok(())
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Creates an empty pool (no-op if it exists).
    pub fn add_pool(&mut self, name: &str) -> Result<(), BalancerError> {
        if !config::is_valid_name(name) {
            return Err(BalancerError::Invalid {
                what: "pool name",
                why: format!("{name:?} (use 1-64 of A-Z a-z 0-9 _ . -)"),
            });
        }
        if !self.pools.contains_key(name) {
            if let Some(vip) = self.vips.get(name) {
                return Err(BalancerError::Invalid {
                    what: "pool name",
                    why: format!(
                        "{name:?} is the name of VIP {name:?}, which uses pool {:?} \
                         (backend commands naming {name:?} would be ambiguous)",
                        vip.config.pool
                    ),
                });
            }
        }
        self.pools.entry(name.to_string()).or_default();
        Ok(())
    }

    /// Creates a pool (if needed) with the configuration's check and down policy.
    pub fn configure_pool(&mut self, config: &PoolConfig) -> Result<(), BalancerError> {
        self.add_pool(&config.name)?;
        let pool = self.pools.get_mut(&config.name).expect("just added");
        pool.check = config.check.clone();
        pool.on_backend_down = config.on_backend_down;
        pool.fresh_rings = config.discovery.is_some();
        Ok(())
    }

    /// Adds a VIP; its pool is created empty if it does not exist yet.
    pub fn add_vip(&mut self, config: VipConfig) -> Result<(), BalancerError> {
        if !config::is_valid_name(&config.name) {
            return Err(BalancerError::Invalid {
                what: "VIP name",
                why: format!("{:?} (use 1-64 of A-Z a-z 0-9 _ . -)", config.name),
            });
        }
        if self.vips.contains_key(&config.name) {
            return Err(BalancerError::DuplicateVip(config.name));
        }
        if let Some(other) = self.vips.values().find(|v| v.key() == vip_key(&config)) {
            return Err(BalancerError::DuplicateVipAddress {
                name: other.config.name.clone(),
                address: config.address,
                port: config.port,
                protocol: config.protocol,
            });
        }
        if config.port == 0 {
            return Err(BalancerError::Invalid {
                what: "VIP port",
                why: format!("0 (VIP {:?})", config.name),
            });
        }
        if config.ring_size > MAX_RING_SIZE || !ring::is_prime(config.ring_size) {
            return Err(BalancerError::Invalid {
                what: "ring size",
                why: format!(
                    "{} (VIP {:?}: Maglev needs a prime <= {MAX_RING_SIZE}, e.g. 65537)",
                    config.ring_size, config.name
                ),
            });
        }
        if config.pool != config.name && self.pools.contains_key(&config.name) {
            return Err(BalancerError::Invalid {
                what: "VIP name",
                why: format!(
                    "{:?} is the name of a pool, and this VIP uses pool {:?} (backend commands \
                     naming {:?} would be ambiguous; a VIP may share its name only with its own pool)",
                    config.name, config.pool, config.name
                ),
            });
        }
        self.check_new_vip(&config, None)?;
        if self.vip_ids.available() == 0 {
            return Err(BalancerError::TooManyVips);
        }
        // A pool this call creates goes again if the VIP cannot be added.
        let new_pool = (!self.pools.contains_key(&config.pool)).then(|| config.pool.clone());
        self.add_pool(&config.pool)?;
        let hash = vip_hash(vip_key(&config));
        let id = self.vip_ids.alloc(hash).expect("an id is available");
        let name = config.name.clone();
        let incarnation = self.incarnations.get(&hash).copied().unwrap_or(0);
        let vip = Vip {
            config,
            id,
            generation: vip_generation(hash, incarnation),
            active_slice: 1,
            slices: [Vec::new(), Vec::new()],
        };
        self.vips.insert(name.clone(), vip);
        let result = self
            .maps
            .clear_vip_stats(id)
            .map_err(BalancerError::from)
            .and_then(|()| self.apply_ring(&name));
        if let Err(e) = result {
            // Leave no half-added VIP behind.
            let vip = self.vips.remove(&name).expect("just inserted");
            let _ = self.maps.del_vip(&vip.key());
            self.vip_ids.release(id);
            if let Some(pool) = new_pool {
                self.pools.remove(&pool);
            }
            return Err(e);
        }
        self.incarnations.insert(hash, incarnation.wrapping_add(1));
        log::info!("vip {name}: added");
        Ok(())
    }

    pub fn del_vip(&mut self, name: &str) -> Result<(), BalancerError> {
        let vip = self
            .vips
            .get(name)
            .ok_or_else(|| BalancerError::UnknownVip(name.to_string()))?;
        self.maps.del_vip(&vip.key())?;
        let vip = self.vips.remove(name).expect("checked above");
        self.vip_ids.release(vip.id);
        log::info!("vip {name}: deleted");
        Ok(())
    }

    /// The pool a CLI target names: a pool, or the pool of a VIP of that name.
    fn pool_name(&self, target: &str) -> Result<String, BalancerError> {
        if self.pools.contains_key(target) {
            Ok(target.to_string())
        } else if let Some(vip) = self.vips.get(target) {
            Ok(vip.config.pool.clone())
        } else {
            Err(BalancerError::UnknownTarget(target.to_string()))
        }
    }

    /// Adds a backend with its pool's health check. A checked backend takes no flows
    /// until its first check succeeds (it shows as "unchecked" until then); one without a
    /// check is up at once.
    pub fn add_backend(
        &mut self,
        target: &str,
        addr: SocketAddr,
        weight: u32,
    ) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        let check = self.pools[&pool_name].check.clone();
        self.insert_backend(&pool_name, addr, weight, check, true)
    }

    /// Adds a backend; `at_run_time`: added to a running balancer, so that a checked one
    /// starts unchecked rather than in its check's `initial_state` (which is for the
    /// file's backends when the agent starts, as HAProxy's `init-state`).
    fn insert_backend(
        &mut self,
        target: &str,
        addr: SocketAddr,
        weight: u32,
        check: CheckConfig,
        at_run_time: bool,
    ) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        check_weight(weight, &pool_name, addr)?;
        config::check_backend_address(addr).map_err(|e| BalancerError::Invalid {
            what: "backend address",
            why: format!("{addr} (pool {pool_name:?}): {e}"),
        })?;
        let pool = &self.pools[&pool_name];
        if pool.backends.iter().any(|b| b.addr == addr) {
            return Err(BalancerError::DuplicateBackend {
                pool: pool_name,
                backend: addr,
            });
        }
        self.check_new_backend(&pool_name, addr, None)?;
        if self.backend_ids.available() == 0 {
            return Err(BalancerError::TooManyBackends);
        }
        let snat_addrs = self.snat.resolve(addr)?;
        let sources = snat_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let id = self
            .backend_ids
            .alloc(backend_hash(&pool_name, addr))
            .ok_or(BalancerError::TooManyBackends)?;
        let unchecked = at_run_time && check.is_enabled();
        let health = if unchecked {
            Health::Down
        } else if check.is_enabled() {
            check.initial_state
        } else {
            Health::Up
        };
        let backend = PoolBackend {
            addr,
            weight,
            id,
            snat_addrs,
            check,
            health,
            unchecked,
            last_check: None,
            latest: None,
            check_task: 0,
            changed_at: Instant::now(),
            transitions: 0,
            snat_use: snat_use::SnatUse::default(),
            change_reason: if unchecked {
                "added, not checked yet".to_owned()
            } else {
                format!("initial state {}", health.as_str())
            },
        };
        let entry = backend_entry(&backend, self.pools[&pool_name].on_backend_down);
        if let Err(e) = self
            .maps
            .clear_backend_stats(id)
            .and_then(|()| self.maps.set_backend(id, &entry))
        {
            self.backend_ids.release(id);
            return Err(e.into());
        }
        self.pools
            .get_mut(&pool_name)
            .expect("checked above")
            .backends
            .push(backend);
        let applied = self.apply_pool_or_undo(&pool_name, |lb| {
            lb.pool_mut(&pool_name).backends.retain(|b| b.addr != addr);
        });
        if let Err(e) = applied {
            let _ = self.maps.clear_backend(id);
            self.backend_ids.release(id);
            return Err(e);
        }
        log::info!(
            event = "backend",
            pool = pool_name,
            backend:% = addr,
            change = "added",
            weight = weight;
            "pool {pool_name}: backend {addr} added (weight {weight}, source {sources})"
        );
        Ok(())
    }

    /// Removes a backend: it takes no new flows; its established flows are not moved to
    /// other backends (the connection table keeps sending them to its address).
    pub fn del_backend(&mut self, target: &str, addr: SocketAddr) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        let index = self.backend_index(&pool_name, addr)?;
        let removed = self.pool_mut(&pool_name).backends.remove(index);
        let put_back = |lb: &mut Self| {
            lb.pool_mut(&pool_name)
                .backends
                .insert(index, removed.clone());
        };
        self.apply_pool_or_undo(&pool_name, put_back)?;
        if let Err(e) = self.maps.clear_backend(removed.id) {
            // Keep the backend rather than leave its entry behind with its id released.
            put_back(self);
            self.reapply(&pool_name);
            return Err(e.into());
        }
        self.backend_ids.release(removed.id);
        log::info!(
            event = "backend",
            pool = pool_name,
            backend:% = addr,
            change = "deleted";
            "pool {pool_name}: backend {addr} deleted"
        );
        Ok(())
    }

    /// Sets a backend's weight; 0 drains it (no new flows, established ones stay).
    pub fn set_weight(
        &mut self,
        target: &str,
        addr: SocketAddr,
        weight: u32,
    ) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        check_weight(weight, &pool_name, addr)?;
        let index = self.backend_index(&pool_name, addr)?;
        let backend = &mut self.pool_mut(&pool_name).backends[index];
        let old = std::mem::replace(&mut backend.weight, weight);
        self.apply_pool_or_undo(&pool_name, |lb| {
            if let Some(b) = lb.backend_mut(&pool_name, addr) {
                b.weight = old;
            }
        })?;
        log::info!(
            event = "weight",
            pool = pool_name,
            backend:% = addr,
            from = old,
            to = weight;
            "pool {pool_name}: backend {addr} weight {old} -> {weight}"
        );
        Ok(())
    }

    /// Where backend `addr` is in pool `pool` (which the caller resolved).
    fn backend_index(&self, pool: &str, addr: SocketAddr) -> Result<usize, BalancerError> {
        self.pools[pool]
            .backends
            .iter()
            .position(|b| b.addr == addr)
            .ok_or_else(|| BalancerError::UnknownBackend {
                pool: pool.to_string(),
                backend: addr,
            })
    }

    fn pool_mut(&mut self, pool: &str) -> &mut Pool {
        self.pools.get_mut(pool).expect("caller resolved the pool")
    }

    fn backend_mut(&mut self, pool: &str, addr: SocketAddr) -> Option<&mut PoolBackend> {
        self.pools
            .get_mut(pool)?
            .backends
            .iter_mut()
            .find(|b| b.addr == addr)
    }
}

fn check_weight(weight: u32, pool: &str, addr: SocketAddr) -> Result<(), BalancerError> {
    if weight > MAX_WEIGHT {
        return Err(BalancerError::Invalid {
            what: "weight",
            why: format!("{weight} for backend {addr} in pool {pool:?} (0..={MAX_WEIGHT})"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
