//! End-to-end: when no SNAT port is free for a new flow, the data plane drops it, counts
//! it, and says so through its log (aya-log), which the agent prints.
use std::time::{Duration, Instant};

use balancer_tests::{config_for, Running, Topology};

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
}
