//! End-to-end: established connections survive a restart of the agent (an upgrade, a
//! crash), even one that changes the configuration. The flow tables are pinned, so the
//! next agent finds every flow with its backend and SNAT port: here the restarted agent's
//! pool no longer has the connection's backend, which only the flow's pinned entry still
//! names, and whose VIP the first agent got at run time (the VIPs keep their ids). With `keep_attached` the data plane even forwards while no agent runs, and the
//! next agent swaps its program in without a moment without XDP.

use balancer_common::FLOW_TABLES_VERSION;
use balancer_tests::{config_for, Agent, Running, Topology, DEFAULT_TIMEOUT};

/// The XDP program id on each of the lb's interfaces (`None`: nothing attached).
fn xdp_progs(topo: &Topology) -> Vec<Option<u64>> {
    topo.lb_interfaces()
        .iter()
        .map(|iface| topo.lb().xdp_prog(iface))
        .collect()
}

/// The XDP mode on each of the lb's interfaces as `ip link` names it: `xdp` (driver
/// mode) or `xdpgeneric` (skb mode); `None`: nothing attached.
fn xdp_modes(topo: &Topology) -> Vec<Option<String>> {
    topo.lb_interfaces()
        .iter()
        .map(|iface| {
            let link = topo
                .lb()
                .ip(&["link", "show", iface])
                .unwrap_or_else(|e| panic!("ip link show {iface}: {e:#}"));
            // "2: lbc0@if3: <...> mtu 1500 xdpgeneric qdisc ..."
            link.split_whitespace()
                .find(|w| w.starts_with("xdp"))
                .map(str::to_string)
        })
        .collect()
}

/// `accept_local` of the lb's two interfaces.
fn accept_local(topo: &Topology) -> Vec<String> {
    topo.lb_interfaces()
        .iter()
        .map(|iface| {
            let key = format!("net.ipv4.conf.{iface}.accept_local");
            topo.lb()
                .run(&["sysctl", "-n", &key])
                .unwrap_or_else(|e| panic!("reading {key}: {e:#}"))
                .trim()
                .to_string()
        })
        .collect()
}

/// The configuration with `backends` (1-based) in the pools, and `keep_attached`.
fn config(topo: &Topology, backends: &[usize], keep_attached: bool) -> String {
    config_for(topo, "maglev", backends).replace(
        "[nat]",
        &format!("keep_attached = {keep_attached}\n\n[nat]"),
    )
}

/// The backends of three other than `index`.
fn others(index: usize) -> Vec<usize> {
    (1..=3).filter(|&i| i != index).collect()
}

/// `config` without its VIP "web" (its pool stays).
fn without_web_vip(config: &str) -> String {
    let start = config.find("[[vip]]\nname = \"web\"").expect("the web VIP");
    let len = config[start + 1..]
        .find("[[vip]]")
        .map_or(config.len() - start, |n| n + 1);
    config[..start].to_string() + &config[start + len..]
}

#[test]
fn connections_carry_on_across_a_restart_with_the_data_plane_kept_attached() {
    // The first agent gets VIP "web" at run time, after another VIP came and went: it
    // numbers its VIPs unlike an agent that reads "web" from its file. And "web" is
    // deleted and added again: its flows carry the generation of that re-add, which the
    // next agent must keep.
    let mut run = Running::start_with(3, |topo| without_web_vip(&config(topo, &[1, 2, 3], true)));
    for cmd in [
        &["vip", "add", "alt", "10.0.100.1:8080/tcp", "--pool", "web"][..],
        &["vip", "del", "alt"],
        &["vip", "add", "web", "10.0.100.1:80/tcp", "--pool", "web"],
        &["vip", "del", "web"],
        &["vip", "add", "web", "10.0.100.1:80/tcp", "--pool", "web"],
    ] {
        run.agent
            .cli_ok(cmd)
            .unwrap_or_else(|e| panic!("balancer {}: {e:#}", cmd.join(" ")));
    }
    let (mut ka, name, index) = run.pinned_connection();
    let first = xdp_progs(&run.topo);
    assert!(
        first.iter().all(Option::is_some),
        "XDP must be attached: {first:?}"
    );

    assert_eq!(
        run.agent.stop(),
        Some(0),
        "the agent must stop cleanly; log:\n{}",
        run.agent.log()
    );
    assert_eq!(
        xdp_progs(&run.topo),
        first,
        "with keep_attached the program must stay attached after the agent exits"
    );
    ka.expect_backend(&name, 3, "the agent exited (keep_attached)");
    run.client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("a new connection while no agent runs");

    run.agent = Agent::start(&run.topo, &config(&run.topo, &others(index), true))
        .expect("starting the agent again, without the connection's backend");
    let second = xdp_progs(&run.topo);
    assert!(
        second
            .iter()
            .zip(&first)
            .all(|(s, f)| s.is_some() && s != f),
        "the new agent must have swapped its own program in: {first:?} then {second:?}"
    );
    let log = run.agent.log();
    assert!(
        log.contains("took over the XDP link")
            && log.contains("taking the pinned flow table over")
            && log.contains("vip web: keeps the generation an earlier agent gave it"),
        "the new agent must say it took the pinned links, tables and web's generation \
         over; log:\n{log}"
    );
    ka.expect_backend(
        &name,
        5,
        "a restart whose configuration no longer has the connection's backend",
    );
    let tally = run
        .client
        .http_get_many(Topology::vip_http(), 10, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty() && tally.count(&name) == 0,
        "new connections after the restart go to the configured backends only: {tally}"
    );
}

#[test]
fn idle_connections_carry_on_across_a_restart_that_detaches() {
    let mut run = Running::start_with(3, |topo| config(topo, &[1, 2, 3], false));
    let (mut ka, name, index) = run.pinned_connection();
    ka.expect_backend(&name, 3, "connecting");
    // Idle: while no program is attached, a packet of the connection would meet the
    // lb's own stack (a backend's retransmission, to the SNAT address, is answered with
    // a reset). Let the last ACKs land before the agent stops.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(run.agent.stop(), Some(0), "log:\n{}", run.agent.log());
    assert_eq!(
        xdp_progs(&run.topo),
        vec![None, None],
        "without keep_attached the agent detaches when it exits"
    );
    run.agent = Agent::start(&run.topo, &config(&run.topo, &others(index), false))
        .expect("starting the agent again, without the connection's backend");
    ka.expect_backend(
        &name,
        5,
        "a restart whose configuration no longer has the connection's backend",
    );
}

/// The bpf(2) syscall with command `cmd` and the attribute `attr` (zero beyond the
/// fields the command reads).
fn bpf<T>(cmd: libc::c_long, attr: &[T]) -> libc::c_long {
    // SAFETY: `attr` is a valid buffer of the size passed; the kernel only reads it.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), size_of_val(attr)) }
}

/// Pins a new hash map (`key_size`, `value_size`, 16 entries) at `path`, as an agent of
/// another version could have left it.
fn pin_foreign_map(path: &std::path::Path, key_size: u32, value_size: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // The leading fields of `union bpf_attr` for each command.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key_size, value_size, 16]);
    let fd = bpf(BPF_MAP_CREATE, &create);
    let error = std::io::Error::last_os_error;
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", error());
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // pathname, then bpf_fd (and file_flags = 0).
    let pin = [c_path.as_ptr() as u64, fd as u64, 0, 0];
    let rc = bpf(BPF_OBJ_PIN, &pin);
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {}", path.display(), error());
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn tables_pinned_with_another_layout_or_version_are_replaced() {
    let ours = format!("CONNS_v{FLOW_TABLES_VERSION}");
    let older = format!("NAT_v{}", FLOW_TABLES_VERSION + 7);
    let run = Running::start_with(1, |topo| {
        // Our version's name, another layout; and another version's table.
        pin_foreign_map(&topo.pin_dir().join(&ours), 16, 8);
        pin_foreign_map(&topo.pin_dir().join(&older), 16, 24);
        config(topo, &[1], false)
    });
    let log = run.agent.log();
    for name in [&ours, &older] {
        assert!(
            log.lines()
                .any(|l| l.contains(name.as_str()) && l.contains("its flows are forgotten")),
            "the agent must say that the pinned {name} does not fit; log:\n{log}"
        );
    }
    assert!(
        !run.topo.pin_dir().join(&older).exists(),
        "the other version's table must be unpinned"
    );
    let info = aya::maps::MapInfo::from_pin(run.topo.pin_dir().join(&ours))
        .expect("a CONNS table pinned by the agent");
    assert_eq!(
        (info.map_type().ok(), info.value_size()),
        (
            Some(aya::maps::MapType::LruHash),
            size_of::<balancer_common::Conn>() as u32
        ),
        "the agent must have pinned its own table in place of the foreign one"
    );
    run.client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("a request through the VIP");
}

#[test]
fn a_second_agent_on_the_same_pin_directory_is_refused() {
    for keep_attached in [true, false] {
        let run = Running::start_with(1, |topo| config(topo, &[1], keep_attached));
        let before = xdp_progs(&run.topo);
        let socket = run.topo.run_dir().join("second.sock");
        let second =
            Agent::start_with_socket(&run.topo, &config(&run.topo, &[1], keep_attached), &socket);
        let error = format!("{:#}", second.err().expect("a second agent must not start"));
        assert!(
            error.contains("another agent uses this pin directory"),
            "keep_attached = {keep_attached}: the second agent must name the conflict: {error}"
        );
        assert_eq!(
            xdp_progs(&run.topo),
            before,
            "keep_attached = {keep_attached}: the second agent must not have touched the \
             running agent's links"
        );
        run.client
            .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
            .expect("the first agent still serves");
    }
}

#[test]
fn a_link_kept_on_an_interface_no_longer_configured_is_released() {
    let mut run = Running::start_with(1, |topo| config(topo, &[1], true));
    assert_eq!(run.agent.stop(), Some(0), "log:\n{}", run.agent.log());
    let [client_side, backend_side] = run.topo.lb_interfaces();
    let only_one = config(&run.topo, &[1], true).replace(
        &format!("interfaces = [\"{client_side}\", \"{backend_side}\"]"),
        &format!("interfaces = [\"{client_side}\"]"),
    );
    assert!(only_one.contains(&format!("interfaces = [\"{client_side}\"]")));
    assert_eq!(
        accept_local(&run.topo),
        ["1", "1"],
        "the kept links still need accept_local"
    );
    run.agent = Agent::start(&run.topo, &only_one).expect("an agent on one interface");
    let progs = xdp_progs(&run.topo);
    assert!(
        progs[0].is_some() && progs[1].is_none(),
        "{backend_side} is no longer configured: the program left there must be detached \
         ({progs:?}); log:\n{}",
        run.agent.log()
    );
    assert_eq!(
        accept_local(&run.topo),
        ["1", "0"],
        "{backend_side}'s accept_local must be back to its value from before the first \
         agent, with its link released; log:\n{}",
        run.agent.log()
    );
}

#[test]
fn accept_local_is_put_back_by_the_agent_that_detaches() {
    let records = |topo: &Topology| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(topo.pin_dir())
            .expect("the pin directory")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("accept_local-"))
            .collect();
        names.sort();
        names
    };
    let mut run = Running::start_with(1, |topo| config(topo, &[1], true));
    assert_eq!(
        accept_local(&run.topo),
        ["1", "1"],
        "the agent turns accept_local on"
    );
    // A crash: the agent has no chance to clean up, and the values must be recorded.
    let pid = run.agent.pid().expect("the agent runs") as libc::pid_t;
    // SAFETY: a signal to the agent's process, which this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = std::time::Instant::now();
    while run.agent.is_running() {
        assert!(killed.elapsed().as_secs() < 5, "the agent outlived SIGKILL");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut wanted: Vec<String> = run
        .topo
        .lb_interfaces()
        .iter()
        .map(|iface| format!("accept_local-0-{iface}"))
        .collect();
    wanted.sort();
    assert_eq!(
        (accept_local(&run.topo), records(&run.topo)),
        (vec!["1".to_string(), "1".to_string()], wanted),
        "after a crash the kept links still need accept_local, and its old values are recorded"
    );
    for keep_attached in [true, false] {
        run.agent = Agent::start(&run.topo, &config(&run.topo, &[1], keep_attached))
            .expect("the next agent");
        assert_eq!(
            accept_local(&run.topo),
            ["1", "1"],
            "keep_attached = {keep_attached}: on while the agent runs"
        );
        assert_eq!(run.agent.stop(), Some(0), "log:\n{}", run.agent.log());
    }
    assert_eq!(
        (accept_local(&run.topo), records(&run.topo)),
        (vec!["0".to_string(), "0".to_string()], Vec::new()),
        "after agents that kept their links, the one that detaches must put back the values \
         from before the first agent (a new namespace's 0) and remove the records"
    );
}

#[test]
fn a_link_kept_in_another_mode_is_attached_anew_in_the_configured_one() {
    let skb = |topo: &Topology| {
        config(topo, &[1], true).replace("xdp_mode = \"auto\"", "xdp_mode = \"skb\"")
    };
    let mut run = Running::start_with(1, skb);
    assert_eq!(
        xdp_modes(&run.topo),
        vec![Some("xdpgeneric".to_string()); 2],
        "agent.xdp_mode = \"skb\" (the configuration must say so: {})",
        skb(&run.topo)
    );
    assert_eq!(run.agent.stop(), Some(0), "log:\n{}", run.agent.log());

    let driver =
        config(&run.topo, &[1], true).replace("xdp_mode = \"auto\"", "xdp_mode = \"driver\"");
    run.agent = Agent::start(&run.topo, &driver).expect("an agent in driver mode");
    let log = run.agent.log();
    assert_eq!(
        xdp_modes(&run.topo),
        vec![Some("xdp".to_string()); 2],
        "the kept skb-mode links must give way to driver mode, as configured; log:\n{log}"
    );
    assert!(
        log.contains("is in skb mode where agent.xdp_mode asks for driver"),
        "the agent must say why it detached the kept links; log:\n{log}"
    );
    run.client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("a request through the driver-mode program");

    // The next agent, in auto mode, takes the driver-mode links over as they are.
    assert_eq!(run.agent.stop(), Some(0), "log:\n{}", run.agent.log());
    run.agent =
        Agent::start(&run.topo, &config(&run.topo, &[1], true)).expect("an agent in auto mode");
    let log = run.agent.log();
    assert!(
        log.contains("took over the XDP link the previous agent left (driver mode)"),
        "auto mode takes a kept link in either mode over; log:\n{log}"
    );
}
