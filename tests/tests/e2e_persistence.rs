//! End-to-end: a long-lived TCP connection stays on its backend while other backends are
//! added to and removed from the pool.

use balancer_tests::{Running, Topology, DEFAULT_TIMEOUT};

#[test]
fn long_lived_connection_survives_backend_changes() {
    // Four backends exist; the pool starts with the first three.
    let run = Running::start(4, "maglev");
    let (topo, agent) = (&run.topo, &run.agent);
    let (mut ka, x, xi) = run.pinned_connection();
    assert!(xi <= 3, "backend {x} is not in the initial pool (b1..b3)");
    ka.expect_backend(&x, 3, "connecting");

    let added = topo.backend_http(4).to_string();
    agent
        .cli_ok(&["backend", "add", "web", &added])
        .expect("adding backend 4");
    ka.expect_backend(&x, 5, &format!("`backend add web {added}`"));

    for other in (1..=3).filter(|&i| i != xi) {
        let addr = topo.backend_http(other).to_string();
        agent
            .cli_ok(&["backend", "del", "web", &addr])
            .unwrap_or_else(|e| panic!("deleting backend {other}: {e:#}"));
        ka.expect_backend(&x, 5, &format!("`backend del web {addr}`"));
    }

    // New connections keep working too (they go to X or to backend 4).
    let tally = run
        .client
        .http_get_many(Topology::vip_http(), 20, DEFAULT_TIMEOUT);
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
    ka.expect_backend(&x, 2, "the new connections");
}
