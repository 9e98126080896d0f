//! Packet fixtures: NAT. A client's packet to a VIP leaves towards a backend from the SNAT
//! address, the backend's reply towards the client from the VIP, checksums right; a flow
//! whose VIP is gone is no longer translated.

use balancer_common::stat;
use balancer_tests::fixtures::frames::{
    ack, forwarded_to, parsed, syn, udp, web_reply, CLIENT, CLIENT_MAC, DNS_BACKEND,
    DNS_BACKEND_MAC, LB_CLIENT_MAC, VIP, WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{
    act, check, from_backend, from_client, later, vip, Fixture, Protocol, XDP_PASS, XDP_REDIRECT,
};
use balancer_tests::frame::{Spec, L4};
use balancer_wire::tcp::Flags;

#[test]
fn syn_to_vip_is_translated_to_the_backend() {
    let spec = syn();
    let forwarded = forwarded_to(&spec, WEB_BACKEND, WEB_BACKEND_MAC);
    Fixture::new().run_steps([
        from_client("SYN to the VIP", spec, XDP_REDIRECT).output(|out, fx| {
            forwarded(out, fx);
            let out = parsed(out);
            assert_eq!(out.l4_checksum_ok, Some(true));
            assert_eq!(out.tcp_flags, Flags::SYN);
        }),
        check("one packet, one new flow", |fx| {
            let counters = fx.counters("web");
            assert_eq!((counters.packets, counters.new_flows), (1, 1));
        }),
    ]);
}

#[test]
fn reply_is_translated_back_to_the_client() {
    let reply = |fx: &Fixture| Spec {
        payload: b"welcome".to_vec(),
        ..web_reply(fx.port("syn"), Flags::SYN | Flags::ACK)
    };
    Fixture::new().run_steps([
        from_client("the client's SYN", syn(), XDP_REDIRECT).keep("syn"),
        from_backend("reply", later(reply), XDP_REDIRECT).output(|out, _| {
            let out = parsed(out);
            assert_eq!(
                (out.src, out.sport),
                (VIP, 80),
                "reply must come from the VIP"
            );
            assert_eq!(
                (out.dst, out.dport),
                (CLIENT, 40000),
                "reply must go to the client"
            );
            assert_eq!(out.dst_mac, CLIENT_MAC);
            assert_eq!(out.src_mac, LB_CLIENT_MAC);
            assert!(
                out.ip_checksum_ok && out.l4_checksum_ok == Some(true),
                "checksums after reverse NAT"
            );
            assert_eq!(out.payload, b"welcome");
        }),
        check("counted as a NAT reply", |fx| {
            assert_eq!(fx.global(stat::NAT_REPLY), 1);
        }),
        check("the client's next hop is now cached", |fx| {
            let hops = fx.client_hops();
            assert_eq!(hops.len(), 1, "one cached reply next hop: {hops:?}");
            assert_eq!(hops[0].addr, u32::from_ne_bytes(CLIENT.octets()));
            assert_eq!(
                (hops[0].dmac, hops[0].smac),
                (CLIENT_MAC.0, LB_CLIENT_MAC.0)
            );
        }),
        from_backend("second reply", later(reply), XDP_REDIRECT).output(|out, _| {
            let again = parsed(out);
            assert_eq!(
                (again.dst, again.dst_mac, again.src_mac),
                (CLIENT, CLIENT_MAC, LB_CLIENT_MAC),
                "the next reply leaves the same way"
            );
        }),
        check("counted as a NAT reply", |fx| {
            assert_eq!(fx.global(stat::NAT_REPLY), 2);
        }),
    ]);
}

#[test]
fn udp_to_vip_is_translated_and_zero_checksum_stays_zero() {
    let spec = Spec {
        payload: b"query".to_vec(),
        ..udp()
    };
    let without_checksum = Spec {
        sport: 40002,
        l4: L4::Udp { checksum: false },
        ..spec.clone()
    };
    let forwarded = forwarded_to(&spec, DNS_BACKEND, DNS_BACKEND_MAC);
    Fixture::new().run_steps([
        from_client("a datagram to the UDP VIP", spec, XDP_REDIRECT).output(|out, fx| {
            forwarded(out, fx);
            assert_eq!(parsed(out).l4_checksum_ok, Some(true));
        }),
        from_client(
            "a datagram without checksum",
            without_checksum,
            XDP_REDIRECT,
        )
        .output(|out, _| {
            assert_eq!(
                parsed(out).l4_checksum_ok,
                None,
                "a zero UDP checksum must stay zero"
            );
        }),
    ]);
}

#[test]
fn a_deleted_vips_established_flow_is_no_longer_forwarded() {
    Fixture::new().run_steps([
        from_client("SYN", syn(), XDP_REDIRECT),
        from_client("ACK", ack(), XDP_REDIRECT),
        // The flow's connection-table entry outlives its VIP, but it is the VIP's no more.
        act("the VIP is deleted", |fx| fx.lb().del_vip("web").unwrap()),
        from_client(
            "a flow of a deleted VIP goes to the stack, and leaves untouched",
            ack(),
            XDP_PASS,
        )
        .unchanged(),
        act("a VIP is added again on the same address and port", |fx| {
            fx.lb().add_vip(vip("web", 80, Protocol::Tcp)).unwrap();
            let new_flows = fx.new_flows("web");
            fx.note("new flows", new_flows);
        }),
        from_client("ACK to the VIP added again", ack(), XDP_REDIRECT),
        check("it takes the tuple as a new flow", |fx| {
            assert_eq!(
                fx.new_flows("web"),
                fx.noted("new flows") + 1,
                "scheduled anew"
            );
        }),
    ]);
}
