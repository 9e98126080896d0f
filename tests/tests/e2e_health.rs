//! End-to-end health checks: failed backends leave the ring within the check's detection
//! time, no new connection fails after detection, recovered backends return, and flows
//! pinned to a failed backend move (`shutdown`) or stay (`keep`).
use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{default_config, require_root, Agent, Running, Topology, DEFAULT_TIMEOUT};

/// The default test config with a health check on a pool (inline TOML table) and a policy.
fn config_with_check(topo: &Topology, pool: &str, check: &str, on_down: &str) -> String {
    let config = default_config(topo, "maglev");
    let marker = format!("name = \"{pool}\"\nbackends = [");
    assert!(
        config.contains(&marker),
        "unexpected default config layout:\n{config}"
    );
    config.replacen(
        &marker,
        &format!(
            "name = \"{pool}\"\non_backend_down = \"{on_down}\"\ncheck = {check}\nbackends = ["
        ),
        1,
    )
}

const FAST_HTTP_CHECK: &str =
    r#"{ type = "http", path = "/", interval = "200ms", timeout = "150ms", rise = 2, fall = 2 }"#;

/// The backend's entry in `status --json`.
fn backend_status(agent: &Agent, pool: &str, addr: &str) -> serde_json::Value {
    let status = agent.status_json();
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["backends"].as_array())
        .and_then(|bs| bs.iter().find(|b| b["address"] == addr))
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in pool {pool}: {status:#}"))
}

/// Waits until the backend's health is `want`; returns when that was first seen.
fn wait_health(agent: &Agent, pool: &str, addr: &str, want: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let b = backend_status(agent, pool, addr);
        if b["health"] == want {
            return Instant::now();
        }
        assert!(Instant::now() <= deadline, "backend {addr} of pool {pool} did not become {want} within {within:?}: {b:#}\nagent log:\n{}", agent.log());
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stopped_server_leaves_the_ring_and_no_new_connection_fails_after_detection() {
    let mut run = Running::start_with(3, |topo| {
        config_with_check(topo, "web", FAST_HTTP_CHECK, "shutdown")
    });
    let b2 = run.topo.backend_addr(2).to_string();
    wait_health(&run.agent, "web", &b2, "up", Duration::from_secs(3));

    // A client loops new connections through the VIP for the whole test; the client
    // worker moves into the loop's thread (the rest of `run` stays usable).
    let stop = Arc::new(AtomicBool::new(false));
    let client = run.client;
    let (agent, servers) = (&run.agent, &mut run.servers);
    let looping = {
        let stop = stop.clone();
        thread::spawn(move || {
            client.run(move || {
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    // Stamped with its start: one started after detection must not fail.
                    let started = Instant::now();
                    let r = balancer_tests::http_get(Topology::vip_http(), DEFAULT_TIMEOUT);
                    results.push((started, r.map_err(|e| format!("{e:#}"))));
                    thread::sleep(Duration::from_millis(5));
                }
                results
            })
        })
    };
    thread::sleep(Duration::from_millis(300));
    servers.stop(2);
    let down_seen = wait_health(agent, "web", &b2, "down", Duration::from_secs(5));
    let down = backend_status(agent, "web", &b2);
    let reason = down["change_reason"].clone();
    thread::sleep(Duration::from_millis(1500));
    let still_down = backend_status(agent, "web", &b2);
    assert_eq!(
        still_down["counters"]["new_flows"], down["counters"]["new_flows"],
        "new flows were scheduled to b2 while it was down"
    );
    servers.start(2).expect("restarting b2");
    let up_seen = wait_health(agent, "web", &b2, "up", Duration::from_secs(5));
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let results = looping.join().expect("client loop");

    let after_down: Vec<_> = results.iter().filter(|(t, _)| *t > down_seen).collect();
    assert!(
        after_down.len() > 50,
        "too few requests after detection: {}",
        after_down.len()
    );
    let failures: Vec<_> = after_down.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed after b2 was declared down ({reason}): {:?}",
        failures.len(),
        after_down.len(),
        failures.first()
    );
    let to_b2_after_up = results
        .iter()
        .filter(|(t, r)| *t > up_seen && r.as_deref() == Ok("b2"))
        .count();
    assert!(
        to_b2_after_up > 0,
        "b2 got no traffic after it came back up"
    );
    let r = reason.as_str().unwrap_or_default();
    assert!(
        r.contains("refused") || r.contains("reset"),
        "down reason should say why: {reason}"
    );
}

#[test]
fn http_check_marks_a_backend_answering_500_down() {
    require_root();
    let topo = Topology::new(3).expect("building the topology");
    let mut servers = topo.start_backends().expect("starting the test servers");
    servers.stop(3);
    servers.start_with_status(3, 500).expect("b3 answering 500");
    let config = config_with_check(&topo, "web", FAST_HTTP_CHECK, "shutdown");
    let agent = Agent::start(&topo, &config).expect("starting the agent");
    let b3 = topo.backend_addr(3).to_string();
    wait_health(&agent, "web", &b3, "down", Duration::from_secs(3));
    let b = backend_status(&agent, "web", &b3);
    assert!(
        b["change_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("500"),
        "{b:#}"
    );
    for i in [1, 2] {
        assert_eq!(
            backend_status(&agent, "web", &topo.backend_addr(i).to_string())["health"],
            "up"
        );
    }
    let client = topo.client_ns().expect("client namespace");
    let tally = client.http_get_many(Topology::vip_http(), 40, DEFAULT_TIMEOUT);
    assert!(tally.failures.is_empty(), "requests failed: {tally}");
    assert_eq!(
        tally.count("b3"),
        0,
        "the backend answering 500 still got traffic: {tally}"
    );
    let listed = agent
        .cli_ok(&["backend", "list", "web"])
        .expect("backend list");
    assert!(
        listed.contains("down") && listed.contains("status 500"),
        "{listed}"
    );
}

#[test]
fn silently_dropping_backend_is_caught_by_the_timeout() {
    let run = Running::start_with(3, |topo| {
        config_with_check(topo, "web", FAST_HTTP_CHECK, "shutdown")
    });
    let (topo, agent) = (&run.topo, &run.agent);
    let b1 = topo.backend_addr(1).to_string();
    wait_health(agent, "web", &b1, "up", Duration::from_secs(3));
    // The host drops every packet to port 80 without answering (no RST).
    topo.backend(1)
        .run(&["nft", "add table inet blackhole; add chain inet blackhole in { type filter hook input priority 0; }; add rule inet blackhole in tcp dport 80 drop"])
        .expect("nft drop rule in backend 1");
    wait_health(agent, "web", &b1, "down", Duration::from_secs(5));
    let b = backend_status(agent, "web", &b1);
    assert!(
        b["change_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("timeout"),
        "{b:#}"
    );
}

/// UDP flows from one socket, pinned to backend X; X's check (TCP to port 80) fails
/// while its UDP service keeps answering; where does the flow's next datagram go?
fn pinned_flow_after_failure(on_down: &str) -> (String, String) {
    let check =
        r#"{ type = "tcp", port = 80, interval = "200ms", timeout = "150ms", rise = 2, fall = 2 }"#;
    let run = Running::start_with(3, |topo| config_with_check(topo, "dns", check, on_down));
    let (topo, agent, client) = (&run.topo, &run.agent, &run.client);
    let socket = client
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("UDP socket in the client namespace");
    socket.set_read_timeout(Some(DEFAULT_TIMEOUT)).unwrap();
    let ask = |what: &str| -> String {
        socket.send_to(b"q", Topology::vip_udp()).expect("send");
        let mut buf = [0u8; 64];
        let (n, _) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: no answer through the VIP: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = ask("before the failure");
    assert_eq!(
        ask("second datagram"),
        first,
        "a UDP flow must stick to its backend"
    );
    let x = topo.backend_index(&first).expect("answer names a backend");
    topo.backend(x)
        .run(&["nft", "add table inet refuse; add chain inet refuse in { type filter hook input priority 0; }; add rule inet refuse in tcp dport 80 reject with tcp reset"])
        .expect("nft reject rule");
    wait_health(
        agent,
        "dns",
        &topo.backend_addr(x).to_string(),
        "down",
        Duration::from_secs(5),
    );
    (first, ask("after the failure"))
}

#[test]
fn flows_pinned_to_a_failed_backend_are_rescheduled_under_shutdown() {
    let (before, after) = pinned_flow_after_failure("shutdown");
    assert_ne!(
        after, before,
        "under `shutdown` the flow must leave the failed backend {before}"
    );
}

#[test]
fn flows_pinned_to_a_failed_backend_stay_under_keep() {
    let (before, after) = pinned_flow_after_failure("keep");
    assert_eq!(after, before, "under `keep` the flow must stay on {before}");
}
