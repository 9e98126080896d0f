//! Packet fixtures: ICMP errors about balanced flows are translated for the flow's other
//! end (quote included, trailers left alone, path MTUs below the floor not passed on);
//! other ICMP messages, and errors about tuples that moved on, pass untouched.

use std::net::Ipv4Addr;

use balancer_common::{map_names, stat, Conn, FlowKey, NatEntry, PMTU_FLOOR};
use balancer_tests::fixtures::frames::{
    assert_icmp_translated, client_key, dns_reply, icmp_error, syn, udp, web_reply, web_reply_key,
    BACKEND_ROUTER, CLIENT, CLIENT_MAC, CLIENT_ROUTER, DNS_BACKEND, DNS_BACKEND_MAC,
    LB_BACKEND_MAC, LB_CLIENT_MAC, SNAT, VIP, WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{
    act, check, from_backend, from_client, later, Fixture, Step, XDP_PASS, XDP_REDIRECT,
};
use balancer_tests::frame::{self, Spec};
use balancer_wire::icmpv4::{time_exceeded, unreachable, Message};
use balancer_wire::ipv4;
use balancer_wire::tcp::Flags;

/// The start of the IPv4 datagram in `frame`: all of it, or its first `len` bytes.
fn quote(frame: &[u8], len: Option<usize>) -> Vec<u8> {
    let datagram = frame::ip_datagram(frame);
    datagram[..len.unwrap_or(datagram.len())].to_vec()
}

#[test]
fn icmp_errors_from_the_backends_side_reach_the_client_translated() {
    // (what, the client's packet, the error's source, (type, code))
    let cases = [
        (
            "UDP port unreachable from the backend",
            udp(),
            DNS_BACKEND,
            (Message::DST_UNREACHABLE, unreachable::PORT),
        ),
        (
            "TCP time exceeded from a router",
            syn(),
            BACKEND_ROUTER,
            (Message::TIME_EXCEEDED, time_exceeded::TTL),
        ),
    ];
    for (what, client_packet, from, (kind, code)) in cases {
        // The whole datagram quoted (the quoted TCP/UDP checksum changes too), and only
        // its IPv4 header and 8 bytes (RFC 792's minimum, short of the TCP checksum).
        for quote_len in [None, Some(28)] {
            let what = format!("{what}, quoting {quote_len:?} bytes");
            let original = quote(&frame::build(&client_packet), quote_len);
            let error = move |fx: &Fixture| {
                icmp_error(
                    (from, WEB_BACKEND_MAC),
                    (SNAT, LB_BACKEND_MAC),
                    (kind, code, 0),
                    &quote(fx.kept("forwarded"), quote_len),
                )
            };
            let (translated, counted) = (what.clone(), what.clone());
            Fixture::new().run_steps([
                from_client(
                    format!("{what}: the client's packet"),
                    client_packet.clone(),
                    XDP_REDIRECT,
                )
                .keep("forwarded"),
                from_backend(
                    format!("{what}: the error (the stack forwards it)"),
                    later(error),
                    XDP_PASS,
                )
                .output_and_input(move |sent, out, _| {
                    assert_icmp_translated(&translated, sent, out, (VIP, CLIENT), &original);
                }),
                check("counted", move |fx| {
                    assert_eq!(fx.global(stat::ICMP_TO_CLIENT), 1, "{counted}: counted");
                }),
            ]);
        }
    }
}

#[test]
fn a_trailer_after_a_short_quote_is_left_alone() {
    // A TCP quote of 28 bytes ends before the TCP checksum; the frame carries a trailer
    // past the datagram, where the checksum would have been.
    const QUOTE: usize = 28;
    const TRAILER: usize = 12;
    let error = |fx: &Fixture| {
        let datagram = frame::ip_datagram(fx.kept("forwarded"));
        let mut error = icmp_error(
            (BACKEND_ROUTER, WEB_BACKEND_MAC),
            (SNAT, LB_BACKEND_MAC),
            (Message::TIME_EXCEEDED, time_exceeded::TTL, 0),
            &datagram[..QUOTE],
        );
        error.extend_from_slice(&datagram[QUOTE..QUOTE + TRAILER]);
        error
    };
    let original = quote(&frame::build(&syn()), Some(QUOTE));
    Fixture::new().run_steps([
        from_client("the client's SYN", syn(), XDP_REDIRECT).keep("forwarded"),
        from_backend("a short quote with a trailer", later(error), XDP_PASS).output_and_input(
            move |sent, out, _| {
                let what = "a short quote with a trailer";
                assert_icmp_translated(what, sent, out, (VIP, CLIENT), &original);
                assert_eq!(
                    out[out.len() - TRAILER..],
                    sent[sent.len() - TRAILER..],
                    "the trailer is not the quote's: untouched"
                );
            },
        ),
    ]);
}

#[test]
fn fragmentation_needed_from_the_clients_side_reaches_the_backend_translated() {
    for quote_len in [None, Some(28)] {
        let what = format!("quoting {quote_len:?} bytes");
        // The backend's reply, larger than a router between the balancer and the client
        // can forward whole.
        let reply = |fx: &Fixture| Spec {
            payload: vec![b'x'; 1400],
            ..web_reply(fx.port("forwarded"), Flags::ACK)
        };
        let error = move |mtu: u32| {
            later(move |fx| {
                icmp_error(
                    (CLIENT_ROUTER, CLIENT_MAC),
                    (VIP, LB_CLIENT_MAC),
                    (Message::DST_UNREACHABLE, unreachable::FRAG_NEEDED, mtu),
                    &quote(fx.kept("to client"), quote_len),
                )
            })
        };
        let (translated, counted, low) = (what.clone(), what.clone(), what.clone());
        let mut steps = vec![
            from_client("the client's SYN", syn(), XDP_REDIRECT).keep("forwarded"),
            from_backend(
                format!("{what}: the backend's reply"),
                later(reply),
                XDP_REDIRECT,
            )
            .keep("to client"),
            from_client(
                format!("{what}: fragmentation needed (MTU 1400)"),
                error(1400),
                XDP_PASS,
            )
            .output_and_input(move |sent, out, fx| {
                let original = quote(&frame::build(&reply(fx)), quote_len);
                assert_icmp_translated(&translated, sent, out, (SNAT, WEB_BACKEND), &original);
            }),
            check("counted", move |fx| {
                assert_eq!(fx.global(stat::ICMP_TO_BACKEND), 1, "{counted}: counted");
            }),
        ];
        // Below the floor it would shrink the path MTU of every client of the backend
        // (they all share the SNAT address): not passed on. 0 comes from routers that
        // predate RFC 1191; the backend would fall back to its minimum.
        for mtu in [u32::from(PMTU_FLOOR) - 1, 0] {
            steps.push(from_client(format!("{what}: MTU {mtu}"), error(mtu), XDP_PASS).unchanged());
        }
        steps.push(from_client(
            format!("{what}: MTU at the floor"),
            error(u32::from(PMTU_FLOOR)),
            XDP_PASS,
        ));
        steps.push(check("the floor is passed on", move |fx| {
            assert_eq!(
                (
                    fx.global(stat::ICMP_TO_BACKEND),
                    fx.global(stat::PASS_ICMP_LOW_MTU)
                ),
                (2, 2),
                "{low}: the floor itself is passed on, the two below it are not"
            );
        }));
        Fixture::new().run_steps(steps);
    }
}

#[test]
fn icmp_messages_not_about_a_balanced_flow_pass_unchanged() {
    let port_unreachable = (Message::DST_UNREACHABLE, unreachable::PORT, 0);
    let from_backend_host = (DNS_BACKEND, DNS_BACKEND_MAC);
    let to_snat = (SNAT, LB_BACKEND_MAC);
    // The backend's port unreachable to `to`, quoting what `quote` makes of the datagram
    // the client's packet was forwarded as.
    let about_the_flow = move |to, quote: fn(&[u8]) -> Vec<u8>| {
        later(move |fx| {
            let datagram = frame::ip_datagram(fx.kept("forwarded"));
            icmp_error(from_backend_host, to, port_unreachable, &quote(datagram))
        })
    };
    let other_port = frame::build(&Spec {
        src: SNAT,
        dst: DNS_BACKEND,
        sport: 25000,
        dport: 5300,
        ..udp()
    });
    let unknown_reply = frame::build(&Spec {
        src: VIP,
        dst: CLIENT,
        sport: 80,
        dport: 40001,
        ..syn()
    });
    Fixture::new().run_steps([
        from_client("a datagram of a flow", udp(), XDP_REDIRECT).keep("forwarded"),
        from_client(
            "an echo request to the VIP",
            icmp_error(
                (CLIENT, CLIENT_MAC),
                (VIP, LB_CLIENT_MAC),
                (Message::ECHO_REQUEST, 0, 0x0001_0001),
                b"ping",
            ),
            XDP_PASS,
        )
        .unchanged(),
        from_backend(
            "an error about a SNAT port without a flow",
            icmp_error(
                from_backend_host,
                to_snat,
                port_unreachable,
                frame::ip_datagram(&other_port),
            ),
            XDP_PASS,
        )
        .unchanged(),
        from_client(
            "an error about a reply to a client without a flow",
            icmp_error(
                (CLIENT_ROUTER, CLIENT_MAC),
                (VIP, LB_CLIENT_MAC),
                (Message::DST_UNREACHABLE, unreachable::FRAG_NEEDED, 1400),
                frame::ip_datagram(&unknown_reply),
            ),
            XDP_PASS,
        )
        .unchanged(),
        from_backend(
            "an error sent to another address than the quoted packet's source",
            about_the_flow((Ipv4Addr::new(10, 0, 2, 2), LB_BACKEND_MAC), <[u8]>::to_vec),
            XDP_PASS,
        )
        .unchanged(),
        from_backend(
            "an error quoting a later fragment (no ports)",
            about_the_flow(to_snat, |datagram| {
                let mut later_fragment = datagram.to_vec();
                ipv4::Packet::new_unchecked(&mut later_fragment[..])
                    .set_fragment(false, false, 128);
                later_fragment
            }),
            XDP_PASS,
        )
        .unchanged(),
        from_backend(
            "an error whose quote ends inside the IPv4 header",
            about_the_flow(to_snat, |datagram| datagram[..16].to_vec()),
            XDP_PASS,
        )
        .unchanged(),
        from_backend(
            "an error whose quote ends before the ports",
            about_the_flow(to_snat, |datagram| datagram[..22].to_vec()),
            XDP_PASS,
        )
        .unchanged(),
        from_backend(
            "an error whose quote ends before the ports, in a frame with a trailer",
            later(move |fx| {
                let datagram = frame::ip_datagram(fx.kept("forwarded"));
                let mut frame = icmp_error(
                    from_backend_host,
                    to_snat,
                    port_unreachable,
                    &datagram[..22],
                );
                frame.extend_from_slice(&datagram[22..]);
                frame
            }),
            XDP_PASS,
        )
        .unchanged(),
        // The flow was there all along: the same error, well formed, is translated.
        from_backend(
            "the error about the flow",
            about_the_flow(to_snat, <[u8]>::to_vec),
            XDP_PASS,
        ),
        check("only the last error is about the flow", |fx| {
            assert_eq!(
                fx.icmp_translated(),
                (1, 0),
                "only the last error is about the flow"
            );
        }),
    ]);
}

/// `port` (network order) moved by `by`.
fn shifted(port: u16, by: i32) -> u16 {
    let moved = i32::from(u16::from_be(port)) + by;
    u16::try_from(moved).expect("a port").to_be()
}

/// The flow of the client's datagram gets its SNAT port moved by `by` in `CONNS`.
fn shift_snat_port(what: &str, by: i32) -> Step {
    let key = FlowKey {
        proto: 17,
        ..client_key(&udp())
    };
    act(what, move |fx| {
        fx.edit::<Conn>(map_names::CONNS, &key, |conn| {
            conn.snat_port = shifted(conn.snat_port, by);
        });
    })
}

/// The reply entry of the flow (whose forwarded datagram is kept as "forwarded") gets its
/// client port moved by `by` in `NAT`.
fn shift_client_port(what: &str, by: i32) -> Step {
    act(what, move |fx| {
        let key = FlowKey {
            src_addr: u32::from_ne_bytes(DNS_BACKEND.octets()),
            src_port: 5300u16.to_be(),
            proto: 17,
            ..web_reply_key(fx.port("forwarded"))
        };
        fx.edit::<NatEntry>(map_names::NAT, &key, |entry| {
            entry.client_port = shifted(entry.client_port, by);
        });
    })
}

#[test]
fn icmp_errors_about_a_tuple_that_moved_on_pass_unchanged() {
    // The backend's error about the client's datagram, and an error from the client's
    // side about the backend's reply.
    let from_backend_side = |fx: &Fixture| {
        icmp_error(
            (DNS_BACKEND, DNS_BACKEND_MAC),
            (SNAT, LB_BACKEND_MAC),
            (Message::DST_UNREACHABLE, unreachable::PORT, 0),
            frame::ip_datagram(fx.kept("forwarded")),
        )
    };
    let from_client_side = |fx: &Fixture| {
        icmp_error(
            (CLIENT_ROUTER, CLIENT_MAC),
            (VIP, LB_CLIENT_MAC),
            (Message::DST_UNREACHABLE, unreachable::FRAG_NEEDED, 1400),
            frame::ip_datagram(fx.kept("to client")),
        )
    };
    Fixture::new().run_steps([
        from_client("the client's datagram", udp(), XDP_REDIRECT).keep("forwarded"),
        // The backend's reply reaches the client: what the client's side could complain
        // about.
        from_backend(
            "the backend's reply",
            later(|fx| dns_reply(fx.port("forwarded"))),
            XDP_REDIRECT,
        )
        .keep("to client"),
        shift_snat_port("the client's tuple now has another SNAT port", 1),
        from_backend(
            "an error about a SNAT port whose client moved on must pass untouched",
            later(from_backend_side),
            XDP_PASS,
        )
        .unchanged(),
        shift_snat_port("the client's tuple has its SNAT port again", -1),
        shift_client_port("the SNAT port now belongs to another client", 1),
        from_client(
            "an error about a reply whose SNAT port went to another client must pass \
             untouched",
            later(from_client_side),
            XDP_PASS,
        )
        .unchanged(),
        shift_client_port("the SNAT port is the client's again", -1),
        check("nothing translated while the tuples had moved on", |fx| {
            assert_eq!(
                fx.icmp_translated(),
                (0, 0),
                "nothing translated while the tuples had moved on"
            );
        }),
        // Both tables name the flow again: both errors are translated.
        from_backend("the backend's error", later(from_backend_side), XDP_PASS),
        from_client("the client side's error", later(from_client_side), XDP_PASS),
        check("both translated", |fx| {
            assert_eq!(
                fx.icmp_translated(),
                (1, 1),
                "both translated once the tables name the flow again"
            );
        }),
    ]);
}
