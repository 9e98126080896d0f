//! CLI error handling: clear one-line errors for a missing agent, an agent that does not
//! answer, unknown VIPs, duplicate backends, bad arguments and configuration files, `run`
//! without root; a closed output pipe is a normal end; the agent keeps working after them.

use balancer_tests::{
    balancer_cli, balancer_path, default_config, require_root, util::TempDir, Agent, CliOutput,
    Topology, DEFAULT_TIMEOUT,
};
use std::os::unix::{fs::PermissionsExt, process::CommandExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    assert_eq!(
        out.stderr.matches("No such file or directory").count(),
        1,
        "expected the OS error once, got {out}"
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

#[test]
fn an_agent_that_does_not_answer_is_a_clear_error_in_time() {
    let dir = TempDir::new("balancer-cli-silent").unwrap();
    let socket = dir.path().join("silent.sock");
    // The kernel accepts connections into the backlog; nobody ever answers.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let started = Instant::now();
    let out = balancer_cli(&socket, &["--timeout", "1", "status"]);
    let took = started.elapsed();
    expect_error(&out, "status against an agent that does not answer");
    assert!(
        out.stderr.contains(&format!(
            "the agent at {} did not answer within 1s",
            socket.display()
        )),
        "{out}"
    );
    assert!(took < Duration::from_secs(5), "the CLI took {took:?}");
}

/// Runs the CLI with its stdout a pipe whose reading end is already closed.
fn into_closed_pipe(agent: &Agent, args: &[&str]) -> CliOutput {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(balancer_path())
        .arg("--socket")
        .arg(agent.socket())
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running the CLI");
    CliOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_closed_output_pipe_is_a_normal_end() {
    with_agent(|_, agent| {
        for args in [&["status"][..], &["vip", "list"], &["backend", "list"]] {
            let out = into_closed_pipe(agent, args);
            assert!(
                out.success() && out.stderr.is_empty(),
                "`balancer {}` into a closed pipe: expected exit 0 and nothing on stderr, got \
                 {out}",
                args.join(" ")
            );
        }
    });
}

#[test]
fn vip_add_help_lists_the_schedulers() {
    let out = balancer_cli(Path::new("/nonexistent.sock"), &["vip", "add", "--help"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains("[possible values: maglev, round-robin]"),
        "expected `vip add --help` to list the schedulers, got {out}"
    );
}

/// A configuration of one VIP on `lo` (check-config loads nothing, so any interface name
/// the file accepts will do); `port` is the VIP's port, on line 16 column 8. It names no
/// `nat.source_address`: check-config checks that one against the host it runs on.
fn config_with_port(port: u16) -> String {
    format!(
        r#"[agent]
interfaces = ["lo"]
control_socket = "/tmp/balancer-check-config.sock"

[nat]
port_range = "20000-32767"

[[pool]]
name = "web"
backends = [ {{ address = "10.0.2.11", port = 80 }} ]

[[vip]]
name = "web"
address = "10.0.100.1"
protocol = "tcp"
port = {port}
pool = "web"
"#
    )
}

#[test]
fn check_config_says_ok_or_names_the_place() {
    let dir = TempDir::new("balancer-check-config").unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config_with_port(80)).unwrap();
    let socket = Path::new("/nonexistent.sock");
    let out = balancer_cli(
        socket,
        &["check-config", "--config", good.to_str().unwrap()],
    );
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "configuration OK", "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, config_with_port(0)).unwrap();
    let out = balancer_cli(socket, &["check-config", "-c", bad.to_str().unwrap()]);
    expect_error(&out, "check-config of a VIP on port 0");
    assert!(
        out.stderr.contains(&format!("{}:16:8:", bad.display())) && out.stderr.contains("port"),
        "expected the error to name file:line:column and the field, got {out}"
    );
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn run_without_root_says_so_first_and_touches_nothing() {
    require_root();
    let dir = TempDir::new("balancer-no-root").unwrap();
    // Readable by the unprivileged user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pins = dir.path().join("pins");
    let config = dir.path().join("balancer.toml");
    let text = config_with_port(80).replace(
        "[nat]",
        &format!("pin_dir = \"{}\"\n\n[nat]", pins.display()),
    );
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(balancer_path())
        .args(["run", "--config"])
        .arg(&config)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running the agent as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("error: `balancer run` must run as root"),
        "expected the first thing said to be that root is needed, got:\n{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!pins.exists(), "the pin directory was created without root");
}
