//! Packet fixtures: parsing. What is not for a VIP passes untouched, truncated and
//! malformed headers are dropped, fragments and VLAN-tagged frames pass, IPv4 options are
//! kept.

use std::net::Ipv4Addr;

use balancer_common::stat;
use balancer_tests::fixtures::frames::{
    client_key, forwarded_to, syn, CLIENT, CLIENT_MAC, SNAT, VIP, WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{
    act, check, from_backend, from_client, Fixture, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use balancer_tests::frame::{self, Spec, L4};
use balancer_wire::ethernet::{self, EtherType};
use balancer_wire::{arp, ipv4, tcp, MacAddr};

/// An ARP request from the client for the VIP's address.
fn arp_request() -> Vec<u8> {
    let header = ethernet::Repr {
        src_addr: CLIENT_MAC,
        dst_addr: MacAddr::BROADCAST,
        vlan: None,
        ethertype: EtherType::ARP,
    };
    let request = arp::Repr {
        operation: arp::Operation::REQUEST,
        source_hardware_addr: CLIENT_MAC,
        source_protocol_addr: CLIENT,
        target_hardware_addr: MacAddr::default(),
        target_protocol_addr: VIP,
    };
    let mut bytes = vec![0; header.header_len() + request.buffer_len()];
    let mut eth = ethernet::Frame::new_unchecked(&mut bytes[..]);
    header.emit(&mut eth);
    request.emit(&mut arp::Packet::new_unchecked(eth.payload_mut()));
    bytes
}

#[test]
fn non_vip_traffic_passes_unchanged() {
    let stray_reply = Spec {
        src: WEB_BACKEND,
        dst: SNAT,
        sport: 80,
        dport: 25000,
        ..syn()
    };
    Fixture::new().run_steps([
        from_client(
            "VIP address, other port",
            Spec {
                dport: 8080,
                ..syn()
            },
            XDP_PASS,
        )
        .unchanged(),
        from_client(
            "VIP address and port, other protocol",
            Spec {
                l4: L4::Udp { checksum: true },
                ..syn()
            },
            XDP_PASS,
        )
        .unchanged(),
        from_client(
            "the balancer's own address",
            Spec {
                dst: Ipv4Addr::new(10, 0, 1, 1),
                dport: 22,
                ..syn()
            },
            XDP_PASS,
        )
        .unchanged(),
        from_client(
            "another host",
            Spec {
                dst: Ipv4Addr::new(10, 9, 9, 9),
                ..syn()
            },
            XDP_PASS,
        )
        .unchanged(),
        from_client("not IPv4 at all: ARP", arp_request(), XDP_PASS).unchanged(),
        from_backend(
            "a reply-looking packet to an unused SNAT port (no NAT entry)",
            stray_reply,
            XDP_PASS,
        )
        .unchanged(),
    ]);
}

/// `frame` with `bytes` written at `at`.
fn patched(frame: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut patched = frame.to_vec();
    patched[at..at + bytes.len()].copy_from_slice(bytes);
    patched
}

#[test]
fn truncated_and_malformed_headers_are_never_forwarded() {
    let good = frame::build(&syn());
    let ip = ethernet::HEADER_LEN;
    let tcp = ip + ipv4::HEADER_LEN;
    let options_past_end = frame::build(&Spec {
        ip_options: vec![1; 40],
        ..syn()
    });
    let cases = [
        ("IPv4 header cut short", good[..ip + 12].to_vec()),
        ("TCP header cut short", good[..tcp + 10].to_vec()),
        (
            "IHL below 5",
            patched(&good, ip + ipv4::field::VER_IHL, &[0x44]),
        ),
        (
            "IP version 6 in an IPv4 frame",
            patched(&good, ip + ipv4::field::VER_IHL, &[0x65]),
        ),
        (
            "total length beyond the frame",
            patched(
                &good,
                ip + ipv4::field::LENGTH.start,
                &2000u16.to_be_bytes(),
            ),
        ),
        (
            "TCP data offset below 5",
            patched(&good, tcp + tcp::field::DATA_OFFSET, &[0x20]),
        ),
        (
            "IPv4 options but frame cut in TCP",
            options_past_end[..ip + 60 + 8].to_vec(),
        ),
    ];
    let count = cases.len() as u64;
    let before = act("note the malformed drops so far", |fx| {
        let before = fx.global(stat::DROP_MALFORMED);
        fx.note("malformed", before);
    });
    let drops = cases.into_iter().map(|(what, frame)| {
        from_client(
            format!("{what}: must be dropped, not forwarded or passed"),
            frame,
            XDP_DROP,
        )
    });
    let counted = check("every one counted as malformed", move |fx| {
        assert_eq!(
            fx.global(stat::DROP_MALFORMED) - fx.noted("malformed"),
            count
        );
    });
    Fixture::new().run_steps(std::iter::once(before).chain(drops).chain([counted]));
}

#[test]
fn vlan_tagged_frames_are_passed_to_the_stack() {
    // Routed, the tag would go with the frame into the backends' segment (VLAN hopping).
    let spec = Spec {
        vlan: Some(0x2064),
        ..syn()
    };
    let key = client_key(&spec);
    Fixture::new().run_steps([
        from_client("a tagged SYN", spec, XDP_PASS).unchanged(),
        check("counted, no flow", move |fx| {
            assert_eq!(fx.global(stat::PASS_VLAN), 1);
            assert!(!fx.has_conn(&key), "a tagged frame must not start a flow");
        }),
    ]);
}

#[test]
fn ipv4_options_are_skipped_and_kept() {
    let spec = Spec {
        ip_options: vec![1, 1, 1, 0],
        ..syn()
    };
    let forwarded = forwarded_to(&spec, WEB_BACKEND, WEB_BACKEND_MAC);
    Fixture::new().run_steps([
        from_client("a SYN with IPv4 options", spec, XDP_REDIRECT).output(|out, fx| {
            forwarded(out, fx);
            let ip = ipv4::Packet::new_checked(frame::ip_datagram(out)).unwrap();
            assert_eq!(ip.header_len(), 24, "IHL with options must be kept");
        }),
    ]);
}

#[test]
fn fragments_pass_unchanged() {
    let mut first_fragment = frame::build(&syn());
    let mut ip = ipv4::Packet::new_unchecked(&mut first_fragment[ethernet::HEADER_LEN..]);
    ip.set_fragment(false, true, 0);
    ip.fill_checksum();
    Fixture::new().run_steps([
        from_client(
            "a first fragment (more fragments)",
            first_fragment,
            XDP_PASS,
        )
        .unchanged(),
        check("counted as a fragment", |fx| {
            assert_eq!(fx.global(stat::PASS_FRAGMENT), 1);
        }),
    ]);
}
