//! End-to-end: draining a backend keeps its established connections and stops new ones; deleting a backend stops new flows to it.

use balancer_tests::{default_config, require_root, Agent, Topology, DEFAULT_TIMEOUT};

const NEW_CONNECTIONS: usize = 60;

#[test]
fn drain_keeps_established_and_stops_new() {
    require_root();
    let topo = Topology::new(3).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let agent = Agent::start(&topo, &default_config(&topo, "maglev")).expect("starting the agent");
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");

    let mut ka = client
        .keepalive(Topology::vip_http())
        .expect("opening a keep-alive connection to the VIP");
    let x = ka
        .get()
        .unwrap_or_else(|e| panic!("first keep-alive request failed: {e:#}"));
    let xi = topo
        .backend_index(&x)
        .unwrap_or_else(|| panic!("the VIP was answered by {x:?}, not by a test backend"));
    let x_addr = topo.backend_http(xi).to_string();

    agent
        .cli_ok(&["backend", "drain", "web", &x_addr])
        .expect("draining the backend of the established connection");

    for k in 1..=3 {
        match ka.get() {
            Ok(name) => assert_eq!(
                name, x,
                "after draining {x}: expected the established connection to stay on {x}, \
                 request {k} was answered by {name}"
            ),
            Err(e) => panic!(
                "after draining {x}: expected the established connection to keep working, \
                 request {k} failed: {e:#}"
            ),
        }
    }

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
    drop(ka);
    drop(client);
    drop(agent);
}

#[test]
fn del_stops_new_flows() {
    require_root();
    let topo = Topology::new(3).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let agent = Agent::start(&topo, &default_config(&topo, "maglev")).expect("starting the agent");
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");

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
    drop(client);
    drop(agent);
}
