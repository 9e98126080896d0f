//! End-to-end: direct server return. The backends hold the VIP on `lo` (ARP for it
//! ignored, as IPVS's DR set-up asks) and answer the client by a path of their own that
//! does not pass the balancer (a second link of the client's to the backends' switch): HTTP
//! through a `dsr` VIP works, the balancer counts every client packet and no reply, and a
//! NAT VIP beside it still translates both ways.

use std::time::Duration;

use balancer_tests::{config_for, require_root, Agent, Topology, DEFAULT_TIMEOUT, VIP};

#[test]
fn http_through_a_dsr_vip_is_answered_by_the_backends_directly() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    topo.add_direct_return_path();
    let _servers = topo.start_backends().expect("starting the test servers");
    let config = config_for(&topo, "maglev", &[1, 2]);
    let marker = "scheduler = \"maglev\"\npool = \"web\"\n";
    assert!(config.contains(marker), "{config}");
    let config = config.replacen(marker, &format!("{marker}forwarding = \"dsr\"\n"), 1);
    let agent = Agent::start(&topo, &config).expect("starting the agent");
    let vips = agent.cli_ok(&["vip", "list"]).unwrap();
    assert!(
        vips.lines()
            .any(|l| l.starts_with("web ") && l.contains("maglev, dsr")),
        "{vips}"
    );
    let client = topo.client_ns().expect("a client worker");

    agent.assert_answered_directly(&client, "dsr");
    let tally = client.udp_request_many(Topology::vip_udp(), 10, DEFAULT_TIMEOUT);
    assert!(tally.failures.is_empty(), "the NAT VIP beside it: {tally}");
    let dns = agent.vip_status("dns");
    assert_eq!(dns["forwarding"], "nat");
    assert!(
        dns["counters"]["reply_packets"].as_u64().unwrap() >= 10,
        "NAT replies pass the balancer: {dns:#}"
    );

    // Without the VIP on a backend's lo, its kernel has no socket for the packets: the
    // set-up matters, and the client sees it (this is what a missing `ip addr add VIP/32
    // dev lo` looks like).
    topo.backend(1)
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    topo.backend(2)
        .ip(&["addr", "del", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    let broken = client.http_get(Topology::vip_http(), Duration::from_millis(800));
    assert!(
        broken.is_err(),
        "answered without the VIP on the backends: {broken:?}"
    );
}
