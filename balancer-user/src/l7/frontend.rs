//! The HTTP side of the agent: the configuration's HTTP VIPs served by one [`Proxy`], the
//! pools they use kept current by the agent ([`Frontend::update`]), and each VIP's address
//! made local when nothing else holds it. A reload swaps what changed
//! ([`Frontend::reconfigure`]): pools keep their backend sets and counters of requests in
//! progress, VIPs keep their listeners.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::balance::{default_cookie_id, Backend, BackendSet, PoolBalance, PoolSelector};
use super::proxy::{HttpVipSpec, Proxy};
use super::rules::Rules;
use crate::api::HttpVipStatus;
use crate::config::{Config, VipMode};
use crate::sys;

/// What the agent holds while HTTP VIPs run.
pub struct Frontend {
    proxy: Proxy,
    pools: Arc<HashMap<String, Arc<PoolSelector>>>,
    balance: HashMap<String, PoolBalance>,
    /// What the configuration says of each backend: (pool, backend) -> (cookie id, maxconn).
    backend_settings: HashMap<(String, SocketAddr), (String, u32)>,
    /// The usable backends last given to each pool, so that an unchanged set is not rebuilt.
    last: HashMap<String, Vec<(SocketAddr, u32)>>,
    /// VIP addresses this agent put on `lo`, removed at shutdown.
    added: Vec<IpAddr>,
}

impl Frontend {
    /// Starts the proxy for the configuration's HTTP VIPs; `None` without any. Pools start
    /// empty: the agent gives them their usable backends at once ([`Frontend::update`]).
    ///
    /// # Errors
    /// A listener that cannot be bound, or a VIP address that cannot be made local.
    pub async fn start(config: &Config) -> anyhow::Result<Option<Frontend>> {
        let plan = Plan::new(config, &HashMap::new());
        if plan.specs.is_empty() {
            return Ok(None);
        }
        let added = make_local(config, &plan.addresses, &[]).await?;
        let pools = Arc::new(plan.selectors);
        let proxy = Proxy::start(plan.specs, &pools)?;
        Ok(Some(Frontend {
            proxy,
            pools,
            balance: plan.balance,
            backend_settings: plan.backend_settings,
            last: HashMap::new(),
            added,
        }))
    }

    /// Serves `config`'s HTTP VIPs from now on (see [`Proxy::reconfigure`]): pools that stay
    /// keep their backend sets (rebuilt when their balancing or a backend's `cookie` or
    /// `maxconn` changed), and every pool has its `usable` backends before the first
    /// request can reach it; VIP addresses are made local as at start.
    ///
    /// # Errors
    /// A new VIP's listener that cannot be bound, or its address made local.
    pub async fn reconfigure(
        &mut self,
        config: &Config,
        usable: impl Fn(&str) -> Vec<(SocketAddr, u32)>,
    ) -> anyhow::Result<()> {
        let plan = Plan::new(config, &self.pools);
        let added = make_local(config, &plan.addresses, &self.added).await?;
        self.added.extend(added);
        for (pool, balance) in &plan.balance {
            if self.balance.get(pool) != Some(balance) {
                self.last.remove(pool);
            }
        }
        for (key, settings) in &plan.backend_settings {
            if self.backend_settings.get(key) != Some(settings) {
                self.last.remove(&key.0);
            }
        }
        self.last
            .retain(|pool, _| plan.selectors.contains_key(pool));
        self.pools = Arc::new(plan.selectors);
        self.balance = plan.balance;
        self.backend_settings = plan.backend_settings;
        let pools: Vec<String> = self.pools.keys().cloned().collect();
        for pool in pools {
            self.update(&pool, usable(&pool));
        }
        self.proxy.reconfigure(plan.specs, &self.pools)
    }

    /// The pools HTTP VIPs use.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// Pool `pool`'s usable backends are now `usable` (address, weight); nothing happens
    /// when they are as last given.
    pub fn update(&mut self, pool: &str, usable: Vec<(SocketAddr, u32)>) {
        if self.last.get(pool) == Some(&usable) {
            return;
        }
        let (Some(selector), Some(balance)) = (self.pools.get(pool), self.balance.get(pool)) else {
            return;
        };
        let backends: Vec<Backend> = usable
            .iter()
            .map(|&(addr, weight)| {
                let (cookie_id, maxconn) = self
                    .backend_settings
                    .get(&(pool.to_owned(), addr))
                    .cloned()
                    .unwrap_or_else(|| (default_cookie_id(addr), 0));
                Backend {
                    addr,
                    weight,
                    cookie_id,
                    maxconn,
                }
            })
            .collect();
        log::debug!("http pool {pool}: {} usable backend(s)", backends.len());
        selector.set_backends(backends, balance);
        self.last.insert(pool.to_owned(), usable);
    }

    /// Every HTTP VIP's counters.
    pub fn status(&self) -> Vec<HttpVipStatus> {
        self.proxy.status()
    }

    /// Stops accepting, drains the requests in flight, and takes back the addresses it
    /// added.
    pub async fn shutdown(self) {
        let drain = self.proxy.drain_timeout();
        let listeners = self.proxy.listeners();
        let started = tokio::time::Instant::now();
        self.proxy.shutdown().await;
        // An address taken away strands the answers still queued in the kernel for it:
        // wait (within the drain timeout) until they are delivered.
        if !self.added.is_empty() {
            let sending = || {
                listeners
                    .iter()
                    .filter(|l| self.added.contains(&l.ip()))
                    // HTTP VIPs are IPv4 only (the configuration refuses IPv6 ones).
                    .filter_map(|l| match l {
                        SocketAddr::V4(v4) => Some(sys::tcp_sockets_sending(*v4).unwrap_or(0)),
                        SocketAddr::V6(_) => None,
                    })
                    .sum::<usize>()
            };
            while sending() > 0 && started.elapsed() < drain {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        for address in self.added {
            if let Err(e) = sys::set_address(LOOPBACK, &host_prefix(address), false).await {
                log::warn!("removing HTTP VIP address {address} from {LOOPBACK}: {e}");
            }
        }
    }
}

/// What the proxy serves for a configuration.
struct Plan {
    specs: Vec<HttpVipSpec>,
    /// Every pool a rule or a default names; those of `existing` are kept.
    selectors: HashMap<String, Arc<PoolSelector>>,
    balance: HashMap<String, PoolBalance>,
    backend_settings: HashMap<(String, SocketAddr), (String, u32)>,
    addresses: Vec<IpAddr>,
}

impl Plan {
    fn new(config: &Config, existing: &HashMap<String, Arc<PoolSelector>>) -> Plan {
        let mut plan = Plan {
            specs: Vec::new(),
            selectors: HashMap::new(),
            balance: HashMap::new(),
            backend_settings: HashMap::new(),
            addresses: Vec::new(),
        };
        for vip in config.vips.iter().filter(|v| v.mode == VipMode::Http) {
            let rules = Rules::new(vip.rules.clone(), vip.pool.clone());
            let mut rule_names: Vec<(String, String)> = vip
                .rules
                .iter()
                .map(|r| (r.name.clone(), r.pool.clone()))
                .collect();
            rule_names.push(("default".to_owned(), vip.pool.clone()));
            for (_, pool) in &rule_names {
                if plan.selectors.contains_key(pool) {
                    continue;
                }
                let pool_config = config.pool(pool);
                let pool_balance = pool_config.map(|p| p.balance.clone()).unwrap_or_default();
                for backend in pool_config.iter().flat_map(|p| &p.backends) {
                    plan.backend_settings.insert(
                        (pool.clone(), backend.socket_addr()),
                        (backend.cookie_id(), backend.maxconn),
                    );
                }
                let selector = existing.get(pool).map_or_else(
                    || Arc::new(PoolSelector::new(BackendSet::new([], &pool_balance))),
                    Arc::clone,
                );
                plan.selectors.insert(pool.clone(), selector);
                plan.balance.insert(pool.clone(), pool_balance);
            }
            plan.specs.push(HttpVipSpec {
                name: vip.name.clone(),
                listen: vip.socket_addr(),
                rules,
                rule_names,
                settings: config.http.clone(),
            });
            plan.addresses.push(vip.address);
        }
        plan
    }
}

const LOOPBACK: &str = "lo";

/// `address` alone, as `ip address` takes it: `ADDRESS/32` or `ADDRESS/128`.
fn host_prefix(address: IpAddr) -> String {
    let bits = if address.is_ipv4() { 32 } else { 128 };
    format!("{address}/{bits}")
}

/// Puts each VIP address that is on no interface and that no VRRP instance moves on `lo`,
/// so that the host accepts its packets; returns those it added (besides `added` before).
async fn make_local(
    config: &Config,
    addresses: &[IpAddr],
    added_before: &[IpAddr],
) -> anyhow::Result<Vec<IpAddr>> {
    let floating = |a: IpAddr| {
        config
            .vrrp
            .iter()
            .flat_map(|i| &i.addresses)
            .any(|v| v.address == a)
    };
    let mut added = Vec::new();
    for &address in addresses {
        if added.contains(&address)
            || added_before.contains(&address)
            || floating(address)
            || sys::is_local(address)?
        {
            continue;
        }
        sys::set_address(LOOPBACK, &host_prefix(address), true).await?;
        log::info!("HTTP VIP address {address} added to {LOOPBACK} (removed when the agent stops)");
        added.push(address);
    }
    Ok(added)
}
