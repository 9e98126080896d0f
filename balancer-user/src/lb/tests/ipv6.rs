//! IPv6 VIPs and backends: their own maps, one family per pool, sources of their family.

use std::net::{IpAddr, SocketAddr};

use balancer_common::{BACKEND_F_PRESENT, MAX_SNAT_ADDRS};

use super::{vip, Scheduler};
use crate::{
    config::{Forwarding, NatConfig, Timeouts, TunnelConfig},
    dataplane::{family::v6_words, AnyVipKey, FakeMaps},
    lb::{settings, Balancer, SnatSource},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn backend6(i: u8) -> SocketAddr {
    SocketAddr::new(ip(&format!("fd00:2::{}", 10 + i)), 80)
}

/// A balancer whose SNAT sources are 10.0.2.1 and `sources6`.
fn lb(sources6: &[&str]) -> Balancer<FakeMaps> {
    let settings = settings(
        &Timeouts::default(),
        &NatConfig::default(),
        &TunnelConfig::default(),
    );
    let mut sources = vec![ip("10.0.2.1")];
    sources.extend(sources6.iter().map(|s| ip(s)));
    Balancer::new(FakeMaps::default(), &settings, SnatSource::Fixed(sources)).unwrap()
}

fn vip6(name: &str) -> crate::config::VipConfig {
    crate::config::VipConfig {
        address: ip("fd00:100::1"),
        ..vip(name, 80, Scheduler::Maglev)
    }
}

#[test]
fn ipv6_vips_and_backends_are_written_to_the_ipv6_maps() {
    let mut lb = lb(&["fd00:2::1"]);
    lb.add_pool("web").unwrap();
    for i in 1..=2 {
        lb.add_backend("web", backend6(i), 1).unwrap();
    }
    lb.add_vip(vip6("web")).unwrap();
    let key = lb.vips["web"].key();
    assert!(matches!(key, AnyVipKey::V6(_)), "{key:?}");
    assert_eq!(key.addr(), ip("fd00:100::1"));
    assert_eq!(lb.maps().vips[&key].ring_size, 65537);
    assert_eq!(lb.maps().present.count(key.slot()), 1);
    // The IPv6 backends are in BACKENDS6 with the IPv6 source in every slot; BACKENDS
    // holds none of them.
    assert!(lb.maps().backends.values().all(|b| b.flags == 0));
    let sources = [v6_words("fd00:2::1".parse().unwrap()); MAX_SNAT_ADDRS];
    for b in lb.maps().backends6.values() {
        assert_eq!((b.flags, b.snat_addrs), (BACKEND_F_PRESENT, sources));
    }
    assert_eq!(
        super::ring_members(&lb, "web"),
        [backend6(1), backend6(2)].into_iter().collect()
    );
    // Status shows them as they are written: `[fd00:2::11]:80`.
    let status = lb.status().unwrap();
    let shown: Vec<String> = status.pools[0]
        .backends
        .iter()
        .map(|b| b.socket_addr().to_string())
        .collect();
    assert_eq!(shown, ["[fd00:2::11]:80", "[fd00:2::12]:80"]);
    assert_eq!(
        status.vips[0].config.socket_addr().to_string(),
        "[fd00:100::1]:80"
    );
}

#[test]
fn a_deleted_ipv6_backend_leaves_no_entry_and_its_id_serves_either_family() {
    let mut lb = lb(&["fd00:2::1"]);
    lb.add_pool("web").unwrap();
    lb.add_backend("web", backend6(1), 1).unwrap();
    let id = lb.pools["web"].backends[0].id;
    lb.del_backend("web", backend6(1)).unwrap();
    assert_eq!(lb.maps().backends6[&id].flags, 0);
    assert_eq!(lb.maps().backends[&id].flags, 0);
    lb.add_pool("v4").unwrap();
    lb.add_backend("v4", super::backend(1), 1).unwrap();
    let id4 = lb.pools["v4"].backends[0].id;
    assert_eq!(lb.maps().backends[&id4].flags, BACKEND_F_PRESENT);
    assert_eq!(lb.maps().backend_addr(id4), Some(super::backend(1)));
}

#[test]
fn one_family_per_pool_and_vip() {
    let mut lb = lb(&["fd00:2::1"]);
    lb.add_pool("web").unwrap();
    lb.add_backend("web", backend6(1), 1).unwrap();
    let e = lb.add_backend("web", super::backend(1), 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid backend address: 10.0.2.11:80 is an IPv4 address, and pool \"web\" has IPv6 \
         backends ([fd00:2::11]:80): the backends of a pool must be of one family"
    );
    let e = lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid VIP address: VIP \"web\" is an IPv4 address, and its pool \"web\" has IPv6 \
         backends ([fd00:2::11]:80): an L4 VIP and its pool must be of one family"
    );
    assert!(lb.vips.is_empty());

    // A pool without backends takes its VIP's family.
    lb.add_vip(crate::config::VipConfig {
        pool: "v4pool".into(),
        ..vip("v4vip", 81, Scheduler::Maglev)
    })
    .unwrap();
    let e = lb.add_backend("v4pool", backend6(2), 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid backend address: [fd00:2::12]:80 is an IPv6 address, and pool \"v4pool\" \
         serves IPv4 VIP \"v4vip\": an L4 VIP and its pool must be of one family"
    );
    assert!(lb.pools["v4pool"].backends.is_empty());
}

#[test]
fn an_ipv6_tunnel_vip_is_refused_by_name() {
    let mut lb = lb(&["fd00:2::1"]);
    let tunnel = crate::config::VipConfig {
        forwarding: Forwarding::Tunnel,
        ..vip6("tun")
    };
    let e = lb.add_vip(tunnel).unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid forwarding: VIP \"tun\" is IPv6 and \"tunnel\" encapsulates in IPv4 only: use \
         \"nat\" or \"dsr\" for an IPv6 VIP"
    );
}

#[test]
fn an_ipv6_backend_needs_an_ipv6_source() {
    let mut lb = lb(&[]);
    lb.add_pool("web").unwrap();
    let e = lb.add_backend("web", backend6(1), 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no source address towards backend [fd00:2::11]:80: nat.source_addresses has no IPv6 \
         address"
    );
    // IPv4 backends take only the IPv4 sources.
    let mut lb = self::lb(&["fd00:2::1"]);
    lb.add_pool("web").unwrap();
    lb.add_backend("web", super::backend(1), 1).unwrap();
    let b = lb.maps().backends.values().find(|b| b.flags != 0).unwrap();
    assert_eq!(
        b.snat_addrs,
        [u32::from_ne_bytes([10, 0, 2, 1]); MAX_SNAT_ADDRS]
    );
}
