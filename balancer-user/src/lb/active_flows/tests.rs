//! The census of active flows over an in-memory connection table.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use balancer_common::{Conn, FlowKey};

use balancer_common::{FLOW_BACKEND_CLOSED, FLOW_MIDSTREAM, FLOW_REPLIED, PROTO_UDP};

use super::*;
use crate::{
    api::Status,
    config::{
        AllDownPolicy, Encapsulation, Forwarding, NatConfig, Protocol, Scheduler, Timeouts,
        TunnelConfig, VipConfig, VipMode,
    },
    dataplane::{
        family::{v4_word, v6_words},
        AnyVipKey, FakeMaps,
    },
    lb::{settings, SnatSource},
};

const SECOND: u64 = 1_000_000_000;
/// The data plane's clock in these tests.
const NOW: u64 = 1_000 * SECOND;

fn timeouts() -> Settings {
    settings(
        &Timeouts::default(),
        &NatConfig::default(),
        &TunnelConfig::default(),
    )
}

#[test]
fn liveness_is_the_data_planes_idle_timeout_of_the_entrys_state() {
    let s = Settings {
        tcp_timeout_ns: 300 * SECOND,
        tcp_handshake_timeout_ns: 5 * SECOND,
        udp_timeout_ns: 30 * SECOND,
        closing_timeout_ns: 10 * SECOND,
        ..Settings::default()
    };
    let established = FLOW_ESTABLISHED | FLOW_REPLIED;
    // (what, state, protocol, the timeout it idles out after)
    let cases = [
        ("established TCP", established, PROTO_TCP, 300),
        ("half-open TCP", FLOW_REPLIED, PROTO_TCP, 5),
        ("a SYN nobody answered", 0, PROTO_TCP, 5),
        ("picked up mid-stream", FLOW_MIDSTREAM, PROTO_TCP, 5),
        ("closing TCP", established | FLOW_CLOSING, PROTO_TCP, 10),
        (
            "closed by the backend",
            established | FLOW_CLOSING | FLOW_BACKEND_CLOSED,
            PROTO_TCP,
            10,
        ),
        ("half-open, then an RST", FLOW_CLOSING, PROTO_TCP, 10),
        ("UDP", 0, PROTO_UDP, 30),
        (
            "UDP (the TCP bits mean nothing)",
            FLOW_ESTABLISHED,
            PROTO_UDP,
            30,
        ),
        ("UDP closing (ICMP error)", FLOW_CLOSING, PROTO_UDP, 10),
    ];
    for (what, state, proto, secs) in cases {
        assert_eq!(s.idle_timeout_ns(state, proto), secs * SECOND, "{what}");
        let flow = |idle| seen(state, proto, NOW - idle);
        assert!(is_live(&flow(0), &s, NOW), "{what}: just seen");
        assert!(
            is_live(&flow(secs * SECOND), &s, NOW),
            "{what}: idle exactly its timeout"
        );
        assert!(
            !is_live(&flow(secs * SECOND + 1), &s, NOW),
            "{what}: idle past its timeout"
        );
    }
    // Seen after the clock was read (the walk is not instantaneous): live.
    assert!(is_live(&seen(0, PROTO_TCP, NOW + SECOND), &s, NOW));
}

/// A flow in `state` of protocol `proto` last seen at `last_seen_ns`.
fn seen(state: u32, proto: u8, last_seen_ns: u64) -> FlowEntry {
    let nowhere = IpAddr::from(Ipv4Addr::UNSPECIFIED);
    FlowEntry {
        dst: (nowhere, 0, proto),
        backend: (nowhere, 0),
        backend_id: 0,
        vip_id: 0,
        vip_gen: 0,
        state,
        last_seen_ns,
        v4: None,
    }
}

#[test]
fn flows_count_by_kind() {
    let mut flows = ActiveFlows::default();
    add(&mut flows, FLOW_ESTABLISHED | FLOW_REPLIED, PROTO_TCP);
    add(&mut flows, FLOW_ESTABLISHED | FLOW_CLOSING, PROTO_TCP);
    add(&mut flows, FLOW_REPLIED, PROTO_TCP);
    add(&mut flows, FLOW_ESTABLISHED, PROTO_UDP);
    add(&mut flows, 0, PROTO_UDP);
    assert_eq!(
        flows,
        ActiveFlows {
            total: 5,
            tcp_established: 1,
            tcp_other: 2,
            udp: 2
        }
    );
}

fn vip(name: &str, port: u16, protocol: Protocol, pool: &str) -> VipConfig {
    VipConfig {
        name: name.into(),
        address: Ipv4Addr::new(10, 0, 100, 1).into(),
        port,
        protocol,
        scheduler: Scheduler::Maglev,
        ring_size: 251,
        pool: pool.into(),
        on_all_down: AllDownPolicy::Drop,
        forwarding: Forwarding::Nat,
        encapsulation: Encapsulation::Ipip,
        mode: VipMode::L4,
        rules: Vec::new(),
    }
}

fn backend(i: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 2, 10 + i), port))
}

/// Pool "web" (backends 1 and 2 on port 80) behind TCP VIPs "web" (port 80) and "alt"
/// (port 8080); pool "dns" (backend 1 on port 53) behind UDP VIP "dns".
fn balancer() -> Balancer<FakeMaps> {
    let snat = SnatSource::Fixed(vec![
        Ipv4Addr::new(10, 0, 2, 1).into(),
        "fd00::2:1".parse().unwrap(),
    ]);
    let mut lb = Balancer::new(FakeMaps::default(), &timeouts(), snat).unwrap();
    lb.add_pool("web").unwrap();
    lb.add_backend("web", backend(1, 80), 1).unwrap();
    lb.add_backend("web", backend(2, 80), 1).unwrap();
    lb.add_pool("dns").unwrap();
    lb.add_backend("dns", backend(1, 53), 1).unwrap();
    lb.add_vip(vip("web", 80, Protocol::Tcp, "web")).unwrap();
    lb.add_vip(vip("alt", 8080, Protocol::Tcp, "web")).unwrap();
    lb.add_vip(vip("dns", 53, Protocol::Udp, "dns")).unwrap();
    lb.maps().flows.set_now(NOW);
    lb
}

/// A flow table entry as the data plane writes it.
struct Flow {
    vip: &'static str,
    backend: SocketAddr,
    state: u32,
    idle_secs: u64,
}

/// `flow`'s entry in either family's table.
fn entry<A: balancer_common::Addr>(
    flow: &Flow,
    (client, vip, backend): (A, A, A),
    (key, port): (&AnyVipKey, u16),
    ids: (u32, u32, u32),
) -> (FlowKey<A>, Conn<A>) {
    let (vip_id, backend_id, vip_gen) = ids;
    let key = FlowKey {
        src_addr: client,
        dst_addr: vip,
        src_port: port.to_be(),
        dst_port: key.port(),
        proto: key.proto(),
        ..FlowKey::default()
    };
    let conn = Conn {
        backend_addr: backend,
        backend_port: flow.backend.port().to_be(),
        backend_id,
        vip_id,
        vip_gen,
        state: flow.state,
        last_seen_ns: NOW - flow.idle_secs * SECOND,
        ..Conn::default()
    };
    (key, conn)
}

impl Flow {
    fn new(vip: &'static str, backend: SocketAddr, state: u32, idle_secs: u64) -> Flow {
        Flow {
            vip,
            backend,
            state,
            idle_secs,
        }
    }

    /// Puts the flow into `lb`'s table from client port `port`; `renumber` gives it
    /// (VIP id, backend id) other than its VIP's and backend's, as a previous agent may
    /// have given them.
    fn insert(&self, lb: &Balancer<FakeMaps>, port: u16, renumber: Option<(u32, u32)>) {
        let v = &lb.vips[self.vip];
        let key = v.key();
        let backend_id = lb
            .pools
            .values()
            .flat_map(|p| &p.backends)
            .find(|b| b.addr == self.backend)
            .map_or(4000, |b| b.id);
        let (vip_id, backend_id) = renumber.unwrap_or((v.id, backend_id));
        let ids = (vip_id, backend_id, v.generation);
        match (key, self.backend.ip()) {
            (AnyVipKey::V4(k), IpAddr::V4(b)) => {
                let addrs = (v4_word(Ipv4Addr::new(10, 0, 1, 2)), k.addr, v4_word(b));
                let (key, conn) = entry(self, addrs, (&key, port), ids);
                lb.maps().flows.insert(key, conn);
            }
            (AnyVipKey::V6(k), IpAddr::V6(b)) => {
                let client = v6_words("fd00:1::2".parse().unwrap());
                let (key, conn) = entry(self, (client, k.addr, v6_words(b)), (&key, port), ids);
                lb.maps().flows.insert6(key, conn);
            }
            _ => panic!("a flow of a VIP and a backend of two families"),
        }
    }
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "compared with what status shows, an option"
)]
fn flows(total: u64, tcp_established: u64, tcp_other: u64, udp: u64) -> Option<ActiveFlows> {
    Some(ActiveFlows {
        total,
        tcp_established,
        tcp_other,
        udp,
    })
}

fn of_vip(status: &Status, name: &str) -> Option<ActiveFlows> {
    status
        .vips
        .iter()
        .find(|v| v.config.name == name)
        .unwrap()
        .active_flows
}

fn of_backend(status: &Status, pool: &str, addr: SocketAddr) -> Option<ActiveFlows> {
    let pool = status.pools.iter().find(|p| p.name == pool).unwrap();
    pool.backends
        .iter()
        .find(|b| b.socket_addr() == addr)
        .unwrap()
        .active_flows
}

#[test]
fn a_census_counts_each_vips_and_backends_live_flows() {
    let mut lb = balancer();
    let (b1, b2, dns1) = (backend(1, 80), backend(2, 80), backend(1, 53));
    let established = FLOW_ESTABLISHED | FLOW_REPLIED;
    let flows_in = [
        Flow::new("web", b1, established, 0),
        Flow::new("web", b1, established, 299),
        Flow::new("web", b2, FLOW_REPLIED, 4),
        Flow::new("web", b2, established | FLOW_CLOSING, 9),
        // Idle out: the data plane would schedule their next packet afresh.
        Flow::new("web", b1, established, 301),
        Flow::new("web", b2, FLOW_REPLIED, 6),
        Flow::new("web", b2, established | FLOW_CLOSING, 11),
        // Pool "web" serves VIP "alt" too: its backends count both VIPs' flows.
        Flow::new("alt", b1, established, 1),
        // A backend deleted from the pool: its flows carry on, the VIP's alone.
        Flow::new("web", backend(9, 80), established, 1),
        Flow::new("dns", dns1, 0, 29),
        Flow::new("dns", dns1, 0, 0),
        Flow::new("dns", dns1, 0, 31),
    ];
    for (port, flow) in (1000..).zip(&flows_in) {
        flow.insert(&lb, port, None);
    }
    // Taken over from an agent that numbered the VIP and the backend otherwise: the data
    // plane finds them by generation and address (and renumbers the flow).
    Flow::new("web", b2, established, 1).insert(&lb, 2000, Some((77, 3999)));
    // The flow of VIP "web"'s earlier incarnation (deleted, added again): it has ended.
    Flow::new("web", b1, established, 1).insert(&lb, 2001, None);
    {
        let mut entries = lb.maps().flows.entries.lock().unwrap();
        entries.last_mut().unwrap().1.vip_gen ^= 1;
    }

    let status = lb.status().unwrap();
    assert_eq!(of_vip(&status, "web"), None, "no census yet");
    assert_eq!(status.flow_census, None);
    let census = lb.census().take().unwrap();
    assert_eq!(census.entries, 14);
    lb.record_census(Ok(census));
    let status = lb.status().unwrap();
    assert_eq!(of_vip(&status, "web"), flows(6, 4, 2, 0));
    assert_eq!(of_vip(&status, "alt"), flows(1, 1, 0, 0));
    assert_eq!(of_vip(&status, "dns"), flows(2, 0, 0, 2));
    assert_eq!(of_backend(&status, "web", b1), flows(3, 3, 0, 0));
    assert_eq!(of_backend(&status, "web", b2), flows(3, 1, 2, 0));
    assert_eq!(of_backend(&status, "dns", dns1), flows(2, 0, 0, 2));
    let census = status.flow_census.unwrap();
    assert_eq!(census.entries, Some(14));
    assert!(census.at.is_some() && census.age_secs.is_some() && census.last_error.is_none());
}

#[test]
fn a_census_counts_ipv6_flows_beside_ipv4_ones() {
    let mut lb = balancer();
    let (b6, other6) = (
        SocketAddr::new("fd00:2::11".parse().unwrap(), 80),
        SocketAddr::new("fd00:2::12".parse().unwrap(), 80),
    );
    lb.add_pool("web6").unwrap();
    lb.add_backend("web6", b6, 1).unwrap();
    lb.add_backend("web6", other6, 1).unwrap();
    lb.add_vip(VipConfig {
        address: "fd00:100::1".parse().unwrap(),
        ..vip("web6", 80, Protocol::Tcp, "web6")
    })
    .unwrap();
    let established = FLOW_ESTABLISHED | FLOW_REPLIED;
    Flow::new("web6", b6, established, 0).insert(&lb, 1000, None);
    Flow::new("web6", b6, FLOW_REPLIED, 1).insert(&lb, 1001, None);
    Flow::new("web6", other6, established, 301).insert(&lb, 1002, None);
    // Renumbered (a previous agent's ids): found by generation and address.
    Flow::new("web6", other6, established, 0).insert(&lb, 1003, Some((100, 4000)));
    Flow::new("web", backend(1, 80), established, 0).insert(&lb, 1004, None);
    let census = lb.census().take().unwrap();
    assert_eq!(census.entries, 5);
    lb.record_census(Ok(census));
    let status = lb.status().unwrap();
    assert_eq!(of_vip(&status, "web6"), flows(3, 2, 1, 0));
    assert_eq!(of_backend(&status, "web6", b6), flows(2, 1, 1, 0));
    assert_eq!(of_backend(&status, "web6", other6), flows(1, 1, 0, 0));
    assert_eq!(of_vip(&status, "web"), flows(1, 1, 0, 0));
}

#[test]
fn a_vip_or_backend_newer_than_the_census_has_no_count_and_a_failure_keeps_the_last() {
    let mut lb = balancer();
    Flow::new("web", backend(1, 80), FLOW_ESTABLISHED, 0).insert(&lb, 1000, None);
    let census = lb.census().take().unwrap();
    lb.add_backend("web", backend(3, 80), 1).unwrap();
    lb.del_vip("alt").unwrap();
    lb.add_vip(vip("alt", 8080, Protocol::Tcp, "web")).unwrap();
    lb.record_census(Ok(census));
    let status = lb.status().unwrap();
    assert_eq!(of_vip(&status, "web"), flows(1, 1, 0, 0));
    assert_eq!(
        of_backend(&status, "web", backend(3, 80)),
        None,
        "added since"
    );
    assert_eq!(
        of_vip(&status, "alt"),
        None,
        "added again since: another generation"
    );

    lb.record_census(Err(MapsError::Other {
        map: "CONNS",
        message: "injected".into(),
    }));
    let status = lb.status().unwrap();
    assert_eq!(
        of_vip(&status, "web"),
        flows(1, 1, 0, 0),
        "the last census stays"
    );
    let census = status.flow_census.unwrap();
    assert!(census.age_secs.is_some());
    assert_eq!(census.last_error.as_deref(), Some("map CONNS: injected"));
}

#[test]
fn a_census_judges_by_the_settings_in_force() {
    let mut lb = balancer();
    Flow::new("dns", backend(1, 53), 0, 20).insert(&lb, 1000, None);
    let count = |lb: &Balancer<FakeMaps>| {
        let census = lb.census().take().unwrap();
        census.vips[&("dns".to_owned(), lb.vips["dns"].generation)].total
    };
    assert_eq!(count(&lb), 1, "30s UDP timeout");
    let shorter = Settings {
        udp_timeout_ns: 10 * SECOND,
        ..timeouts()
    };
    lb.set_settings(&shorter).unwrap();
    assert_eq!(count(&lb), 0, "10s UDP timeout");
}

#[test]
fn a_long_census_makes_the_next_wait() {
    let mut lb = balancer();
    let now = Instant::now();
    assert!(lb.census_due(now), "none taken yet");
    let mut census = lb.census().take().unwrap();
    census.taken = now;
    census.took = Duration::from_millis(400);
    lb.record_census(Ok(census));
    assert!(
        !lb.census_due(now + Duration::from_secs(5)),
        "20 times 400 ms is 8 s"
    );
    assert!(lb.census_due(now + Duration::from_secs(8)));
}
