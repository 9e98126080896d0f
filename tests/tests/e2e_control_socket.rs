//! The control socket under abuse: a client that sends half a request is disconnected
//! after the agent's request timeout while others are served, and with no file descriptor
//! left the agent backs off instead of spinning, and serves again once they are freed.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use balancer_tests::{default_config, require_root, Agent, Topology};

/// The agent's time limit for a whole request line (`control_server::LIMITS`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn start_agent(topo: &Topology) -> Agent {
    Agent::start(topo, &default_config(topo, "maglev")).expect("starting the agent")
}

#[test]
fn a_half_sent_request_is_closed_after_the_timeout_while_status_works() {
    require_root();
    let topo = Topology::new(1).expect("building the topology");
    let agent = start_agent(&topo);
    let mut half = UnixStream::connect(agent.socket()).expect("connecting to the agent");
    half.write_all(br#"{"op":"sta"#).unwrap();
    let sent = Instant::now();
    // Others are served meanwhile.
    let status = agent.cli(&["status"]);
    assert!(
        status.success(),
        "`status` beside a half-sent request: {status}"
    );
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    half.read_to_string(&mut answer)
        .expect("the agent closes the connection (not a read timeout)");
    let waited = sent.elapsed();
    assert!(
        waited + Duration::from_millis(200) >= REQUEST_TIMEOUT
            && waited < REQUEST_TIMEOUT + Duration::from_secs(3),
        "closed after {waited:?}, expected about {REQUEST_TIMEOUT:?}"
    );
    assert!(
        answer.contains("no complete request line within 5s"),
        "expected an error line before the close, got {answer:?}"
    );
}

/// Lines of the agent's log about failed accepts.
fn accept_error_lines(agent: &Agent) -> usize {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("control socket accept"))
        .count()
}

/// Sets the soft `RLIMIT_NOFILE` of `pid` to `soft` (the hard limit stays: raising it back
/// would need `CAP_SYS_RESOURCE`) and returns the limits it had.
fn set_open_files_limit(pid: u32, soft: u64) -> libc::rlimit {
    let pid = i32::try_from(pid).unwrap();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the pointer is to a live rlimit value for the duration of the call.
    let got = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &raw mut old) };
    assert_eq!(
        got,
        0,
        "prlimit NOFILE of {pid}: {}",
        std::io::Error::last_os_error()
    );
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    set_limits(pid, &new);
    old
}

fn set_limits(pid: i32, limits: &libc::rlimit) {
    // SAFETY: the pointer is to a live rlimit value for the duration of the call.
    let done = unsafe {
        libc::prlimit(
            pid,
            libc::RLIMIT_NOFILE,
            &raw const *limits,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(
        done,
        0,
        "prlimit NOFILE {} of {pid}: {}",
        limits.rlim_cur,
        std::io::Error::last_os_error()
    );
}

#[test]
fn with_no_file_descriptor_left_the_agent_backs_off_and_recovers() {
    require_root();
    let topo = Topology::new(1).expect("building the topology");
    let mut agent = start_agent(&topo);
    let pid = agent.pid().expect("the agent runs");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("listing the agent's descriptors")
        .count();
    // A few to spare, then many more connections than that: they wait in the listen
    // backlog while every `accept` fails with EMFILE.
    let old = set_open_files_limit(pid, (open + 4) as u64);
    let before = accept_error_lines(&agent);
    let held: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(agent.socket()).expect("connecting into the backlog"))
        .collect();
    let exhausted = Instant::now();
    // The CLI's own timeout: the agent cannot take its connection.
    let out = agent.cli(&["--timeout", "2", "status"]);
    assert!(
        !out.success(),
        "`status` with the agent out of descriptors: {out}"
    );
    assert!(
        out.stderr.contains("did not answer within 2s"),
        "expected the CLI to say the agent did not answer, got {out}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let lines = accept_error_lines(&agent) - before;
    let seconds = exhausted.elapsed().as_secs() + 1;
    assert!(
        lines >= 1,
        "the test did not exhaust the agent's descriptors (no accept error logged); its log:\n{}",
        agent.log()
    );
    assert!(
        lines <= usize::try_from(seconds).unwrap() + 2,
        "{lines} accept error lines in about {seconds} s: the agent logs in a loop"
    );
    drop(held);
    // Freed: the agent serves again (its backlog drains as the closed clients go).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = agent.cli(&["status"]);
    while !status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        status = agent.cli(&["status"]);
    }
    assert!(
        status.success(),
        "`status` once the connections closed: {status}"
    );
    assert!(agent.is_running());
    set_limits(i32::try_from(pid).unwrap(), &old);
}
