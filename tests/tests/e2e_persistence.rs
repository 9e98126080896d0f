//! End-to-end: an established (kept-alive) connection stays on its backend while backends are added to and removed from the pool.

use balancer_tests::{default_config, require_root, Agent, KeepAlive, Topology};

/// Sends `n` requests on `ka` and checks that each succeeds and is answered by `expected`.
fn expect_same_backend(ka: &mut KeepAlive, expected: &str, n: usize, after: &str) {
    for k in 1..=n {
        match ka.get() {
            Ok(name) => assert_eq!(
                name, expected,
                "after {after}: expected request {k} on the established connection to stay \
                 on backend {expected}, it was answered by {name}"
            ),
            Err(e) => panic!(
                "after {after}: expected request {k} on the established connection to be \
                 answered by {expected}, it failed: {e:#}"
            ),
        }
    }
}

#[test]
fn long_lived_connection_survives_backend_changes() {
    require_root();
    // Four backends exist; the pool starts with the first three.
    let topo = Topology::new(4).expect("building the topology");
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
        .unwrap_or_else(|e| panic!("first request on the keep-alive connection failed: {e:#}"));
    let xi = topo
        .backend_index(&x)
        .unwrap_or_else(|| panic!("the VIP was answered by {x:?}, not by a test backend"));
    assert!(xi <= 3, "backend {x} is not in the initial pool (b1..b3)");
    expect_same_backend(&mut ka, &x, 3, "connecting");

    let added = topo.backend_http(4).to_string();
    agent
        .cli_ok(&["backend", "add", "web", &added])
        .expect("adding backend 4");
    expect_same_backend(&mut ka, &x, 5, &format!("`backend add web {added}`"));

    for other in (1..=3).filter(|&i| i != xi) {
        let addr = topo.backend_http(other).to_string();
        agent
            .cli_ok(&["backend", "del", "web", &addr])
            .unwrap_or_else(|e| panic!("deleting backend {other}: {e:#}"));
        expect_same_backend(&mut ka, &x, 5, &format!("`backend del web {addr}`"));
    }

    // New connections keep working too (they go to X or to backend 4).
    let tally = client.http_get_many(Topology::vip_http(), 20, balancer_tests::DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "expected new connections after the changes to succeed: {tally}"
    );
    for name in tally.counts.keys() {
        assert!(
            *name == x || *name == "b4",
            "a new connection reached {name}, which was deleted from the pool ({tally})"
        );
    }
    expect_same_backend(&mut ka, &x, 2, "the new connections");
    drop(ka);
    drop(client);
    drop(agent);
}
