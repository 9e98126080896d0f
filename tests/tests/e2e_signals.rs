//! Signals: SIGHUP (what operators send to reload) reloads the configuration, never
//! fatal, and SIGPIPE is ignored; the agent keeps serving through both.

use std::time::{Duration, Instant};

use balancer_tests::{
    balancer_path, default_config, require_root, Agent, Topology, DEFAULT_TIMEOUT,
};

/// What each SIGHUP logs: the file, unchanged, is read again.
const RELOAD_LOG: &str = "SIGHUP: reloading the configuration";
const RELOADED_LOG: &str = "reload: no change";

/// Whether signal `signal` is in the hex mask of line `field` of `/proc/PID/status`.
fn in_mask(pid: u32, field: &str, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} line in /proc/{pid}/status:\n{status}"));
    mask & (1 << (signal - 1)) != 0
}

#[test]
fn sighup_is_logged_and_the_agent_keeps_serving() {
    require_root();
    let topo = Topology::new(1).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let mut agent =
        Agent::start(&topo, &default_config(&topo, "maglev")).expect("starting the agent");
    let pid = agent.pid().expect("the agent runs");
    // (`ip netns exec` execs the agent: same pid.)
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    assert_eq!(
        exe,
        balancer_path().canonicalize().ok(),
        "pid {pid} is not the agent"
    );
    assert!(
        in_mask(pid, "SigCgt:", libc::SIGHUP),
        "the agent does not catch SIGHUP"
    );
    assert!(
        in_mask(pid, "SigIgn:", libc::SIGPIPE),
        "the agent does not ignore SIGPIPE"
    );

    for n in 1..=2 {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        let sent = unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGHUP) };
        assert_eq!(
            sent,
            0,
            "kill -HUP {pid}: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        for line in [RELOAD_LOG, RELOADED_LOG] {
            while agent.log().matches(line).count() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(
                agent.log().matches(line).count(),
                n,
                "expected the agent to log {line:?} once per SIGHUP; its log:\n{}",
                agent.log()
            );
        }
        assert!(agent.is_running(), "SIGHUP #{n} ended the agent");
        let status = agent.cli(&["status"]);
        assert!(status.success(), "`status` after SIGHUP #{n}: {status}");
    }
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");
    let after = client.http_get(Topology::vip_http(), DEFAULT_TIMEOUT);
    assert!(
        after.is_ok(),
        "a request through the VIP after SIGHUP: {after:?}"
    );
    drop(client);
    // And SIGTERM still stops it, cleanly.
    assert_eq!(agent.stop(), Some(0), "the agent's log:\n{}", agent.log());
}
