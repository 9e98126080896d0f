//! Unit tests of the balancer API over in-memory maps.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use balancer_common::{
    BACKEND_F_PRESENT, BACKEND_F_RESCHEDULE, MAX_RING_SIZE, MAX_SNAT_ADDRS, NO_BACKEND,
    SCHED_ROUND_ROBIN, VIP_F_DSR, VIP_F_PASS_ALL_DOWN,
};

use super::{ids::*, *};
use crate::{
    api::Status,
    config::{
        AllDownPolicy, DownPolicy, Encapsulation, Forwarding, NatConfig, Scheduler, Timeouts,
        TunnelConfig, VipMode,
    },
    dataplane::{
        family::{v4_addr, v4_word},
        FakeMaps,
    },
    health::HealthEvent,
};

const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

fn lb() -> Balancer<FakeMaps> {
    let settings = settings(
        &Timeouts::default(),
        &NatConfig::default(),
        &TunnelConfig::default(),
    );
    Balancer::new(
        FakeMaps::default(),
        &settings,
        SnatSource::Fixed(vec![SNAT.into()]),
    )
    .unwrap()
}

fn vip(name: &str, port: u16, scheduler: Scheduler) -> VipConfig {
    VipConfig {
        name: name.into(),
        address: Ipv4Addr::new(10, 0, 100, 1).into(),
        port,
        protocol: Protocol::Tcp,
        scheduler,
        ring_size: 65537,
        pool: "web".into(),
        on_all_down: AllDownPolicy::Drop,
        forwarding: Forwarding::Nat,
        encapsulation: Encapsulation::Ipip,
        mode: VipMode::L4,
        rules: Vec::new(),
    }
}

fn backend(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 2, 10 + i), 80))
}

/// Backend addresses a VIP's active ring can schedule to.
fn ring_members(lb: &Balancer<FakeMaps>, name: &str) -> HashSet<SocketAddr> {
    let key = lb.vips[name].key();
    lb.maps()
        .active_ring(&key)
        .into_iter()
        .filter(|&id| id != NO_BACKEND)
        .map(|id| lb.maps().backend_addr(id).expect("a present backend"))
        .collect()
}

#[test]
fn add_vip_writes_vip_and_full_ring() {
    let mut lb = lb();
    lb.add_pool("web").unwrap();
    for i in 1..=3 {
        lb.add_backend("web", backend(i), 1).unwrap();
    }
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    let key = lb.vips["web"].key();
    let meta = lb.maps().vips[&key];
    assert_eq!(meta.ring_size, 65537);
    assert_eq!(key.port(), 80u16.to_be());
    assert_eq!(ring_members(&lb, "web"), (1..=3).map(backend).collect());
    let b = lb.maps().backends.values().next().unwrap();
    assert_eq!(b.snat_addrs, [v4_word(SNAT); MAX_SNAT_ADDRS]);
    assert_eq!(b.flags, BACKEND_F_PRESENT);
}

#[test]
fn a_dsr_vip_is_flagged_and_keeps_its_backends_on_its_port() {
    let mut lb = lb();
    lb.add_pool("web").unwrap();
    lb.add_backend("web", backend(1), 1).unwrap();
    let odd = SocketAddr::from((Ipv4Addr::new(10, 0, 2, 20), 8080));
    let dsr = VipConfig {
        forwarding: Forwarding::Dsr,
        encapsulation: Encapsulation::Ipip,
        ..vip("web", 80, Scheduler::Maglev)
    };
    lb.add_vip(dsr.clone()).unwrap();
    let meta = lb.maps().vips[&lb.vips["web"].key()];
    assert_eq!(meta.flags & VIP_F_DSR, VIP_F_DSR);
    let refused = lb.add_backend("web", odd, 1).unwrap_err().to_string();
    assert!(refused.contains("must listen on port 80"), "{refused}");
    assert!(!ring_members(&lb, "web").contains(&odd));

    // And the other way round: a pool with a backend elsewhere takes no DSR VIP.
    lb.add_pool("alt").unwrap();
    lb.add_backend("alt", odd, 1).unwrap();
    lb.add_vip(VipConfig {
        name: "alt".into(),
        pool: "alt".into(),
        ..vip("alt", 81, Scheduler::Maglev)
    })
    .expect("NAT translates ports");
    let refused = lb
        .add_vip(VipConfig {
            name: "alt-dsr".into(),
            port: 82,
            pool: "alt".into(),
            ..dsr
        })
        .unwrap_err()
        .to_string();
    assert!(refused.contains("10.0.2.20:8080"), "{refused}");
}

#[test]
fn ring_update_flips_slices_and_writes_only_changes() {
    let mut lb = lb();
    for i in 1..=3 {
        lb.add_pool("web").unwrap();
        lb.add_backend("web", backend(i), 1).unwrap();
    }
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    let key = lb.vips["web"].key();
    let base_before = lb.maps().vips[&key].ring_base;
    lb.add_backend("web", backend(4), 1).unwrap();
    let base_after_add = lb.maps().vips[&key].ring_base;
    assert_ne!(
        base_before, base_after_add,
        "ring must flip to the other slice"
    );
    let writes = lb.maps().ring_writes;
    lb.del_backend("web", backend(4)).unwrap();
    assert_eq!(lb.maps().vips[&key].ring_base, base_before);
    let rewrite = lb.maps().ring_writes - writes;
    // The old slice already holds the 3-backend ring: only the few slots the rebuild
    // placed differently are written, not the whole slice.
    assert!(
        rewrite < 65537 / 100,
        "rewrote {rewrite} slots for a ring the slice already held"
    );
    assert_eq!(ring_members(&lb, "web"), (1..=3).map(backend).collect());
}

#[test]
fn del_backend_removes_it_from_the_ring_and_clears_its_slot() {
    let mut lb = lb();
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    for i in 1..=3 {
        lb.add_backend("web", backend(i), 1).unwrap();
    }
    lb.del_backend("web", backend(2)).unwrap();
    assert_eq!(ring_members(&lb, "web"), [backend(1), backend(3)].into());
    let present: Vec<_> = lb
        .maps()
        .backends
        .values()
        .filter(|b| b.flags & BACKEND_F_PRESENT != 0)
        .collect();
    assert_eq!(present.len(), 2);
}

#[test]
fn drain_keeps_backend_listed_but_out_of_the_ring() {
    let mut lb = lb();
    lb.add_vip(vip("web", 80, Scheduler::RoundRobin)).unwrap();
    for i in 1..=3 {
        lb.add_backend("web", backend(i), 1).unwrap();
    }
    lb.set_weight("web", backend(1), 0).unwrap();
    assert_eq!(ring_members(&lb, "web"), [backend(2), backend(3)].into());
    let status = lb.status().unwrap();
    let b1 = &status.pools[0].backends[0];
    assert_eq!((b1.weight, b1.state.as_str()), (0, "drained"));
    assert_eq!(status.vips[0].active_backends, 2);
    let meta = lb.maps().vips[&lb.vips["web"].key()];
    assert_eq!(meta.scheduler, SCHED_ROUND_ROBIN);
    assert_eq!(meta.ring_size, 2);
}

#[test]
fn all_drained_means_ring_size_zero() {
    let mut lb = lb();
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    assert_eq!(lb.maps().vips[&lb.vips["web"].key()].ring_size, 0);
    lb.add_backend("web", backend(1), 1).unwrap();
    assert_eq!(lb.maps().vips[&lb.vips["web"].key()].ring_size, 65537);
    lb.set_weight("web", backend(1), 0).unwrap();
    assert_eq!(lb.maps().vips[&lb.vips["web"].key()].ring_size, 0);
}

/// What `status` shows, without the clock-driven age of each backend's health.
fn state(lb: &Balancer<FakeMaps>) -> Status {
    let mut status = lb.status().unwrap();
    for b in status.pools.iter_mut().flat_map(|p| p.backends.iter_mut()) {
        b.since_change_secs = 0.0;
    }
    status
}

#[test]
fn errors_name_what_is_wrong_and_change_nothing() {
    let mut lb = lb();
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    lb.add_backend("web", backend(1), 1).unwrap();
    let before = state(&lb);

    let e = lb.del_vip("nope").unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    let e = lb
        .add_backend("web", backend(1), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10.0.2.11:80") && e.contains("already"), "{e}");
    let e = lb
        .add_backend("nopool", backend(2), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nopool"), "{e}");
    let e = lb.del_backend("web", backend(9)).unwrap_err().to_string();
    assert!(e.contains("10.0.2.19:80"), "{e}");
    let e = lb
        .add_vip(vip("web", 81, Scheduler::Maglev))
        .unwrap_err()
        .to_string();
    assert!(e.contains("web") && e.contains("already"), "{e}");
    let e = lb
        .add_vip(vip("web2", 80, Scheduler::Maglev))
        .unwrap_err()
        .to_string();
    assert!(e.contains("10.0.100.1:80/tcp"), "{e}");
    let mut bad = vip("bad", 82, Scheduler::Maglev);
    bad.ring_size = 65536;
    let e = lb.add_vip(bad).unwrap_err().to_string();
    assert!(e.contains("65536") && e.contains("prime"), "{e}");
    let e = lb
        .set_weight("web", backend(1), MAX_WEIGHT + 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("weight"), "{e}");

    let mut zero_port = vip("zero", 0, Scheduler::Maglev);
    zero_port.pool = "zero".into();
    let e = lb.add_vip(zero_port).unwrap_err().to_string();
    assert!(e.contains("\"zero\"") && e.contains("port"), "{e}");
    for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1"] {
        let addr = SocketAddr::new(bad.parse().unwrap(), 80);
        let e = lb.add_backend("web", addr, 1).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("\"web\""), "{e}");
    }

    assert_eq!(state(&lb), before, "a refused request changed the state");
}

#[test]
fn a_refused_vip_leaves_no_new_pool_behind() {
    let mut lb = lb();
    for i in 0..MAX_VIPS {
        lb.add_vip(vip(&format!("v{i}"), 1000 + i as u16, Scheduler::Maglev))
            .unwrap();
    }
    let mut extra = vip("extra", 999, Scheduler::Maglev);
    extra.pool = "new-pool".into();
    let e = lb.add_vip(extra).unwrap_err();
    assert!(matches!(e, BalancerError::TooManyVips), "{e}");
    assert!(
        !lb.pools.contains_key("new-pool"),
        "the refused VIP created its pool"
    );
}

#[test]
fn vip_and_pool_names_stay_unambiguous() {
    let mut lb = lb();
    // A VIP may share its name with its own pool...
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    // ...but not with another pool,
    lb.add_pool("api").unwrap();
    let mut clash = vip("api", 81, Scheduler::Maglev);
    clash.pool = "web".into();
    let e = lb.add_vip(clash).unwrap_err().to_string();
    assert!(e.contains("\"api\" is the name of a pool"), "{e}");
    // and no pool may take the name of a VIP that uses another pool.
    let mut front = vip("front", 82, Scheduler::Maglev);
    front.pool = "servers".into();
    lb.add_vip(front).unwrap();
    let e = lb.add_pool("front").unwrap_err().to_string();
    assert!(e.contains("\"front\" is the name of VIP"), "{e}");
    let mut other = vip("other", 83, Scheduler::Maglev);
    other.pool = "front".into();
    assert!(lb.add_vip(other).is_err());
    assert!(!lb.pools.contains_key("front"));
}

/// Each VIP's ring members and the backends the data plane holds.
fn data_plane(
    lb: &Balancer<FakeMaps>,
) -> Vec<(String, Vec<SocketAddr>, Vec<balancer_common::Backend>)> {
    let mut present: Vec<balancer_common::Backend> = lb
        .maps()
        .backends
        .values()
        .filter(|b| b.flags != 0)
        .copied()
        .collect();
    present.sort_by_key(|b| (b.addr, b.port, b.flags));
    lb.vips
        .keys()
        .map(|name| {
            let mut members: Vec<SocketAddr> = ring_members(lb, name).into_iter().collect();
            members.sort();
            (name.clone(), members, present.clone())
        })
        .collect()
}

/// Every change, with each of its map writes failing in turn: the failed change leaves
/// the state and the data plane as they were, and a retry succeeds.
#[test]
fn a_failed_map_write_is_rolled_back() {
    type Change = fn(&mut Balancer<FakeMaps>) -> Result<(), BalancerError>;
    let changes: [(&str, Change); 7] = [
        ("backend add", |lb| lb.add_backend("web", backend(4), 2)),
        ("backend del", |lb| lb.del_backend("web", backend(2))),
        ("weight", |lb| lb.set_weight("web", backend(2), 3)),
        ("drain", |lb| lb.set_weight("web", backend(2), 0)),
        ("down", |lb| {
            lb.record_health(&event(backend(2), Health::Down, "refused"))
        }),
        ("up", |lb| {
            lb.record_health(&event(backend(3), Health::Up, "ok"))
        }),
        ("vip add", |lb| {
            let mut v = vip("api", 81, Scheduler::Maglev);
            v.pool = "api-pool".into();
            v.ring_size = 13;
            lb.add_vip(v)
        }),
    ];
    let setup = || {
        let mut lb = with_checked_pool(DownPolicy::Shutdown);
        // Two VIPs on the pool: a change rebuilds two rings, and may fail between. Small
        // rings keep the number of writes (each of which fails once) small.
        for (name, port, ring_size) in [("web", 80, 31), ("web-alt", 8080, 37)] {
            let mut v = vip(name, port, Scheduler::Maglev);
            v.ring_size = ring_size;
            lb.add_vip(v).unwrap();
        }
        for i in 1..=3 {
            add_checked(&mut lb, i);
        }
        lb.record_health(&event(backend(3), Health::Down, "refused"))
            .unwrap();
        lb
    };
    for (what, change) in changes {
        let mut failures = 0;
        for fail in 0.. {
            let mut lb = setup();
            let (status, plane) = (state(&lb), data_plane(&lb));
            lb.maps.fail_write = Some(fail);
            if change(&mut lb).is_ok() {
                assert!(
                    lb.maps.fail_write.is_some(),
                    "{what}: write {fail} failed unseen"
                );
                break;
            }
            failures += 1;
            // The newest check result is shown even when applying it failed.
            let mut now = state(&lb);
            for (b, was) in now.pools[0]
                .backends
                .iter_mut()
                .zip(&status.pools[0].backends)
            {
                b.last_check.clone_from(&was.last_check);
            }
            assert_eq!(now, status, "{what}, write {fail} failed: state changed");
            assert_eq!(
                data_plane(&lb),
                plane,
                "{what}, write {fail} failed: maps changed"
            );
            change(&mut lb).unwrap_or_else(|e| panic!("{what}: retry after write {fail}: {e}"));
        }
        assert!(failures > 0, "{what} writes nothing");
    }
}

#[test]
fn results_of_a_replaced_check_task_are_ignored() {
    let mut lb = checked_pool(DownPolicy::Shutdown);
    // Backend 1 was deleted and added again; its new check task is number 7.
    let slot = Arc::new(std::sync::Mutex::new(crate::health::LatestCheck {
        task: 7,
        ..Default::default()
    }));
    lb.set_latest_slot("web", backend(1), slot);
    let mut stale = event(backend(1), Health::Down, "the old task's result");
    stale.task = 6;
    lb.record_health(&stale).unwrap();
    assert_eq!(state(&lb).pools[0].backends[0].health, Health::Up);
    let mut current = stale.clone();
    current.task = 7;
    lb.record_health(&current).unwrap();
    assert_eq!(state(&lb).pools[0].backends[0].health, Health::Down);
}

#[test]
fn vip_ids_are_limited_and_reused() {
    let mut lb = lb();
    for i in 0..MAX_VIPS {
        lb.add_vip(vip(
            &format!("v{i}"),
            1000 + i as u16,
            Scheduler::RoundRobin,
        ))
        .unwrap();
    }
    let e = lb
        .add_vip(vip("extra", 999, Scheduler::RoundRobin))
        .unwrap_err();
    assert!(matches!(e, BalancerError::TooManyVips), "{e}");
    lb.del_vip("v3").unwrap();
    lb.add_vip(vip("extra", 999, Scheduler::RoundRobin))
        .unwrap();
    let ids: HashSet<u32> = lb.vips.values().map(|v| v.id).collect();
    assert_eq!(ids.len(), MAX_VIPS as usize);
    assert!(lb.vips.values().all(|v| v.id < MAX_VIPS));
    // Every ring slice stays inside the RING map.
    for v in lb.vips.values() {
        let meta = lb.maps().vips[&v.key()];
        assert!(meta.ring_base + MAX_RING_SIZE <= balancer_common::RING_ENTRIES);
    }
}

#[test]
fn backend_target_may_name_a_vip() {
    let mut lb = lb();
    let mut v = vip("front", 80, Scheduler::Maglev);
    v.pool = "servers".into();
    lb.add_vip(v).unwrap();
    lb.add_backend("front", backend(1), 1).unwrap();
    assert_eq!(lb.status().unwrap().pools[0].name, "servers");
    assert_eq!(ring_members(&lb, "front"), [backend(1)].into());
}

fn event(addr: SocketAddr, health: Health, reason: &str) -> HealthEvent {
    HealthEvent {
        pool: "web".into(),
        backend: addr,
        outcome: crate::health::CheckOutcome {
            ok: health == Health::Up,
            latency: std::time::Duration::from_millis(3),
            reason: reason.into(),
        },
        transition: None,
        health,
        check: 1,
        task: 0,
    }
}

/// A balancer with an empty pool "web" whose backends get TCP checks, and no VIP.
fn with_checked_pool(policy: DownPolicy) -> Balancer<FakeMaps> {
    let mut lb = lb();
    let check = CheckConfig {
        kind: config::CheckKind::Tcp,
        ..CheckConfig::default()
    };
    lb.configure_pool(&PoolConfig {
        name: "web".into(),
        backends: Vec::new(),
        check,
        on_backend_down: policy,
        balance: config::PoolBalance::default(),
        discovery: None,
    })
    .unwrap();
    lb
}

/// [`with_checked_pool`] with VIP "web" and backends 1 to 3.
fn checked_pool(policy: DownPolicy) -> Balancer<FakeMaps> {
    let mut lb = with_checked_pool(policy);
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    for i in 1..=3 {
        add_checked(&mut lb, i);
    }
    lb
}

/// Adds backend `i` to the checked pool "web" at run time, and its first check, a success.
fn add_checked(lb: &mut Balancer<FakeMaps>, i: u8) {
    lb.add_backend("web", backend(i), 1).unwrap();
    lb.record_health(&event(backend(i), Health::Up, "first check"))
        .unwrap();
}

#[test]
fn a_checked_backend_added_at_run_time_takes_no_flows_before_its_first_check() {
    let mut lb = with_checked_pool(DownPolicy::Shutdown);
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    add_checked(&mut lb, 1);
    for i in [2, 3] {
        lb.add_backend("web", backend(i), 1).unwrap();
    }
    let unchecked = |lb: &Balancer<FakeMaps>, i: usize| {
        let b = &lb.status().unwrap().pools[0].backends[i];
        (b.state.clone(), b.health, b.change_reason.clone())
    };
    assert_eq!(
        unchecked(&lb, 1),
        (
            "unchecked".into(),
            Health::Down,
            "added, not checked yet".into()
        )
    );
    assert_eq!(ring_members(&lb, "web"), [backend(1)].into());
    assert_eq!(lb.usable_backends("web"), Some(1));
    // Not down either: no flows of its own to move.
    assert_eq!(flags_of(&lb, backend(2)), BACKEND_F_PRESENT);
    let started: Vec<_> = lb.checks().into_iter().map(|(_, a, _, h)| (a, h)).collect();
    assert_eq!(
        started,
        [
            (backend(1), Some(Health::Up)),
            (backend(2), None),
            (backend(3), None)
        ]
    );

    // The first check decides: a success brings it in, a failure leaves it down.
    lb.record_health(&event(backend(2), Health::Up, "connected"))
        .unwrap();
    lb.record_health(&event(backend(3), Health::Down, "connect refused"))
        .unwrap();
    assert_eq!(ring_members(&lb, "web"), [backend(1), backend(2)].into());
    assert_eq!(
        unchecked(&lb, 1),
        ("active".into(), Health::Up, "connected".into())
    );
    assert_eq!(
        unchecked(&lb, 2),
        ("down".into(), Health::Down, "connect refused".into())
    );
    assert_eq!(lb.checks()[2].3, Some(Health::Down));
}

fn flags_of(lb: &Balancer<FakeMaps>, addr: SocketAddr) -> u32 {
    lb.maps()
        .backends
        .values()
        .find(|b| IpAddr::from(v4_addr(b.addr)) == addr.ip() && b.flags != 0)
        .map(|b| b.flags)
        .expect("backend present")
}

#[test]
fn down_backend_leaves_the_ring_and_flags_its_flows_under_shutdown() {
    let mut lb = checked_pool(DownPolicy::Shutdown);
    assert_eq!(lb.checks().len(), 3, "every backend of the pool is checked");
    let before = lb.maps().active_ring(&lb.vips["web"].key());
    lb.record_health(&event(backend(2), Health::Down, "connect refused"))
        .unwrap();
    assert_eq!(ring_members(&lb, "web"), [backend(1), backend(3)].into());
    assert_eq!(
        flags_of(&lb, backend(2)),
        BACKEND_F_PRESENT | BACKEND_F_RESCHEDULE
    );
    // Survivors keep their slots (minimal disruption).
    let after = lb.maps().active_ring(&lb.vips["web"].key());
    let b2 = lb.pools["web"].backends[1].id;
    assert!(before
        .iter()
        .zip(&after)
        .all(|(old, new)| old == new || *old == b2));
    let status = lb.status().unwrap();
    let b = &status.pools[0].backends[1];
    assert_eq!((b.state.as_str(), b.health), ("down", Health::Down));
    assert_eq!(b.change_reason, "connect refused");
    assert_eq!(b.last_check.as_ref().unwrap().reason, "connect refused");
    assert_eq!(status.vips[0].active_backends, 2);

    lb.record_health(&event(backend(2), Health::Up, "ok"))
        .unwrap();
    assert_eq!(ring_members(&lb, "web"), (1..=3).map(backend).collect());
    assert_eq!(flags_of(&lb, backend(2)), BACKEND_F_PRESENT);
    // Coming back, it takes slots only from the others, never moving any between them.
    let restored = lb.maps().active_ring(&lb.vips["web"].key());
    let moved_elsewhere = after
        .iter()
        .zip(&restored)
        .filter(|(old, new)| old != new && **new != b2)
        .count();
    assert_eq!(moved_elsewhere, 0, "slots moved between surviving backends");
}

#[test]
fn keep_policy_leaves_flows_alone() {
    let mut lb = checked_pool(DownPolicy::Keep);
    lb.record_health(&event(backend(1), Health::Down, "timeout after 1s"))
        .unwrap();
    assert_eq!(ring_members(&lb, "web"), [backend(2), backend(3)].into());
    assert_eq!(flags_of(&lb, backend(1)), BACKEND_F_PRESENT);
}

#[test]
fn drained_backend_is_still_checked_and_results_for_deleted_ones_are_ignored() {
    let mut lb = checked_pool(DownPolicy::Shutdown);
    lb.set_weight("web", backend(1), 0).unwrap();
    assert!(lb.checks().iter().any(|(_, a, ..)| *a == backend(1)));
    lb.del_backend("web", backend(3)).unwrap();
    lb.record_health(&event(backend(3), Health::Down, "late result"))
        .unwrap();
    assert_eq!(lb.checks().len(), 2);
}

#[test]
fn all_down_policy_is_a_vip_flag() {
    let mut lb = lb();
    let mut v = vip("web", 80, Scheduler::Maglev);
    v.on_all_down = AllDownPolicy::Pass;
    lb.add_vip(v).unwrap();
    let meta = lb.maps().vips[&lb.vips["web"].key()];
    assert_eq!((meta.ring_size, meta.flags), (0, VIP_F_PASS_ALL_DOWN));
    lb.add_vip(vip("other", 81, Scheduler::Maglev)).unwrap();
    assert_eq!(lb.maps().vips[&lb.vips["other"].key()].flags, 0);
}

#[test]
fn status_shows_the_newest_check_from_the_task_slot() {
    let mut lb = checked_pool(DownPolicy::Shutdown);
    lb.record_health(&event(backend(1), Health::Up, "ok"))
        .unwrap();
    let slot = crate::health::LatestSlot::default();
    lb.set_latest_slot("web", backend(1), slot.clone());
    // An empty slot (no check yet) falls back to the last event.
    let last =
        |lb: &Balancer<FakeMaps>| lb.status().unwrap().pools[0].backends[0].last_check.clone();
    assert!((last(&lb).unwrap().latency_ms - 3.0).abs() < 1e-9);
    {
        let mut newest = slot.lock().unwrap();
        newest.checks = 7;
        newest.outcome = Some(crate::health::CheckOutcome {
            ok: true,
            latency: std::time::Duration::from_micros(1500),
            reason: "ok".into(),
        });
    }
    let shown = last(&lb).unwrap();
    assert_eq!(
        (shown.ok, shown.latency_ms, shown.reason.as_str()),
        (true, 1.5, "ok")
    );
    // Unknown backends and pools are ignored.
    lb.set_latest_slot("web", backend(9), slot.clone());
    lb.set_latest_slot("nope", backend(1), slot);
}

#[test]
fn every_added_vip_gets_a_new_generation() {
    let mut lb = lb();
    lb.add_pool("web").unwrap();
    lb.add_backend("web", backend(1), 1).unwrap();
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    let first = lb.maps().vips[&lb.vips["web"].key()];
    assert_ne!(first.generation, 0);
    lb.del_vip("web").unwrap();
    lb.add_vip(vip("web", 81, Scheduler::Maglev)).unwrap();
    let second = lb.maps().vips[&lb.vips["web"].key()];
    assert_ne!(second.generation, first.generation);
    assert_ne!(second.generation, 0);
    // The same VIP again, on the same id: its earlier flows must not count as its own.
    lb.del_vip("web").unwrap();
    lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    let third = lb.maps().vips[&lb.vips["web"].key()];
    assert_eq!(third.vip_id, first.vip_id, "the VIP's id follows its key");
    assert_ne!(third.generation, first.generation);
    assert_ne!(third.generation, 0);
}

#[test]
fn backend_ids_follow_the_backend_from_agent_to_agent() {
    // Two agents, the second with the pool's backends in another order, one removed and
    // one more: the flows it takes over name their backends by id (counters, and whether
    // a down backend's flows move), so the ids must agree.
    let agent = |backends: &[u8]| {
        let mut lb = lb();
        lb.add_pool("web").unwrap();
        for &i in backends {
            lb.add_backend("web", backend(i), 1).unwrap();
        }
        lb
    };
    let id_of = |lb: &Balancer<FakeMaps>, i: u8| {
        lb.pools["web"]
            .backends
            .iter()
            .find(|b| b.addr == backend(i))
            .map(|b| b.id)
            .unwrap()
    };
    let preferred: HashSet<u64> = (1..=4)
        .map(|i| backend_hash("web", backend(i)) % u64::from(MAX_BACKENDS))
        .collect();
    assert_eq!(
        preferred.len(),
        4,
        "the test needs backends whose hashes do not collide"
    );
    let first = agent(&[1, 2, 3]);
    let second = agent(&[4, 3, 2]);
    for i in [2, 3] {
        assert_eq!(
            id_of(&first, i),
            id_of(&second, i),
            "backend {}",
            backend(i)
        );
    }
    // The same address in another pool is another backend, with an id of its own.
    let mut both = agent(&[1]);
    both.add_pool("api").unwrap();
    both.add_backend("api", backend(1), 1).unwrap();
    assert_ne!(id_of(&both, 1), both.pools["api"].backends[0].id);
}

#[test]
fn vip_ids_and_generations_follow_the_vip_from_agent_to_agent() {
    // Two agents, one after the other, with the VIPs in another order and one more VIP
    // in the second: a VIP's flows, taken over from the first, must still be its own in
    // the second (same id, same generation).
    let agent = |vips: &[(&str, u16)]| {
        let mut lb = lb();
        lb.add_pool("web").unwrap();
        lb.add_backend("web", backend(1), 1).unwrap();
        for &(name, port) in vips {
            lb.add_vip(vip(name, port, Scheduler::Maglev)).unwrap();
        }
        lb
    };
    let preferred = |port: u16| vip_hash(vip_key(&vip("x", port, Scheduler::Maglev))) % 32;
    let ports = [80, 443, 8080];
    let distinct: HashSet<u64> = ports.iter().map(|&p| preferred(p)).collect();
    assert_eq!(
        distinct.len(),
        3,
        "the test needs VIPs whose hashes do not collide"
    );
    let first = agent(&[("web", 80), ("tls", 443)]);
    let second = agent(&[("alt", 8080), ("tls", 443), ("web", 80)]);
    for name in ["web", "tls"] {
        let identity = |lb: &Balancer<FakeMaps>| (lb.vips[name].id, lb.vips[name].generation);
        assert_eq!(identity(&first), identity(&second), "vip {name}");
    }
}

#[test]
fn the_data_plane_clock_gets_this_kernels_tick() {
    // The resolution of CLOCK_MONOTONIC_COARSE is one jiffy: 1 to 10 ms (HZ 1000 to 100).
    let tick = ns_per_tick();
    assert!(
        (1_000_000..=10_000_000).contains(&tick),
        "tick of {tick} ns: the data plane would fall back to its clock helper"
    );
    let s = settings(
        &Timeouts::default(),
        &NatConfig::default(),
        &TunnelConfig::default(),
    );
    assert_eq!(s.ns_per_tick, tick);
}

/// A configuration file with pool "web" (one backend, 10.0.2.11:80) and VIP "web".
const ONE_VIP: &str = r#"[agent]
interfaces = ["lbc0"]
[nat]
source_address = "10.0.2.1"
[[pool]]
name = "web"
[[pool.backends]]
address = "10.0.2.11"
port = 80
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"
"#;

#[test]
fn configuration_errors_name_the_pool_and_backend() {
    let mut config = config::parse(ONE_VIP, "test.toml").unwrap();
    // Something only the balancer refuses (the file's validator has no say here).
    config.pools[0].backends[0].weight = MAX_WEIGHT + 1;
    let Err(e) = Balancer::from_config(FakeMaps::default(), &config) else {
        panic!("a weight above {MAX_WEIGHT} was accepted");
    };
    let e = e.to_string();
    assert!(
        e.starts_with("pool \"web\", backend 10.0.2.11:80: invalid weight"),
        "{e}"
    );
}

#[test]
fn a_vip_added_again_keeps_its_generation_in_the_next_agent() {
    let config = config::parse(ONE_VIP, "test.toml").unwrap();
    let web = config.vips[0].clone();
    // The first agent deletes and adds "web" twice; VIP "alt" exists only in it.
    let mut first = Balancer::from_config(FakeMaps::default(), &config).unwrap();
    let initial = first.vips["web"].generation;
    for _ in 0..2 {
        first.del_vip("web").unwrap();
        first.add_vip(web.clone()).unwrap();
    }
    first.add_vip(vip("alt", 8080, Scheduler::Maglev)).unwrap();
    let (id, generation) = (first.vips["web"].id, first.vips["web"].generation);
    let alt = first.vips["alt"].id;
    assert_ne!(alt, id, "the test needs VIPs whose ids differ");
    assert_eq!(first.maps().vip_gens[&id], generation);

    // The next agent finds the pinned VIP_GENS as the first one left it.
    let maps = FakeMaps {
        vip_gens: first.maps().vip_gens.clone(),
        ..FakeMaps::default()
    };
    let mut second = Balancer::from_config(maps, &config).unwrap();
    assert_eq!(
        (second.vips["web"].id, second.vips["web"].generation),
        (id, generation),
        "the flows of web's latest incarnation must stay web's (not the initial {initial})"
    );
    assert!(
        second.maps().vip_gens.contains_key(&alt),
        "alt's generation stays until the new program runs everywhere"
    );
    second.clear_other_vip_gens().unwrap();
    assert_eq!(
        second.maps().vip_gens.get(&alt),
        None,
        "alt's flows must end"
    );
    assert_eq!(second.maps().vip_gens[&id], generation, "web's stays");

    // Re-added in the second agent, web gets a generation none of its flows had.
    second.del_vip("web").unwrap();
    second.add_vip(web).unwrap();
    let again = second.vips["web"].generation;
    assert!(
        again != generation && again != initial && again != 0,
        "{again}"
    );
    // With nothing pinned an agent starts from the initial generation.
    let fresh = Balancer::from_config(FakeMaps::default(), &config).unwrap();
    assert_eq!(fresh.vips["web"].generation, initial);
}

#[test]
fn a_generation_tells_its_incarnation() {
    for hash in [
        0u64,
        1,
        0xdead_beef,
        u64::MAX,
        vip_hash(vip_key(&vip("x", 80, Scheduler::Maglev))),
    ] {
        for k in [0, 1, 2, 77, 4095, GENERATIONS_RECOGNIZED - 1] {
            assert_eq!(
                incarnation_of(hash, vip_generation(hash, k)),
                Some(k),
                "{hash:#x} {k}"
            );
        }
        let beyond = vip_generation(hash, GENERATIONS_RECOGNIZED);
        assert_eq!(incarnation_of(hash, beyond), None, "re-added too often");
        assert_eq!(incarnation_of(hash, 0), None, "0: no VIP");
    }
}

#[test]
fn a_vip_takes_its_generation_from_its_own_id_first_and_a_failed_start_puts_them_back() {
    let config = config::parse(ONE_VIP, "test.toml").unwrap();
    let hash = vip_hash(vip_key(&config.vips[0]));
    let own = (hash % u64::from(MAX_VIPS)) as u32;
    let elsewhere = (own + 5) % MAX_VIPS;
    // At its own id the generation of its second re-add, elsewhere a stale later one
    // (say, from an agent of another lineage of pins), and an unrelated value.
    let found: HashMap<u32, u32> = [
        (own, vip_generation(hash, 2)),
        (elsewhere, vip_generation(hash, 9)),
        ((own + 9) % MAX_VIPS, 12345),
    ]
    .into();
    let maps = FakeMaps {
        vip_gens: found.clone(),
        ..FakeMaps::default()
    };
    let mut lb = Balancer::from_config(maps, &config).unwrap();
    assert_eq!(lb.vips["web"].id, own);
    assert_eq!(lb.vips["web"].generation, vip_generation(hash, 2));
    // Suppose the agent could not attach: what it found goes back, for the next one.
    lb.maps.vip_gens.insert(own, 1);
    lb.restore_vip_gens();
    assert_eq!(lb.maps().vip_gens, found);
}

/// The address each slot of VIP `name`'s active ring sends new flows to.
fn ring_addresses(lb: &Balancer<FakeMaps>, name: &str) -> Vec<Option<SocketAddr>> {
    let key = lb.vips[name].key();
    lb.maps()
        .active_ring(&key)
        .into_iter()
        .map(|id| {
            (id != NO_BACKEND).then(|| lb.maps().backend_addr(id).expect("a present backend"))
        })
        .collect()
}

#[test]
fn pools_from_discovery_have_the_same_ring_whatever_the_order_of_changes() {
    let discovered = |lb: &mut Balancer<FakeMaps>| {
        lb.configure_pool(&PoolConfig {
            name: "web".into(),
            backends: Vec::new(),
            check: CheckConfig::default(),
            on_backend_down: DownPolicy::default(),
            balance: config::PoolBalance::default(),
            discovery: Some(crate::discovery::EtcdConfig::default()),
        })
        .unwrap();
        lb.add_vip(vip("web", 80, Scheduler::Maglev)).unwrap();
    };
    let add = |lb: &mut Balancer<FakeMaps>, i: u8, weight: u32| {
        let b = config::BackendConfig {
            address: backend(i).ip(),
            port: 80,
            weight,
            check: CheckConfig::default(),
            cookie: None,
            maxconn: 0,
        };
        lb.add_discovered_backend("web", &b).unwrap();
    };
    // One agent saw the keys come one by one, a deletion and a weight change; another
    // started later and listed the final set (in another order).
    let mut a = lb();
    discovered(&mut a);
    for i in 1..=8 {
        add(&mut a, i, 1);
    }
    a.del_backend("web", backend(3)).unwrap();
    a.set_weight("web", backend(5), 3).unwrap();
    let mut b = lb();
    discovered(&mut b);
    for i in [8, 7, 6, 4, 2, 1] {
        add(&mut b, i, 1);
    }
    add(&mut b, 5, 3);
    let (ring_a, ring_b) = (ring_addresses(&a, "web"), ring_addresses(&b, "web"));
    assert_eq!(ring_a.len(), 65537);
    // Every slot, so every flow tuple (a flow's slot is its hash modulo the ring size).
    let differ = ring_a.iter().zip(&ring_b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} slots differ");
    assert!(ring_a.iter().all(Option::is_some));
    // (A file pool keeps minimal disruption instead: its ring depends on history.)
}

mod ipv6;
