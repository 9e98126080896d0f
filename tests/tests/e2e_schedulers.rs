//! End-to-end: new HTTP connections through the VIP reach every backend, with the maglev and the round-robin scheduler.

use balancer_tests::{Running, Topology, DEFAULT_TIMEOUT};

const REQUESTS: usize = 90;

/// Sends `REQUESTS` new connections through VIP:80 with `scheduler` and returns the tally
/// after checking that none failed and every backend answered at least `min` times and at
/// most `max` times.
fn spread(scheduler: &str, min: usize, max: usize) {
    let run = Running::start(3, scheduler);
    let (topo, client) = (&run.topo, &run.client);

    let tally = client.http_get_many(Topology::vip_http(), REQUESTS, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "{scheduler}: expected all {REQUESTS} requests through {} to succeed, got {tally}",
        Topology::vip_http()
    );
    for i in 1..=3 {
        let name = topo.backend_name(i);
        let n = tally.count(&name);
        assert!(
            (min..=max).contains(&n),
            "{scheduler}: expected backend {name} to answer between {min} and {max} of \
             {REQUESTS} requests, it answered {n} ({tally})"
        );
    }
    assert_eq!(
        tally.ok(),
        REQUESTS,
        "{scheduler}: answers from unknown backends: {tally}"
    );
}

#[test]
fn http_reaches_every_backend_maglev() {
    spread("maglev", 10, REQUESTS);
}

#[test]
fn http_reaches_every_backend_round_robin() {
    // Each CPU steps its own counter through the sequence b1,b2,b3: with 2 CPUs every
    // backend gets 30 +- 2 of 90, which a hash-based spread would rarely manage.
    spread("round-robin", 27, 33);
}
