//! Pools whose backends come from etcd: the agent starts a watcher per such pool (again
//! when a reload changes its settings) and applies each backend set a watcher sends as a
//! difference through `lb` (added, removed, weight changed), so that unchanged backends
//! keep their flows and health. Backends added otherwise (the CLI) are left alone. The
//! sets already queued when the agent takes one are coalesced ([`newest_sets`]): only each
//! watcher's newest is applied, so a burst rebuilds each ring once, not once per stale set.

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

/// `first`, and the sets queued behind it on `queued` when called, keeping only the newest
/// of each watcher (a set is whole, so a newer one makes the older stale), in the order
/// each watcher first appears. (Only those already queued: a watcher that keeps sending
/// cannot hold the agent's loop here.)
pub fn newest_sets(first: Update, queued: &mut mpsc::Receiver<Update>) -> Vec<Update> {
    let mut sets = vec![first];
    for _ in 0..queued.len() {
        let Ok(update) = queued.try_recv() else {
            break;
        };
        match sets
            .iter_mut()
            .find(|s| s.pool == update.pool && s.watcher == update.watcher)
        {
            Some(older) => *older = update,
            None => sets.push(update),
        }
    }
    sets
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

    /// Applies the sets watchers sent (each ignored if its watcher was replaced since).
    pub(super) fn discovered(&mut self, updates: &[Update]) {
        let mut applied = false;
        for update in updates {
            let current = self.discovery.watchers.get(&update.pool).map(|w| w.id);
            if current == Some(update.watcher) {
                self.apply_discovered(&update.pool, &update.backends);
                applied = true;
            }
        }
        if applied {
            self.sync_all();
        }
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
                        address: addr.ip(),
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
                if applied.contains_key(&b.socket_addr()) {
                    b.source = Source::Etcd;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        ops::ControlFlow,
    };

    use balancer_common::PROTO_TCP;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        agent::events::Event,
        config,
        dataplane::{AnyVipKey, FakeMaps},
        health::Checker,
        lb::Balancer,
    };

    /// Pool "web" from etcd (nothing listens there: the test sends the sets itself)
    /// behind a Maglev VIP.
    const CONFIG: &str = r#"
[agent]
interfaces = ["lbc0"]
[nat]
source_address = "10.0.2.1"
[[pool]]
name = "web"
discovery = { etcd = { endpoints = ["http://127.0.0.1:9"], prefix = "/services/web/" } }
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"
"#;

    /// An agent with `CONFIG`'s watcher and the channel its sets come on.
    fn agent() -> (
        Agent<FakeMaps>,
        mpsc::Sender<Update>,
        mpsc::Receiver<Update>,
    ) {
        let config = config::parse(CONFIG, "test.toml").unwrap();
        let lb = Balancer::from_config(FakeMaps::default(), &config).unwrap();
        let (health, _) = mpsc::channel(1);
        let mut agent = Agent::new(lb, Checker::new(health), None, None);
        let (tx, rx) = mpsc::channel(64);
        agent.start_discovery(&config, tx.clone());
        (agent, tx, rx)
    }

    /// Backends 10.0.2.`first`.. (`n` of them) on port 80.
    fn set(pool: &str, watcher: u64, first: u8, n: u8) -> Update {
        let backends = (first..first + n)
            .map(|i| (SocketAddr::from((Ipv4Addr::new(10, 0, 2, i), 80)), 1))
            .collect();
        Update {
            pool: pool.into(),
            watcher,
            backends,
        }
    }

    fn web_ring(agent: &Agent<FakeMaps>) -> Vec<u32> {
        agent.lb.maps().active_ring(&AnyVipKey::new(
            Ipv4Addr::new(10, 0, 100, 1).into(),
            80,
            PROTO_TCP,
        ))
    }

    #[test]
    fn only_the_newest_queued_set_of_each_watcher_is_kept() {
        let (tx, mut rx) = mpsc::channel(64);
        for k in 1..=20 {
            tx.try_send(set("web", 1, k, 3)).unwrap();
            tx.try_send(set("db", 2, k, 2)).unwrap();
        }
        // A replaced watcher's set is kept apart (the agent ignores it).
        tx.try_send(set("web", 0, 200, 1)).unwrap();
        let first = rx.try_recv().unwrap();
        let sets = newest_sets(first, &mut rx);
        assert_eq!(
            sets,
            vec![
                set("web", 1, 20, 3),
                set("db", 2, 20, 2),
                set("web", 0, 200, 1)
            ]
        );
        assert!(rx.try_recv().is_err(), "a queued set was left behind");
        // Nothing queued behind it: the set alone.
        assert_eq!(
            newest_sets(set("web", 1, 7, 1), &mut rx),
            vec![set("web", 1, 7, 1)]
        );
    }

    /// A burst of sets costs the agent what the last set alone costs: one ring build,
    /// and the same balancer.
    #[tokio::test]
    async fn a_burst_of_sets_is_applied_once_and_ends_with_the_last() {
        const BURST: u8 = 50;
        let (mut burst, tx, mut rx) = agent();
        let watcher = burst.discovery.watchers["web"].id;
        for k in 1..=BURST {
            tx.try_send(set("web", watcher, k, 4)).unwrap();
        }
        let first = rx.try_recv().unwrap();
        let sets = newest_sets(first, &mut rx);
        assert_eq!(sets, vec![set("web", watcher, BURST, 4)]);
        let writes = burst.lb.maps().ring_writes;
        let flow = burst.handle(Event::Discovery(sets)).await;
        assert_eq!(flow, ControlFlow::Continue(()));

        let (mut last, _, _) = agent();
        assert_eq!(last.lb.maps().ring_writes, writes);
        last.discovered(&[set("web", last.discovery.watchers["web"].id, BURST, 4)]);
        assert_eq!(
            burst.lb.maps().ring_writes,
            last.lb.maps().ring_writes,
            "the burst wrote more ring slots than its last set alone"
        );
        assert_eq!(burst.discovery.applied, last.discovery.applied);
        assert_eq!(
            burst.discovery.applied["web"],
            set("web", watcher, BURST, 4).backends
        );
        let ring = web_ring(&burst);
        assert_eq!(ring.len(), 65537);
        assert_eq!(ring, web_ring(&last));
    }
}
