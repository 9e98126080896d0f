//! Packet fixtures: the connection table. A flow keeps its backend and SNAT port, FIN and
//! RST close it, idle flows expire per protocol (sooner while the handshake is not complete),
//! replies keep a flow alive, stale replies are dropped, a renumbered VIP keeps its flows.

use std::net::SocketAddrV4;

use balancer_common::{map_names, stat, Conn, FLOW_ESTABLISHED, FLOW_MIDSTREAM};
use balancer_tests::fixtures::flows::{backend_segment, client_segment, connect, open};
use balancer_tests::fixtures::frames::{
    ack, client_key, dns_reply, fin, parsed, segment, syn, udp, web_reply, DNS_BACKEND,
    LB_BACKEND_MAC, WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{
    act, check, from_backend, from_client, later, pin_to_one_cpu, sleep_ms, Fixture, Step,
    Timeouts, XDP_DROP, XDP_REDIRECT,
};
use balancer_tests::frame::{Spec, L4};
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
                lb.add_backend("web", SocketAddrV4::new(DNS_BACKEND, 80).into(), 1)
                    .unwrap();
                lb.set_weight("web", SocketAddrV4::new(WEB_BACKEND, 80).into(), 0)
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

/// Client port `sport`'s ACK acknowledging `ack` (the backend's sequence number + 1 it
/// claims to have seen).
fn acking(sport: u16, ack: u32) -> Spec {
    Spec {
        sport,
        l4: L4::Tcp {
            flags: Flags::ACK,
            seq: 1001,
            ack,
        },
        ..syn()
    }
}

#[test]
fn a_tcp_flow_is_established_only_by_the_clients_handshake() {
    pin_to_one_cpu();
    let mut fx = Fixture::with_timeouts(&Timeouts {
        tcp: secs(30),
        tcp_handshake: secs(1),
        ..Timeouts::default()
    });
    let established = |fx: &Fixture, sport: u16| {
        fx.conn(&client_key(&Spec { sport, ..syn() })).state & FLOW_ESTABLISHED != 0
    };
    let mut steps: Vec<Step> = vec![
        // 40000's backend never answers.
        open(40000),
        // 40002 is answered, but its ACK does not acknowledge the SYN-ACK (a blind,
        // spoofed client guessing).
        open(40002).keep("guessed"),
        backend_segment("guessed", Flags::SYN | Flags::ACK),
        from_client(
            "an ACK of a sequence number never sent",
            acking(40002, 4242),
            XDP_REDIRECT,
        ),
        // 40003 picks a connection up mid-stream: its backend answers with an RST.
        from_client("an ACK with no flow", acking(40003, 5001), XDP_REDIRECT).keep("stray"),
        backend_segment("stray", Flags::RST),
    ];
    // 40001 completes the handshake.
    steps.extend(connect(40001, "answered"));
    steps.extend([
        check(
            "only the completed handshake established its flow",
            move |fx| {
                assert!(
                    established(fx, 40001),
                    "the client's ACK of the SYN-ACK establishes"
                );
                assert!(
                    !established(fx, 40002),
                    "a wrong acknowledgement must not establish"
                );
                assert!(
                    !established(fx, 40000),
                    "an unanswered SYN must not establish"
                );
            },
        ),
        sleep_ms(1600),
        client_segment(40001, Flags::ACK),
        check("the established flow is live", |fx| {
            assert_eq!(
                fx.new_flows("web"),
                4,
                "the established flow must still be live"
            );
        }),
        open(40000),
        from_client("40002 again, its ACK", acking(40002, 5001), XDP_REDIRECT),
        check("the half-open flows expired", |fx| {
            assert_eq!(
                (fx.new_flows("web"), fx.global(stat::CONN_EXPIRED)),
                (6, 2),
                "half-open flows must expire after timeouts.tcp_handshake"
            );
        }),
    ]);
    fx.run_steps(steps);
}

#[test]
fn a_flow_picked_up_mid_stream_is_established_by_the_backends_answer() {
    pin_to_one_cpu();
    let mut fx = Fixture::with_timeouts(&Timeouts {
        tcp: secs(30),
        tcp_handshake: secs(1),
        ..Timeouts::default()
    });
    fx.run_steps([
        from_client("an ACK with no flow", acking(40000, 5001), XDP_REDIRECT).keep("picked"),
        check("half-open until the backend answers", |fx| {
            let conn = fx.conn(&client_key(&acking(40000, 5001)));
            assert_eq!(
                conn.state & (FLOW_ESTABLISHED | FLOW_MIDSTREAM),
                FLOW_MIDSTREAM
            );
        }),
        backend_segment("picked", Flags::ACK),
        check("established by the backend's ACK", |fx| {
            let conn = fx.conn(&client_key(&acking(40000, 5001)));
            assert_ne!(
                conn.state & FLOW_ESTABLISHED,
                0,
                "the backend knows the connection"
            );
        }),
        sleep_ms(1600),
        client_segment(40000, Flags::ACK),
        check("still the same flow", |fx| {
            assert_eq!(fx.new_flows("web"), 1);
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
