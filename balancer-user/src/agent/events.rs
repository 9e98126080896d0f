//! The agent's one loop body: every change to the data plane arrives as an [`Event`], and
//! [`Agent::handle`] applies them one at a time. The agent is the only writer of the maps;
//! subsystems (the control server, the health checker, signals; later discovery and
//! VRRP) only send events. A reload (SIGHUP, `balancer reload`) is applied here too
//! (`live.rs`).

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    ops::ControlFlow,
};

use tokio::sync::oneshot;

use super::{discovered::Discovered, links::LinkEvent, live::Live};
use crate::{
    api::{Request, Response},
    config::Host,
    dataplane::{links::Links, Maps},
    discovery::Update,
    health::{config::CheckConfig, Checker, HealthEvent},
    l7::Frontend,
    lb::{Balancer, BalancerError},
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
    /// Periodic work ([`SAMPLE_EVERY`]): the backends' SNAT use is sampled.
    Tick,
}

/// How often the agent samples what it estimates from counters (the SNAT ports' use).
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The agent's state: the balancer (which owns the maps), the health checks it runs, and
/// the VRRP instances whose tracked VIPs it watches.
pub struct Agent<M: Maps> {
    pub(super) lb: Balancer<M>,
    checker: Checker,
    /// The checks running: (pool, backend) -> the check.
    checked: HashMap<(String, SocketAddrV4), CheckConfig>,
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
            }
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
        let vrrp: Vec<Ipv4Addr> = self
            .vrrp
            .iter()
            .flat_map(|v| {
                v.status()
                    .iter()
                    .flat_map(|s| &s.addresses)
                    // "ADDRESS/PREFIX"; IPv6 ones are not a VIP's.
                    .filter_map(|a| a.split('/').next()?.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        let http = self
            .http
            .iter()
            .flat_map(|h| h.status().into_iter().map(|v| *v.listen.ip()));
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
                .and_then(|()| lb.add_vip(vip.clone())),
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
        let wanted: HashMap<(String, SocketAddrV4), _> = self
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
mod tests {
    use std::{cell::RefCell, collections::HashMap, net::Ipv4Addr, rc::Rc, time::Duration};

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        api::InterfaceState,
        config::{AllDownPolicy, NatConfig, Protocol, Scheduler, Timeouts, VipConfig},
        dataplane::FakeMaps,
        dataplane::{
            links::Attach,
            pins::LinkMode,
            rtnetlink::{LinkChange, LinkMessage},
        },
        health::{CheckOutcome, Health},
        lb::{settings, SnatSource},
    };

    fn agent() -> Agent<FakeMaps> {
        let settings = settings(&Timeouts::default(), &NatConfig::default());
        let snat = SnatSource::Fixed(vec![Ipv4Addr::new(10, 0, 2, 1)]);
        let lb = Balancer::new(FakeMaps::default(), &settings, snat).unwrap();
        let (events, _) = mpsc::channel(1);
        Agent::new(lb, Checker::new(events), None, None)
    }

    fn web() -> VipConfig {
        VipConfig {
            name: "web".into(),
            address: Ipv4Addr::new(10, 0, 100, 1),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Maglev,
            ring_size: 65537,
            pool: "web".into(),
            on_all_down: AllDownPolicy::Drop,
            forwarding: crate::config::Forwarding::Nat,
            mode: crate::config::VipMode::L4,
            rules: Vec::new(),
        }
    }

    /// Sends `request` through [`Agent::handle`] and returns the answer.
    async fn ask(agent: &mut Agent<FakeMaps>, request: Request) -> Response {
        let (reply, mut answer) = oneshot::channel();
        let flow = agent.handle(Event::Control { request, reply }).await;
        assert_eq!(flow, ControlFlow::Continue(()));
        answer
            .try_recv()
            .expect("a control event is answered at once")
    }

    #[tokio::test]
    async fn control_events_change_the_balancer_and_answer_with_its_status() {
        let mut agent = agent();
        let added = ask(&mut agent, Request::VipAdd { vip: web() }).await;
        assert!(added.ok, "{added:?}");
        let status = added.status.expect("a change answers with the status");
        assert_eq!(status.vips.len(), 1);
        assert_eq!(status.pools[0].name, "web");

        // A refused request changes nothing and says why.
        let refused = ask(&mut agent, Request::VipAdd { vip: web() }).await;
        assert!(!refused.ok);
        assert!(
            refused.error.as_deref().unwrap().contains("already exists"),
            "{refused:?}"
        );
        let status = ask(&mut agent, Request::Status).await.status.unwrap();
        assert_eq!(status.vips.len(), 1);
    }

    /// A host whose `eth0` has 10.0.100.1 (the address of [`web`]) and 10.0.2.1.
    #[expect(
        clippy::unnecessary_wraps,
        reason = "stands in for `Host::read`, which can fail"
    )]
    fn this_host() -> io::Result<Host> {
        Ok(Host {
            local: vec![
                ("lo".into(), Ipv4Addr::LOCALHOST),
                ("eth0".into(), Ipv4Addr::new(10, 0, 100, 1)),
                ("eth0".into(), Ipv4Addr::new(10, 0, 2, 1)),
            ],
            ..Host::default()
        })
    }

    #[tokio::test]
    async fn vip_and_backend_add_are_checked_against_the_host() {
        let mut agent = agent();
        agent.read_host = this_host;
        let error = |response: Response| {
            assert!(!response.ok, "{response:?}");
            response.error.unwrap()
        };
        let ssh = VipConfig { port: 22, ..web() };
        assert_eq!(
            error(ask(&mut agent, Request::VipAdd { vip: ssh }).await),
            "invalid VIP address: 10.0.100.1 is an address of this host (eth0): balancing it \
             would take over the host's own traffic to port 22/tcp"
        );
        let elsewhere = VipConfig {
            address: Ipv4Addr::new(10, 0, 100, 2),
            ring_size: 2,
            ..web()
        };
        assert!(ask(&mut agent, Request::VipAdd { vip: elsewhere }).await.ok);
        let add = |address: &str| Request::BackendAdd {
            target: "web".into(),
            address: address.parse().unwrap(),
            weight: 1,
        };
        for (address, why) in [
            ("127.0.0.1:80", "127.0.0.1 is a loopback address"),
            ("10.0.2.1:80", "10.0.2.1 is an address of this host (eth0)"),
        ] {
            assert_eq!(
                error(ask(&mut agent, add(address)).await),
                format!(
                    "invalid backend address: {address}: {why}: the XDP program cannot \
                     forward flows to the balancer itself (a local backend can serve only \
                     HTTP-mode VIPs, whose proxy connects to it); pool \"web\" serves L4 VIP \
                     \"web\""
                )
            );
        }
        assert!(ask(&mut agent, add("10.0.2.11:80")).await.ok);
        assert!(ask(&mut agent, add("10.0.2.12:80")).await.ok);
        assert_eq!(
            error(ask(&mut agent, add("10.0.2.13:80")).await),
            "invalid backend: 10.0.2.13:80: ring size of VIP \"web\": 2 is smaller than the 3 \
             backends of pool \"web\": Maglev gives every backend at least one slot (use a \
             prime of at least 3, e.g. 3)"
        );
        let status = ask(&mut agent, Request::Status).await.status.unwrap();
        assert_eq!(status.vips.len(), 1);
        assert_eq!(
            status.pools[0].backends.len(),
            2,
            "refused requests change nothing"
        );
    }

    #[tokio::test]
    async fn pools_are_added_listed_and_deleted_with_their_backends() {
        let mut agent = agent();
        let pool = |name: &str| Request::PoolAdd { name: name.into() };
        assert!(ask(&mut agent, pool("api")).await.ok);
        let again = ask(&mut agent, pool("api")).await;
        assert_eq!(
            again.error.as_deref(),
            Some("invalid pool name: pool \"api\" already exists")
        );
        let backend = Request::BackendAdd {
            target: "api".into(),
            address: "10.0.2.11:443".parse().unwrap(),
            weight: 1,
        };
        assert!(ask(&mut agent, backend).await.ok);
        // A pool a VIP uses stays; once the VIP is gone, it goes with its backends.
        assert!(ask(&mut agent, Request::VipAdd { vip: web() }).await.ok);
        let del = |name: &str| Request::PoolDel { name: name.into() };
        let refused = ask(&mut agent, del("web")).await;
        assert!(refused.error.unwrap().contains("used by VIP web"));
        assert!(
            ask(&mut agent, Request::VipDel { name: "web".into() })
                .await
                .ok
        );
        assert!(ask(&mut agent, del("web")).await.ok);
        let status = ask(&mut agent, del("api")).await.status.unwrap();
        assert!(status.pools.is_empty(), "{status:?}");
        assert!(agent.lb.maps().backends.values().all(|b| b.flags == 0));
    }

    #[tokio::test]
    async fn health_of_unknown_backends_is_ignored_and_stop_breaks_the_loop() {
        let mut agent = agent();
        let result = HealthEvent {
            pool: "nowhere".into(),
            backend: "10.0.2.11:80".parse().unwrap(),
            outcome: CheckOutcome {
                ok: false,
                latency: Duration::from_millis(1),
                reason: "connect refused".into(),
            },
            transition: Some((Health::Up, Health::Down)),
            health: Health::Down,
            check: 1,
            task: 1,
        };
        assert_eq!(
            agent.handle(Event::Health(result)).await,
            ControlFlow::Continue(())
        );
        // Without a configuration file, a reload leaves the agent running as it was.
        assert_eq!(
            agent.handle(Event::Reload { signal: "SIGHUP" }).await,
            ControlFlow::Continue(())
        );
        assert_eq!(
            agent.handle(Event::Stop { signal: "SIGTERM" }).await,
            ControlFlow::Break(())
        );
    }

    /// The interfaces of a host the test sets: name -> index.
    #[derive(Clone, Default)]
    struct FakeLinks(Rc<RefCell<HashMap<String, u32>>>);

    impl Attach for FakeLinks {
        fn ifindex(&self, name: &str) -> Option<u32> {
            self.0.borrow().get(name).copied()
        }
        fn attach(&mut self, _: &str) -> anyhow::Result<Option<LinkMode>> {
            Ok(Some(LinkMode::Driver))
        }
        fn release(&mut self, _: &str) {}
    }

    /// The state and index of the agent's one interface.
    async fn interface(agent: &mut Agent<FakeMaps>) -> (InterfaceState, Option<u32>) {
        let status = ask(agent, Request::Status).await.status.unwrap();
        let [interface] = &status.interfaces[..] else {
            panic!("one interface: {status:?}");
        };
        (interface.state, interface.ifindex)
    }

    #[tokio::test]
    async fn link_events_reach_the_interfaces_and_the_status_shows_them() {
        let host = FakeLinks::default();
        host.0.borrow_mut().insert("eth0".into(), 2);
        let links = Links::start(Box::new(host.clone()), &["eth0".to_owned()], false).unwrap();
        let mut agent = agent().with_links(links);
        assert_eq!(
            interface(&mut agent).await,
            (InterfaceState::Attached, Some(2))
        );

        host.0.borrow_mut().remove("eth0");
        let deleted = LinkMessage {
            change: LinkChange::Del,
            ifindex: 2,
            name: Some("eth0".into()),
            running: false,
            xdp: None,
        };
        let flow = agent.handle(Event::Link(LinkEvent::Changed(deleted))).await;
        assert_eq!(flow, ControlFlow::Continue(()));
        assert_eq!(
            interface(&mut agent).await,
            (InterfaceState::Missing, Some(2))
        );

        // Back under another index, its event lost: a resync finds it.
        host.0.borrow_mut().insert("eth0".into(), 7);
        let flow = agent.handle(Event::Link(LinkEvent::Lost)).await;
        assert_eq!(flow, ControlFlow::Continue(()));
        assert_eq!(
            interface(&mut agent).await,
            (InterfaceState::Attached, Some(7))
        );
    }
}
