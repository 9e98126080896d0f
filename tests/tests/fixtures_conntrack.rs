//! Packet fixtures: the connection table. A flow keeps its backend and SNAT port, FIN and
//! RST close it, idle flows expire per protocol (sooner when the backend never answered),
//! replies keep a flow alive, stale replies are dropped, a renumbered VIP keeps its flows.

use std::net::SocketAddrV4;

use balancer_common::{map_names, stat, Conn};
use balancer_tests::fixtures::flows::{backend_segment, client_segment, open};
use balancer_tests::fixtures::frames::{
    ack, client_key, dns_reply, fin, parsed, segment, syn, udp, web_reply, DNS_BACKEND,
    LB_BACKEND_MAC, WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{
    act, check, from_backend, from_client, later, pin_to_one_cpu, sleep_ms, Fixture, Step,
    Timeouts, XDP_DROP, XDP_REDIRECT,
};
use balancer_tests::frame::Spec;
use balancer_wire::tcp::Flags;

fn secs(secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(secs)
}

#[test]
fn later_packets_of_a_flow_keep_backend_and_port() {
    Fixture::new().run_steps([
        from_client("the SYN", syn(), XDP_REDIRECT).keep("first"),
        from_client("the ACK", ack(), XDP_REDIRECT).output(|out, fx| {
            let (first, second) = (parsed(fx.kept("first")), parsed(out));
            assert_eq!(
                (second.dst, second.sport),
                (first.dst, first.sport),
                "same flow, same translation"
            );
            // The second packet takes the backend's cached next hop instead of a FIB lookup.
            assert_eq!(
                (second.dst_mac, second.src_mac),
                (WEB_BACKEND_MAC, LB_BACKEND_MAC),
                "cached next hop must give the FIB's MACs"
            );
            assert!(second.ip_checksum_ok && second.l4_checksum_ok == Some(true));
        }),
        from_client(
            "another flow's SYN",
            Spec {
                sport: 40001,
                ..syn()
            },
            XDP_REDIRECT,
        )
        .output(|out, fx| {
            assert_ne!(
                parsed(out).sport,
                fx.port("first"),
                "another flow needs another SNAT port"
            );
        }),
        check("three packets, two new flows", |fx| {
            let web = fx.counters("web");
            assert_eq!((web.packets, web.new_flows), (3, 2));
        }),
    ]);
}

#[test]
fn fin_then_syn_on_same_tuple_starts_a_new_flow_but_fin_alone_does_not() {
    Fixture::new().run_steps([
        from_client("the SYN", syn(), XDP_REDIRECT).keep("first"),
        from_client("the client's FIN", fin(), XDP_REDIRECT).output(|out, fx| {
            assert_eq!(
                parsed(out).sport,
                fx.port("first"),
                "FIN belongs to the flow"
            );
        }),
        from_client("a SYN on the closing tuple", syn(), XDP_REDIRECT).output(|out, fx| {
            let again = parsed(out);
            assert_eq!(again.dst, WEB_BACKEND);
            assert_eq!(
                again.sport,
                fx.port("first"),
                "a client reusing its port gets its SNAT port back, so the backend's \
                 TIME_WAIT sees the client's own tuple sequence"
            );
        }),
        check("a SYN on a closing tuple is a new flow", |fx| {
            assert_eq!(
                fx.new_flows("web"),
                2,
                "a SYN on a closing tuple is a new flow"
            );
        }),
    ]);
}

#[test]
fn replies_keep_a_flow_alive_while_its_client_is_quiet() {
    pin_to_one_cpu();
    let mut fx = Fixture::with_timeouts(&Timeouts {
        udp: secs(1),
        ..Timeouts::default()
    });
    let query = udp();
    // The backend streams for 1.6 s, past the 1 s UDP timeout; the client sends nothing.
    let chunk = |fx: &Fixture| Spec {
        payload: b"chunk".to_vec(),
        ..dns_reply(fx.port("query"))
    };
    let stream = (0..4).flat_map(|_| {
        [
            sleep_ms(400),
            from_backend("a reply of the flow", later(chunk), XDP_REDIRECT),
        ]
    });
    let steps = [from_client("the query", query.clone(), XDP_REDIRECT).keep("query")]
        .into_iter()
        .chain(stream)
        .chain([
            from_client("the client's next query", query, XDP_REDIRECT).output(|out, fx| {
                assert_eq!(
                    (parsed(out).sport, fx.new_flows("dns")),
                    (fx.port("query"), 1),
                    "the backend's replies must keep the flow (and its SNAT port) alive"
                );
            }),
            check("nothing expired", |fx| {
                assert_eq!(fx.global(stat::CONN_EXPIRED), 0);
            }),
        ]);
    fx.run_steps(steps);
}

#[test]
fn a_late_reset_of_an_ended_flow_does_not_reach_the_clients_new_one() {
    pin_to_one_cpu();
    Fixture::new().run_steps([
        open(40000).keep("old"),
        // The client closes and opens its tuple again, by when the pool has moved on: the
        // web backend is drained and the DNS server answers on :80 too.
        client_segment(40000, Flags::FIN | Flags::ACK),
        act(
            "the DNS server joins the web pool, the web backend is drained",
            |fx| {
                let lb = fx.lb();
                lb.add_backend("web", SocketAddrV4::new(DNS_BACKEND, 80), 1)
                    .unwrap();
                lb.set_weight("web", SocketAddrV4::new(WEB_BACKEND, 80), 0)
                    .unwrap();
            },
        ),
        from_client("the client's new SYN", syn(), XDP_REDIRECT).output(|out, _| {
            assert_eq!(parsed(out).dst, DNS_BACKEND, "the new flow's backend");
        }),
        // The old backend's late RST on the old flow's reply tuple.
        from_backend(
            "a stale RST must not reach the client",
            later(|fx| web_reply(fx.port("old"), Flags::RST)),
            XDP_DROP,
        ),
        check("counted as a stale reply", |fx| {
            assert_eq!(fx.global(stat::DROP_STALE_REPLY), 1);
        }),
        // The new flow is untouched: not closing, so a SYN on it is no new flow.
        from_client("the new flow's ACK", ack(), XDP_REDIRECT).output(|out, _| {
            assert_eq!(parsed(out).dst, DNS_BACKEND);
        }),
        check("two flows in all", |fx| assert_eq!(fx.new_flows("web"), 2)),
    ]);
}

#[test]
fn a_tcp_flow_its_backend_never_answered_idles_out_sooner() {
    pin_to_one_cpu();
    let mut fx = Fixture::with_timeouts(&Timeouts {
        tcp: secs(30),
        tcp_unreplied: secs(1),
        ..Timeouts::default()
    });
    // Client port 40000's backend never answers; 40001's does (its SYN-ACK).
    fx.run_steps([
        open(40000),
        open(40001).keep("answered"),
        backend_segment("answered", Flags::SYN | Flags::ACK),
        sleep_ms(1600),
        client_segment(40001, Flags::ACK),
        check("the answered flow is live", |fx| {
            assert_eq!(
                fx.new_flows("web"),
                2,
                "the answered flow must still be live"
            );
        }),
        open(40000),
        check("the unanswered flow expired", |fx| {
            assert_eq!(
                (fx.new_flows("web"), fx.global(stat::CONN_EXPIRED)),
                (3, 1),
                "the unanswered flow must have expired after timeouts.tcp_unreplied"
            );
        }),
    ]);
}

#[test]
fn a_reset_with_no_flow_starts_none() {
    let rst = segment(Flags::RST);
    let key = client_key(&rst);
    Fixture::new().run_steps([
        from_client("an RST with no flow", rst, XDP_DROP),
        check("dropped as a stray RST, no flow", move |fx| {
            assert_eq!(fx.global(stat::DROP_STRAY_RST), 1);
            assert!(!fx.has_conn(&key), "a stray RST must not take a SNAT port");
            assert_eq!(fx.new_flows("web"), 0);
        }),
    ]);
}

#[test]
fn idle_flows_expire_per_protocol() {
    let mut fx = Fixture::with_timeouts(&Timeouts {
        tcp: secs(30),
        udp: secs(1),
        tcp_closing: secs(1),
        ..Timeouts::default()
    });
    let steps: [Step; 9] = [
        from_client("a datagram", udp(), XDP_REDIRECT),
        from_client("a SYN", syn(), XDP_REDIRECT),
        from_client("another datagram", udp(), XDP_REDIRECT),
        check("one flow each", |fx| {
            assert_eq!((fx.new_flows("dns"), fx.new_flows("web")), (1, 1));
        }),
        // Past the UDP timeout but well within TCP's.
        sleep_ms(1600),
        from_client("the ACK", ack(), XDP_REDIRECT),
        from_client("a datagram after the UDP timeout", udp(), XDP_REDIRECT),
        check("the TCP flow is live, the UDP flow expired", |fx| {
            assert_eq!(fx.new_flows("web"), 1, "the TCP flow must still be live");
            assert_eq!(
                fx.new_flows("dns"),
                2,
                "the idle UDP flow must have expired"
            );
        }),
        check("one flow expired", |fx| {
            assert_eq!(fx.global(stat::CONN_EXPIRED), 1);
        }),
    ];
    fx.run_steps(steps);
}

#[test]
fn a_flow_whose_vip_got_another_id_stays_its_vips() {
    let key = client_key(&syn());
    Fixture::new().run_steps([
        from_client("the SYN", syn(), XDP_REDIRECT),
        // As when an agent that took the pinned tables over gave the VIP another id: the
        // flow's id names another VIP, or none.
        act("the flow's entry names another VIP id", move |fx| {
            let own = fx.conn(&key).vip_id;
            fx.note("own id", u64::from(own));
            fx.edit::<Conn>(map_names::CONNS, &key, |conn| conn.vip_id = (own + 1) % 32);
            let new_flows = fx.new_flows("web");
            fx.note("new flows", new_flows);
        }),
        // A FIN: the flow cache does not serve it, the connection table does.
        from_client("a FIN", fin(), XDP_REDIRECT),
        check("the flow went on", move |fx| {
            assert_eq!(
                fx.new_flows("web"),
                fx.noted("new flows"),
                "the flow goes on (its VIP at its destination has its generation), not \
                 scheduled anew"
            );
            assert_eq!(
                u64::from(fx.conn(&key).vip_id),
                fx.noted("own id"),
                "its entry names its VIP's id again"
            );
        }),
    ]);
}
