//! End-to-end: flow-table sync between two balancer agents of a VRRP pair on the HA
//! topology (`[sync]`). Long-lived TCP connections and UDP flows through the VIP go on
//! when the Master is killed and again when it returns and preempts, while new
//! connections keep coming; lost sync datagrams are repaired by a full resync; forged
//! datagrams are refused and counted. The VIP and the floating SNAT address move together
//! (a sync group), so the backends' TCP state matches whichever balancer serves.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use balancer_tests::agent::web_and_dns_on;
use balancer_tests::failover::{Prober, PROBE_TIMEOUT};
use balancer_tests::ha_agent::{wait_holders, wait_state, Instance};
use balancer_tests::keepalived::master_down_interval;
use balancer_tests::long_flows::LongFlows;
use balancer_tests::netns::run_in_netns_path;
use balancer_tests::{
    require_root, Agent, HaTopology, Servers, HA_BACK_FLOATING, HA_VIP, UDP_PORT,
};
use balancer_wire::sync::{Kind, Op, Record, Repr};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);
/// The slack the issue allows on top of the master-down interval.
const SLACK: Duration = SECOND;
/// Long-lived flows of each kind.
const TCP_FLOWS: usize = 50;
const UDP_FLOWS: usize = 10;
/// The sync port and key of the tests.
const SYNC_PORT: u16 = 7471;
const KEY: &str = "the pair's flow-sync test key";
/// The returning Master waits this long before it preempts: its full resync arrives
/// within a sync interval or two.
const PREEMPT_DELAY: &str = "3s";

fn master_down(priority: u8) -> Duration {
    master_down_interval(priority, SECOND)
}

/// Backends and two agents on the HA topology, lb1 (priority 150, preempting after
/// [`PREEMPT_DELAY`]) and lb2 (100), syncing flows over the back network.
struct Pair {
    agents: [Option<Agent>; 2],
    _backends: Servers,
    topo: HaTopology,
}

impl Pair {
    fn new() -> Pair {
        require_root();
        let topo = HaTopology::new(2, 2).expect("building the HA topology");
        // The ends of the TCP flows retransmit at least every second (Linux 6.15's
        // `tcp_rto_max_ms`; before the backends' listeners exist, whose accepted sockets
        // inherit it): with the default backoff, the first retransmission after a 3.4 s
        // outage may come 3 s after the new Master serves, a delay no balancer can shorten.
        let ends = (1..=topo.n_backends())
            .map(|j| topo.backend(j))
            .chain([topo.client()]);
        for ns in ends {
            ns.run(&["sysctl", "-q", "-w", "net.ipv4.tcp_rto_max_ms=1000"])
                .expect("setting tcp_rto_max_ms (Linux 6.15 or later)");
        }
        let backends = topo.start_backends().expect("starting the backends");
        Pair {
            agents: [None, None],
            _backends: backends,
            topo,
        }
    }

    /// Balancer `i`'s configuration: pools and VIPs "web" and "dns" on the VIP, a sync
    /// group of the VIP's instance and the floating SNAT address's, and `[sync]` with the
    /// other balancer.
    fn config(&self, i: usize) -> String {
        let priority = if i == 1 { 150 } else { 100 };
        let delay = format!("preempt_delay = \"{PREEMPT_DELAY}\"");
        let with_delay = |instance: Instance| {
            if i == 1 {
                instance.with(&delay)
            } else {
                instance
            }
        };
        let front = with_delay(Instance::front(priority, 3));
        let back = with_delay(Instance {
            name: "vi_back".into(),
            interface: "lbs0".into(),
            vrid: 52,
            addresses: vec![format!("{HA_BACK_FLOATING}/24")],
            ..Instance::front(priority, 3)
        });
        let nat = self.topo.agent_and_nat(i).replace(
            &format!("source_address = \"{}\"", self.topo.lb_back_addr(i)),
            &format!("source_address = \"{HA_BACK_FLOATING}\""),
        );
        let backends: Vec<Ipv4Addr> = (1..=self.topo.n_backends())
            .map(|j| self.topo.backend_addr(j))
            .collect();
        let other = 3 - i;
        format!(
            "{nat}\n{}{}{}\n[[vrrp_sync_group]]\nname = \"lb\"\ninstances = [\"vi_1\", \"vi_back\"]\n\n\
             [sync]\npeers = [\"{}\"]\nsource = \"{}\"\nport = {SYNC_PORT}\nkey = \"{KEY}\"\n\
             instance = \"lb\"\ninterval = \"500ms\"\nfull_resync = \"10s\"\n",
            web_and_dns_on(HA_VIP, &backends, "maglev"),
            front.render(),
            back.render(),
            self.topo.lb_back_addr(other),
            self.topo.lb_back_addr(i),
        )
    }

    fn start(&mut self, i: usize) {
        self.agents[i - 1] = None;
        let text = self.config(i);
        let agent = self
            .topo
            .start_agent(i, &text)
            .unwrap_or_else(|e| panic!("starting the agent in lb{i}: {e:#}"));
        self.agents[i - 1] = Some(agent);
    }

    fn agent(&self, i: usize) -> &Agent {
        self.agents[i - 1]
            .as_ref()
            .unwrap_or_else(|| panic!("lb{i} runs no agent"))
    }

    /// Both agents started, lb1 Master of the group with the VIP and the floating address.
    fn started() -> Pair {
        let mut pair = Pair::new();
        pair.start(1);
        pair.start(2);
        wait_state(pair.agent(1), "vi_back", "MASTER", master_down(150) + SLACK);
        wait_state(pair.agent(1), "vi_1", "MASTER", SLACK);
        wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);
        wait_holders(&pair.topo, HA_VIP, &[1], SLACK);
        wait_holders(&pair.topo, HA_BACK_FLOATING, &[1], SLACK);
        pair
    }

    fn flows(&self) -> LongFlows {
        let dns = SocketAddrV4::new(HA_VIP, UDP_PORT);
        LongFlows::start(
            self.topo.client(),
            HaTopology::vip_http(),
            TCP_FLOWS,
            dns,
            UDP_FLOWS,
        )
        .expect("starting the long-lived flows")
    }

    /// lb1 crashes: the machine cut off, then its agent killed (no priority 0; its
    /// addresses stay on the dead machine). In that order: a killed agent's program is
    /// detached, and its kernel, which holds the VIP, would reset the connections whose
    /// packets reached it before the cut. Returns when, once lb2 is Master.
    fn crash_lb1(&mut self) -> Instant {
        let crash = Instant::now();
        self.topo.isolate(1).expect("cutting lb1 off");
        self.agents[0].as_mut().expect("lb1 runs an agent").kill();
        wait_state(
            self.agent(2),
            "vi_1",
            "MASTER",
            master_down(100) + 2 * SLACK,
        );
        wait_state(self.agent(2), "vi_back", "MASTER", SLACK);
        crash
    }
}

/// Balancer `agent`'s sync status with its one peer.
fn peer(agent: &Agent) -> Value {
    let status = agent.status_json();
    status["sync"]["peers"][0].clone()
}

fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key:?} in {v:#}"))
}

/// Waits (at most `timeout`) until `done` holds of `agent`'s sync status with its peer.
fn wait_peer(agent: &Agent, timeout: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let p = peer(agent);
        if done(&p) {
            return p;
        }
        assert!(
            start.elapsed() < timeout,
            "{what} not within {timeout:?}: {p:#}\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `agent`'s census counts at least `want` live flows of kind `kind`
/// (`total`, `tcp_established`, `udp`) of VIP `vip` (a Backup's census counts the flows
/// sync wrote).
fn wait_census(agent: &Agent, vip: &str, kind: &str, want: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let v = agent.vip_status(vip);
        if v["active_flows"][kind].as_u64().is_some_and(|n| n >= want) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "VIP {vip}: not {want} live {kind} flows within {timeout:?}: {v:#}\n{:#}",
            peer(agent)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn established_flows_survive_a_killed_master_and_its_return() {
    let mut pair = Pair::started();
    let flows = pair.flows();
    // A flood of new connections through the failover: one every 10 ms.
    let prober = Prober::start(
        pair.topo.client(),
        HaTopology::vip_http(),
        Duration::from_millis(10),
        Duration::from_secs(40),
        PROBE_TIMEOUT,
    )
    .expect("starting the flood of new connections");
    assert!(
        prober.wait_answer(Duration::ZERO, 3 * SECOND).is_some(),
        "no new connection served: {}",
        prober.snapshot()
    );
    let flows_total = (TCP_FLOWS + UDP_FLOWS) as u64;
    wait_peer(pair.agent(2), 5 * SECOND, "the Backup's copy", |p| {
        count(p, "flows_written") >= flows_total
    });
    // (The web VIP's other flows are the prober's connections.)
    wait_census(
        pair.agent(2),
        "web",
        "tcp_established",
        TCP_FLOWS as u64,
        8 * SECOND,
    );
    wait_census(pair.agent(2), "dns", "udp", UDP_FLOWS as u64, SECOND);
    let lb1 = peer(pair.agent(1));
    assert!(count(&lb1, "flows_sent") >= flows_total, "{lb1:#}");

    // The Master dies: every flow goes on through lb2, after at most the master-down
    // interval + 1 s without an answer.
    flows.reset_gaps();
    let crash = pair.crash_lb1();
    // (On the prober's clock.)
    let crash_at = prober.elapsed().saturating_sub(crash.elapsed());
    thread::sleep(3 * SECOND);
    let limit = master_down(100) + SLACK;
    let failover = flows.assert_alive(crash + limit, limit, "after lb1 was killed");
    eprintln!(
        "failover after SIGKILL: the longest silence of a flow was {failover:?} (limit {limit:?})"
    );
    let served = prober
        .wait_answer(crash_at, 3 * SECOND)
        .unwrap_or_else(|| panic!("lb2 never served new connections:\n{}", prober.snapshot()));

    // lb1 comes back: it asks for the flows at start, gets them within its preemption
    // delay, then takes over; no flow breaks.
    flows.reset_gaps();
    pair.topo.rejoin(1).expect("rejoining lb1");
    pair.start(1);
    let restart = Instant::now();
    wait_state(pair.agent(1), "vi_1", "BACKUP", SLACK);
    let learnt = wait_peer(pair.agent(1), 3 * SECOND, "lb1's full resync", |p| {
        !p["last_full_resync_secs"].is_null() && count(p, "flows_written") >= flows_total
    });
    assert_eq!(
        lb1_state(&pair),
        "BACKUP",
        "lb1 preempted before its resync: {learnt:#}"
    );
    wait_state(
        pair.agent(1),
        "vi_1",
        "MASTER",
        3 * SECOND + master_down(150) + SLACK,
    );
    wait_state(pair.agent(2), "vi_1", "BACKUP", SLACK);
    wait_holders(&pair.topo, HA_VIP, &[1], SLACK);
    wait_holders(&pair.topo, HA_BACK_FLOATING, &[1], SLACK);
    let took_over = Instant::now();
    thread::sleep(2 * SECOND);
    let preemption = flows.assert_alive(took_over, SLACK, "after lb1 preempted");
    eprintln!(
        "preemption {:?} after lb1's restart: the longest silence of a flow was {preemption:?}",
        took_over - restart
    );
    let report = prober.stop().expect("stopping the client");
    let outage = report.outage(crash_at, served);
    eprintln!(
        "new connections during the failover: no service for {outage:?}; {} of {} served",
        report.ok(),
        report.attempts.len()
    );
    assert!(
        outage <= limit,
        "new connections: no service for {outage:?}:\n{report}"
    );

    for i in [1, 2] {
        let p = peer(pair.agent(i));
        for refused in ["auth_failures", "stale", "malformed", "unknown"] {
            assert_eq!(count(&p, refused), 0, "lb{i}'s {refused}: {p:#}");
        }
    }
}

fn lb1_state(pair: &Pair) -> String {
    balancer_tests::ha_agent::state(pair.agent(1), "vi_1")
}

/// Drops a share of the flow-sync datagrams that reach balancer `i`, until
/// [`allow_sync`].
fn drop_sync(pair: &Pair, i: usize) {
    let ns = pair.topo.lb(i);
    let table = ["nft", "add", "table", "inet", "flowsync_test"];
    ns.run(&table).expect("nft add table");
    ns.run(&[
        "nft",
        "add chain inet flowsync_test input { type filter hook input priority 0; policy accept; }",
    ])
    .expect("nft add chain");
    ns.run(&[
        "nft",
        &format!(
            "add rule inet flowsync_test input udp dport {SYNC_PORT} numgen random mod 2 == 0 drop"
        ),
    ])
    .expect("nft add rule");
}

fn allow_sync(pair: &Pair, i: usize) {
    pair.topo
        .lb(i)
        .run(&["nft", "delete", "table", "inet", "flowsync_test"])
        .expect("nft delete table");
}

/// `n` datagrams that would move every flow to backend 2, signed with no key, sent from
/// lb1's own address (a peer's) to lb2.
fn send_forged(pair: &Pair, n: u64) {
    let from = SocketAddrV4::new(pair.topo.lb_back_addr(1), 0);
    let to = SocketAddrV4::new(pair.topo.lb_back_addr(2), SYNC_PORT);
    let backend = pair.topo.backend_addr(2).to_ipv6_mapped();
    let datagrams: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            let record = Record {
                op: Op::Upsert,
                client_addr: Ipv4Addr::new(10, 0, 1, 2).to_ipv6_mapped(),
                client_port: 40000 + k as u16,
                vip_addr: HA_VIP.to_ipv6_mapped(),
                vip_port: 80,
                proto: 6,
                backend_addr: backend,
                backend_port: 80,
                snat_addr: HA_BACK_FLOATING.to_ipv6_mapped(),
                snat_port: 20000,
                state: 8,
                age_ms: 0,
                handshake_ack: 0,
            };
            Repr {
                kind: Kind::Flows,
                flags: 0,
                boot_id: u64::MAX,
                sequence: k + 1,
                resync: 0,
                records: vec![record],
            }
            .to_bytes()
        })
        .collect();
    run_in_netns_path(&pair.topo.lb(1).path(), move || {
        let socket = UdpSocket::bind(from).expect("binding in lb1");
        for d in &datagrams {
            socket.send_to(d, to).expect("sending a forged datagram");
        }
    })
    .expect("entering lb1's namespace");
}

#[test]
fn lost_sync_datagrams_are_repaired_and_forged_ones_refused() {
    let mut pair = Pair::started();
    // Half of what reaches lb2 is lost while the flows start.
    drop_sync(&pair, 2);
    let flows = pair.flows();
    let lossy = wait_peer(pair.agent(2), 10 * SECOND, "a loss noticed", |p| {
        count(p, "lost") > 0 && count(p, "resync_requests_sent") > 0
    });
    eprintln!("with half the datagrams dropped: {lossy:#}");
    allow_sync(&pair, 2);
    // Full resyncs (asked for after the loss, and every 10 s) bring every flow.
    wait_census(pair.agent(2), "web", "total", TCP_FLOWS as u64, 25 * SECOND);
    wait_census(pair.agent(2), "dns", "total", UDP_FLOWS as u64, 6 * SECOND);
    let lb1 = peer(pair.agent(1));
    assert!(count(&lb1, "resync_requests_received") > 0, "{lb1:#}");

    // Forged datagrams from a peer's address are refused and counted; none is written
    // (each would add a flow to VIP "web": the census after them counts none).
    send_forged(&pair, 5);
    let after = wait_peer(
        pair.agent(2),
        3 * SECOND,
        "the forged datagrams counted",
        |p| count(p, "auth_failures") >= 5,
    );
    assert_eq!(count(&after, "auth_failures"), 5, "{after:#}");
    let text = pair.agent(2).cli_ok(&["status"]).expect("balancer status");
    let section = format!(
        "Flow sync\nreceiving on {}:{SYNC_PORT}",
        pair.topo.lb_back_addr(2)
    );
    assert!(text.contains(&section), "no {section:?} in:\n{text}");
    thread::sleep(6 * SECOND);
    let web = pair.agent(2).vip_status("web");
    assert_eq!(web["active_flows"]["total"], TCP_FLOWS as u64, "{web:#}");

    // What the Backup holds is right: the flows survive the Master's death.
    flows.reset_gaps();
    let crash = pair.crash_lb1();
    thread::sleep(3 * SECOND);
    let limit = master_down(100) + SLACK;
    let gap = flows.assert_alive(crash + limit, limit, "after lb1 was killed");
    eprintln!("failover after repaired loss: the longest silence of a flow was {gap:?}");
}
