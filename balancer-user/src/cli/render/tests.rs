//! Tests of the tables `balancer status` and the other commands print.
use super::*;
use crate::{
    api::{BackendStatus, Counters, InterfaceStatus, PoolStatus, Source},
    config::DownPolicy,
    health::Health,
};

fn backend(port: u16, state: &str, health: Health) -> BackendStatus {
    BackendStatus {
        address: "10.0.2.11".parse().unwrap(),
        port,
        weight: 1,
        state: state.to_owned(),
        health,
        check: "tcp".to_owned(),
        last_check: None,
        since_change_secs: 3.0,
        change_reason: String::new(),
        transitions: 0,
        source: Source::File,
        counters: Counters {
            packets: 7,
            bytes: 700,
            new_flows: 2,
            reply_packets: 5,
            reply_bytes: 5000,
        },
        active_flows: (port == 80).then_some(ActiveFlows {
            total: 4,
            tcp_established: 3,
            tcp_other: 1,
            udp: 0,
        }),
        snat_ports_in_use: None,
    }
}

fn interface(name: &str, state: InterfaceState, error: Option<&str>) -> InterfaceStatus {
    InterfaceStatus {
        name: name.into(),
        state,
        ifindex: (state != InterfaceState::Waiting).then_some(12),
        mode: (state == InterfaceState::Attached).then(|| "driver".into()),
        since_change_secs: 75.0,
        error: error.map(Into::into),
    }
}

#[test]
fn backends_show_each_direction_and_the_unchecked() {
    let status = Status {
        pools: vec![PoolStatus {
            name: "web".into(),
            on_backend_down: DownPolicy::Shutdown,
            source: Source::File,
            discovery: None,
            backends: vec![
                backend(80, "active", Health::Up),
                backend(81, "unchecked", Health::Down),
            ],
        }],
        ..Status::default()
    };
    let text = trim_lines(&render_backends(&status, None).unwrap());
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "POOL", "BACKEND", "WEIGHT", "STATE", "CHECK", "HEALTH", "SINCE", "LAST", "CHECK",
            "CLIENT", "PKTS", "REPLY", "PKTS", "NEW", "FLOWS", "ACTIVE", "FLOWS", "SOURCE"
        ]
    );
    // The JSON's `packets` (7) and `reply_packets` (5), not their sum.
    assert_eq!(
        lines[1],
        [
            "web",
            "10.0.2.11:80",
            "1",
            "active",
            "tcp",
            "up",
            "3s",
            "-",
            "7",
            "5",
            "2",
            "4",
            "file"
        ]
    );
    // Before the agent's first census of the flows: no count.
    assert_eq!(
        lines[2],
        [
            "web",
            "10.0.2.11:81",
            "1",
            "unchecked",
            "tcp",
            "-",
            "3s",
            "-",
            "7",
            "5",
            "2",
            "-",
            "file"
        ]
    );
}

#[test]
fn ipv6_addresses_are_shown_in_brackets() {
    let mut status = crate::telemetry::metrics::tests::status(1, 1);
    status.vips[0].config.address = "fd00:100::1".parse().unwrap();
    status.pools[0].backends[0].address = "fd00:2::11".parse().unwrap();
    let vips = render_vips(&status);
    assert!(vips.contains("[fd00:100::1]:80/tcp"), "{vips}");
    let backends = render_backends(&status, None).unwrap();
    assert!(
        backends.contains(&format!(
            "[fd00:2::11]:{}",
            status.pools[0].backends[0].port
        )),
        "{backends}"
    );
}

#[test]
fn vip_counters_show_the_active_flows_and_when_they_were_counted() {
    let mut status = crate::telemetry::metrics::tests::status(1, 2);
    let text = trim_lines(&render_status(&status, false));
    let counters = text
        .lines()
        .skip_while(|l| *l != "VIP counters")
        .take(4)
        .collect::<Vec<_>>();
    assert!(counters[1].ends_with("NEW FLOWS ACTIVE FLOWS"), "{text}");
    assert!(
        counters[2].starts_with("pool0 ") && counters[2].ends_with(" 10"),
        "{text}"
    );
    assert_eq!(
        counters[3], "active flows counted 2s ago (40 entries read in 12.5ms)",
        "{text}"
    );
    status.flow_census.as_mut().unwrap().last_error = Some("EPERM".into());
    let text = render_status(&status, false);
    assert!(
        text.contains("read in 12.5ms); counting the active flows failed: EPERM"),
        "{text}"
    );
}

#[test]
fn interfaces_come_first_and_those_without_the_program_are_errors() {
    let status = Status {
        interfaces: vec![
            interface("lbc0", InterfaceState::Attached, None),
            interface(
                "lbs0",
                InterfaceState::Missing,
                Some("the interface is gone"),
            ),
            interface("eth9", InterfaceState::Waiting, None),
        ],
        ..Status::default()
    };
    let text = render_status(&status, false);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Interfaces");
    for (line, parts) in [
        (2, &["lbc0", "attached", "driver", "12", "1m15s"][..]),
        (3, &["lbs0", "ERROR missing", "12", "the interface is gone"]),
        (4, &["eth9", "waiting", "not there yet"]),
    ] {
        for part in parts {
            assert!(lines[line].contains(part), "{part:?} in {:?}", lines[line]);
        }
    }
    assert!(!text.contains(RED), "no color unless asked");
    let colored = render_interfaces(&status, true);
    assert_eq!(colored.matches(RED).count(), 1, "{colored}");
    assert!(
        colored.contains(&format!("{RED}ERROR missing")),
        "{colored}"
    );
    // Without interfaces (an older agent), the section is left out.
    assert!(render_status(&Status::default(), false).starts_with("VIPs\n"));
}
