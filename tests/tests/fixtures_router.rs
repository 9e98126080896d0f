//! Packet fixtures: what a careful router does. A forwarded packet loses one hop of TTL
//! (checksums kept right); one with TTL 0 or 1 goes to the stack, which answers with an
//! ICMP time exceeded; a packet that would start a flow with a wrong IPv4 or TCP checksum,
//! or from a source no host can have, is dropped, and starts none.

use balancer_common::stat;
use balancer_tests::fixtures::frames::{
    ack, client_key, forwarded_to, parsed, syn, web_reply, WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{
    check, from_backend, from_client, later, Fixture, Step, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use balancer_tests::frame::{self, Spec};
use balancer_wire::tcp::Flags;
use balancer_wire::{ethernet, ipv4};

#[test]
fn forwarded_packets_lose_one_hop_both_ways() {
    let spec = Spec { ttl: 9, ..syn() };
    Fixture::new().run_steps([
        // `forwarded_to` checks the TTL went down by one, and every checksum.
        from_client("a SYN with TTL 9", spec.clone(), XDP_REDIRECT)
            .keep("syn")
            .output(forwarded_to(&spec, WEB_BACKEND, WEB_BACKEND_MAC)),
        from_backend(
            "the SYN-ACK with TTL 7",
            later(|fx| Spec {
                ttl: 7,
                ..web_reply(fx.port("syn"), Flags::SYN | Flags::ACK)
            }),
            XDP_REDIRECT,
        )
        .output(|out, _| {
            let out = parsed(out);
            assert_eq!(out.ttl, 6, "the reply loses one hop too");
            assert!(out.ip_checksum_ok && out.l4_checksum_ok == Some(true));
        }),
        // The established packet takes the flow cache's precomputed checksum changes.
        from_client("the ACK with TTL 2", Spec { ttl: 2, ..ack() }, XDP_REDIRECT).output(
            |out, _| {
                let out = parsed(out);
                assert_eq!(out.ttl, 1);
                assert!(out.ip_checksum_ok && out.l4_checksum_ok == Some(true));
            },
        ),
    ]);
}

#[test]
fn ttl_0_and_1_go_to_the_stack_untouched() {
    let key = client_key(&syn());
    Fixture::new().run_steps([
        from_client("a SYN with TTL 1", Spec { ttl: 1, ..syn() }, XDP_PASS).unchanged(),
        from_client("a SYN with TTL 0", Spec { ttl: 0, ..syn() }, XDP_PASS).unchanged(),
        check("no flow", move |fx| {
            assert!(!fx.has_conn(&key), "an expired SYN must not start a flow");
        }),
        from_client("a SYN", syn(), XDP_REDIRECT).keep("flow"),
        from_backend(
            "a reply with TTL 1",
            later(|fx| Spec {
                ttl: 1,
                ..web_reply(fx.port("flow"), Flags::SYN | Flags::ACK)
            }),
            XDP_PASS,
        )
        .unchanged(),
        check("counted", |fx| {
            assert_eq!(fx.global(stat::PASS_TTL_EXPIRED), 3);
        }),
    ]);
}

/// [`syn`]'s frame with the byte at `offset` of its IPv4 datagram flipped.
fn corrupted(offset: usize) -> Vec<u8> {
    let mut bytes = frame::build(&syn());
    bytes[ethernet::HEADER_LEN + offset] ^= 0x5a;
    bytes
}

#[test]
fn a_syn_with_a_wrong_checksum_starts_no_flow() {
    let key = client_key(&syn());
    // Byte 10 is the IPv4 header checksum; the TCP checksum is at 16 of the segment.
    let bad_ip = corrupted(10);
    let bad_tcp = corrupted(ipv4::HEADER_LEN + 16);
    Fixture::new().run_steps([
        from_client("a SYN with a wrong IPv4 header checksum", bad_ip, XDP_DROP),
        from_client("a SYN with a wrong TCP checksum", bad_tcp, XDP_DROP),
        check("counted, no flow", move |fx| {
            assert_eq!(fx.global(stat::DROP_BAD_CHECKSUM), 2);
            assert!(!fx.has_conn(&key), "a corrupt SYN must not start a flow");
            assert_eq!(fx.new_flows("web"), 0);
        }),
        from_client("the same SYN intact", syn(), XDP_REDIRECT),
        check("a flow", |fx| assert_eq!(fx.new_flows("web"), 1)),
    ]);
}

#[test]
fn a_syn_from_a_martian_source_starts_no_flow() {
    let sources = [
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.5",
        "240.0.0.1",
        "255.255.255.255",
    ];
    let mut steps: Vec<Step> = sources
        .iter()
        .map(|src| {
            from_client(
                format!("a SYN from {src}"),
                Spec {
                    src: src.parse().unwrap(),
                    ..syn()
                },
                XDP_DROP,
            )
        })
        .collect();
    steps.push(check("counted, no flow", |fx| {
        assert_eq!(fx.global(stat::DROP_MARTIAN), 5);
        assert_eq!(fx.new_flows("web"), 0);
    }));
    Fixture::new().run_steps(steps);
}
