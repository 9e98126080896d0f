//! CLI error handling: clear one-line errors for a missing agent, unknown VIPs, duplicate backends and bad arguments, and the agent keeps working after them.

use balancer_tests::{
    balancer_cli, default_config, require_root, Agent, CliOutput, Topology, DEFAULT_TIMEOUT,
};
use std::path::Path;

/// Checks that `out` is a failure whose stderr starts with `error:`.
fn expect_error(out: &CliOutput, what: &str) {
    assert!(
        !out.success(),
        "{what}: expected a non-zero exit status, got {out}"
    );
    assert!(
        out.stderr.starts_with("error:"),
        "{what}: expected stderr to start with `error:`, got {out}"
    );
}

/// A topology, servers and an agent; runs `check` and then verifies that a request
/// through the VIP still succeeds.
fn with_agent(check: impl FnOnce(&Topology, &Agent)) {
    require_root();
    let topo = Topology::new(3).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let agent = Agent::start(&topo, &default_config(&topo, "maglev")).expect("starting the agent");
    check(&topo, &agent);
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");
    let after = client.http_get(Topology::vip_http(), DEFAULT_TIMEOUT);
    assert!(
        after.is_ok(),
        "expected a request through the VIP to succeed after the CLI error, got {after:?}"
    );
    let status = agent.cli(&["status"]);
    assert!(
        status.success(),
        "expected `balancer status` to succeed after the CLI error, got {status}"
    );
    drop(client);
    drop(agent);
}

#[test]
fn agent_not_running_is_a_clear_error() {
    require_root();
    let socket = Path::new("/tmp/balancer-tests-no-such-dir/balancer.sock");
    let out = balancer_cli(socket, &["status"]);
    expect_error(&out, "status without a running agent");
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "expected a one-line error without a running agent, got {out}"
    );
    let lower = out.stderr.to_lowercase();
    assert!(
        out.stderr.contains(&socket.display().to_string()) || lower.contains("not running"),
        "expected the error to name the socket {} or say the agent is not running, got {out}",
        socket.display()
    );
}

#[test]
fn unknown_vip() {
    with_agent(|_, agent| {
        let out = agent.cli(&["vip", "del", "nope"]);
        expect_error(&out, "`vip del nope`");
        assert!(
            out.stderr.contains("nope"),
            "expected the error to name the VIP `nope`, got {out}"
        );
    });
}

#[test]
fn duplicate_backend() {
    with_agent(|topo, agent| {
        let existing = topo.backend_http(1).to_string();
        let out = agent.cli(&["backend", "add", "web", &existing]);
        expect_error(
            &out,
            &format!("`backend add web {existing}` (already in the pool)"),
        );
        assert!(
            out.stderr.contains(&topo.backend_addr(1).to_string()),
            "expected the error to name the backend {existing}, got {out}"
        );
    });
}

#[test]
fn bad_arguments() {
    with_agent(|_, agent| {
        let out = agent.cli(&["backend", "add", "web", "notanaddress"]);
        expect_error(&out, "`backend add web notanaddress`");
        assert!(
            out.stderr.contains("notanaddress"),
            "expected the error to name the bad value `notanaddress`, got {out}"
        );
    });
}
