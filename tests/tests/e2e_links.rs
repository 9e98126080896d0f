//! End-to-end: the interfaces the agent attaches to come and go. One deleted and created
//! again (same name, same addresses, a new index) gets the program again without a
//! restart, and the agent says so in its log and its status (with `keep_attached`, the new
//! link is the one kept for the next agent); one that does not exist yet
//! is waited for with `agent.wait_for_interfaces`, refused without it (naming it and its
//! line in the file, before anything is pinned); and an interface another agent holds is
//! refused with the program that holds it named.

use std::{
    thread,
    time::{Duration, Instant},
};

use balancer_common::PROGRAM_NAME;
use balancer_tests::{
    balancer_path, default_config, require_root, Agent, Running, Topology, DEFAULT_TIMEOUT,
};
use serde_json::Value;

/// How long the agent may take to see an interface go or come.
const NOTICE: Duration = Duration::from_secs(5);
/// How long traffic may take to flow again once the interface is back (neighbours are
/// resolved again).
const RECOVERY: Duration = Duration::from_secs(10);

/// `status --json`'s entry for interface `name`.
fn interface(agent: &Agent, name: &str) -> Value {
    let status = agent.status_json();
    status["interfaces"]
        .as_array()
        .and_then(|list| list.iter().find(|i| i["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no interface {name} in the status: {status:#}"))
}

/// Polls the status until interface `name` is in `state`; returns its entry.
fn wait_interface(agent: &Agent, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + NOTICE;
    loop {
        let entry = interface(agent, name);
        if entry["state"] == state {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "interface {name} not {state} within {NOTICE:?}: {entry:#}\nagent log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Retries a request through the HTTP VIP until one is answered (at most [`RECOVERY`]),
/// then expects ten in a row to be.
fn wait_traffic(client: &balancer_tests::ClientNs) {
    let deadline = Instant::now() + RECOVERY;
    while let Err(e) = client.http_get(Topology::vip_http(), Duration::from_millis(500)) {
        assert!(
            Instant::now() < deadline,
            "no answer through the VIP within {RECOVERY:?} of the interface's return: {e:#}"
        );
    }
    let tally = client.http_get_many(Topology::vip_http(), 10, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "requests through the VIP once it answered again: {tally}"
    );
}

/// `text` with `[agent]`'s `line` added (the `[nat]` table follows `[agent]`).
fn with_agent_line(text: &str, line: &str) -> String {
    assert!(text.contains("\n[nat]"), "{text}");
    text.replacen("\n[nat]", &format!("{line}\n\n[nat]"), 1)
}

/// Deletes the lb's backend-side interface and creates it again, checking what the agent
/// says and that traffic flows again; returns the new interface's status entry.
fn delete_and_create_again(run: &Running) -> Value {
    run.client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("a request through the VIP at first");
    let before = wait_interface(&run.agent, "lbs0", "attached");
    assert_eq!(before["mode"], "driver", "{before:#}");

    run.topo
        .lb()
        .ip(&["link", "del", "lbs0"])
        .expect("deleting lbs0");
    let gone = wait_interface(&run.agent, "lbs0", "missing");
    assert_eq!(gone["ifindex"], before["ifindex"], "{gone:#}");
    assert!(gone["error"].is_string(), "{gone:#}");
    let text = run.agent.cli_ok(&["status"]).expect("balancer status");
    let row = text
        .lines()
        .find(|l| l.starts_with("lbs0 "))
        .unwrap_or_else(|| panic!("no lbs0 row in:\n{text}"));
    assert!(row.contains("ERROR missing"), "{row}");
    assert_eq!(interface(&run.agent, "lbc0")["state"], "attached");

    run.topo.create_backend_link().expect("creating lbs0 again");
    let back = wait_interface(&run.agent, "lbs0", "attached");
    assert_ne!(
        back["ifindex"], before["ifindex"],
        "a new interface: {back:#}"
    );
    assert_eq!(back["mode"], "driver", "{back:#}");
    assert!(
        run.topo.lb().xdp_prog("lbs0").is_some(),
        "the program is on the new lbs0"
    );
    wait_traffic(&run.client);

    let log = run.agent.log();
    let index = back["ifindex"].as_u64().unwrap();
    for said in [
        "interface lbs0 disappeared".to_owned(),
        "XDP detached, traffic for its VIPs is not balanced".to_owned(),
        format!("interface lbs0 is back (ifindex {index}): XDP attached in driver mode"),
    ] {
        assert!(log.contains(&said), "{said:?} in the agent's log:\n{log}");
    }
    back
}

#[test]
fn an_interface_deleted_and_created_again_gets_the_program_again() {
    let mut run = Running::start(2, "maglev");
    delete_and_create_again(&run);
    run.agent.stop();
    assert_eq!(
        run.topo.lb().xdp_prog("lbs0"),
        None,
        "the stopped agent detached from the new interface"
    );
}

#[test]
fn with_kept_links_the_new_interface_keeps_its_link_after_the_agent() {
    let mut run = Running::start_with(2, |topo| {
        with_agent_line(&default_config(topo, "maglev"), "keep_attached = true")
    });
    delete_and_create_again(&run);
    let program = run.topo.lb().xdp_prog("lbs0");
    run.agent.stop();
    // The old interface's link was unpinned, the new one's pinned: it outlives the agent.
    let pinned: Vec<String> = std::fs::read_dir(run.topo.pin_dir())
        .expect("reading the pin directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("link-"))
        .collect();
    assert!(
        pinned.iter().any(|name| name == "link-driver-lbs0"),
        "{pinned:?}"
    );
    assert_eq!(
        run.topo.lb().xdp_prog("lbs0"),
        program,
        "the program stays on the new lbs0"
    );
    let client = &run.client;
    client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("the kept data plane forwards through the new interface");
}

#[test]
fn an_agent_told_to_wait_attaches_to_an_interface_when_it_appears() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    topo.lb()
        .ip(&["link", "del", "lbc0"])
        .expect("deleting lbc0");
    let config = with_agent_line(
        &default_config(&topo, "maglev"),
        "wait_for_interfaces = true",
    );
    let agent = Agent::start(&topo, &config).expect("an agent that waits for lbc0 starts");
    let waiting = interface(&agent, "lbc0");
    assert_eq!(waiting["state"], "waiting", "{waiting:#}");
    assert_eq!(interface(&agent, "lbs0")["state"], "attached");
    let text = agent.cli_ok(&["status"]).expect("balancer status");
    assert!(
        text.lines()
            .any(|l| l.starts_with("lbc0 ") && l.contains("waiting")),
        "{text}"
    );

    topo.create_client_link().expect("creating lbc0 again");
    let attached = wait_interface(&agent, "lbc0", "attached");
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");
    wait_traffic(&client);
    let said = format!(
        "interface lbc0 appeared (ifindex {}): XDP attached in driver mode",
        attached["ifindex"]
    );
    assert!(agent.log().contains(&said), "{said:?} in:\n{}", agent.log());
}

#[test]
fn a_missing_interface_is_refused_with_its_place_in_the_file_before_anything_is_pinned() {
    require_root();
    let topo = Topology::new(1).expect("building the topology");
    let config = default_config(&topo, "maglev").replacen(
        r#"interfaces = ["lbc0", "lbs0"]"#,
        r#"interfaces = ["lbc0", "nosuch0"]"#,
        1,
    );
    // Where the file names it: 1-based line and column.
    let at = config
        .find("\"nosuch0\"")
        .expect("the interface in the file");
    let line = config[..at].matches('\n').count() + 1;
    let column = at - config[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    let wanted = format!(
        "balancer.toml:{line}:{column}: agent.interfaces[1]: interface \"nosuch0\" does not exist"
    );

    // (A fresh bpf filesystem holds the kernel's own `maps.debug` and `progs.debug`.)
    let pinned = || -> Vec<_> {
        let dir = std::fs::read_dir(topo.pin_dir()).expect("reading the pin directory");
        let mut names: Vec<_> = dir.map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = pinned();
    let refused = Agent::start(&topo, &config)
        .err()
        .expect("an agent whose interface does not exist must not start");
    let message = format!("{refused:#}");
    assert!(message.contains(&wanted), "{wanted:?} in:\n{message}");
    assert!(
        message.contains("wait_for_interfaces"),
        "the error says how to start without it:\n{message}"
    );
    assert_eq!(pinned(), before, "nothing pinned");
    assert_eq!(topo.lb().xdp_prog("lbc0"), None, "nothing attached");

    // check-config, in the same namespace, says the same.
    let file = topo.run_dir().join("balancer.toml");
    std::fs::write(&file, &config).unwrap();
    let bin = balancer_path();
    let checked = topo.lb().run(&[
        bin.to_str().unwrap(),
        "check-config",
        "-c",
        file.to_str().unwrap(),
    ]);
    let error = format!("{:#}", checked.expect_err("check-config must refuse it"));
    assert!(error.contains(&wanted), "{wanted:?} in {error}");
}

#[test]
fn a_second_agent_on_an_attached_interface_names_the_program_holding_it() {
    let run = Running::start(1, "maglev");
    let held = run
        .topo
        .lb()
        .xdp_prog("lbc0")
        .expect("the first agent's program on lbc0");
    // Its own pin directory (none) and socket: only the interfaces are shared.
    let pins = format!("pin_dir = \"{}\"", run.topo.pin_dir().display());
    let config = default_config(&run.topo, "maglev").replacen(&pins, "pin_dir = \"\"", 1);
    assert!(config.contains("pin_dir = \"\""), "{config}");
    let socket = run.topo.run_dir().join("second.sock");

    let refused = Agent::start_with_socket(&run.topo, &config, &socket)
        .err()
        .expect("a second agent on the same interfaces must not start");
    let message = format!("{refused:#}");
    let wanted =
        format!("lbc0 already has an XDP program attached (id {held}, name {PROGRAM_NAME}");
    assert!(message.contains(&wanted), "{wanted:?} in:\n{message}");
    assert!(message.contains("is another agent running?"), "{message}");

    // The first agent's program is still there, and serves.
    assert_eq!(run.topo.lb().xdp_prog("lbc0"), Some(held));
    run.client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("a request through the VIP after the second agent was refused");
}
