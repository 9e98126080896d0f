use std::{cell::RefCell, collections::HashMap, net::Ipv4Addr, rc::Rc, time::Duration};

use tokio::sync::mpsc;

use super::*;
use crate::{
    api::InterfaceState,
    config::{AllDownPolicy, NatConfig, Protocol, Scheduler, Timeouts, TunnelConfig, VipConfig},
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
    let settings = settings(
        &Timeouts::default(),
        &NatConfig::default(),
        &TunnelConfig::default(),
    );
    let snat = SnatSource::Fixed(vec![Ipv4Addr::new(10, 0, 2, 1).into()]);
    let lb = Balancer::new(FakeMaps::default(), &settings, snat).unwrap();
    let (events, _) = mpsc::channel(1);
    Agent::new(lb, Checker::new(events), None, None)
}

fn web() -> VipConfig {
    VipConfig {
        name: "web".into(),
        address: Ipv4Addr::new(10, 0, 100, 1).into(),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler: Scheduler::Maglev,
        ring_size: 65537,
        pool: "web".into(),
        on_all_down: AllDownPolicy::Drop,
        forwarding: crate::config::Forwarding::Nat,
        encapsulation: crate::config::Encapsulation::Ipip,
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
            ("lo".into(), Ipv4Addr::LOCALHOST.into()),
            ("eth0".into(), Ipv4Addr::new(10, 0, 100, 1).into()),
            ("eth0".into(), Ipv4Addr::new(10, 0, 2, 1).into()),
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
        address: Ipv4Addr::new(10, 0, 100, 2).into(),
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

#[tokio::test]
async fn a_tick_counts_the_active_flows_off_the_loop_one_census_at_a_time() {
    let (events, mut census_events) = mpsc::channel(4);
    let mut agent = agent().with_events(events);
    assert!(ask(&mut agent, Request::VipAdd { vip: web() }).await.ok);
    let before = ask(&mut agent, Request::Status).await.status.unwrap();
    assert_eq!(before.vips[0].active_flows, None);
    assert_eq!(before.flow_census, None);

    // A second tick while the census runs starts none.
    assert_eq!(agent.handle(Event::Tick).await, ControlFlow::Continue(()));
    assert_eq!(agent.handle(Event::Tick).await, ControlFlow::Continue(()));
    let done = tokio::time::timeout(Duration::from_secs(10), census_events.recv())
        .await
        .expect("the census ends")
        .expect("an event");
    assert!(
        matches!(&done, Event::FlowCensus(Ok(census)) if census.entries == 0),
        "{done:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(census_events.try_recv().is_err(), "one census, not two");

    // The loop keeps it; status shows it.
    assert_eq!(agent.handle(done).await, ControlFlow::Continue(()));
    let after = ask(&mut agent, Request::Status).await.status.unwrap();
    assert_eq!(after.vips[0].active_flows.map(|f| f.total), Some(0));
    assert_eq!(after.flow_census.and_then(|c| c.entries), Some(0));
    // And the next tick starts another.
    assert_eq!(agent.handle(Event::Tick).await, ControlFlow::Continue(()));
    let next = tokio::time::timeout(Duration::from_secs(10), census_events.recv()).await;
    assert!(
        matches!(next, Ok(Some(Event::FlowCensus(Ok(_))))),
        "{next:?}"
    );
}
