//! End-to-end: draining a backend keeps its established connections and stops new ones; deleting a backend stops new flows to it.

use balancer_tests::{Running, Topology, DEFAULT_TIMEOUT};

const NEW_CONNECTIONS: usize = 60;

#[test]
fn drain_keeps_established_and_stops_new() {
    let run = Running::start(3, "maglev");
    let (topo, agent, client) = (&run.topo, &run.agent, &run.client);
    let (mut ka, x, xi) = run.pinned_connection();
    let x_addr = topo.backend_http(xi).to_string();

    agent
        .cli_ok(&["backend", "drain", "web", &x_addr])
        .expect("draining the backend of the established connection");
    ka.expect_backend(&x, 3, &format!("draining {x}"));

    let tally = client.http_get_many(Topology::vip_http(), NEW_CONNECTIONS, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "after draining {x}: expected all {NEW_CONNECTIONS} new connections to succeed: {tally}"
    );
    assert_eq!(
        tally.count(&x),
        0,
        "after draining {x}: expected no new connection to reach it: {tally}"
    );

    let again = ka
        .get()
        .unwrap_or_else(|e| panic!("the drained connection failed at the end: {e:#}"));
    assert_eq!(again, x, "the drained connection moved to another backend");
}

#[test]
fn del_stops_new_flows() {
    let run = Running::start(3, "maglev");
    let (topo, agent, client) = (&run.topo, &run.agent, &run.client);

    let y = topo.backend_name(2);
    let y_ip = topo.backend_addr(2).to_string();
    let y_addr = topo.backend_http(2).to_string();
    let before = agent
        .cli_ok(&["backend", "list", "web"])
        .expect("listing the backends");
    assert!(
        before.contains(&y_ip),
        "expected `backend list web` to show {y_ip} before the deletion, got:\n{before}"
    );

    agent
        .cli_ok(&["backend", "del", "web", &y_addr])
        .expect("deleting backend 2");

    let tally = client.http_get_many(Topology::vip_http(), NEW_CONNECTIONS, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "after deleting {y}: expected all {NEW_CONNECTIONS} new connections to succeed: {tally}"
    );
    assert_eq!(
        tally.count(&y),
        0,
        "after deleting {y} ({y_addr}): expected no new connection to reach it: {tally}"
    );

    let after = agent
        .cli_ok(&["backend", "list", "web"])
        .expect("listing the backends");
    assert!(
        !after.contains(&y_ip),
        "expected `backend list web` to no longer show {y_ip}, got:\n{after}"
    );
}
