//! End-to-end: when no SNAT port is free for a new flow, the data plane drops it, counts
//! it, and says so through its log (aya-log), which the agent prints: at most a line a
//! second, however many flows find no port.
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use balancer_tests::{config_for, Running, Topology, DEFAULT_TIMEOUT};

#[test]
fn exhausted_snat_ports_drop_the_new_flow_and_log_it() {
    // One backend and a single SNAT port: a second concurrent flow cannot be translated.
    let run = Running::start_with(1, |topo| {
        let config = config_for(topo, "maglev", &[1]).replacen(
            "[nat]\n",
            "[nat]\nport_range = \"20000-20000\"\n",
            1,
        );
        assert!(
            config.contains("port_range"),
            "config layout changed:\n{config}"
        );
        config
    });
    let (agent, client) = (&run.agent, &run.client);

    let mut first = client
        .keepalive(Topology::vip_http())
        .expect("the first flow gets the only SNAT port");
    assert_eq!(first.get().expect("request on the first flow"), "b1");
    let second = client.http_get(Topology::vip_http(), Duration::from_millis(700));
    assert!(
        second.is_err(),
        "a second concurrent flow cannot have a SNAT port: {second:?}"
    );
    assert_eq!(first.get().expect("the first flow still works"), "b1");

    let status = agent.status_json();
    let drops = status["global"]["drop_snat_exhausted"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        drops >= 1,
        "drop_snat_exhausted must count the drops: {status:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while !agent.log().contains("no free SNAT port") {
        assert!(
            Instant::now() < deadline,
            "the data plane's log record did not reach the agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A burst of new UDP flows, none of which can have the DNS backend's one port: every
    // drop is counted, the log says it at most once a second.
    client
        .udp_request(Topology::vip_udp(), b"hold", DEFAULT_TIMEOUT)
        .expect("the first UDP flow gets the DNS backend's only port");
    let said = |agent: &balancer_tests::Agent| agent.log().matches("no free SNAT port").count();
    let (lines_before, started) = (said(agent), Instant::now());
    client.run(|| {
        for _ in 0..500 {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
            socket
                .send_to(b"x", Topology::vip_udp())
                .expect("sending a datagram");
        }
    });
    let burst = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let status = agent.status_json();
    let after = status["global"]["drop_snat_exhausted"]
        .as_u64()
        .unwrap_or(0);
    // (A socket may get the first flow's port and join its flow.)
    assert!(
        after >= drops + 495,
        "every datagram without a port is counted: {drops} then {after}"
    );
    let lines = said(agent) - lines_before;
    let allowed = 2 + burst.as_secs() as usize;
    assert!(
        lines <= allowed,
        "{lines} log lines for 500 drops in {burst:?} (at most {allowed}):\n{}",
        agent.log()
    );

    // The agent sees the DNS backend short of ports (its sample of new flows' first
    // probes, every 5 s), shows it and warns.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let status = agent.status_json();
        let in_use = status["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == "dns"))
            .and_then(|p| p["backends"][0]["snat_ports_in_use"].as_f64());
        if in_use.is_some_and(|share| share >= 0.7) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the DNS backend's SNAT use is not shown as high: {in_use:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.log().contains("of its SNAT ports are in use"),
        "no warning of SNAT ports running short:\n{}",
        agent.log()
    );
}
