//! One HTTP VIP of the proxy: a version of its configuration ([`Vip`]), which a reload
//! replaces under its listener, and the listener task that serves the current one
//! ([`Running`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::{watch, Semaphore};

use super::{listen, serve, HttpVipSpec, ProxyBody, ProxySettings};
use crate::l7::balance::PoolSelector;
use crate::l7::rules::Rules;
use crate::l7::stats::VipCounters;

/// A running VIP, as one version of its configuration says (see [`Running`]).
pub(super) struct Vip {
    pub(super) name: String,
    pub(super) listen: SocketAddr,
    pub(super) rules: Rules,
    pub(super) rule_names: Vec<(String, String)>,
    pub(super) pools: Arc<HashMap<String, Arc<PoolSelector>>>,
    pub(super) settings: ProxySettings,
    /// Shared by every version of the VIP.
    pub(super) counters: Arc<VipCounters>,
    pub(super) client: Client<HttpConnector, ProxyBody>,
    pub(super) slots: Arc<Semaphore>,
}

impl Vip {
    /// The VIP `spec` describes; what `previous` (its version so far) has that `spec`
    /// leaves as it was (counters, backend connections, request slots) carries on.
    pub(super) fn new(
        spec: HttpVipSpec,
        pools: &Arc<HashMap<String, Arc<PoolSelector>>>,
        previous: Option<&Vip>,
    ) -> Vip {
        let counters = match previous {
            Some(p) => {
                if p.rule_names != spec.rule_names {
                    p.counters
                        .set_rules(spec.rule_names.len().saturating_sub(1));
                }
                Arc::clone(&p.counters)
            }
            None => Arc::new(VipCounters::new(spec.rule_names.len().saturating_sub(1))),
        };
        let client = match previous {
            Some(p) if p.settings.connect_timeout == spec.settings.connect_timeout => {
                p.client.clone()
            }
            _ => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(spec.settings.connect_timeout));
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    // Idle backend connections are kept a while and in bounded numbers:
                    // each holds buffers and a socket.
                    .pool_idle_timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(256)
                    .build(connector)
            }
        };
        let slots = match previous {
            Some(p) if p.settings.maxconn == spec.settings.maxconn => Arc::clone(&p.slots),
            _ => Arc::new(Semaphore::new(spec.settings.maxconn.max(1))),
        };
        Vip {
            counters,
            name: spec.name,
            listen: spec.listen,
            rules: spec.rules,
            rule_names: spec.rule_names,
            pools: Arc::clone(pools),
            slots,
            settings: spec.settings,
            client,
        }
    }
}

/// A VIP's listener task: the VIP's current version, swapped by a reload, and its own
/// stop (a VIP that a reload removes drains alone).
pub(super) struct Running {
    pub(super) vip: Arc<ArcSwap<Vip>>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(super) fn start(
        spec: HttpVipSpec,
        pools: &Arc<HashMap<String, Arc<PoolSelector>>>,
    ) -> anyhow::Result<Running> {
        let listener = listen(spec.listen).map_err(|e| {
            anyhow::anyhow!("vip {:?}: listening on {}: {e}", spec.name, spec.listen)
        })?;
        let vip = Arc::new(ArcSwap::from_pointee(Vip::new(spec, pools, None)));
        let (stop, stopped) = watch::channel(false);
        let current = vip.load();
        log::info!(
            "vip {}: HTTP proxy listening on {}",
            current.name,
            current.listen
        );
        let task = tokio::spawn(serve(Arc::clone(&vip), listener, stopped));
        Ok(Running { vip, stop, task })
    }
}
