//! End-to-end: UDP datagrams to the VIP are balanced over the backends and answered through NAT.

use balancer_tests::{default_config, require_root, Agent, Topology, DEFAULT_TIMEOUT};

const REQUESTS: usize = 60;

#[test]
fn udp_through_vip_reaches_backends() {
    require_root();
    let topo = Topology::new(3).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let agent = Agent::start(&topo, &default_config(&topo, "maglev")).expect("starting the agent");
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");

    let tally = client.udp_request_many(Topology::vip_udp(), REQUESTS, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "expected all {REQUESTS} UDP requests to {} (each from a fresh socket) to be \
         answered from the VIP: {tally}",
        Topology::vip_udp()
    );
    for name in tally.counts.keys() {
        assert!(
            topo.backend_index(name).is_some(),
            "a UDP answer came from {name:?}, not from a test backend ({tally})"
        );
    }
    assert!(
        tally.distinct() >= 2,
        "expected at least 2 distinct backends to answer {REQUESTS} UDP flows: {tally}"
    );
    drop(client);
    drop(agent);
}
