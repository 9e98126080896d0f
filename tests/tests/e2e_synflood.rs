//! End-to-end: a flood of spoofed SYNs (which the live backend answers, and whose clients
//! never complete the handshake) does not stop real clients from connecting, during the
//! flood or after it. Before half-open flows were told apart, such a flood held every
//! SNAT port of the backend for the full TCP timeout (minutes).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use balancer_tests::client::http_get;
use balancer_tests::flood::syn_flood;
use balancer_tests::ha::parse_link_mac;
use balancer_tests::netns::Netns;
use balancer_tests::{Running, Topology};
use balancer_wire::MacAddr;

/// The flood: as the issue asks, a million SYNs, as fast as the test can send them.
const FLOOD_SYNS: u64 = 1_000_000;
/// How long each real client's request may take (a SYN lost in the flood is sent again
/// after 1 s by the client's kernel).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long real clients go on after the flood.
const AFTER: Duration = Duration::from_secs(4);

fn mac(ns: &Netns, interface: &str) -> MacAddr {
    let out = ns
        .ip(&["-o", "link", "show", interface])
        .unwrap_or_else(|e| panic!("reading {interface}'s MAC: {e:#}"));
    parse_link_mac(&out).unwrap_or_else(|| panic!("no MAC address in {out:?}"))
}

/// One real client's request: when it started, and whether it was answered.
struct Attempt {
    at: Instant,
    result: Result<String, String>,
}

#[test]
fn a_flood_of_spoofed_syns_does_not_stop_real_clients_from_connecting() {
    let run = Running::start(1, "maglev");
    let vip = Topology::vip_http();
    assert_eq!(
        run.client
            .http_get(vip, REQUEST_TIMEOUT)
            .expect("the VIP answers before the flood"),
        "b1"
    );
    let macs = (mac(run.topo.client(), "cli0"), mac(run.topo.lb(), "lbc0"));

    let flooding = AtomicBool::new(true);
    let (flood, flood_end, attempts) = std::thread::scope(|s| {
        let clients = s.spawn(|| {
            run.topo
                .client()
                .in_thread(|| {
                    let mut attempts = Vec::new();
                    let mut ended: Option<Instant> = None;
                    loop {
                        if ended.is_none() && !flooding.load(Ordering::SeqCst) {
                            ended = Some(Instant::now());
                        }
                        if ended.is_some_and(|at| at.elapsed() > AFTER) {
                            return attempts;
                        }
                        let at = Instant::now();
                        let result = http_get(vip, REQUEST_TIMEOUT).map_err(|e| format!("{e:#}"));
                        attempts.push(Attempt { at, result });
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
                .expect("a client thread in the client namespace")
        });
        let flood = syn_flood(run.topo.client(), "cli0", macs, vip, FLOOD_SYNS);
        let flood_end = Instant::now();
        flooding.store(false, Ordering::SeqCst);
        let attempts = clients.join().expect("the client thread");
        (flood, flood_end, attempts)
    });
    let flood = flood.expect("sending the flood");

    let status = run.agent.status_json();
    let global = &status["global"];
    let counter = |name: &str| global[name].as_u64().unwrap_or(0);
    let (during, after): (Vec<&Attempt>, Vec<&Attempt>) =
        attempts.iter().partition(|a| a.at < flood_end);
    let failed = |set: &[&Attempt]| -> Vec<String> {
        set.iter()
            .filter_map(|a| a.result.as_ref().err().cloned())
            .collect()
    };
    let (failed_during, failed_after) = (failed(&during), failed(&after));
    eprintln!(
        "flood: {} SYNs in {:.2?} ({:.0}/s); real clients: {}/{} failed during, {}/{} after; \
         snat_port_half_open_taken {}, snat_port_taken_back {}, drop_snat_exhausted {}, \
         drop_conn_table {}; failures: {:?}",
        flood.sent,
        flood.elapsed,
        flood.rate(),
        failed_during.len(),
        during.len(),
        failed_after.len(),
        after.len(),
        counter("snat_port_half_open_taken"),
        counter("snat_port_taken_back"),
        counter("drop_snat_exhausted"),
        counter("drop_conn_table"),
        failed_during,
    );
    // The flood must have been a flood: more half-open flows than the backend's SNAT
    // ports (the default range holds 12768), so new flows had to take their ports (or,
    // before half-open flows were told apart, were dropped).
    assert!(
        counter("snat_port_half_open_taken") + counter("drop_snat_exhausted") > 0,
        "the flood never exhausted the SNAT ports, so it proves nothing: {global:#}"
    );
    assert!(
        during.len() >= 3 && failed_during.len() <= 3,
        "real clients must connect during the flood (at most a few failed attempts of {}): \
         {failed_during:?}",
        during.len()
    );
    assert!(
        after.len() >= 10 && failed_after.is_empty(),
        "every real client must connect after the flood ({} attempts): {failed_after:?}",
        after.len()
    );
}
