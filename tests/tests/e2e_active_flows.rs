//! End-to-end: active L4 flows (the agent's census of the connection table). Long-lived
//! TCP connections and UDP flows through the VIPs to two backends show in `status --json`
//! per VIP and per backend, in `/metrics` and in `balancer status`; closed connections and
//! idle UDP flows leave the counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use balancer_tests::{default_config, Running, Topology, DEFAULT_TIMEOUT};
use serde_json::Value;

const LISTEN: &str = "127.0.0.1:9901";
/// Long-lived TCP connections and UDP flows opened.
const TCP: u32 = 6;
const UDP: u32 = 5;
/// A census is taken every 5 s; a UDP flow idles out after 8 s (so that the census after
/// the flows opened still sees them), a closed TCP one after 1 s.
const TIMEOUTS: &str = "[timeouts]\nudp = \"8s\"\ntcp_closing = \"1s\"\n";
/// Long enough for two censuses past the UDP timeout.
const CENSUS_WAIT: Duration = Duration::from_secs(30);

fn config(topo: &Topology) -> String {
    format!(
        "{}\n{TIMEOUTS}\n[telemetry]\nlisten = \"{LISTEN}\"\n",
        default_config(topo, "maglev")
    )
}

/// `active_flows.total` of a VIP or a backend (`None` before the first census).
fn total(item: &Value) -> Option<u64> {
    item["active_flows"]["total"].as_u64()
}

fn vip<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["vips"]
        .as_array()
        .expect("vips")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VIP {name} in {status:#}"))
}

/// Each backend of `pool` by its address ("ADDRESS:PORT") with its active flows.
fn backends(status: &Value, pool: &str) -> BTreeMap<String, Option<u64>> {
    let pool = status["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap_or_else(|| panic!("no pool {pool} in {status:#}"));
    pool["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            let addr = format!("{}:{}", b["address"].as_str().unwrap(), b["port"]);
            (addr, total(b))
        })
        .collect()
}

/// Polls `status --json` until `done` holds of it; returns that status.
fn wait_for(run: &Running, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + CENSUS_WAIT;
    loop {
        let status = run.agent.status_json();
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the last status:\n{status:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The value of the `/metrics` sample `prefix` (name and labels as written), as written.
fn metric(run: &Running, prefix: &str) -> String {
    let url = format!("http://{LISTEN}/metrics");
    let text = run
        .topo
        .lb()
        .run(&["curl", "-sS", "-m", "5", &url])
        .unwrap_or_else(|e| panic!("curl {url}: {e:#}"));
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"));
    line.rsplit_once(' ').unwrap().1.to_owned()
}

#[test]
fn open_connections_and_udp_flows_are_counted_per_vip_and_backend() {
    let run = Running::start_with(2, config);
    // N long-lived TCP connections (each answered once: established), M UDP flows; what
    // each backend got, by its address.
    let mut expected_web: BTreeMap<String, u64> = (1..=2)
        .map(|i| (run.topo.backend_http(i).to_string(), 0))
        .collect();
    let mut expected_dns: BTreeMap<String, u64> = (1..=2)
        .map(|i| (run.topo.backend_udp(i).to_string(), 0))
        .collect();
    let mut connections = Vec::new();
    for _ in 0..TCP {
        let (connection, _, index) = run.pinned_connection();
        *expected_web
            .get_mut(&run.topo.backend_http(index).to_string())
            .unwrap() += 1;
        connections.push(connection);
    }
    let udp = run
        .client
        .udp_request_many(Topology::vip_udp(), UDP as usize, DEFAULT_TIMEOUT);
    assert!(udp.failures.is_empty(), "{udp}");
    for (name, n) in &udp.counts {
        let index = run
            .topo
            .backend_index(name)
            .unwrap_or_else(|| panic!("UDP answered by {name:?}"));
        *expected_dns
            .get_mut(&run.topo.backend_udp(index).to_string())
            .unwrap() += *n as u64;
    }
    let counted = |expected: &BTreeMap<String, u64>| -> BTreeMap<String, Option<u64>> {
        expected
            .iter()
            .map(|(k, n)| (k.clone(), Some(*n)))
            .collect()
    };

    let (tcp, udp) = (u64::from(TCP), u64::from(UDP));
    let status = wait_for(&run, "a census with every flow", |s| {
        total(vip(s, "web")) == Some(tcp) && total(vip(s, "dns")) == Some(udp)
    });
    let web = &vip(&status, "web")["active_flows"];
    assert_eq!(
        (web["tcp_established"].as_u64(), web["tcp_other"].as_u64()),
        (Some(tcp), Some(0)),
        "{web:#}"
    );
    assert_eq!(vip(&status, "dns")["active_flows"]["udp"], udp);
    assert_eq!(
        backends(&status, "web"),
        counted(&expected_web),
        "{status:#}"
    );
    assert_eq!(
        backends(&status, "dns"),
        counted(&expected_dns),
        "{status:#}"
    );
    let census = &status["flow_census"];
    assert!(
        census["at"].is_string() && census["age_secs"].as_f64().is_some_and(|a| a < 10.0),
        "{census:#}"
    );
    assert!(
        census["entries"].as_u64().unwrap() >= tcp + udp,
        "{census:#}"
    );

    // The same counts in /metrics and in `balancer status`.
    assert_eq!(
        metric(&run, "balancer_vip_active_flows{vip=\"web\",pool=\"web\"}"),
        TCP.to_string()
    );
    for (addr, n) in &expected_dns {
        let sample = format!("balancer_backend_active_flows{{pool=\"dns\",backend=\"{addr}\"}}");
        assert_eq!(metric(&run, &sample), n.to_string(), "{sample}");
    }
    let text = run.agent.cli_ok(&["status"]).expect("balancer status");
    assert!(
        text.contains("ACTIVE FLOWS") && text.contains("active flows counted"),
        "{text}"
    );

    // Closed connections (FIN both ways) and idle UDP flows leave the counts.
    drop(connections);
    let status = wait_for(&run, "the flows to end", |s| {
        total(vip(s, "web")) == Some(0) && total(vip(s, "dns")) == Some(0)
    });
    for pool in ["web", "dns"] {
        assert!(
            backends(&status, pool).values().all(|n| *n == Some(0)),
            "{status:#}"
        );
    }
}
