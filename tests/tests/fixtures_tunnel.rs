//! Packet fixtures: tunnel VIPs. A client's packet to a `tunnel` VIP leaves towards its
//! backend unchanged inside an outer IPv4 header (IPIP) or outer IPv4 and UDP headers
//! (GUE), with a valid outer checksum, the right lengths, TTL 64, the inner DF bit, and an
//! outer source (and GUE source port) that varies with the flow; the flow is pinned in
//! `CONNS` alone like a direct-server-return flow. A packet that would not fit the tunnel
//! is answered with an ICMP "fragmentation needed" giving the room left.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use balancer::config::{Encapsulation, Forwarding, Protocol, TunnelConfig};
use balancer_common::{stat, FLOW_DSR, FLOW_ESTABLISHED, FLOW_GUE, FLOW_TUNNEL};
use balancer_tests::fixtures::frames::{
    client_key, parsed_icmp, segment, syn, CLIENT, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC, VIP,
    WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{
    act, check, from_client, vip, Fixture, NatConfig, Timeouts, XDP_DROP, XDP_REDIRECT,
};
use balancer_tests::frame::{Spec, L4};
use balancer_wire::icmpv4::Message;
use balancer_wire::ip::IpProtocol;
use balancer_wire::ipv4;
use balancer_wire::tcp::Flags;

/// The tunnel VIP's port, which its backend listens on too.
const PORT: u16 = 8443;
/// The outer source when it is one address: the balancer's own on the backends' side.
const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

/// A fixture whose tunnels leave from `source`/`len` with MTU `mtu`, and a tunnel VIP
/// "tun" with `encapsulation` whose one backend is the web backend on [`PORT`].
fn tunnel_fixture(
    encapsulation: Encapsulation,
    (source, len): (Ipv4Addr, u8),
    mtu: u16,
) -> Fixture {
    let tunnel = TunnelConfig {
        source: Some((source, len)),
        mtu,
        ..TunnelConfig::default()
    };
    let mut fx = Fixture::with_tunnel(&Timeouts::default(), &NatConfig::default(), &tunnel);
    let lb = fx.lb();
    lb.add_pool("tun").unwrap();
    lb.add_backend("tun", SocketAddrV4::new(WEB_BACKEND, PORT).into(), 1)
        .unwrap();
    lb.add_vip(balancer::config::VipConfig {
        forwarding: Forwarding::Tunnel,
        encapsulation,
        ..vip("tun", PORT, Protocol::Tcp)
    })
    .unwrap();
    fx
}

/// A TCP segment with `flags` from the client to the tunnel VIP, with `payload` bytes.
fn to_tunnel(flags: Flags, payload: usize) -> Spec {
    Spec {
        dport: PORT,
        payload: vec![0x5a; payload],
        ..segment(flags)
    }
}

/// What an encapsulated packet's outer headers say.
#[derive(Debug, PartialEq)]
struct Outer {
    src: Ipv4Addr,
    /// GUE's UDP source port; 0 for IPIP.
    gue_sport: u16,
}

/// Checks that `out` is `input`'s IP packet, unchanged, inside `encapsulation`'s outer
/// headers towards the web backend, and returns what varies.
fn encapsulated(input: &[u8], out: &[u8], encapsulation: Encapsulation) -> Outer {
    assert_eq!(&out[..6], &WEB_BACKEND_MAC.0, "to the backend's MAC");
    assert_eq!(&out[6..12], &LB_BACKEND_MAC.0, "from the balancer's");
    assert_eq!(&out[12..14], &[0x08, 0x00], "IPv4");
    let outer = ipv4::Packet::new_header_checked(&out[14..]).expect("an outer IPv4 header");
    assert!(outer.verify_checksum(), "the outer header checksum");
    assert_eq!(
        usize::from(outer.total_len()),
        out.len() - 14,
        "outer total length"
    );
    assert_eq!(outer.header_len(), 20);
    assert_eq!(outer.ttl(), 64, "outer TTL");
    assert!(outer.dont_frag(), "DF copied from the inner header");
    assert!(!outer.more_frags() && outer.frag_offset() == 0);
    assert_eq!(outer.dst_addr(), WEB_BACKEND, "to the backend");
    let inner = &input[14..];
    let payload = outer.payload();
    match encapsulation {
        Encapsulation::Ipip => {
            assert_eq!(outer.protocol(), IpProtocol(4), "IPIP");
            assert_eq!(payload, inner, "the inner packet leaves as it came");
            Outer {
                src: outer.src_addr(),
                gue_sport: 0,
            }
        }
        Encapsulation::Gue => {
            assert_eq!(outer.protocol(), IpProtocol::UDP, "GUE is UDP");
            let field = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            let sport = field(0);
            assert!(
                sport >= 49152,
                "GUE source port {sport} in the ephemeral range"
            );
            assert_eq!(field(2), 6080, "GUE destination port");
            assert_eq!(usize::from(field(4)), payload.len(), "UDP length");
            assert_eq!(field(6), 0, "no UDP checksum");
            assert_eq!(&payload[8..], inner, "the inner packet leaves as it came");
            Outer {
                src: outer.src_addr(),
                gue_sport: sport,
            }
        }
    }
}

fn check_encapsulated(
    encapsulation: Encapsulation,
    expect: Option<Outer>,
) -> impl FnOnce(&[u8], &[u8], &Fixture) {
    move |input, out, _| {
        let outer = encapsulated(input, out, encapsulation);
        if let Some(expect) = expect {
            assert_eq!(outer, expect);
        }
    }
}

#[test]
fn an_ipip_flow_is_encapsulated_unchanged_and_pinned_without_translation() {
    let syn = Spec {
        dport: PORT,
        ..syn()
    };
    let key = client_key(&syn);
    let ipip = Encapsulation::Ipip;
    let from = || {
        Some(Outer {
            src: SOURCE,
            gue_sport: 0,
        })
    };
    tunnel_fixture(ipip, (SOURCE, 32), 1500).run_steps([
        from_client("the SYN", syn, XDP_REDIRECT)
            .output_and_input(check_encapsulated(ipip, from())),
        check("a new flow, pinned, half-open, no SNAT port", move |fx| {
            let counters = fx.counters("tun");
            assert_eq!((counters.packets, counters.new_flows), (1, 1));
            let conn = fx.conn(&key);
            assert_eq!(
                conn.state & (FLOW_DSR | FLOW_TUNNEL | FLOW_GUE | FLOW_ESTABLISHED),
                FLOW_DSR | FLOW_TUNNEL,
                "{conn:?}"
            );
            assert_eq!((conn.snat_addr, conn.snat_port), (0, 0), "{conn:?}");
        }),
        from_client(
            "the handshake's ACK",
            to_tunnel(Flags::ACK, 0),
            XDP_REDIRECT,
        )
        .output_and_input(check_encapsulated(ipip, from())),
        check("established by the client's ACK, and cached", move |fx| {
            assert_ne!(fx.conn(&key).state & FLOW_ESTABLISHED, 0);
            let cache = fx.flow_cache();
            assert_eq!(cache.len(), 1, "{cache:?}");
            assert_ne!(cache[0].state & FLOW_TUNNEL, 0, "{cache:?}");
        }),
        from_client(
            "data, from the flow cache",
            to_tunnel(Flags::ACK | Flags::PSH, 700),
            XDP_REDIRECT,
        )
        .output_and_input(check_encapsulated(ipip, from())),
        check("three packets of one flow, nothing translated", |fx| {
            let counters = fx.counters("tun");
            assert_eq!((counters.packets, counters.new_flows), (3, 1));
            assert_eq!(fx.global(stat::NAT_REPLY), 0);
            assert_eq!(fx.global(stat::TUNNEL_TOO_BIG), 0);
        }),
    ]);
}

#[test]
fn gue_flows_spread_their_outer_source_and_port_and_each_keeps_its_own() {
    let prefix = Ipv4Addr::new(172, 16, 0, 0);
    let mut fx = tunnel_fixture(Encapsulation::Gue, (prefix, 16), 1500);
    let mut seen = Vec::new();
    for sport in 40000..40016u16 {
        let first = Spec {
            sport,
            ..to_tunnel(Flags::SYN, 0)
        };
        let again = Spec {
            sport,
            ..to_tunnel(Flags::ACK, 100)
        };
        for (spec, what) in [(first, "SYN"), (again, "ACK")] {
            let input = balancer_tests::frame::build(&spec);
            let (verdict, out) = fx.run(&input, balancer_tests::fixtures::Side::Client);
            assert_eq!(verdict, XDP_REDIRECT, "flow from port {sport}, {what}");
            let outer = encapsulated(&input, &out, Encapsulation::Gue);
            assert_eq!(
                u32::from(outer.src) >> 16,
                u32::from(prefix) >> 16,
                "{outer:?} in the prefix"
            );
            if what == "SYN" {
                seen.push(outer);
            } else {
                assert_eq!(
                    &outer,
                    seen.last().unwrap(),
                    "a flow keeps its outer source and port"
                );
            }
        }
        assert_ne!(
            fx.conn(&client_key(&Spec {
                sport,
                ..to_tunnel(Flags::SYN, 0)
            }))
            .state
                & FLOW_GUE,
            0
        );
    }
    let sources: std::collections::BTreeSet<_> = seen.iter().map(|o| o.src).collect();
    let ports: std::collections::BTreeSet<_> = seen.iter().map(|o| o.gue_sport).collect();
    assert!(
        sources.len() >= 8,
        "16 flows from {} outer sources: {seen:?}",
        sources.len()
    );
    assert!(
        ports.len() >= 8,
        "16 flows from {} GUE source ports: {seen:?}",
        ports.len()
    );
}

/// Checks that `out` is the ICMP "fragmentation needed" for `input` with next-hop MTU
/// `mtu`, from the VIP back to the client's MAC.
fn frag_needed(mtu: u16) -> impl FnOnce(&[u8], &[u8], &Fixture) {
    move |input, out, _| {
        let icmp = parsed_icmp(out);
        assert_eq!(
            (icmp.dst_mac, icmp.src_mac),
            (CLIENT_MAC, LB_CLIENT_MAC),
            "back where it came from"
        );
        assert_eq!(
            (icmp.src, icmp.dst),
            (VIP, CLIENT),
            "from the VIP to the client"
        );
        assert!(icmp.ip_checksum_ok, "IPv4 header checksum");
        assert!(icmp.icmp_checksum_ok, "ICMP checksum");
        assert_eq!(icmp.ttl, 64);
        assert_eq!(
            (icmp.icmp.kind, icmp.icmp.code),
            (Message::DST_UNREACHABLE, 4)
        );
        assert_eq!(icmp.icmp.rest, u32::from(mtu), "next-hop MTU");
        assert_eq!(
            icmp.icmp.body,
            &input[14..14 + 28],
            "quotes the IPv4 header and 8 bytes"
        );
        assert_eq!(out.len(), 14 + 20 + 8 + 28, "nothing more");
    }
}

/// A data segment whose IPv4 packet is `ip_len` bytes long.
fn data_of(ip_len: usize) -> Spec {
    to_tunnel(Flags::ACK | Flags::PSH, ip_len - 40)
}

#[test]
fn a_packet_that_would_not_fit_the_tunnel_gets_fragmentation_needed() {
    for (encapsulation, mtu, room) in [
        (Encapsulation::Ipip, 1500, 1480),
        (Encapsulation::Gue, 1500, 1472),
        (Encapsulation::Ipip, 1400, 1380),
    ] {
        eprintln!("{encapsulation:?} with tunnel.mtu {mtu}");
        let mut fx = tunnel_fixture(encapsulation, (SOURCE, 32), mtu);
        fx.run_steps([
            from_client("the SYN", to_tunnel(Flags::SYN, 0), XDP_REDIRECT),
            from_client(
                "a packet that just fits",
                data_of(usize::from(room)),
                XDP_REDIRECT,
            )
            .output_and_input(check_encapsulated(encapsulation, None)),
            from_client(
                "one byte more",
                data_of(usize::from(room) + 1),
                XDP_REDIRECT,
            )
            .output_and_input(frag_needed(room)),
            from_client("a full-size one", data_of(1500), XDP_REDIRECT)
                .output_and_input(frag_needed(room)),
            check("counted, and not as the flow's packets", |fx| {
                assert_eq!(fx.global(stat::TUNNEL_TOO_BIG), 2);
                assert_eq!(fx.counters("tun").packets, 2);
            }),
        ]);
    }
}

#[test]
fn a_tunnel_mtu_above_the_interface_mtu_drops_and_counts() {
    let datagram = |sport: u16| Spec {
        sport,
        dport: PORT,
        l4: L4::Udp { checksum: true },
        payload: vec![7; 1400],
        ..syn()
    };
    let mut fx = Fixture::with_tunnel(
        &Timeouts::default(),
        &NatConfig::default(),
        &TunnelConfig {
            source: Some((SOURCE, 32)),
            ..TunnelConfig::default()
        },
    );
    fx.run_steps([
        act(
            "a UDP tunnel VIP, and the backends' link at MTU 1400",
            |fx| {
                let lb = fx.lb();
                lb.add_pool("udp").unwrap();
                lb.add_backend("udp", SocketAddrV4::new(WEB_BACKEND, PORT).into(), 1)
                    .unwrap();
                lb.add_vip(balancer::config::VipConfig {
                    forwarding: Forwarding::Tunnel,
                    ..vip("udp", PORT, Protocol::Udp)
                })
                .unwrap();
                // (Commands inherit the namespace of the thread that runs them: the fixture's.)
                let status = Command::new("ip")
                    .args(["link", "set", "fxb", "mtu", "1400"])
                    .status()
                    .unwrap();
                assert!(status.success());
            },
        ),
        from_client(
            "a 1428-byte datagram: 1448 encapsulated",
            datagram(41000),
            XDP_DROP,
        ),
        check("dropped as too big for the link", |fx| {
            assert_eq!(fx.global(stat::DROP_TUNNEL_MTU), 1);
            assert_eq!(fx.global(stat::TUNNEL_TOO_BIG), 0);
        }),
    ]);
}
