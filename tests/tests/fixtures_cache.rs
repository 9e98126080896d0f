//! Packet fixtures: the per-CPU flow cache. Established packets are served from it, FIN
//! and SYN are not; a cached flow whose backend went down moves, and one whose SNAT port
//! went to another flow is not forwarded.

use balancer_common::{map_names, stat, Conn, FLOW_ESTABLISHED};
use balancer_tests::fixtures::flows::{backend_segment, client_segment, connect};
use balancer_tests::fixtures::frames::{ack, client_key, fin, parsed, syn, WEB_BACKEND};
use balancer_tests::fixtures::{
    act, check, from_client, pin_to_one_cpu, Fixture, NatConfig, Step, Timeouts, XDP_DROP,
    XDP_REDIRECT,
};
use balancer_tests::frame::Spec;
use balancer_wire::tcp::Flags;

#[test]
fn established_packets_are_forwarded_from_the_cpus_flow_cache_but_fin_and_syn_are_not() {
    pin_to_one_cpu();
    let key = client_key(&syn());
    Fixture::new().run_steps([
        from_client("the SYN", syn(), XDP_REDIRECT).keep("first"),
        backend_segment("first", Flags::SYN | Flags::ACK),
        check("a half-open flow's copy is not served", |fx| {
            let cached = fx.flow_cache();
            assert_eq!(cached.len(), 1, "one cached flow: {cached:?}");
            assert_eq!(cached[0].state & FLOW_ESTABLISHED, 0);
        }),
        from_client("the handshake's ACK", ack(), XDP_REDIRECT),
        check(
            "the established flow left a copy of its CONNS entry in this CPU's cache",
            move |fx| {
                let cached = fx.flow_cache();
                assert_eq!(cached.len(), 1, "one cached flow: {cached:?}");
                assert_eq!(cached[0].key, key);
                assert_eq!(
                    cached[0].backend_addr,
                    u32::from_ne_bytes(WEB_BACKEND.octets())
                );
                assert_eq!(cached[0].snat_port, fx.port("first").to_be());
                assert_ne!(cached[0].state & FLOW_ESTABLISHED, 0);
            },
        ),
        // With the CONNS entry gone, only the cache knows the flow: the ACK still goes to
        // the same backend with the same SNAT port, and no flow is scheduled.
        act("the flow's CONNS entry is removed", move |fx| {
            fx.forget::<Conn>(map_names::CONNS, &key);
        }),
        from_client("the ACK", ack(), XDP_REDIRECT).output(|out, fx| {
            let (first, second) = (parsed(fx.kept("first")), parsed(out));
            assert_eq!((second.dst, second.sport), (first.dst, first.sport));
            assert!(second.ip_checksum_ok && second.l4_checksum_ok == Some(true));
        }),
        check("served from the cache", |fx| {
            assert_eq!(fx.new_flows("web"), 1, "served from the cache");
        }),
        // A FIN may change the flow: it takes the CONNS path, which misses, so it
        // schedules.
        from_client("the FIN", fin(), XDP_REDIRECT),
        check("a FIN is never served from the cache", |fx| {
            assert_eq!(
                fx.new_flows("web"),
                2,
                "a FIN is never served from the cache"
            );
        }),
        // The closing flow's copy is not served either: a SYN on the tuple starts a new flow.
        from_client("a SYN on the closing tuple", syn(), XDP_REDIRECT),
        check("a new flow", |fx| assert_eq!(fx.new_flows("web"), 3)),
    ]);
}

#[test]
fn a_cached_flow_of_a_backend_that_went_down_is_moved_at_its_next_packet() {
    pin_to_one_cpu();
    Fixture::new().run_steps([
        from_client("the SYN", syn(), XDP_REDIRECT),
        check("the flow is cached", |fx| {
            assert_eq!(fx.flow_cache().len(), 1, "the flow is cached");
        }),
        // The web pool's only backend fails its checks (`on_backend_down = shutdown`, the
        // default): its flows must move, and the cached copy must not hide that.
        act("the flow's backend goes down", Fixture::web_backend_fails),
        from_client(
            "the ACK: no backend is left to move the flow to",
            ack(),
            XDP_DROP,
        ),
        check("the flow was rescheduled", |fx| {
            assert_eq!(fx.global(stat::CONN_RESCHEDULED), 1);
        }),
    ]);
}

#[test]
fn a_cached_flow_whose_snat_port_went_to_another_flow_is_not_forwarded() {
    pin_to_one_cpu();
    // One SNAT port: a second flow can only have it by taking it from the first.
    let nat = NatConfig {
        port_min: 20000,
        port_max: 20000,
        ..NatConfig::default()
    };
    let first = client_key(&syn());
    let second = Spec {
        sport: 40001,
        ..syn()
    };
    let second_key = client_key(&second);
    let mut steps: Vec<Step> = connect(40000, "first").into();
    steps.extend([
        check("the first flow is cached", |fx| {
            assert_eq!(fx.flow_cache().len(), 1, "the first flow is cached");
        }),
        // The LRU evicts the first flow's CONNS entry; a second client flow then takes the
        // port, whose holder it no longer finds.
        act("the first flow's CONNS entry is evicted", move |fx| {
            fx.forget::<Conn>(map_names::CONNS, &first);
        }),
        from_client("the second flow takes the port", second, XDP_REDIRECT)
            .keep("second")
            .output(|out, _| {
                assert_eq!(parsed(out).sport, 20000);
            }),
        // Established, so that the first flow's packet cannot take its port either.
        backend_segment("second", Flags::SYN | Flags::ACK),
        client_segment(40001, Flags::ACK),
        // The first flow's copy must not be used now: forwarded, it would arrive on the
        // second flow's tuple. Its CONNS path finds no flow and no free port.
        from_client(
            "the evicted flow's packet must not be forwarded",
            ack(),
            XDP_DROP,
        ),
        check("no port, and no forward entry without one", move |fx| {
            assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 1);
            // A flow that got no port leaves no forward entry (written before each reply
            // entry it tries) naming a port it does not hold.
            assert!(!fx.has_conn(&first), "a CONNS entry without its port");
            assert!(fx.has_conn(&second_key));
        }),
    ]);
    Fixture::with(&Timeouts::default(), &nat).run_steps(steps);
}
