//! Packet fixtures: the backends' decapsulation program (`balancer decap`). An IPIP or GUE
//! packet to one of its addresses leaves to the stack as the inner packet behind the same
//! MACs; every other packet (a tunnel to another address, GUE on another port, a broken
//! inner packet, an outer fragment, plain traffic) passes untouched. Each case is counted.

use std::net::Ipv4Addr;

use balancer_common::decap_stat;
use balancer_tests::fixtures::frames::{syn, LB_BACKEND_MAC, WEB_BACKEND, WEB_BACKEND_MAC};
use balancer_tests::fixtures::{act, check, to_decap, Fixture, XDP_PASS};
use balancer_tests::frame::{self, Spec};
use balancer_wire::ip::IpProtocol;
use balancer_wire::ipv4;

/// The balancer's outer source.
const BALANCER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const GUE_PORT: u16 = 6080;

/// The client's SYN as the balancer forwards it, MACs of the balancer-backend link.
fn inner() -> Vec<u8> {
    frame::build(&Spec {
        src_mac: LB_BACKEND_MAC,
        dst_mac: WEB_BACKEND_MAC,
        ..syn()
    })
}

/// How a packet is put in a tunnel.
#[derive(Clone, Copy)]
enum Tunnel {
    Ipip,
    /// GUE to this UDP port.
    Gue(u16),
}

/// `inner`'s IP packet (a frame) inside `tunnel` to `dst`; `fragment`: the outer header
/// says "more fragments".
fn encapsulate(inner: &[u8], tunnel: Tunnel, dst: Ipv4Addr, fragment: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    let protocol = match tunnel {
        Tunnel::Ipip => IpProtocol(4),
        Tunnel::Gue(port) => {
            let len = (8 + inner.len() - 14) as u16;
            payload.extend_from_slice(&50000u16.to_be_bytes());
            payload.extend_from_slice(&port.to_be_bytes());
            payload.extend_from_slice(&len.to_be_bytes());
            payload.extend_from_slice(&[0, 0]);
            IpProtocol::UDP
        }
    };
    payload.extend_from_slice(&inner[14..]);
    let repr = ipv4::Repr {
        src_addr: BALANCER,
        dst_addr: dst,
        protocol,
        payload_len: payload.len(),
        more_frags: fragment,
        dont_frag: !fragment,
        ..ipv4::Repr::default()
    };
    let mut out = inner[..14].to_vec();
    let mut header = vec![0; repr.buffer_len()];
    let mut packet = ipv4::Packet::new_unchecked(&mut header[..]);
    repr.emit(&mut packet);
    packet.payload_mut().copy_from_slice(&payload);
    out.extend_from_slice(&header);
    out
}

/// The output must be `inner`, MACs and all.
fn decapsulated(inner: Vec<u8>) -> impl FnOnce(&[u8], &[u8], &Fixture) {
    move |_, out, _| assert_eq!(out, &inner[..], "the inner packet behind the same MACs")
}

#[test]
fn tunnel_packets_to_its_addresses_are_decapsulated_and_the_rest_pass_untouched() {
    let to_us = WEB_BACKEND;
    let elsewhere = Ipv4Addr::new(10, 0, 2, 99);
    let mut not_ipv4_inside = encapsulate(&inner(), Tunnel::Ipip, to_us, false);
    not_ipv4_inside[14 + 20] = 0x65;
    let truncated = encapsulate(&inner(), Tunnel::Ipip, to_us, false)[..14 + 20 + 12].to_vec();
    Fixture::new().run_steps([
        act(
            "the program accepts the web backend's address, GUE on 6080",
            move |fx| {
                fx.decap_accepts(&[to_us], GUE_PORT);
            },
        ),
        to_decap(
            "IPIP to us",
            encapsulate(&inner(), Tunnel::Ipip, to_us, false),
            XDP_PASS,
        )
        .output_and_input(decapsulated(inner())),
        to_decap(
            "GUE to us",
            encapsulate(&inner(), Tunnel::Gue(GUE_PORT), to_us, false),
            XDP_PASS,
        )
        .output_and_input(decapsulated(inner())),
        to_decap(
            "IPIP to another address",
            encapsulate(&inner(), Tunnel::Ipip, elsewhere, false),
            XDP_PASS,
        )
        .unchanged(),
        to_decap(
            "GUE to another address",
            encapsulate(&inner(), Tunnel::Gue(GUE_PORT), elsewhere, false),
            XDP_PASS,
        )
        .unchanged(),
        to_decap(
            "UDP to us on another port",
            encapsulate(&inner(), Tunnel::Gue(6081), to_us, false),
            XDP_PASS,
        )
        .unchanged(),
        to_decap(
            "IPIP to us whose inner packet is not IPv4",
            not_ipv4_inside,
            XDP_PASS,
        )
        .unchanged(),
        to_decap("IPIP to us cut short inside", truncated, XDP_PASS).unchanged(),
        to_decap(
            "an outer fragment",
            encapsulate(&inner(), Tunnel::Ipip, to_us, true),
            XDP_PASS,
        )
        .unchanged(),
        to_decap("plain TCP", inner(), XDP_PASS).unchanged(),
        check("each counted for what it was", |fx| {
            let counts: Vec<u64> = (0..decap_stat::COUNT).map(|i| fx.decap_count(i)).collect();
            let mut expected = vec![0; decap_stat::COUNT as usize];
            expected[decap_stat::IPIP as usize] = 1;
            expected[decap_stat::GUE as usize] = 1;
            expected[decap_stat::NOT_OURS as usize] = 2;
            expected[decap_stat::MALFORMED as usize] = 3;
            expected[decap_stat::OTHER as usize] = 2;
            assert_eq!(counts, expected, "{:?}", decap_stat::NAMES);
        }),
    ]);
}

#[test]
fn gue_is_not_decapsulated_when_its_port_is_off() {
    Fixture::new().run_steps([
        act("IPIP only", |fx| fx.decap_accepts(&[WEB_BACKEND], 0)),
        to_decap(
            "GUE to us",
            encapsulate(&inner(), Tunnel::Gue(GUE_PORT), WEB_BACKEND, false),
            XDP_PASS,
        )
        .unchanged(),
        to_decap(
            "IPIP to us",
            encapsulate(&inner(), Tunnel::Ipip, WEB_BACKEND, false),
            XDP_PASS,
        )
        .output_and_input(decapsulated(inner())),
    ]);
}
