//! Packet fixtures: direct server return. A client's packet to a `dsr` VIP leaves towards
//! its backend with only the MACs changed (addresses, ports, TTL and checksums as they
//! came); the flow is pinned in `CONNS` alone, established by the client's first ACK and
//! then served from the flow cache; a backend's own answer is none of the balancer's
//! business; a backend behind a gateway is refused per packet.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;

use balancer::config::{Forwarding, Protocol};
use balancer_common::{stat, FLOW_DSR, FLOW_ESTABLISHED};
use balancer_tests::fixtures::frames::{
    client_key, segment, syn, BACKEND_ROUTER, LB_BACKEND_MAC, VIP, WEB_BACKEND, WEB_BACKEND_MAC,
};
use balancer_tests::fixtures::{act, check, from_backend, from_client, vip, Fixture, XDP_DROP};
use balancer_tests::fixtures::{XDP_PASS, XDP_REDIRECT};
use balancer_tests::frame::{self, Spec};
use balancer_wire::tcp::Flags;

/// The DSR VIP's port, which its backend listens on too.
const PORT: u16 = 443;

/// Adds pool `name` with `backend` and a `dsr` VIP of that name on the fixture's VIP
/// address at `backend`'s port.
fn dsr_vip(fx: &mut Fixture, name: &str, backend: SocketAddrV4) {
    let lb = fx.lb();
    lb.add_pool(name).unwrap();
    lb.add_backend(name, backend.into(), 1).unwrap();
    lb.add_vip(balancer::config::VipConfig {
        forwarding: Forwarding::Dsr,
        ..vip(name, backend.port(), Protocol::Tcp)
    })
    .unwrap();
}

fn to_dsr(flags: Flags) -> Spec {
    Spec {
        dport: PORT,
        payload: if flags.contains(Flags::PSH) {
            b"GET / HTTP/1.1\r\n\r\n".to_vec()
        } else {
            Vec::new()
        },
        ..segment(flags)
    }
}

/// Checks that `out` is `input` with only the MACs changed, towards the web backend.
fn only_macs_changed(input: &Spec) -> impl FnOnce(&[u8], &Fixture) {
    let sent = frame::build(input);
    move |out: &[u8], _: &Fixture| {
        assert_eq!(&out[..6], &WEB_BACKEND_MAC.0, "to the backend's MAC");
        assert_eq!(&out[6..12], &LB_BACKEND_MAC.0, "from the balancer's");
        assert_eq!(
            &out[12..],
            &sent[12..],
            "everything after the MACs leaves as it came (addresses, ports, TTL, checksums)"
        );
    }
}

#[test]
fn a_dsr_flow_changes_only_macs_and_is_pinned_without_translation() {
    let syn = Spec {
        dport: PORT,
        ..syn()
    };
    let key = client_key(&syn);
    let ack = to_dsr(Flags::ACK);
    let data = to_dsr(Flags::ACK | Flags::PSH);
    Fixture::new().run_steps([
        act("a dsr VIP on :443", |fx| {
            dsr_vip(fx, "direct", SocketAddrV4::new(WEB_BACKEND, PORT));
        }),
        from_client("the SYN", syn.clone(), XDP_REDIRECT).output(only_macs_changed(&syn)),
        check("a new flow, pinned, half-open, no SNAT port", move |fx| {
            let counters = fx.counters("direct");
            assert_eq!((counters.packets, counters.new_flows), (1, 1));
            let conn = fx.conn(&key);
            assert_eq!(
                conn.state & (FLOW_DSR | FLOW_ESTABLISHED),
                FLOW_DSR,
                "{conn:?}"
            );
            assert_eq!((conn.snat_addr, conn.snat_port), (0, 0), "{conn:?}");
            assert!(fx.flow_cache().is_empty(), "half-open flows are not cached");
        }),
        from_client("the handshake's ACK", ack.clone(), XDP_REDIRECT)
            .output(only_macs_changed(&ack)),
        check("established by the client's ACK, and cached", move |fx| {
            assert_ne!(fx.conn(&key).state & FLOW_ESTABLISHED, 0);
            let cache = fx.flow_cache();
            assert_eq!(cache.len(), 1, "{cache:?}");
            assert_ne!(cache[0].state & FLOW_DSR, 0, "{cache:?}");
        }),
        from_client("data, from the flow cache", data.clone(), XDP_REDIRECT)
            .output(only_macs_changed(&data)),
        check("three packets of one flow", |fx| {
            let counters = fx.counters("direct");
            assert_eq!((counters.packets, counters.new_flows), (3, 1));
            assert_eq!(fx.global(stat::NAT_REPLY), 0);
        }),
        from_backend(
            "the backend's own answer (had it come this way) is passed",
            Spec {
                src_mac: WEB_BACKEND_MAC,
                dst_mac: LB_BACKEND_MAC,
                src: VIP,
                dst: syn.src,
                sport: PORT,
                dport: syn.sport,
                ..to_dsr(Flags::ACK)
            },
            XDP_PASS,
        )
        .unchanged(),
    ]);
}

#[test]
fn a_dsr_backend_behind_a_gateway_is_dropped_not_looped() {
    let far = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 5), 444);
    let syn = Spec {
        dport: far.port(),
        ..syn()
    };
    Fixture::new().run_steps([
        act(
            "a dsr VIP whose backend is routed through a gateway",
            move |fx| {
                // (Commands inherit the namespace of the thread that runs them: the fixture's.)
                for args in [
                    vec![
                        "neigh",
                        "replace",
                        "10.0.2.254",
                        "lladdr",
                        "02:00:00:00:02:fe",
                        "dev",
                        "fxb",
                        "nud",
                        "permanent",
                    ],
                    vec!["route", "add", "10.0.3.0/24", "via", "10.0.2.254"],
                ] {
                    let status = Command::new("ip").args(&args).status().unwrap();
                    assert!(status.success(), "ip {}", args.join(" "));
                }
                assert_eq!(BACKEND_ROUTER.to_string(), "10.0.2.254");
                dsr_vip(fx, "far", far);
            },
        ),
        from_client("the SYN", syn, XDP_DROP),
        check("counted as not on a link", |fx| {
            assert_eq!(fx.global(stat::DROP_DSR_NOT_ON_LINK), 1);
        }),
    ]);
}
