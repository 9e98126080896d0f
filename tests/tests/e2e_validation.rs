//! End-to-end: what the running agent refuses because it cannot work on its host (a VIP on
//! the balancer's own address, a backend on loopback or on the balancer itself), in the
//! words the configuration file gets; and a backend added at run time takes no flows
//! before its first check, and says so.

use std::time::{Duration, Instant};

use balancer_tests::{Agent, CliOutput, Running, Topology, LB_BACKEND_ADDR, LB_CLIENT_ADDR, VIP};

/// Asserts that `out` failed with a one-line `error:` that contains `words`.
fn expect_refused(out: &CliOutput, what: &str, words: &str) {
    assert!(!out.success(), "{what}: expected a refusal, got {out}");
    assert!(
        out.stderr.starts_with("error:") && out.stderr.trim_end().lines().count() == 1,
        "{what}: expected a one-line `error: ...`, got {out}"
    );
    assert!(
        out.stderr.contains(words),
        "{what}: expected the error to say {words:?}, got {out}"
    );
}

/// `balancer status --json`'s entry of backend `address` in pool `pool`, if any.
fn backend(agent: &Agent, pool: &str, address: &str) -> Option<serde_json::Value> {
    let status = agent.status_json();
    status["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == pool)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == address)
        .cloned()
}

#[test]
fn vip_add_of_the_hosts_own_address_is_refused() {
    let run = Running::start(2, "maglev");
    let agent = &run.agent;
    let ssh = format!("{LB_CLIENT_ADDR}:22/tcp");
    let out = agent.cli(&["vip", "add", "ssh", &ssh, "--pool", "web"]);
    expect_refused(
        &out,
        &format!("`vip add ssh {ssh}`"),
        &format!(
            "{LB_CLIENT_ADDR} is an address of this host (lbc0): balancing it would take over \
             the host's own traffic to port 22/tcp"
        ),
    );
    let out = agent.cli(&["vip", "add", "any", "0.0.0.0:80/tcp", "--pool", "web"]);
    expect_refused(
        &out,
        "`vip add any 0.0.0.0:80/tcp`",
        "0.0.0.0 is the unspecified address, not a VIP's address",
    );
    let list = agent.cli_ok(&["vip", "list"]).expect("vip list");
    assert!(
        !list.contains("ssh") && !list.contains("any"),
        "a refused VIP was added:\n{list}"
    );
    // Another port of the VIP's own address is fine: it is no address of the host.
    agent
        .cli_ok(&[
            "vip",
            "add",
            "web2",
            &format!("{VIP}:8080/tcp"),
            "--pool",
            "web",
        ])
        .expect("a VIP on an address the host does not have");
    let served = run
        .client
        .http_get(Topology::vip_http(), balancer_tests::DEFAULT_TIMEOUT);
    assert!(served.is_ok(), "the VIP stopped serving: {served:?}");
}

#[test]
fn backend_add_on_the_balancer_itself_is_refused() {
    let run = Running::start(2, "maglev");
    let agent = &run.agent;
    let cases = [
        ("127.0.0.1:80", "127.0.0.1 is a loopback address".to_owned()),
        (
            "10.0.2.1:80",
            format!("{LB_BACKEND_ADDR} is an address of this host (lbs0)"),
        ),
    ];
    for (address, why) in cases {
        let out = agent.cli(&["backend", "add", "web", address]);
        expect_refused(
            &out,
            &format!("`backend add web {address}`"),
            &format!(
                "{why}: the XDP program cannot forward flows to the balancer itself (a local \
                 backend can serve only HTTP-mode VIPs, whose proxy connects to it); pool \
                 \"web\" serves L4 VIP \"web\""
            ),
        );
        let ip = address.split(':').next().unwrap();
        assert!(
            backend(agent, "web", ip).is_none(),
            "the refused backend {address} was added"
        );
    }
}

#[test]
fn a_backend_added_at_run_time_takes_no_flows_before_its_first_check() {
    // Pool "fresh" is checked at an address nobody answers, so its first check takes the
    // whole timeout (2 s); pool "web" by HTTP every 200 ms.
    let run = Running::start_with(3, |topo| {
        let config = balancer_tests::config_for(topo, "maglev", &[1, 2]).replacen(
            "name = \"web\"\nbackends = [",
            "name = \"web\"\ncheck = { type = \"http\", interval = \"200ms\", timeout = \"150ms\" }\nbackends = [",
            1,
        );
        format!(
            "{config}\n[[pool]]\nname = \"fresh\"\ncheck = {{ type = \"tcp\", address = \
             \"10.0.2.250\", interval = \"10s\", timeout = \"2s\" }}\n\n[[vip]]\nname = \
             \"fresh\"\naddress = \"10.0.100.2\"\nport = 80\nprotocol = \"tcp\"\npool = \
             \"fresh\"\n"
        )
    });
    let (agent, topo) = (&run.agent, &run.topo);
    let b3 = topo.backend_addr(3).to_string();
    let added = Instant::now();
    agent
        .cli_ok(&["backend", "add", "fresh", &topo.backend_http(3).to_string()])
        .expect("adding backend 3 to pool fresh");
    let state = backend(agent, "fresh", &b3).expect("backend 3 in pool fresh");
    assert!(
        added.elapsed() < Duration::from_millis(1500),
        "too slow to see the state before the first check ends"
    );
    assert_eq!(
        (&state["state"], &state["health"]),
        (&"unchecked".into(), &"down".into()),
        "a backend not checked yet: {state:#}"
    );
    let list = agent
        .cli_ok(&["backend", "list", "fresh"])
        .expect("backend list");
    let row: Vec<&str> = list
        .lines()
        .find(|l| l.contains(&b3))
        .unwrap_or_else(|| panic!("no row of {b3}:\n{list}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[3], row[5]),
        ("unchecked", "-"),
        "STATE and HEALTH of a backend not checked yet:\n{list}"
    );
    // Its only backend is not checked: the VIP takes no flow.
    let fresh = std::net::SocketAddrV4::new("10.0.100.2".parse().unwrap(), 80);
    let answer = run.client.http_get(fresh, Duration::from_millis(500));
    assert!(answer.is_err(), "an unchecked backend answered: {answer:?}");
    let after = backend(agent, "fresh", &b3).expect("backend 3");
    assert_eq!(
        after["counters"]["new_flows"], 0,
        "a flow went to an unchecked backend: {after:#}"
    );

    // In pool "web", the first check (a success) brings it in at once.
    agent
        .cli_ok(&["backend", "add", "web", &topo.backend_http(3).to_string()])
        .expect("adding backend 3 to pool web");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let b = backend(agent, "web", &b3).expect("backend 3 in pool web");
        if b["state"] == "active" {
            assert_eq!(b["health"], "up", "{b:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend 3 did not come up after its first check: {b:#}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tally = run
        .client
        .http_get_many(Topology::vip_http(), 60, balancer_tests::DEFAULT_TIMEOUT);
    assert!(tally.failures.is_empty(), "{tally}");
    assert!(
        tally.counts.contains_key("b3"),
        "no new connection reached backend 3 once it was up: {tally}"
    );
    // Its first check's result, logged once.
    let log = agent.log();
    let first = format!(
        "pool web: backend {} UP after its first check",
        topo.backend_http(3)
    );
    assert_eq!(log.matches(&first).count(), 1, "agent log:\n{log}");
}
