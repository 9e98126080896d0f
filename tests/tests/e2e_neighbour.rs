//! End-to-end: a backend whose MAC address the balancer does not know yet (no neighbour
//! entry: after a reboot, or once the entry was removed) is reached all the same: the
//! data plane passes the translated packet to the stack, which resolves the neighbour.

use balancer_tests::{Running, Topology, DEFAULT_TIMEOUT};

#[test]
fn backends_without_a_neighbour_entry_are_reached() {
    let run = Running::start(1, "maglev");
    // Forget every MAC the balancer's namespace knows, and wait out the data plane's
    // cached next hops (1 s).
    run.topo
        .lb()
        .ip(&["neigh", "flush", "all"])
        .expect("flushing the lb's neighbour entries");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let tally = run
        .client
        .udp_request_many(Topology::vip_udp(), 5, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "UDP requests to {} after the lb forgot the backend's MAC (the packets passed to the \
         stack come from the SNAT address, a local one: the agent must turn accept_local on): \
         {tally}",
        Topology::vip_udp()
    );
    let passed = run
        .agent
        .cli_ok(&["status"])
        .expect("balancer status")
        .lines()
        .find(|l| l.trim_start().starts_with("pass_no_neigh"))
        .map(str::to_string);
    assert!(
        passed.is_some(),
        "the test must go through the no-neighbour path (no pass_no_neigh in the status)"
    );
}
