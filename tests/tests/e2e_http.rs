//! End-to-end: an HTTP-mode VIP served by the agent's proxy, with curl as the client. Rules
//! route by path prefix and suffix, host, negated method, client network and regex to
//! their pools, the rest to the default pool; the backends see who the client is; an L4
//! VIP works beside it; a backend that dies is retried around, then left out.

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use balancer_tests::agent::agent_and_nat;
use balancer_tests::{require_root, Agent, Topology, VIP};

/// The HTTP VIP and, on another address, an L4 VIP of the same pools.
const L4_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 2);

/// Pools "static" (backend 1), "api" (backend 2), "app" (backends 3 and 4); HTTP VIP "www"
/// with the rules under test (default pool "app"); L4 VIP "l4" to "app".
fn config(topo: &Topology, check: &str) -> String {
    let backend = |i: usize| format!("{{ address = \"{}\", port = 80 }}", topo.backend_addr(i));
    format!(
        r#"{agent}
[[pool]]
name = "static"
backends = [{b1}]

[[pool]]
name = "api"
backends = [{b2}]

[[pool]]
name = "app"
{check}
backends = [{b3}, {b4}]

[[vip]]
name = "www"
address = "{VIP}"
port = 80
protocol = "tcp"
mode = "http"
pool = "app"

[[vip.rule]]
name = "api"
pool = "api"
host = ["api.example", "*.api.example"]

[[vip.rule]]
name = "static"
pool = "static"
path_prefix = ["/static/", "/images/"]

[[vip.rule]]
name = "static-ext"
pool = "static"
path_suffix = [".css", ".js", ".jpg"]
not_method = ["POST"]

[[vip.rule]]
name = "internal"
pool = "api"
source = ["10.0.1.0/24"]
path_regex = ["^/internal(/|$)"]

[[vip]]
name = "l4"
address = "{L4_VIP}"
port = 80
protocol = "tcp"
pool = "app"
"#,
        agent = agent_and_nat(topo),
        b1 = backend(1),
        b2 = backend(2),
        b3 = backend(3),
        b4 = backend(4),
    )
}

/// curl from the client namespace: `(status, X-Backend)`; extra curl arguments first.
fn curl(topo: &Topology, args: &[&str], url: &str) -> (u16, String) {
    let mut command = topo.client().command("curl");
    command
        .args(["-s", "-o", "/dev/null", "--max-time", "5"])
        .args(["-w", "%{http_code} %header{x-backend}"])
        .args(args)
        .arg(url);
    let out = command.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, backend) = text.split_once(' ').unwrap_or((&text, ""));
    (code.parse().unwrap_or(0), backend.to_owned())
}

#[test]
fn rules_route_requests_to_their_pools_and_l4_works_beside() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let agent = Agent::start(&topo, &config(&topo, "")).expect("starting the agent");
    let www = format!("http://{VIP}");
    let cases: [(&str, &[&str], &str, &[&str]); 10] = [
        ("path prefix", &[], "/static/logo.png", &["b1"]),
        ("path prefix, second value", &[], "/images/a", &["b1"]),
        ("suffix, query ignored", &[], "/a/b.css?v=2", &["b1"]),
        ("negated method", &["-X", "POST"], "/a/b.css", &["b3", "b4"]),
        (
            "host first",
            &["-H", "Host: api.example"],
            "/static/x",
            &["b2"],
        ),
        (
            "host *.suffix",
            &["-H", "Host: v1.api.example:80"],
            "/",
            &["b2"],
        ),
        (
            "bare suffix is not *.suffix",
            &["-H", "Host: xapi.example"],
            "/",
            &["b3", "b4"],
        ),
        ("CIDR and regex", &[], "/internal/status", &["b2"]),
        ("regex anchoring", &[], "/internalx", &["b3", "b4"]),
        ("default pool", &[], "/", &["b3", "b4"]),
    ];
    for (what, args, path, want) in cases {
        let (status, backend) = curl(&topo, args, &format!("{www}{path}"));
        assert_eq!(
            status,
            200,
            "{what}: {path} answered {status}\n{}",
            agent.log()
        );
        assert!(
            want.contains(&backend.as_str()),
            "{what}: {path} reached {backend:?}, not one of {want:?}"
        );
    }
    // The L4 VIP beside it: the data plane, not the proxy.
    let (status, backend) = curl(&topo, &[], &format!("http://{L4_VIP}/"));
    assert_eq!(
        (status, ["b3", "b4"].contains(&backend.as_str())),
        (200, true),
        "{backend}"
    );

    let status = agent.status_json();
    let www = status["http"]
        .as_array()
        .and_then(|vips| vips.iter().find(|v| v["name"] == "www"))
        .unwrap_or_else(|| panic!("no HTTP VIP www in status: {status:#}"));
    assert_eq!(www["requests"], 10, "{www:#}");
    assert_eq!(www["responses"]["2xx"], 10, "{www:#}");
    let hits: Vec<u64> = www["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hits"].as_u64().unwrap())
        .collect();
    assert_eq!(
        hits,
        [2, 2, 1, 1, 4],
        "hits of api, static, static-ext, internal, default"
    );
    let text = agent.cli_ok(&["status"]).expect("balancer status");
    assert!(text.contains("www"), "{text}");
}

#[test]
fn a_dead_backend_is_retried_around_and_then_left_out() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let mut servers = topo.start_backends().expect("starting the backends");
    let check =
        "check = { type = \"tcp\", interval = \"300ms\", timeout = \"300ms\", fall = 2, rise = 2 }";
    let agent = Agent::start(&topo, &config(&topo, check)).expect("starting the agent");
    let url = format!("http://{VIP}/");
    thread::sleep(Duration::from_secs(1));
    servers.stop(3);
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut seen_b3 = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let (status, backend) = curl(&topo, &[], &url);
        if status != 200 {
            failed.push((started.elapsed(), status));
        }
        if backend == "b3" {
            seen_b3 += 1;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        failed,
        [],
        "requests failed although b4 was up\n{}",
        agent.log()
    );
    assert_eq!(seen_b3, 0, "the dead backend answered");
    let status = agent.status_json();
    let www = &status["http"][0];
    assert!(
        www["retries"].as_u64() > Some(0),
        "no retry counted: {www:#}"
    );
}
