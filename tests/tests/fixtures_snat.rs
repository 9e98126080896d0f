//! Packet fixtures: SNAT ports. A flow the backend closed leaves its port resting (the
//! backend's TIME-WAIT), one the client closed frees it at expiry, a client reusing its
//! tuple gets its old port back, and a flow whose reply entry was evicted writes it again
//! or leaves its port.

use balancer_common::{map_names, stat, Conn, NatEntry, FLOW_ESTABLISHED};
use balancer_tests::fixtures::flows::{backend_segment, client_segment, connect, open};
use balancer_tests::fixtures::frames::{ack, client_key, parsed, syn, udp, web_reply_key, SNAT};
use balancer_tests::fixtures::{
    act, check, from_client, pin_to_one_cpu, sleep_ms, Fixture, NatConfig, Side as Arrives, Step,
    Timeouts, XDP_DROP, XDP_REDIRECT,
};
use balancer_tests::frame::Spec;
use balancer_wire::tcp::Flags;

const FIN_ACK: Flags = Flags(Flags::FIN.0 | Flags::ACK.0);

/// A fixture whose SNAT range is `ports` ports from 20000, and whose closed flows expire
/// 1 s after their last packet (their ports then rest for the default `snat_time_wait`,
/// 60 s, if the backend closed them).
fn snat_fixture(ports: u16) -> Fixture {
    let nat = NatConfig {
        port_min: 20000,
        port_max: 20000 + ports - 1,
        ..NatConfig::default()
    };
    let timeouts = Timeouts {
        tcp_closing: std::time::Duration::from_secs(1),
        ..Timeouts::default()
    };
    Fixture::with(&timeouts, &nat)
}

/// Who sends a segment.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

/// A [`snat_fixture`] of `ports` ports in which client port 40000 opened a flow (kept as
/// "closed"), ended it with `segments` (TCP flags, in order), and let it expire (past the
/// 1 s closing timeout).
fn ended_flow(ports: u16, segments: &[(Side, Flags)]) -> Fixture {
    pin_to_one_cpu();
    let mut fx = snat_fixture(ports);
    let ending = segments.iter().map(|(side, flags)| match side {
        Side::Client => client_segment(40000, *flags),
        Side::Backend => backend_segment("closed", *flags),
    });
    let steps: Vec<Step> = [open(40000).keep("closed")]
        .into_iter()
        .chain(ending)
        .chain([sleep_ms(1600)])
        .collect();
    fx.run_steps(steps);
    fx
}

/// An [`ended_flow`] of 2 ports that `first` closed with a FIN, then the other side.
fn closed_first_by(first: Side) -> Fixture {
    let segments = match first {
        Side::Client => [(Side::Client, FIN_ACK), (Side::Backend, FIN_ACK)],
        Side::Backend => [(Side::Backend, FIN_ACK), (Side::Client, FIN_ACK)],
    };
    ended_flow(2, &segments)
}

/// The count of SNAT ports taken while resting is `count`.
fn reused_early(count: u64, why: &'static str) -> Step {
    check(format!("{count} ports reused early"), move |fx| {
        assert_eq!(fx.global(stat::SNAT_PORT_REUSED_EARLY), count, "{why}");
    })
}

#[test]
fn when_no_port_is_free_a_new_flow_takes_a_half_open_flows_port() {
    pin_to_one_cpu();
    // Two spoofed SYNs, each answered by the backend, hold both ports; their clients
    // never complete the handshake.
    let mut steps: Vec<Step> = Vec::new();
    for (sport, flow) in [(40000, "spoofed 1"), (40001, "spoofed 2")] {
        steps.push(open(sport).keep(flow));
        steps.push(backend_segment(flow, Flags::SYN | Flags::ACK));
    }
    steps.extend(connect(40002, "connecting"));
    steps.push(check("a half-open flow's port was taken", |fx| {
        assert_eq!(fx.global(stat::SNAT_PORT_HALF_OPEN_TAKEN), 1);
        assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 0);
    }));
    snat_fixture(2).run_steps(steps);
}

#[test]
fn a_client_that_completes_its_handshake_late_takes_its_port_back() {
    pin_to_one_cpu();
    snat_fixture(1).run_steps([
        open(40000).keep("real"),
        backend_segment("real", Flags::SYN | Flags::ACK),
        // The real client's ACK is late (lost in a flood); a spoofed SYN takes the port.
        from_client(
            "a spoofed SYN takes the half-open port",
            Spec {
                sport: 40001,
                ..syn()
            },
            XDP_REDIRECT,
        ),
        check("taken", |fx| {
            assert_eq!(fx.global(stat::SNAT_PORT_HALF_OPEN_TAKEN), 1);
        }),
        from_client("the real client's ACK", ack(), XDP_REDIRECT).output(|out, fx| {
            assert_eq!(parsed(out).sport, fx.port("real"), "its own port, back");
        }),
        check("taken back, established", |fx| {
            assert_eq!(fx.global(stat::SNAT_PORT_TAKEN_BACK), 1);
            assert_eq!(fx.global(stat::SNAT_PORT_LOST), 0);
            let conn = fx.conn(&client_key(&syn()));
            assert_ne!(conn.state & FLOW_ESTABLISHED, 0);
        }),
    ]);
}

#[test]
fn each_snat_address_gives_the_whole_port_range() {
    pin_to_one_cpu();
    let second = std::net::Ipv4Addr::new(10, 0, 2, 2);
    let nat = NatConfig {
        source_addresses: vec![SNAT.into(), second.into()],
        port_min: 20000,
        port_max: 20000,
    };
    Fixture::with(&Timeouts::default(), &nat).run_steps([
        open(40000).keep("first"),
        from_client(
            "a second client gets the one port on the other address",
            Spec {
                sport: 40001,
                ..syn()
            },
            XDP_REDIRECT,
        )
        .output(move |out, fx| {
            let (first, this) = (parsed(fx.kept("first")), parsed(out));
            assert_eq!((first.sport, this.sport), (20000, 20000));
            let mut sources = [first.src, this.src];
            sources.sort();
            assert_eq!(sources, [SNAT, second], "one flow per SNAT address");
        }),
        check("no port was short", |fx| {
            assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 0);
            assert_eq!(fx.global(stat::SNAT_PORT_HALF_OPEN_TAKEN), 0);
        }),
    ]);
}

#[test]
fn established_flows_keep_their_ports_when_none_is_free() {
    pin_to_one_cpu();
    let mut steps: Vec<Step> = Vec::new();
    steps.extend(connect(40000, "first"));
    steps.extend(connect(40001, "second"));
    steps.push(from_client(
        "a third client finds no port",
        Spec {
            sport: 40002,
            ..syn()
        },
        XDP_DROP,
    ));
    steps.push(check("dropped, no port taken", |fx| {
        assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 1);
        assert_eq!(fx.global(stat::SNAT_PORT_HALF_OPEN_TAKEN), 0);
    }));
    snat_fixture(2).run_steps(steps);
}

#[test]
fn a_flow_the_backend_closed_leaves_its_snat_port_resting() {
    // Client port 40001 probes the closed flow's port first (the client-closed test below
    // shows it getting that port at once); the free one is taken instead.
    closed_first_by(Side::Backend).run_steps([
        open(40001).keep("40001").output(|out, fx| {
            assert_ne!(
                parsed(out).sport,
                fx.port("closed"),
                "another client got a resting port while a port was free"
            );
        }),
        backend_segment("40001", Flags::SYN | Flags::ACK),
        client_segment(40001, Flags::ACK),
        reused_early(0, "a port was free"),
        // No free port left: the resting one is taken rather than dropping the flow.
        from_client(
            "client port 40002: a resting port must beat a drop",
            Spec {
                sport: 40002,
                ..syn()
            },
            XDP_REDIRECT,
        )
        .keep("40002")
        .output(|out, fx| {
            assert_eq!(parsed(out).sport, fx.port("closed"));
        }),
        backend_segment("40002", Flags::SYN | Flags::ACK),
        from_client(
            "client port 40002 completes the handshake",
            Spec {
                sport: 40002,
                ..ack()
            },
            XDP_REDIRECT,
        ),
        reused_early(1, "the resting port was taken"),
        // Now both ports are held by established flows.
        from_client(
            "client port 40003: no port left",
            Spec {
                sport: 40003,
                ..syn()
            },
            XDP_DROP,
        ),
        check("counted as SNAT exhaustion", |fx| {
            assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 1);
        }),
    ]);
}

#[test]
fn a_flow_the_client_closed_frees_its_snat_port_at_expiry() {
    // The client closes first: the backend closes passively and keeps no TIME-WAIT.
    closed_first_by(Side::Client).run_steps([
        open(40001).output(|out, fx| {
            assert_eq!(
                parsed(out).sport,
                fx.port("closed"),
                "the expired flow's port is free again"
            );
        }),
        reused_early(0, "the client closed first: the port did not rest"),
    ]);
}

#[test]
fn a_client_reusing_its_tuple_gets_its_old_port_back_though_an_earlier_one_came_free() {
    // Client ports 40000 and 40001 both probe 20000 first (see above): with 40001 there
    // first, 40000 gets 20001.
    pin_to_one_cpu();
    snat_fixture(2).run_steps([
        open(40001).keep("first"),
        open(40000).keep("own"),
        check("40001 has 20000, 40000 has 20001", |fx| {
            assert_eq!((fx.port("first"), fx.port("own")), (20000, 20001));
        }),
        // 40001's flow ends (client first: its port does not rest) and expires.
        client_segment(40001, FIN_ACK),
        backend_segment("first", FIN_ACK),
        sleep_ms(1600),
        // 40000 closes and opens its tuple again: 20000 is free now, but it gets 20001 back.
        client_segment(40000, FIN_ACK),
        open(40000).output(|out, fx| {
            assert_eq!(
                parsed(out).sport,
                fx.port("own"),
                "the backend must see the client's own tuple sequence on its old port"
            );
        }),
    ]);
}

#[test]
fn a_reset_after_the_backends_fin_ends_the_rest() {
    // One port: a resting port could only be had through the counted fallback.
    ended_flow(1, &[(Side::Backend, FIN_ACK), (Side::Client, Flags::RST)]).run_steps([
        open(40001).output(|out, fx| {
            assert_eq!(parsed(out).sport, fx.port("closed"));
        }),
        reused_early(
            0,
            "an RST ends the backend's TIME-WAIT: the port must not rest",
        ),
    ]);
}

#[test]
fn a_flow_whose_reply_entry_was_evicted_writes_it_again_or_leaves_its_port() {
    pin_to_one_cpu();
    let evict = |what: &'static str| {
        act(what, |fx| {
            let key = web_reply_key(fx.port("first"));
            fx.forget::<NatEntry>(map_names::NAT, &key);
        })
    };
    // One SNAT port: a port without a reply entry is the one a new flow takes.
    snat_fixture(1).run_steps([
        open(40000).keep("first"),
        evict("the flow's reply entry is evicted"),
        // At the client side's next periodic touch (250 ms) the entry is written again,
        // and the backend's replies reach the client.
        sleep_ms(300),
        client_segment(40000, Flags::ACK),
        backend_segment("first", Flags::ACK),
        // Evicted again, and before the flow's next touch another client takes the port.
        evict("the flow's reply entry is evicted again"),
        open(40001).keep("second").output(|out, fx| {
            assert_eq!(
                parsed(out).sport,
                fx.port("first"),
                "the port without reply entry"
            );
        }),
        // Established, so that the first flow cannot take the port back.
        backend_segment("second", Flags::SYN | Flags::ACK),
        client_segment(40001, Flags::ACK),
        sleep_ms(300),
        // The first flow must not go on sending from the port the second one holds; with
        // the only port taken, it has none left.
        from_client(
            "two clients on one tuple towards the backend",
            ack(),
            XDP_DROP,
        ),
        check("the port was lost, none left", |fx| {
            assert_eq!(
                (
                    fx.global(stat::SNAT_PORT_LOST),
                    fx.global(stat::DROP_SNAT_EXHAUSTED)
                ),
                (1, 1)
            );
        }),
    ]);
}

#[test]
fn a_port_range_two_thirds_full_still_has_a_port_for_every_new_flow() {
    pin_to_one_cpu();
    // 1000 ports; 660 UDP flows from clients spread as real ones are. Probes that walk on
    // from a taken port pile flows up in runs of taken ports, and a new flow whose 16
    // probes all fall in one finds none: the probes must be spread over the range.
    let mut fx = snat_fixture(1000);
    let mut dropped = Vec::new();
    for i in 0..660u32 {
        let [_, _, a, b] = (0x0a40_0000 + i * 7919).to_be_bytes();
        let spec = Spec {
            src: std::net::Ipv4Addr::new(10, 64, a, b),
            sport: 1024 + (i * 31) as u16,
            ..udp()
        };
        let (verdict, _) = fx.run(&balancer_tests::frame::build(&spec), Arrives::Client);
        if verdict != XDP_REDIRECT {
            dropped.push(i);
        }
    }
    assert_eq!(
        (dropped.len(), fx.global(stat::DROP_SNAT_EXHAUSTED)),
        (0, 0),
        "new flows found no port at up to 66% occupancy: {dropped:?}"
    );
}

#[test]
fn a_flow_that_found_no_port_is_dropped_without_probing_for_a_second() {
    pin_to_one_cpu();
    let retried = Spec {
        sport: 40001,
        ..syn()
    };
    let mut steps: Vec<Step> = connect(40000, "holder").into();
    steps.extend([
        from_client("client port 40001 finds no port", retried.clone(), XDP_DROP),
        act(
            "the holder's flow leaves both tables: its port is free",
            |fx| {
                let port = fx.port("holder");
                fx.forget::<Conn>(map_names::CONNS, &client_key(&syn()));
                fx.forget::<NatEntry>(map_names::NAT, &web_reply_key(port));
            },
        ),
        from_client(
            "its retransmission at once is dropped without probing (the port is not seen)",
            retried.clone(),
            XDP_DROP,
        ),
        check("both counted as exhaustion", |fx| {
            assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 2);
        }),
        sleep_ms(1100),
        from_client(
            "a second later it probes again and gets the free port",
            retried,
            XDP_REDIRECT,
        ),
    ]);
    snat_fixture(1).run_steps(steps);
}
