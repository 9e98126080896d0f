//! The agent's one loop body: every change to the data plane arrives as an [`Event`], and
//! [`Agent::handle`] applies them one at a time. The agent is the only writer of the maps;
//! subsystems (the control server, the health checker, signals; later discovery and
//! VRRP) only send events. A reload (SIGHUP, `balancer reload`) is applied here too
//! (`live.rs`).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    ops::ControlFlow,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    discovered::Discovered,
    flowsync::{Round, SyncNode},
    links::LinkEvent,
    live::Live,
};
use crate::{
    api::{Request, Response},
    config::Host,
    dataplane::{links::Links, Maps, MapsError},
    discovery::Update,
    health::{config::CheckConfig, Checker, HealthEvent},
    l7::Frontend,
    lb::{Balancer, BalancerError, FlowCensus},
    sync::{Applied, Delivery, Outbox},
    vrrp::{Snapshot, TrackTarget, Vrrp},
};

/// Something that happened, for the agent to apply.
#[derive(Debug)]
pub enum Event {
    /// A control-socket request, and where its answer goes.
    Control {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    /// A health check result (sent only when a backend's outcome changes).
    Health(HealthEvent),
    /// A signal asked the agent to stop.
    Stop { signal: &'static str },
    /// A signal asked the agent to reload its configuration.
    Reload { signal: &'static str },
    /// The kernel said a link changed (one of ours, perhaps).
    Link(LinkEvent),
    /// Pools' etcd prefixes hold new backend sets (the newest of each watcher's queued
    /// sets, see [`super::discovered::newest_sets`]).
    Discovery(Vec<Update>),
    /// Periodic work ([`SAMPLE_EVERY`]): the backends' SNAT use is sampled, and a census
    /// of the connection table started (unless one runs).
    Tick,
    /// A census of the connection table ended (see [`crate::lb::Census`]).
    FlowCensus(Result<FlowCensus, MapsError>),
    /// Flow sync's interval passed: a Master walks its table for what to send.
    SyncTick,
    /// A flow-sync walk ended (just before its census's [`Event::FlowCensus`]).
    SyncRound(Box<Round>),
    /// A peer's flows, or its request for a full resync, passed flow sync's checks.
    Sync(Delivery),
    /// Received flows were written (per peer: what became of them).
    SyncApplied(Result<std::collections::BTreeMap<IpAddr, Applied>, MapsError>),
}

/// How often the agent samples what it estimates from counters (the SNAT ports' use) and
/// counts the active flows.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The agent's state: the balancer (which owns the maps), the health checks it runs, and
/// the VRRP instances whose tracked VIPs it watches.
pub struct Agent<M: Maps> {
    pub(super) lb: Balancer<M>,
    checker: Checker,
    /// The checks running: (pool, backend) -> the check.
    checked: HashMap<(String, SocketAddr), CheckConfig>,
    pub(super) vrrp: Option<Vrrp>,
    /// The VIPs VRRP instances track, and whether each was last said to be up.
    vip_tracks: Vec<(String, Option<bool>)>,
    /// The HTTP VIPs' proxy, whose pools follow the balancer's backends.
    pub(super) http: Option<Frontend>,
    /// Reads the host's addresses, which `vip add` and `backend add` are checked against.
    pub(super) read_host: fn() -> io::Result<Host>,
    /// The configured interfaces and the program on each (none in unit tests).
    links: Option<Links>,
    /// Whether VRRP's `data_plane` tracks were last told the program is attached
    /// everywhere.
    data_plane_said: Option<bool>,
    /// The configuration file and what runs of it (`None` in tests that have none).
    pub(super) live: Option<Live>,
    /// The pools whose backends come from etcd.
    pub(super) discovery: Discovered,
    /// Where a census of the connection table sends its outcome (none: no census).
    pub(super) events: Option<mpsc::Sender<Event>>,
    /// A census (or flow sync's walk, which is one) runs: at most one at a time.
    pub(super) census_running: bool,
    /// Flow sync with the VRRP peers, when configured.
    pub(super) sync: Option<SyncNode>,
}

impl<M: Maps> Agent<M> {
    /// Starts the checks of every checked backend of `lb`, and tells the VRRP instances how
    /// their tracked VIPs are.
    pub fn new(
        lb: Balancer<M>,
        checker: Checker,
        vrrp: Option<Vrrp>,
        http: Option<Frontend>,
    ) -> Self {
        let mut agent = Agent {
            lb,
            checker,
            checked: HashMap::new(),
            vrrp: None,
            vip_tracks: Vec::new(),
            http,
            read_host: Host::read,
            links: None,
            data_plane_said: None,
            live: None,
            discovery: Discovered::default(),
            events: None,
            census_running: false,
            sync: None,
        };
        agent.set_vrrp(vrrp);
        agent.sync_all();
        agent
    }

    /// The agent runs `live`'s configuration (what `reload` reads again).
    #[must_use]
    pub fn with_config(mut self, live: Live) -> Self {
        self.live = Some(live);
        self
    }

    /// The VRRP instances are now `vrrp`'s: they are told how their tracked VIPs are.
    pub(super) fn set_vrrp(&mut self, vrrp: Option<Vrrp>) {
        self.vip_tracks = vrrp.as_ref().map_or_else(Vec::new, |v| {
            v.tracked_vips()
                .iter()
                .map(|vip| (vip.clone(), None))
                .collect()
        });
        self.vrrp = vrrp;
        self.sync_tracks();
    }

    /// Brings the checks, VRRP's tracks and the HTTP pools in step with the balancer.
    pub(super) fn sync_all(&mut self) {
        self.sync_checks();
        self.sync_tracks();
        self.sync_http();
    }

    /// The agent counts the active flows, each census sending its outcome to `events` (the
    /// loop's own channel) as an [`Event::FlowCensus`].
    #[must_use]
    pub fn with_events(mut self, events: mpsc::Sender<Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// The agent syncs its flows with its VRRP peers through `sync`.
    #[must_use]
    pub(super) fn with_sync(mut self, sync: Option<SyncNode>) -> Self {
        self.sync = sync;
        self
    }

    /// The agent with its interfaces, which it then follows (see [`Event::Link`]).
    #[must_use]
    pub fn with_links(mut self, links: Links) -> Self {
        self.links = Some(links);
        self.sync_data_plane();
        self
    }

    /// Applies one event; `Break` when the agent must stop.
    pub async fn handle(&mut self, event: Event) -> ControlFlow<()> {
        match event {
            Event::Control {
                request: Request::Reload,
                reply,
            } => {
                let response = match self.reload().await {
                    Ok(_) => self.answer(true),
                    Err(e) => Response::error(e),
                };
                let _ = reply.send(response);
            }
            Event::Control { request, reply } => {
                let started = std::time::Instant::now();
                let what = format!("{request:?}");
                let response = self.apply(&request);
                log::debug!("control request applied in {:?}: {what}", started.elapsed());
                self.sync_all();
                let changed =
                    response.ok && !matches!(request, Request::Status | Request::ConfigDump);
                let _ = reply.send(response);
                // After the answer: the CLI waits for the maps, not for the disk.
                if let (Some(live), true) = (&self.live, changed) {
                    live.save();
                }
            }
            Event::Health(event) => {
                if let Err(e) = self.lb.record_health(&event) {
                    log::error!(
                        event = "health",
                        pool = event.pool.as_str(),
                        backend:% = event.backend,
                        error:% = e;
                        "pool {}: backend {}: applying health {:?}: {e}",
                        event.pool,
                        event.backend,
                        event.health
                    );
                }
                self.sync_tracks();
                self.sync_http();
            }
            Event::Stop { signal } => {
                log::info!("{signal}: stopping");
                return ControlFlow::Break(());
            }
            Event::Reload { signal } => {
                log::info!("{signal}: reloading the configuration");
                // (The outcome is logged and kept for `status`.)
                let _ = self.reload().await;
            }
            Event::Discovery(updates) => self.discovered(&updates),
            Event::Tick => {
                if let Err(e) = self.lb.sample_snat_use() {
                    log::warn!("cannot sample the backends' SNAT use: {e}");
                }
                self.start_walk(None);
            }
            Event::FlowCensus(result) => {
                self.census_running = false;
                self.lb.record_census(result);
            }
            Event::SyncTick => self.sync_tick(),
            Event::SyncRound(round) => self.sync_round(*round),
            Event::Sync(delivery) => self.sync_delivery(delivery),
            Event::SyncApplied(result) => self.sync_applied(result),
            Event::Link(event) => {
                if let Some(links) = &mut self.links {
                    let changed = match &event {
                        LinkEvent::Changed(message) => links.changed(message),
                        LinkEvent::Lost => links.resync(),
                    };
                    if changed {
                        self.sync_data_plane();
                    }
                    // (Also when only an interface's operational state changed.)
                    self.hold_checks();
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Stops the VRRP instances (Masters resign with priority 0 and remove their addresses),
    /// waiting at most `limit`, and returns the balancer.
    pub async fn stop(self, limit: std::time::Duration) -> Balancer<M> {
        // Resign first, so that the Backup takes new connections while ours drain.
        if let Some(vrrp) = self.vrrp {
            vrrp.shutdown(limit).await;
        }
        if let Some(http) = self.http {
            http.shutdown().await;
        }
        // Detaches the program where its links are not kept.
        drop(self.links);
        self.lb
    }

    /// Starts a census of the connection table on a blocking thread (reading a full table
    /// takes a while, and only reads), unless one runs or the last took long enough to
    /// skip this tick; its outcome comes back as an [`Event::FlowCensus`], whatever
    /// becomes of the thread. With flow sync's `outbox`, the same walk finds what to send
    /// the peers, which comes back before it as an [`Event::SyncRound`] with the outbox
    /// (a walk that does not start gives the outbox back at once).
    pub(super) fn start_walk(&mut self, outbox: Option<Outbox>) {
        let Some(events) = &self.events else {
            return;
        };
        // (Flow sync paces its own walks: see `flowsync::BUSY_SHARE`.)
        let skip = self.census_running
            || (outbox.is_none() && !self.lb.census_due(std::time::Instant::now()));
        if skip {
            // (Flow sync tries again at its next interval.)
            if let (Some(outbox), Some(node)) = (outbox, &mut self.sync) {
                node.give_back(outbox);
            }
            return;
        }
        self.census_running = true;
        let census = self.lb.census();
        let events = events.clone();
        tokio::spawn(async move {
            let walk = tokio::task::spawn_blocking(move || match outbox {
                None => (census.take(), None),
                Some(mut outbox) => {
                    let started = std::time::Instant::now();
                    let settings = *census.table().1;
                    let mut round = outbox.round(settings, started);
                    let result =
                        census.take_with(&mut |now, key, conn| round.visit(now, key, conn));
                    let full = round.is_full();
                    let records = round.finish();
                    let round = Round {
                        failed: result.is_err(),
                        outbox,
                        records,
                        full,
                        took: started.elapsed(),
                    };
                    (result, Some(Box::new(round)))
                }
            })
            .await;
            let (result, round) = walk.unwrap_or_else(|e| {
                let failed = Err(MapsError::Other {
                    map: balancer_common::map_names::CONNS,
                    message: format!("the census thread failed: {e}"),
                });
                (failed, None)
            });
            // The round first: flow sync has its outbox back before the census ends the
            // walk (a sync tick in between finds the walk still running). (Closed: the
            // agent is stopping.)
            if let Some(round) = round {
                let _ = events.send(Event::SyncRound(round)).await;
            }
            let _ = events.send(Event::FlowCensus(result)).await;
        });
    }

    /// Tells VRRP instances that track the data plane whether the program is attached to
    /// every interface, when that changed: a Master that lost an interface hands over.
    fn sync_data_plane(&mut self) {
        let (Some(vrrp), Some(links)) = (&self.vrrp, &self.links) else {
            return;
        };
        let up = links.all_attached();
        if self.data_plane_said == Some(up) || !vrrp.tracks(&TrackTarget::DataPlane) {
            return;
        }
        if up {
            log::info!("data plane: XDP attached to every interface");
        } else {
            log::error!(
                "data plane: XDP no longer attached to {}: the interface is gone, not there \
                 yet or refused the program",
                links.not_attached().join(", ")
            );
        }
        vrrp.track(TrackTarget::DataPlane, up);
        self.data_plane_said = Some(up);
    }

    /// Holds the health checks' failures while an interface of the balancer is gone (see
    /// [`Checker::hold_failures`]), saying so when that changes.
    fn hold_checks(&mut self) {
        let Some(links) = &self.links else {
            return;
        };
        let lost = links.lost();
        if self.checker.hold_failures(!lost.is_empty()) {
            if lost.is_empty() {
                log::info!("health checks: failures count again");
            } else {
                log::warn!(
                    "health checks: failures do not count while {} is gone or down                      (backends keep their state)",
                    lost.join(", ")
                );
            }
        }
    }

    /// Gives the HTTP proxy's pools the backends that take new requests, when they changed.
    fn sync_http(&mut self) {
        let Some(http) = &mut self.http else {
            return;
        };
        let pools: Vec<String> = http.pools().map(str::to_owned).collect();
        for pool in pools {
            let usable = self.lb.usable_backends_of(&pool).unwrap_or_default();
            http.update(&pool, usable);
        }
    }

    /// Tells each VRRP instance that tracks a VIP whether the VIP can take new flows, when
    /// that changed.
    fn sync_tracks(&mut self) {
        let Some(vrrp) = &self.vrrp else {
            return;
        };
        for (vip, said) in &mut self.vip_tracks {
            let up = self.lb.usable_backends(vip).is_some_and(|n| n > 0);
            if *said != Some(up) {
                *said = Some(up);
                vrrp.track(TrackTarget::Vip(vip.clone()), up);
            }
        }
    }

    /// This host's addresses, for the checks of `vip add` and `backend add`, with those
    /// the agent puts there itself (its VRRP instances' and HTTP VIPs'); `None`, with a
    /// warning, when they cannot be read.
    pub(super) fn host(&self) -> Option<Host> {
        let host = (self.read_host)()
            .inspect_err(|e| {
                log::warn!("cannot list this host's addresses to check a request: {e}");
            })
            .ok()?;
        let vrrp: Vec<IpAddr> = self
            .vrrp
            .iter()
            .flat_map(|v| {
                v.status()
                    .iter()
                    .flat_map(|s| &s.addresses)
                    // "ADDRESS/PREFIX".
                    .filter_map(|a| a.split('/').next()?.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        let http = self
            .http
            .iter()
            .flat_map(|h| h.status().into_iter().map(|v| v.listen.ip()));
        Some(host.with_ours(vrrp.into_iter().chain(http)))
    }

    /// Applies one control request and answers with the status after it.
    fn apply(&mut self, request: &Request) -> Response {
        let host = match request {
            Request::VipAdd { .. } | Request::BackendAdd { .. } => self.host(),
            _ => None,
        };
        let host = host.as_ref();
        let lb = &mut self.lb;
        let change = !matches!(request, Request::Status | Request::ConfigDump);
        let result: Result<(), BalancerError> = match request {
            Request::Status | Request::ConfigDump => Ok(()),
            Request::VipAdd { vip } => lb
                .check_new_vip(vip, host)
                .and_then(|()| lb.add_vip(vip.clone()))
                .inspect(|()| {
                    // Perhaps the first IPv6 VIP (the file had none).
                    if let Some(links) = self.links.as_ref().filter(|_| vip.address.is_ipv6()) {
                        let names: Vec<String> =
                            links.status().into_iter().map(|i| i.name).collect();
                        super::host::enable_ipv6_forwarding(&names);
                    }
                }),
            Request::VipDel { name } => lb.del_vip(name),
            Request::BackendAdd {
                target,
                address,
                weight,
            } => lb
                .check_new_backend(target, *address, host)
                .and_then(|()| lb.add_backend(target, *address, *weight)),
            Request::BackendDel { target, address } => lb.del_backend(target, *address),
            Request::BackendWeight {
                target,
                address,
                weight,
            } => lb.set_weight(target, *address, *weight),
            Request::PoolAdd { name } => lb.create_pool(name),
            Request::PoolDel { name } => {
                // (The balancer knows an HTTP VIP's default pool, not its rules'.)
                let rule = self.live.as_ref().and_then(|live| live.rule_using(name));
                match rule {
                    Some(vip) => Err(BalancerError::Invalid {
                        what: "pool deletion",
                        why: format!("pool {name:?} is used by a rule of HTTP VIP {vip:?}"),
                    }),
                    None => lb.del_pool(name),
                }
            }
            Request::Reload => unreachable!("a reload is handled by `handle`"),
        };
        if let Err(e) = result {
            return Response::error(e.to_string());
        }
        if let (Some(live), true) = (&mut self.live, change) {
            live.record(request);
        }
        let mut response = self.answer(change);
        if *request == Request::ConfigDump {
            let dump = self.live.as_ref().map(Live::dump);
            match (dump, &mut response.status) {
                (Some(Ok(text)), Some(status)) => {
                    if let Some(config) = &mut status.config {
                        config.dump = Some(text);
                    }
                }
                (Some(Err(e)), _) => return Response::error(format!("config dump: {e}")),
                (None, _) => return Response::error("the agent runs without a configuration file"),
                (Some(Ok(_)), None) => {}
            }
        }
        response
    }

    /// The answer to a request carried out (`change`: one that changed something): the
    /// status after it.
    fn answer(&self, change: bool) -> Response {
        match self.lb.status() {
            Ok(mut status) => {
                if let Some(vrrp) = &self.vrrp {
                    status.vrrp = vrrp.status().iter().map(Snapshot::to_status).collect();
                }
                if let Some(http) = &self.http {
                    status.http = http.status();
                }
                if let Some(links) = &self.links {
                    status.interfaces = links.status();
                }
                if let Some(live) = &self.live {
                    live.set_sources(&mut status);
                    status.config = Some(live.status());
                }
                self.set_discovery_status(&mut status);
                status.sync = self.sync_status();
                Response {
                    ok: true,
                    error: None,
                    status: Some(status),
                }
            }
            // The change took effect: saying it was refused would be wrong.
            Err(e) if change => Response {
                ok: true,
                error: Some(format!("reading the status failed: {e}")),
                status: None,
            },
            Err(e) => Response::error(e.to_string()),
        }
    }

    /// Starts checks for backends that gained one, stops those of removed backends, and
    /// restarts those whose check changed (from the backend's current health).
    fn sync_checks(&mut self) {
        let wanted: HashMap<(String, SocketAddr), _> = self
            .lb
            .checks()
            .into_iter()
            .map(|(pool, addr, check, health)| ((pool, addr), (check, health)))
            .collect();
        for ((pool, addr), check) in &self.checked {
            if wanted.get(&(pool.clone(), *addr)).map(|(c, _)| c) != Some(check) {
                self.checker.stop(pool, *addr);
            }
        }
        for ((pool, addr), (check, health)) in &wanted {
            if self.checked.get(&(pool.clone(), *addr)) != Some(check) {
                if let Some(slot) = self.checker.start(pool, *addr, check, *health) {
                    self.lb.set_latest_slot(pool, *addr, slot);
                }
            }
        }
        self.checked = wanted
            .into_iter()
            .map(|(key, (check, _))| (key, check))
            .collect();
    }
}

#[cfg(test)]
mod tests;
