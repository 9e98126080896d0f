//! End-to-end: UDP datagrams to the VIP are balanced over the backends and answered through NAT.

use balancer_tests::{Running, Topology, DEFAULT_TIMEOUT};

const REQUESTS: usize = 60;

#[test]
fn udp_through_vip_reaches_backends() {
    let run = Running::start(3, "maglev");
    let (topo, client) = (&run.topo, &run.client);

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
}
