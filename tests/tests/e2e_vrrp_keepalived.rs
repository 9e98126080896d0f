//! End-to-end: a balancer agent replaces one keepalived of a running pair. keepalived
//! (Debian's 2.2.7) in one balancer namespace, our agent in the other, the same VRID:
//! keepalived Master with the agent as Backup and the reverse, VRRP versions 2 and 3,
//! multicast and unicast. Each takes over when the other is killed (within the master-down
//! interval + 1 s) and when it stops (within a second), the returning Master preempts,
//! keepalived's log has no complaint about our adverts, and the wire shows one Master at a
//! time.

use std::net::Ipv4Addr;
use std::thread;
use std::time::Duration;

use balancer_tests::capture::timeline;
use balancer_tests::ha_agent::{
    self, instance, start_prober, wait_holders, wait_state, Instance, FRONT_VRID,
};
use balancer_tests::keepalived::master_down_interval;
use balancer_tests::{
    assert_one_master, require_root, Agent, Capture, HaTopology, Keepalived, KeepalivedConfig,
    VrrpState, HA_PREFIX_LEN, HA_VIP, TRANSITION_WINDOW,
};

const SECOND: Duration = Duration::from_secs(1);
/// The slack the issue allows on top of the master-down interval.
const SLACK: Duration = SECOND;
const MASTER_PRIORITY: u8 = 150;
const BACKUP_PRIORITY: u8 = 100;

/// Who runs in lb1, the Master at first (lb2 runs the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    Keepalived,
    Balancer,
}

#[derive(Debug, Clone, Copy)]
struct Variant {
    first: First,
    version: u8,
    unicast: bool,
}

/// One side of the pair.
enum Peer {
    Keepalived(Keepalived),
    /// The agent (none while it is down) and its configuration.
    Balancer(Option<Agent>, String),
}

struct Pair {
    /// lb1's and lb2's.
    peers: [Peer; 2],
    capture: Capture,
    _backends: balancer_tests::Servers,
    /// The server behind keepalived's VIP (as HAProxy would be): a test server in each lb
    /// answering `lb<i>` (on the agent's side XDP takes the VIP's packets before it).
    _lb_servers: balancer_tests::Servers,
    topo: HaTopology,
    variant: Variant,
}

impl Pair {
    fn start(variant: Variant) -> Pair {
        require_root();
        let topo = HaTopology::new(2, 2).expect("building the HA topology");
        let backends = topo.start_backends().expect("starting the backends");
        let lb_servers = topo
            .start_lb_servers()
            .expect("starting the lb namespaces' servers");
        let capture = topo
            .capture_front()
            .expect("starting tcpdump on the front bridge");
        let priorities = [MASTER_PRIORITY, BACKUP_PRIORITY];
        let start = |i: usize| {
            let keepalived = (i == 1) == (variant.first == First::Keepalived);
            if keepalived {
                let config = keepalived_config(&topo, i, priorities[i - 1], variant);
                Peer::Keepalived(
                    topo.start_keepalived(i, &config)
                        .unwrap_or_else(|e| panic!("starting keepalived in lb{i}: {e:#}")),
                )
            } else {
                let mut front = Instance::front(priorities[i - 1], variant.version);
                if variant.unicast {
                    front = front.with(&format!(
                        "unicast_peers = [\"{}\"]",
                        topo.lb_front_addr(3 - i)
                    ));
                }
                let text = ha_agent::config(&topo, i, &[front]);
                let agent = topo
                    .start_agent(i, &text)
                    .unwrap_or_else(|e| panic!("starting the agent in lb{i}: {e:#}"));
                Peer::Balancer(Some(agent), text)
            }
        };
        let peers = [start(1), start(2)];
        Pair {
            peers,
            capture,
            _backends: backends,
            _lb_servers: lb_servers,
            topo,
            variant,
        }
    }

    fn wait(&self, i: usize, want: VrrpState, timeout: Duration) {
        match &self.peers[i - 1] {
            Peer::Keepalived(ka) => {
                ka.wait_state(want, timeout)
                    .unwrap_or_else(|e| panic!("keepalived in lb{i} ({:?}): {e:#}", self.variant));
            }
            Peer::Balancer(agent, _) => {
                let agent = agent.as_ref().expect("the agent runs");
                wait_state(agent, "vi_1", want.word(), timeout);
            }
        }
    }

    /// A crash of lb `i`: its VRRP speaker killed (no priority 0), the machine cut off.
    fn crash(&mut self, i: usize) {
        match &mut self.peers[i - 1] {
            Peer::Keepalived(ka) => ka.kill(),
            Peer::Balancer(agent, _) => {
                if let Some(agent) = agent.as_mut() {
                    agent.kill();
                }
            }
        }
        self.topo.isolate(i).expect("cutting the lb off");
    }

    /// lb `i` back after a crash: rejoined, its speaker started again (keepalived's VIP,
    /// left behind, removed first as a reboot would; the agent removes its own).
    fn restart(&mut self, i: usize) {
        if matches!(self.peers[i - 1], Peer::Keepalived(_)) {
            let front = self.topo.lb_interfaces()[0];
            self.topo
                .remove_address(i, HA_VIP, front)
                .expect("removing the VIP the killed keepalived left");
        }
        self.topo.rejoin(i).expect("rejoining the lb");
        match &mut self.peers[i - 1] {
            Peer::Keepalived(ka) => ka.restart().expect("restarting keepalived"),
            Peer::Balancer(agent, text) => {
                *agent = None;
                *agent = Some(
                    self.topo
                        .start_agent(i, text)
                        .unwrap_or_else(|e| panic!("restarting the agent in lb{i}: {e:#}")),
                );
            }
        }
    }

    /// A graceful stop of lb `i`'s speaker.
    fn stop(&mut self, i: usize) {
        match &mut self.peers[i - 1] {
            Peer::Keepalived(ka) => {
                ka.stop().expect("keepalived was running");
            }
            Peer::Balancer(agent, _) => {
                let status = agent.as_mut().and_then(Agent::stop);
                assert_eq!(status, Some(0), "the agent's exit status");
            }
        }
    }

    fn keepalived(&self) -> &Keepalived {
        self.peers
            .iter()
            .find_map(|p| match p {
                Peer::Keepalived(ka) => Some(ka),
                Peer::Balancer(..) => None,
            })
            .expect("one side runs keepalived")
    }

    fn agent(&self) -> &Agent {
        self.peers
            .iter()
            .find_map(|p| match p {
                Peer::Balancer(agent, _) => agent.as_ref(),
                Peer::Keepalived(_) => None,
            })
            .expect("one side runs the agent")
    }
}

fn keepalived_config(
    topo: &HaTopology,
    i: usize,
    priority: u8,
    variant: Variant,
) -> KeepalivedConfig {
    let front = topo.lb_interfaces()[0];
    let mut config = KeepalivedConfig {
        version: variant.version,
        ..KeepalivedConfig::new(front, FRONT_VRID, priority, HA_VIP, HA_PREFIX_LEN)
    };
    if variant.unicast {
        config.unicast_src_ip = Some(topo.lb_front_addr(i));
        config.unicast_peers = vec![topo.lb_front_addr(3 - i)];
    }
    config
}

/// lb1 (priority 150) Master, lb2 (100) Backup; lb1 crashes: lb2 serves within its
/// master-down interval + 1 s; lb1 returns and preempts; lb1 stops: lb2 serves within a
/// second. Then the wire and keepalived's log.
fn interoperate(variant: Variant) {
    let mut pair = Pair::start(variant);
    let limit = master_down_interval(BACKUP_PRIORITY, SECOND) + SLACK;
    pair.wait(
        1,
        VrrpState::Master,
        master_down_interval(MASTER_PRIORITY, SECOND) + SLACK,
    );
    pair.wait(2, VrrpState::Backup, SLACK);
    wait_holders(&pair.topo, HA_VIP, &[1], SLACK);
    let prober = start_prober(&pair.topo);

    thread::sleep(Duration::from_millis(300));
    let crash = prober.elapsed();
    pair.crash(1);
    pair.wait(2, VrrpState::Master, limit + SLACK);
    let served = prober
        .wait_answer(crash, 3 * SECOND)
        .unwrap_or_else(|| panic!("{variant:?}: lb2 never served:\n{}", prober.snapshot()));

    pair.restart(1);
    pair.wait(
        1,
        VrrpState::Master,
        master_down_interval(MASTER_PRIORITY, SECOND) + 2 * SLACK,
    );
    pair.wait(2, VrrpState::Backup, SLACK);
    wait_holders(&pair.topo, HA_VIP, &[1], SLACK);
    assert!(
        prober.wait_answer(prober.elapsed(), 2 * SECOND).is_some(),
        "{variant:?}: not served after the preemption:\n{}",
        prober.snapshot()
    );

    thread::sleep(Duration::from_millis(300));
    // Read before a stop can end the agent: it has heard keepalived through every change.
    let ours = instance(pair.agent(), "vi_1");
    let stop = prober.elapsed();
    pair.stop(1);
    pair.wait(2, VrrpState::Master, SLACK);
    wait_holders(&pair.topo, HA_VIP, &[2], SLACK);
    thread::sleep(Duration::from_millis(500));
    let report = prober.stop().expect("stopping the client");

    let failover = report.outage(crash, served);
    let end = report.attempts.last().map_or(stop, |a| a.at);
    let graceful = report.outage(stop, end);
    eprintln!(
        "{variant:?}: no service for {failover:?} after the kill (limit {limit:?}), \
         {graceful:?} after the stop"
    );
    assert!(
        failover <= limit,
        "{variant:?}: failover took {failover:?}:\n{report}"
    );
    assert!(
        graceful < SLACK,
        "{variant:?}: graceful stop took {graceful:?}:\n{report}"
    );

    let adverts = pair.capture.adverts().expect("reading the capture");
    let (lb1, lb2) = (pair.topo.lb_front_addr(1), pair.topo.lb_front_addr(2));
    let masters: Vec<Ipv4Addr> = assert_one_master(&adverts, TRANSITION_WINDOW)
        .iter()
        .map(|s| s.src)
        .collect();
    assert_eq!(
        masters,
        [lb1, lb2, lb1, lb2],
        "{variant:?}: Masters on the wire:\n{}",
        timeline(&adverts)
    );
    assert!(
        adverts.iter().all(|a| a.ttl == 255
            && a.version == variant.version
            && a.vrid == FRONT_VRID
            && a.addresses == [HA_VIP]),
        "{variant:?}: adverts differ:\n{}",
        timeline(&adverts)
    );
    pair.keepalived().assert_no_complaints();
    assert_eq!(
        ours["errors"],
        serde_json::json!({}),
        "{variant:?}: {ours:#}"
    );
    if variant.version == 3 {
        // keepalived 2.2.7 sums the IPv4 pseudo-header in.
        assert!(
            ours["checksums"]["pseudo_header"].as_u64() > Some(0),
            "{variant:?}: {ours:#}"
        );
    }
}

#[test]
fn keepalived_master_balancer_backup_v2_multicast() {
    interoperate(Variant {
        first: First::Keepalived,
        version: 2,
        unicast: false,
    });
}

#[test]
fn balancer_master_keepalived_backup_v3_multicast() {
    interoperate(Variant {
        first: First::Balancer,
        version: 3,
        unicast: false,
    });
}

#[test]
fn keepalived_master_balancer_backup_v3_unicast() {
    interoperate(Variant {
        first: First::Keepalived,
        version: 3,
        unicast: true,
    });
}

#[test]
fn balancer_master_keepalived_backup_v2_unicast() {
    interoperate(Variant {
        first: First::Balancer,
        version: 2,
        unicast: true,
    });
}
