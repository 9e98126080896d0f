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
fn mixed_families_are_refused_by_name() {
    with_agent(|_, agent| {
        let cases: [(&[&str], &str); 4] = [
            (
                &["backend", "add", "web", "[fd00:2::11]:80"],
                "[fd00:2::11]:80 is an IPv6 address, and pool \"web\" has IPv4 backends",
            ),
            (
                &[
                    "vip",
                    "add",
                    "web6",
                    "[fd00:100::1]:80/tcp",
                    "--pool",
                    "web",
                ],
                "VIP \"web6\" is an IPv6 address, and its pool \"web\" has IPv4 backends",
            ),
            (
                &[
                    "vip",
                    "add",
                    "tun6",
                    "[fd00:100::2]:80/tcp",
                    "--pool",
                    "tun6",
                    "--forwarding",
                    "tunnel",
                ],
                "VIP \"tun6\" is IPv6 and \"tunnel\" encapsulates in IPv4 only",
            ),
            (
                &["backend", "add", "web", "[fe80::1]:80"],
                "fe80::1 is a link-local address",
            ),
        ];
        for (args, expected) in cases {
            let out = agent.cli(args);
            expect_error(&out, &format!("`{}`", args.join(" ")));
            assert!(
                out.stderr.contains(expected),
                "expected {expected:?}, got {out}"
            );
        }
        let vips = agent.cli(&["vip", "list"]);
        assert!(
            !vips.stdout.contains("fd00"),
            "a refused VIP was added: {vips}"
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

/// `balancer check-config` of `text` (written to a file of `dir`): the output, and the
/// file's path as errors name it.
fn check_config(dir: &TempDir, name: &str, text: &str) -> (CliOutput, String) {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    let out = balancer_cli(
        Path::new("/nonexistent.sock"),
        &["check-config", "-c", &path],
    );
    (out, path)
}

#[test]
fn check_config_refuses_addresses_that_cannot_work_and_warns_of_shared_ports() {
    let dir = TempDir::new("balancer-check-addresses").unwrap();
    // Three backends, all on line 12.
    let good = config_with_port(80).replacen(
        "port = 80 }",
        "port = 80 }, { address = \"10.0.2.12\", port = 80 }, { address = \"10.0.2.13\", port = 80 }",
        1,
    );
    // (file name, from, to, the error's place and words)
    let cases = [
        (
            "loopback-backend.toml",
            "address = \"10.0.2.11\"",
            "address = \"127.0.0.1\"",
            "10:26: pool[0] (\"web\").backends[0].address: 127.0.0.1 is a loopback address: \
             the XDP program cannot forward flows to the balancer itself",
        ),
        (
            "multicast-vip.toml",
            "address = \"10.0.100.1\"",
            "address = \"224.0.0.18\"",
            "14:11: vip[0] (\"web\").address: 224.0.0.18 is a multicast address, not a \
             VIP's address",
        ),
        (
            "loopback-source.toml",
            "port_range = \"20000-32767\"",
            "source_address = \"127.0.0.1\"",
            "6:18: nat.source_address: 127.0.0.1 is a loopback address, not a source address \
             backends can answer",
        ),
        (
            "udp-check.toml",
            "name = \"web\"\nbackends",
            "name = \"web\"\ncheck = { type = \"udp\" }\nbackends",
            "10:18: pool[0] (\"web\").check.type: a UDP check needs a `payload` the service \
             answers",
        ),
        (
            "small-ring.toml",
            "pool = \"web\"\n",
            "pool = \"web\"\nring_size = 2\n",
            "18:13: vip[0] (\"web\").ring_size: 2 is smaller than the 3 backends of pool \
             \"web\"",
        ),
    ];
    for (name, from, to, expected) in cases {
        assert!(good.contains(from), "{from:?} not in the test file");
        let (out, path) = check_config(&dir, name, &good.replacen(from, to, 1));
        expect_error(&out, name);
        assert!(
            out.stderr.starts_with(&format!("error: {path}:{expected}")),
            "{name}: expected `{path}:{expected}`, got {out}"
        );
    }

    // SNAT ports the kernel may give local sockets too: a warning, not an error.
    let shared = good.replacen("\"20000-32767\"", "\"1024-65535\"", 1);
    let (out, path) = check_config(&dir, "shared-ports.toml", &shared);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "configuration OK", "{out}");
    assert!(
        out.stderr.starts_with(&format!(
            "warning: {path}:6:14: nat.port_range: 1024-65535 overlaps \
             net.ipv4.ip_local_port_range"
        )) && out.stderr.trim_end().lines().count() == 1,
        "expected one warning naming the place, got {out}"
    );
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

#[test]
fn decap_errors_name_what_is_wrong_and_attach_nothing() {
    require_root();
    let pins = TempDir::new("decap-errors").expect("a scratch directory");
    let dir = pins.path().display().to_string();
    let socket = Path::new("/tmp/balancer-tests-no-such-dir/balancer.sock");
    let decap = |args: &[&str]| {
        let mut all = vec!["decap"];
        all.extend_from_slice(args);
        balancer_cli(socket, &all)
    };

    let out = decap(&["--interface", "lo", "--pin-dir", &dir]);
    assert!(
        !out.success() && out.stderr.contains("--address"),
        "no address: {out}"
    );
    let out = decap(&[
        "--interface",
        "lo",
        "--address",
        "224.0.0.5",
        "--pin-dir",
        &dir,
    ]);
    expect_error(&out, "a multicast address");
    assert!(
        out.stderr
            .contains("--address 224.0.0.5: not a unicast address"),
        "{out}"
    );
    let out = decap(&["detach", "--interface", "nosuch0", "--pin-dir", &dir]);
    expect_error(&out, "detaching what is not attached");
    assert!(
        out.stderr
            .contains("nosuch0: no decapsulation program attached"),
        "{out}"
    );
    let out = decap(&["status", "--interface", "nosuch0", "--pin-dir", &dir]);
    expect_error(&out, "the status of what is not attached");
    let out = decap(&["status", "--pin-dir", &dir]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.contains("no decapsulation program attached"),
        "{out}"
    );
    let out = decap(&[
        "--interface",
        "nosuch0",
        "--address",
        "10.0.2.11",
        "--pin-dir",
        &dir,
    ]);
    expect_error(&out, "an interface that does not exist");
    assert!(
        out.stderr
            .contains("--interface nosuch0: no such interface"),
        "{out}"
    );
    assert!(
        std::fs::read_dir(pins.path()).unwrap().next().is_none(),
        "a failed attach leaves nothing pinned behind"
    );
}
