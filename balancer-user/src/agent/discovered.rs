//! Pools whose backends come from etcd: the agent starts a watcher per such pool (again
//! when a reload changes its settings) and applies each backend set a watcher sends as a
//! difference through `lb` (added, removed, weight changed), so that unchanged backends
//! keep their flows and health. Backends added otherwise (the CLI) are left alone.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use super::events::Agent;
use crate::{
    api::{Source, Status},
    config::{BackendConfig, Config, PoolConfig},
    dataplane::Maps,
    discovery::{Backends, EtcdConfig, Update, Watcher},
};

/// The agent's watchers and what each last applied.
#[derive(Debug, Default)]
pub struct Discovered {
    updates: Option<mpsc::Sender<Update>>,
    watchers: BTreeMap<String, Watcher>,
    /// Per pool: the backends applied from its prefix.
    applied: BTreeMap<String, Backends>,
    next_id: u64,
}

impl<M: Maps> Agent<M> {
    /// Watches the prefixes of `config`'s pools; their sets come to `updates` (and must be
    /// handed to [`Agent::discovered`]).
    pub fn start_discovery(&mut self, config: &Config, updates: mpsc::Sender<Update>) {
        self.discovery.updates = Some(updates);
        self.sync_watchers(config);
    }

    /// Starts, restarts (changed settings) or stops (gone) the watchers to match `config`.
    /// A pool that no longer has discovery loses the backends it had from it.
    pub(super) fn sync_watchers(&mut self, config: &Config) {
        let Some(updates) = self.discovery.updates.clone() else {
            return;
        };
        let wanted: BTreeMap<&str, &EtcdConfig> = config
            .pools
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.discovery.as_ref()?)))
            .collect();
        let gone: Vec<String> = self
            .discovery
            .watchers
            .iter()
            .filter(|(pool, w)| wanted.get(pool.as_str()) != Some(&&w.config))
            .map(|(pool, _)| pool.clone())
            .collect();
        for pool in gone {
            self.discovery.watchers.remove(&pool);
            if !wanted.contains_key(pool.as_str()) {
                log::info!("pool {pool}: discovery stopped");
                if config.pool(&pool).is_some() {
                    self.apply_discovered(&pool, &Backends::new());
                }
                self.discovery.applied.remove(&pool);
            }
        }
        for (pool, etcd) in wanted {
            if !self.discovery.watchers.contains_key(pool) {
                self.discovery.next_id += 1;
                let watcher = Watcher::start(pool, etcd, self.discovery.next_id, updates.clone());
                self.discovery.watchers.insert(pool.to_owned(), watcher);
            }
        }
    }

    /// Applies a set a watcher sent (ignored if that watcher was replaced since).
    pub(super) fn discovered(&mut self, update: &Update) {
        let current = self.discovery.watchers.get(&update.pool).map(|w| w.id);
        if current != Some(update.watcher) {
            return;
        }
        self.apply_discovered(&update.pool, &update.backends);
        self.sync_all();
    }

    /// Makes the backends `pool` has from its prefix `backends`: the difference with what
    /// was applied goes through `lb`; a step that fails is logged and retried with the
    /// next set (what was applied is what the balancer holds).
    fn apply_discovered(&mut self, pool: &str, backends: &Backends) {
        let Some(check) = self.pool_check(pool) else {
            return;
        };
        let applied = self.discovery.applied.entry(pool.to_owned()).or_default();
        let before = applied.clone();
        for addr in before.keys().filter(|a| !backends.contains_key(a)) {
            match self.lb.del_backend(pool, *addr) {
                Ok(()) => {
                    applied.remove(addr);
                }
                Err(e) => log::error!("pool {pool}: etcd: removing backend {addr}: {e}"),
            }
        }
        for (&addr, &weight) in backends {
            let result = match before.get(&addr) {
                Some(&old) if old == weight => continue,
                Some(_) => self.lb.set_weight(pool, addr, weight),
                None => {
                    let backend = BackendConfig {
                        address: *addr.ip(),
                        port: addr.port(),
                        weight,
                        check: check.clone(),
                        cookie: None,
                        maxconn: 0,
                    };
                    self.lb.add_discovered_backend(pool, &backend)
                }
            };
            match result {
                Ok(()) => {
                    applied.insert(addr, weight);
                }
                Err(e) => log::error!("pool {pool}: etcd: backend {addr}: {e}"),
            }
        }
    }

    /// The check of `pool`'s backends (the running configuration's), `None` without the
    /// pool.
    fn pool_check(&self, pool: &str) -> Option<crate::health::config::CheckConfig> {
        let from_config = self
            .live
            .as_ref()
            .and_then(|l| l.running().pool(pool))
            .map(|p: &PoolConfig| p.check.clone());
        from_config.or_else(|| {
            self.lb
                .pool_names()
                .any(|p| p == pool)
                .then(Default::default)
        })
    }

    /// Says in `status` which backends come from etcd, and how each watch stands.
    pub(super) fn set_discovery_status(&self, status: &mut Status) {
        for pool in &mut status.pools {
            if let Some(w) = self.discovery.watchers.get(&pool.name) {
                pool.discovery = Some(w.status());
            }
            let Some(applied) = self.discovery.applied.get(&pool.name) else {
                continue;
            };
            for b in &mut pool.backends {
                if applied.contains_key(&std::net::SocketAddrV4::new(b.address, b.port)) {
                    b.source = Source::Etcd;
                }
            }
        }
    }
}
