//! End-to-end: two balancer agents share a VIP with VRRP on the HA topology (a client and
//! two balancers on a front bridge, backends behind). The higher priority serves; a killed
//! Master is replaced within the master-down interval + 1 s and preempts when it returns; a
//! stopped one hands over in under a second; `nopreempt`, `preempt_delay`, a tracked VIP
//! whose backends fail, a sync group with a floating SNAT address, and forged adverts.

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use balancer_tests::capture::timeline;
use balancer_tests::forge::{send_frames, Forged};
use balancer_tests::ha_agent::{
    self, config, instance, start_prober, state, wait_holders, wait_state, Instance,
};
use balancer_tests::keepalived::master_down_interval;
use balancer_tests::{
    assert_one_master, require_root, Agent, Capture, HaTopology, Prober, HA_BACK_FLOATING, HA_VIP,
    TRANSITION_WINDOW,
};
use balancer_wire::vrrp::Version;

const SECOND: Duration = Duration::from_secs(1);
/// The slack the issue allows on top of the master-down interval.
const SLACK: Duration = SECOND;

fn master_down(priority: u8) -> Duration {
    master_down_interval(priority, SECOND)
}

/// Backends, a capture on the front bridge, and two agents: lb1 with `lb1`'s instances,
/// lb2 with `lb2`'s, started in that order.
struct Pair {
    agents: [Option<Agent>; 2],
    capture: Capture,
    _backends: balancer_tests::Servers,
    topo: HaTopology,
}

impl Pair {
    fn new() -> Pair {
        require_root();
        let topo = HaTopology::new(2, 2).expect("building the HA topology");
        let backends = topo.start_backends().expect("starting the backends");
        let capture = topo
            .capture_front()
            .expect("starting tcpdump on the front bridge");
        Pair {
            agents: [None, None],
            capture,
            _backends: backends,
            topo,
        }
    }

    fn start(&mut self, i: usize, text: &str) {
        self.agents[i - 1] = None;
        let agent = self
            .topo
            .start_agent(i, text)
            .unwrap_or_else(|e| panic!("starting the agent in lb{i}: {e:#}"));
        self.agents[i - 1] = Some(agent);
    }

    fn agent(&self, i: usize) -> &Agent {
        self.agents[i - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("lb{i} runs no agent"))
    }

    fn agent_mut(&mut self, i: usize) -> &mut Agent {
        self.agents[i - 1]
            .as_mut()
            .unwrap_or_else(|| panic!("lb{i} runs no agent"))
    }

    fn front(&self, i: usize) -> Ipv4Addr {
        self.topo.lb_front_addr(i)
    }

    /// A crash of lb1: its agent killed (no priority 0, the VIP stays on the dead machine),
    /// the machine cut off. lb2 becomes Master; returns when the crash happened and when
    /// the client was first served after it.
    fn crash_lb1(&mut self, prober: &Prober) -> (Duration, Duration) {
        let crash = prober.elapsed();
        self.agent_mut(1).kill();
        self.topo.isolate(1).expect("cutting lb1 off");
        wait_state(
            self.agent(2),
            "vi_1",
            "MASTER",
            master_down(100) + 2 * SLACK,
        );
        let served = prober
            .wait_answer(crash, 3 * SECOND)
            .unwrap_or_else(|| panic!("lb2 never served the client:\n{}", prober.snapshot()));
        (crash, served)
    }

    /// The Masters on the wire, in order, checking that there was one at a time.
    fn masters(&self) -> Vec<Ipv4Addr> {
        let adverts = self.capture.adverts().expect("reading the capture");
        assert_one_master(&adverts, TRANSITION_WINDOW)
            .iter()
            .filter(|s| s.vrid == ha_agent::FRONT_VRID)
            .map(|s| s.src)
            .collect()
    }
}

fn field(v: &serde_json::Value, key: &str) -> String {
    match &v[key] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn a_killed_master_is_replaced_in_time_and_preempts_on_return() {
    let mut pair = Pair::new();
    let lb1_config = config(&pair.topo, 1, &[Instance::front(150, 2)]);
    pair.start(1, &lb1_config);
    pair.start(2, &config(&pair.topo, 2, &[Instance::front(100, 2)]));
    wait_state(pair.agent(1), "vi_1", "MASTER", master_down(150) + SLACK);
    wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);
    wait_holders(&pair.topo, HA_VIP, &[1], SLACK);

    let prober = start_prober(&pair.topo);
    thread::sleep(Duration::from_millis(300));
    let (crash, served) = pair.crash_lb1(&prober);

    // Back after a reboot of the agent only: the VIP it left is still on its interface and
    // must go at once, then it preempts.
    pair.topo.rejoin(1).expect("rejoining lb1");
    assert_eq!(pair.topo.holders(HA_VIP).unwrap(), vec![1, 2]);
    pair.start(1, &lb1_config);
    let restart = prober.elapsed();
    wait_holders(&pair.topo, HA_VIP, &[2], SLACK);
    wait_state(
        pair.agent(1),
        "vi_1",
        "MASTER",
        master_down(150) + 2 * SLACK,
    );
    wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);
    wait_holders(&pair.topo, HA_VIP, &[1], SLACK);
    thread::sleep(Duration::from_millis(500));
    let report = prober.stop().expect("stopping the client");

    let failover = report.outage(crash, served);
    let limit = master_down(100) + SLACK;
    eprintln!("failover after SIGKILL: no service for {failover:?} (limit {limit:?})");
    assert!(
        failover <= limit,
        "no service for {failover:?} after the Master was killed, more than the master-down \
         interval + 1 s ({limit:?}):\n{report}"
    );
    let end = report.attempts.last().map_or(restart, |a| a.at);
    let preemption = report.outage(restart, end);
    eprintln!("preemption: no service for {preemption:?}");
    assert!(
        preemption < SLACK,
        "the returning Master's preemption cost {preemption:?} of service:\n{report}"
    );
    assert_eq!(
        pair.masters(),
        [pair.front(1), pair.front(2), pair.front(1)],
        "the Masters on the wire"
    );
    let lb2 = instance(pair.agent(2), "vi_1");
    assert_eq!(lb2["became_master"], 1, "{lb2:#}");
    assert_eq!(
        field(&lb2, "reason"),
        format!("higher priority 150 from {}", pair.front(1)),
        "{lb2:#}"
    );
    assert_eq!(lb2["errors"], serde_json::json!({}), "{lb2:#}");
    assert!(pair.agent(1).log().contains("left by an earlier run"));
}

#[test]
fn a_stopped_master_resigns_and_the_backup_serves_within_a_second() {
    let mut pair = Pair::new();
    pair.start(1, &config(&pair.topo, 1, &[Instance::front(150, 3)]));
    pair.start(2, &config(&pair.topo, 2, &[Instance::front(100, 3)]));
    wait_state(pair.agent(1), "vi_1", "MASTER", master_down(150) + SLACK);
    wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);

    let prober = start_prober(&pair.topo);
    thread::sleep(Duration::from_millis(300));
    let stop = prober.elapsed();
    let stopping = Instant::now();
    let status = pair.agent_mut(1).stop();
    assert_eq!(status, Some(0), "the agent's exit status");
    wait_state(pair.agent(2), "vi_1", "MASTER", SLACK);
    let took = stopping.elapsed();
    wait_holders(&pair.topo, HA_VIP, &[2], SLACK);
    thread::sleep(Duration::from_millis(500));
    let report = prober.stop().expect("stopping the client");
    let end = report.attempts.last().map_or(stop, |a| a.at);
    let gap = report.outage(stop, end);
    eprintln!("graceful stop: lb2 Master {took:?} after SIGTERM, no service for {gap:?}");
    assert!(
        gap < SLACK,
        "no service for {gap:?} after a graceful stop:\n{report}"
    );

    let adverts = pair.capture.adverts().expect("reading the capture");
    assert!(
        adverts
            .iter()
            .any(|a| a.src == pair.front(1) && a.priority == 0),
        "lb1 sent no priority 0 advert:\n{}",
        timeline(&adverts)
    );
    assert_eq!(pair.masters(), [pair.front(1), pair.front(2)]);
    let lb2 = instance(pair.agent(2), "vi_1");
    assert_eq!(
        field(&lb2, "reason"),
        format!("priority 0 from {}", pair.front(1)),
        "{lb2:#}"
    );
}

#[test]
fn nopreempt_keeps_the_master_and_preempt_delay_defers_the_takeover() {
    let mut pair = Pair::new();
    pair.start(2, &config(&pair.topo, 2, &[Instance::front(100, 2)]));
    wait_state(pair.agent(2), "vi_1", "MASTER", master_down(100) + SLACK);

    let nopreempt = Instance::front(150, 2).with("nopreempt = true");
    pair.start(1, &config(&pair.topo, 1, &[nopreempt]));
    thread::sleep(master_down(150) + SLACK);
    assert_eq!(
        state(pair.agent(1), "vi_1"),
        "BACKUP",
        "lb1 under nopreempt"
    );
    assert_eq!(state(pair.agent(2), "vi_1"), "MASTER");
    assert_eq!(
        field(&instance(pair.agent(1), "vi_1"), "master"),
        pair.front(2).to_string()
    );

    let delay = 2 * SECOND;
    let delayed = Instance::front(150, 2).with("preempt_delay = \"2s\"");
    let started = Instant::now();
    pair.start(1, &config(&pair.topo, 1, &[delayed]));
    thread::sleep(delay.saturating_sub(Duration::from_millis(300)));
    assert_eq!(
        state(pair.agent(1), "vi_1"),
        "BACKUP",
        "lb1 within its preempt_delay"
    );
    wait_state(
        pair.agent(1),
        "vi_1",
        "MASTER",
        delay + master_down(150) + 2 * SLACK,
    );
    let took = started.elapsed();
    eprintln!("preempt_delay 2s: lb1 Master {took:?} after it started");
    assert!(
        took >= delay,
        "lb1 preempted after {took:?}, within its delay"
    );
    wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);
    assert_eq!(
        pair.masters(),
        [pair.front(2), pair.front(1)],
        "the Masters on the wire"
    );
}

#[test]
fn a_master_whose_backends_fail_their_checks_hands_over() {
    let mut pair = Pair::new();
    let check = "{ type = \"tcp\", interval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 2 }";
    let with_check = |i: usize, instance: Instance| {
        pair.topo.agent_and_nat(i) + &ha_agent::web(&pair.topo, Some(check)) + &instance.render()
    };
    let lb1 = with_check(
        1,
        Instance::front(150, 3).with("track = [{ vip = \"web\", weight = -60 }]"),
    );
    let lb2 = with_check(2, Instance::front(100, 3));
    pair.start(1, &lb1);
    pair.start(2, &lb2);
    wait_state(pair.agent(1), "vi_1", "MASTER", master_down(150) + SLACK);
    let prober = start_prober(&pair.topo);

    // lb1 loses its way to the backends; lb2 does not.
    let backends: Vec<Ipv4Addr> = (1..=2).map(|j| pair.topo.backend_addr(j)).collect();
    for b in &backends {
        pair.topo
            .lb(1)
            .ip(&["route", "add", "prohibit", &format!("{b}/32")])
            .expect("cutting lb1 from a backend");
    }
    let cut = prober.elapsed();
    wait_state(pair.agent(2), "vi_1", "MASTER", 5 * SECOND);
    wait_state(pair.agent(1), "vi_1", "BACKUP", SLACK);
    let lb1_vrrp = instance(pair.agent(1), "vi_1");
    assert_eq!(lb1_vrrp["effective_priority"], 90, "{lb1_vrrp:#}");
    assert_eq!(lb1_vrrp["priority"], 150, "{lb1_vrrp:#}");
    assert!(
        prober.wait_answer(prober.elapsed(), 2 * SECOND).is_some(),
        "lb2 does not serve:\n{}",
        prober.snapshot()
    );

    // Its backends come back: full priority, and it preempts.
    for b in &backends {
        pair.topo
            .lb(1)
            .ip(&["route", "del", "prohibit", &format!("{b}/32")])
            .expect("restoring lb1's routes");
    }
    wait_state(pair.agent(1), "vi_1", "MASTER", 5 * SECOND);
    wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);
    assert_eq!(instance(pair.agent(1), "vi_1")["effective_priority"], 150);
    thread::sleep(Duration::from_millis(300));
    let report = prober.stop().expect("stopping the client");
    eprintln!("tracking: client timeline {report}");
    assert!(
        report.first_answer(cut).is_some(),
        "the client was not served after lb1's backends failed:\n{report}"
    );
    assert_eq!(
        pair.masters(),
        [pair.front(1), pair.front(2), pair.front(1)],
        "the Masters on the wire"
    );
}

#[test]
fn a_sync_group_moves_the_vip_and_the_floating_snat_address_together() {
    let mut pair = Pair::new();
    let run_dir = pair.topo.run_dir().to_path_buf();
    let notify = |i: usize| run_dir.join(format!("notify-lb{i}"));
    let script = run_dir.join("notify.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nout=$1; shift\necho \"$*\" >> \"$out\"\n",
    )
    .expect("writing the notify script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("making the notify script executable");
    let text = |i: usize, priority: u8| {
        let n = notify(i);
        let command = format!("notify = \"{} {}\"", script.display(), n.display());
        let front = Instance::front(priority, 3).with(&command);
        let back = Instance {
            name: "vi_back".into(),
            interface: "lbs0".into(),
            vrid: 52,
            addresses: vec![format!("{HA_BACK_FLOATING}/24")],
            ..Instance::front(priority, 3)
        };
        // The backends' replies go to the floating address, so they follow the Master.
        let nat = pair.topo.agent_and_nat(i).replace(
            &format!("source_address = \"{}\"", pair.topo.lb_back_addr(i)),
            &format!("source_address = \"{HA_BACK_FLOATING}\""),
        );
        format!(
            "{nat}{}{}{}\n[[vrrp_sync_group]]\nname = \"lb\"\ninstances = [\"vi_1\", \"vi_back\"]\n{command}\n",
            ha_agent::web(&pair.topo, None),
            front.render(),
            back.render()
        )
    };
    let (lb1, lb2) = (text(1, 150), text(2, 100));
    pair.start(1, &lb1);
    pair.start(2, &lb2);
    wait_state(pair.agent(1), "vi_back", "MASTER", master_down(150) + SLACK);
    wait_holders(&pair.topo, HA_VIP, &[1], SLACK);
    wait_holders(&pair.topo, HA_BACK_FLOATING, &[1], SLACK);
    let prober = start_prober(&pair.topo);

    let (crash, served) = pair.crash_lb1(&prober);
    assert_eq!(
        state(pair.agent(2), "vi_back"),
        "MASTER",
        "the group moved whole"
    );
    let report = prober.stop().expect("stopping the client");
    let failover = report.outage(crash, served);
    eprintln!("sync group failover: no service for {failover:?}");
    assert!(failover <= master_down(100) + SLACK, "{report}");
    let group = instance(pair.agent(2), "vi_1");
    assert_eq!(field(&group, "sync_group"), "lb", "{group:#}");

    let lines = std::fs::read_to_string(notify(2)).expect("lb2's notify output");
    for want in [
        "INSTANCE vi_1 BACKUP 100",
        "GROUP lb MASTER 0",
        "INSTANCE vi_1 MASTER 100",
    ] {
        assert!(
            lines.lines().any(|l| l == want),
            "no {want:?} in lb2's notify output:\n{lines}"
        );
    }
}

#[test]
fn forged_and_malformed_adverts_are_counted_and_change_nothing() {
    require_root();
    let topo = HaTopology::new(1, 0).expect("building the HA topology");
    let agent = topo
        .start_agent(1, &config(&topo, 1, &[Instance::front(150, 3)]))
        .expect("starting the agent");
    wait_state(&agent, "vi_1", "MASTER", master_down(150) + SLACK);
    let before = instance(&agent, "vi_1");

    // Each would take the Master's place (priority 254) if it were accepted.
    let client = Ipv4Addr::new(10, 0, 1, 2);
    let good = Forged::new(client, Version::V3, 51, 254, HA_VIP);
    let mac = balancer_wire::MacAddr([0x02, 0, 0, 0, 0, 0x02]);
    let mut bad_checksum = good.message();
    bad_checksum[7] ^= 0xff;
    let frames = vec![
        good.frame_with(mac, &bad_checksum),
        Forged {
            ttl: 64,
            ..good.clone()
        }
        .frame(mac),
        good.frame_with(mac, &good.message()[..10]),
        good.frame_with(mac, &[good.message(), vec![0; 4]].concat()),
        Forged {
            vrid: 52,
            ..good.clone()
        }
        .frame(mac),
        Forged::new(client, Version::V2, 51, 254, HA_VIP).frame(mac),
    ];
    send_frames(topo.client(), "cli0", &frames, Duration::from_millis(20))
        .expect("sending the forged adverts");
    thread::sleep(Duration::from_millis(500));

    let after = instance(&agent, "vi_1");
    eprintln!("errors after the forged adverts: {:#}", after["errors"]);
    for reason in [
        "bad_checksum",
        "bad_ttl",
        "truncated",
        "bad_length",
        "other_vrid",
        "version_mismatch",
    ] {
        assert!(
            after["errors"][reason].as_u64() >= Some(1),
            "no {reason} counted: {after:#}"
        );
    }
    assert_eq!(after["state"], "MASTER", "{after:#}");
    assert_eq!(
        after["adverts_received"], before["adverts_received"],
        "{after:#}"
    );
    assert_eq!(after["became_master"], 1, "{after:#}");
    wait_holders(&topo, HA_VIP, &[1], SLACK);
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_master_whose_tracked_interface_goes_down_enters_fault_and_resigns() {
    let mut pair = Pair::new();
    let tracked = Instance::front(150, 3).with("track = [{ interface = \"lbs0\" }]");
    pair.start(1, &config(&pair.topo, 1, &[tracked]));
    pair.start(2, &config(&pair.topo, 2, &[Instance::front(100, 3)]));
    wait_state(pair.agent(1), "vi_1", "MASTER", master_down(150) + SLACK);
    let prober = start_prober(&pair.topo);

    // Its link towards the backends fails: FAULT, priority 0, lb2 takes over at once.
    let down = prober.elapsed();
    pair.topo
        .lb(1)
        .ip(&["link", "set", "lbs0", "down"])
        .expect("taking lb1's back link down");
    wait_state(pair.agent(1), "vi_1", "FAULT", SLACK);
    wait_state(pair.agent(2), "vi_1", "MASTER", SLACK);
    wait_holders(&pair.topo, HA_VIP, &[2], SLACK);
    let lb1 = instance(pair.agent(1), "vi_1");
    assert_eq!(
        field(&lb1, "reason"),
        "track interface lbs0 down",
        "{lb1:#}"
    );

    // Back up: Backup, then it preempts.
    pair.topo
        .lb(1)
        .ip(&["link", "set", "lbs0", "up"])
        .expect("taking lb1's back link up");
    wait_state(
        pair.agent(1),
        "vi_1",
        "MASTER",
        master_down(150) + 2 * SLACK,
    );
    wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);
    thread::sleep(Duration::from_millis(300));
    let report = prober.stop().expect("stopping the client");
    let end = report.attempts.last().map_or(down, |a| a.at);
    let outage = report.outage(down, end);
    eprintln!("interface track: no service for {outage:?} at most");
    assert!(outage < SLACK, "{report}");
    assert_eq!(
        pair.masters(),
        [pair.front(1), pair.front(2), pair.front(1)],
        "the Masters on the wire"
    );
}

#[test]
fn a_master_that_loses_its_data_plane_enters_fault_and_resigns() {
    let mut pair = Pair::new();
    let tracked = Instance::front(150, 2).with("track = [{ data_plane = true }]");
    pair.start(1, &config(&pair.topo, 1, &[tracked]));
    pair.start(2, &config(&pair.topo, 2, &[Instance::front(100, 2)]));
    wait_state(pair.agent(1), "vi_1", "MASTER", master_down(150) + SLACK);

    // The back interface the program was attached to disappears.
    pair.topo
        .lb(1)
        .ip(&["link", "del", "lbs0"])
        .expect("deleting lb1's back interface");
    wait_state(pair.agent(1), "vi_1", "FAULT", 2 * SLACK);
    wait_state(pair.agent(2), "vi_1", "MASTER", SLACK);
    wait_holders(&pair.topo, HA_VIP, &[2], SLACK);
    let lb1 = instance(pair.agent(1), "vi_1");
    assert_eq!(field(&lb1, "reason"), "track data_plane down", "{lb1:#}");
    assert!(
        pair.agent(1)
            .log()
            .contains("XDP no longer attached to lbs0"),
        "{}",
        pair.agent(1).log()
    );
}
