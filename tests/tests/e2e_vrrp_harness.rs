//! End-to-end: the VRRP test harness proven with keepalived alone.
//!
//! Two keepalived (lb1 priority 150, lb2 100) share a VIP on the HA topology: lb1 is
//! Master; killed and cut off, lb2 serves within the master-down interval + 1 s; restarted,
//! lb1 preempts; stopped, lb2 serves within a second. VRRP versions 2 and 3, multicast and
//! unicast; one Master at a time on the wire, and no complaint in either log. Then the
//! topology itself (isolation, clean-up) and keepalived beside a balancer agent.

use balancer_tests::capture::{elapsed_between, timeline, Advert, VrrpChecksum, VRRP_MULTICAST};
use balancer_tests::failover::Prober;
use balancer_tests::ha::namespaces_left;
use balancer_tests::{
    assert_one_master, http_get, require_root, Capture, HaTopology, Keepalived, KeepalivedConfig,
    Servers, VrrpState, HA_PREFIX_LEN, HA_VIP, TRANSITION_WINDOW,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread;
use std::time::{Duration, SystemTime};

const VRID: u8 = 51;
/// lb1's and lb2's priorities.
const PRIORITY: [u8; 2] = [150, 100];
/// The slack the issue allows on top of the master-down interval.
const SLACK: Duration = Duration::from_secs(1);

/// The VRRP variant under test.
#[derive(Debug, Clone, Copy)]
struct Variant {
    version: u8,
    unicast: bool,
}

/// Two keepalived on an HA topology with a test server in each lb namespace (answering
/// `lb1`/`lb2` on the VIP once its lb holds it), and a capture on the front bridge.
/// Fields drop in declaration order: keepalived first, the namespaces last.
struct Pair {
    ka: [Keepalived; 2],
    capture: Capture,
    _servers: Servers,
    topo: HaTopology,
    variant: Variant,
}

impl Pair {
    fn start(variant: Variant) -> Pair {
        require_root();
        let topo = HaTopology::new(2, 0).expect("building the HA topology");
        let capture = topo
            .capture_front()
            .expect("starting tcpdump on the front bridge");
        let servers = topo
            .start_lb_servers()
            .expect("starting the test servers in the lb namespaces");
        let start = |i: usize| {
            Keepalived::start(topo.lb(i), &config(&topo, i, variant))
                .unwrap_or_else(|e| panic!("starting keepalived in lb{i}: {e:#}"))
        };
        let ka = [start(1), start(2)];
        Pair {
            ka,
            capture,
            _servers: servers,
            topo,
            variant,
        }
    }

    fn ka(&self, i: usize) -> &Keepalived {
        &self.ka[i - 1]
    }

    fn ka_mut(&mut self, i: usize) -> &mut Keepalived {
        &mut self.ka[i - 1]
    }

    /// How long lb `i` waits, as a Backup, before it takes over.
    fn master_down(&self, i: usize) -> Duration {
        self.ka(i).config().master_down_interval()
    }

    fn wait_state(&self, i: usize, want: VrrpState, timeout: Duration) {
        self.ka(i)
            .wait_state(want, timeout)
            .unwrap_or_else(|e| panic!("lb{i} ({:?}): {e:#}", self.variant));
    }

    fn adverts(&self) -> Vec<Advert> {
        self.capture.adverts().expect("reading the capture")
    }

    /// lb `i` is the one Master: it holds the VIP, answers the client on it, the client's
    /// ARP entry points at it.
    fn assert_master(&self, i: usize) {
        let holders = self
            .topo
            .holders(HA_VIP)
            .expect("reading the lbs' addresses");
        assert_eq!(holders, vec![i], "the VIP {HA_VIP} should be on lb{i} only");
        let answer = self
            .topo
            .client_ns()
            .expect("a thread in the client namespace")
            .http_get(HaTopology::vip_http(), Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("the client cannot reach the VIP on lb{i}: {e:#}"));
        assert_eq!(answer, format!("lb{i}"), "who answered on the VIP");
        let mac = self.topo.lb_front_mac(i).expect("lb's MAC address");
        let neighbour = self
            .topo
            .client_neighbour(HA_VIP)
            .expect("client's ARP table");
        assert_eq!(
            neighbour,
            Some(mac),
            "the client's ARP entry for the VIP should point at lb{i}"
        );
    }

    /// Every advert is a well-formed advert of our VRID from lb1 or lb2, as this variant
    /// sends it.
    fn assert_adverts_well_formed(&self, adverts: &[Advert]) {
        let Variant { version, unicast } = self.variant;
        for a in adverts {
            let from = [1, 2]
                .into_iter()
                .find(|&i| self.topo.lb_front_addr(i) == a.src)
                .unwrap_or_else(|| panic!("an advert from neither lb: {a}"));
            let dst = if unicast {
                self.topo.lb_front_addr(3 - from)
            } else {
                VRRP_MULTICAST
            };
            let checksum = if version == 2 {
                VrrpChecksum::V2
            } else {
                // keepalived 2.2.7 sums the IPv4 pseudo-header in.
                VrrpChecksum::WithPseudoHeader
            };
            assert!(
                a.version == version
                    && a.kind == 1
                    && a.vrid == VRID
                    && a.ttl == 255
                    && a.dst == dst
                    && a.checksum == checksum
                    && a.addresses == vec![HA_VIP]
                    && a.interval == Duration::from_secs(1),
                "unexpected advert (want v{version}, VRID {VRID}, TTL 255, to {dst}, checksum \
                 {checksum:?}, address {HA_VIP}, 1 s): {a}"
            );
            assert!(
                a.priority == 0 || a.priority == PRIORITY[from - 1],
                "lb{from} advertised priority {}: {a}",
                a.priority
            );
        }
    }

    fn assert_no_complaints(&self) {
        for ka in &self.ka {
            ka.assert_no_complaints();
        }
    }
}

fn config(topo: &HaTopology, i: usize, variant: Variant) -> KeepalivedConfig {
    let [front, _] = topo.lb_interfaces();
    let mut config = KeepalivedConfig {
        version: variant.version,
        ..KeepalivedConfig::new(front, VRID, PRIORITY[i - 1], HA_VIP, HA_PREFIX_LEN)
    };
    if variant.unicast {
        config.unicast_src_ip = Some(topo.lb_front_addr(i));
        config.unicast_peers = vec![topo.lb_front_addr(3 - i)];
    }
    config
}

/// The adverts of `adverts` captured at or after `since`.
fn since(adverts: &[Advert], since: SystemTime) -> Vec<Advert> {
    adverts.iter().filter(|a| a.at >= since).cloned().collect()
}

/// The source addresses of the Master spans, in order.
fn master_order(adverts: &[Advert]) -> Vec<Ipv4Addr> {
    assert_one_master(adverts, TRANSITION_WINDOW)
        .iter()
        .map(|s| s.src)
        .collect()
}

/// A moment of the test, on the client's clock and on the capture's.
#[derive(Debug, Clone, Copy)]
struct Moment {
    at: Duration,
    wall: SystemTime,
}

impl Moment {
    fn now(prober: &Prober) -> Moment {
        Moment {
            at: prober.elapsed(),
            wall: SystemTime::now(),
        }
    }
}

impl Pair {
    /// lb1, the higher priority, becomes Master; lb2 stays Backup; only lb1 advertises.
    fn expect_lb1_master(&self) {
        self.wait_state(1, VrrpState::Master, self.master_down(1) + SLACK);
        assert_eq!(self.ka(2).state(), Some(VrrpState::Backup), "lb2's state");
        self.assert_master(1);
        let adverts = self.adverts();
        let lb1 = self.topo.lb_front_addr(1);
        assert!(
            !adverts.is_empty() && adverts.iter().all(|a| a.src == lb1),
            "only lb1 should advertise while it is Master:\n{}",
            timeline(&adverts)
        );
    }

    /// lb1 crashes: keepalived killed with SIGKILL (no priority 0), the machine cut off; lb2 becomes
    /// Master and serves. Returns the moment of the crash and when lb2 first answered.
    fn crash_lb1(&mut self, prober: &Prober) -> (Moment, Duration) {
        let crash = Moment::now(prober);
        self.ka_mut(1).kill();
        self.topo.isolate(1).expect("cutting lb1 off");
        self.wait_state(2, VrrpState::Master, self.master_down(2) + SLACK * 2);
        let served = prober
            .wait_answer_by("lb2", crash.at, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("lb2 never served the client: {}", prober.snapshot()));
        (crash, served)
    }

    /// lb1 comes back (without the VIP, as after a reboot) and preempts lb2.
    fn restart_lb1(&mut self, prober: &Prober) -> Moment {
        let front = self.topo.lb_interfaces()[0];
        self.topo
            .remove_address(1, HA_VIP, front)
            .expect("removing the VIP the killed keepalived left");
        self.topo.rejoin(1).expect("rejoining lb1");
        let restart = Moment::now(prober);
        self.ka_mut(1)
            .restart()
            .expect("restarting keepalived in lb1");
        self.wait_state(1, VrrpState::Master, self.master_down(1) + SLACK * 2);
        self.wait_state(2, VrrpState::Backup, SLACK);
        prober
            .wait_answer_by("lb1", restart.at, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("lb1 did not serve again: {}", prober.snapshot()));
        restart
    }

    /// lb1 stops: it sends priority 0, and lb2 takes over after its skew time.
    fn stop_lb1(&mut self, prober: &Prober) -> Moment {
        let stop = Moment::now(prober);
        self.ka_mut(1)
            .stop()
            .expect("keepalived in lb1 was running");
        self.wait_state(2, VrrpState::Master, SLACK * 2);
        prober
            .wait_answer_by("lb2", stop.at, Duration::from_secs(2))
            .unwrap_or_else(|| {
                panic!("lb2 did not serve after lb1 stopped: {}", prober.snapshot())
            });
        stop
    }
}

/// lb1 Master; lb1 killed and cut off, lb2 takes over; lb1 back, preempts; with
/// `graceful`, lb1 then stops and lb2 takes over within a second.
fn failover_cycle(variant: Variant, graceful: bool) {
    let mut pair = Pair::start(variant);
    let (lb1, lb2) = (pair.topo.lb_front_addr(1), pair.topo.lb_front_addr(2));
    pair.expect_lb1_master();

    // A client opens a new connection every 50 ms throughout.
    let prober = Prober::every_50ms(
        pair.topo.client(),
        HaTopology::vip_http(),
        Duration::from_secs(30),
    )
    .expect("starting the client");
    assert!(
        prober
            .wait_answer_by("lb1", Duration::ZERO, Duration::from_secs(2))
            .is_some(),
        "the client is not served by lb1: {}",
        prober.snapshot()
    );
    thread::sleep(Duration::from_millis(300));
    let (crash, lb2_served) = pair.crash_lb1(&prober);
    let restart = pair.restart_lb1(&prober);
    let stop = graceful.then(|| {
        thread::sleep(Duration::from_millis(300));
        pair.stop_lb1(&prober)
    });
    thread::sleep(Duration::from_millis(300));
    let report = prober.stop().expect("stopping the client");
    eprintln!("{variant:?}: client timeline: {report}");

    // Failover: the client saw no service for at most lb2's master-down interval + 1 s.
    let limit = pair.master_down(2) + SLACK;
    let failover = report.outage(crash.at, lb2_served);
    eprintln!(
        "{variant:?}: failover gap after SIGKILL {failover:?} (limit {limit:?}; lb2 first \
         answered {:?} after the kill)",
        lb2_served.saturating_sub(crash.at)
    );
    assert!(
        failover <= limit,
        "{variant:?}: the client was not served for {failover:?} after lb1 was killed, more \
         than the master-down interval + 1 s ({limit:?}):\n{report}"
    );

    let adverts = pair.adverts();
    pair.assert_adverts_well_formed(&adverts);
    // lb2's first advert came within its master-down interval of lb1's last one.
    let lb1_last = adverts
        .iter()
        .filter(|a| a.src == lb1 && a.at < crash.wall)
        .map(|a| a.at)
        .max()
        .expect("lb1 advertised before it was killed");
    let lb2_first = adverts
        .iter()
        .filter(|a| a.src == lb2 && a.at >= crash.wall && a.at < restart.wall)
        .map(|a| a.at)
        .min()
        .expect("lb2 advertised after lb1 was killed");
    let silence = elapsed_between(lb1_last, lb2_first);
    assert!(
        silence <= pair.master_down(2) + Duration::from_millis(200),
        "lb2 took over {silence:?} after lb1's last advert (master-down interval {:?})",
        pair.master_down(2)
    );

    let mut masters = vec![lb1, lb2, lb1];
    let mut lb1_states = vec![
        VrrpState::Backup,
        VrrpState::Master,
        VrrpState::Backup,
        VrrpState::Master,
    ];
    if let Some(stop) = stop {
        assert!(
            since(&adverts, stop.wall)
                .iter()
                .any(|a| a.src == lb1 && a.priority == 0),
            "lb1 sent no priority 0 advert when stopped:\n{}",
            timeline(&adverts)
        );
        let end = report.attempts.last().map_or(stop.at, |a| a.at);
        let gap = report.outage(stop.at, end);
        eprintln!("{variant:?}: gap after the graceful stop {gap:?}");
        assert!(
            gap < SLACK,
            "{variant:?}: the client was not served for {gap:?} after lb1 stopped:\n{report}"
        );
        masters.push(lb2);
        lb1_states.push(VrrpState::Stop);
    }
    assert_eq!(
        master_order(&adverts),
        masters,
        "the succession of Masters on the wire:\n{}",
        timeline(&adverts)
    );
    assert_eq!(pair.ka(1).states(), lb1_states, "lb1's states");
    pair.assert_no_complaints();
}

/// The tests, in a module named like the file so that `cargo xtask test -- e2e_vrrp_harness`
/// selects them.
mod e2e_vrrp_harness {
    use super::*;

    #[test]
    fn keepalived_v2_multicast_fails_over_and_preempts() {
        failover_cycle(
            Variant {
                version: 2,
                unicast: false,
            },
            false,
        );
    }

    #[test]
    fn keepalived_v3_multicast_fails_over_preempts_and_stops_gracefully() {
        failover_cycle(
            Variant {
                version: 3,
                unicast: false,
            },
            true,
        );
    }

    #[test]
    fn keepalived_v3_unicast_fails_over_and_preempts() {
        failover_cycle(
            Variant {
                version: 3,
                unicast: true,
            },
            false,
        );
    }

    /// The topology itself: three lbs and two backends reachable, an isolated lb unreachable
    /// until it rejoins, and nothing left behind once dropped.
    #[test]
    fn ha_topology_isolates_and_cleans_up() {
        require_root();
        let topo = HaTopology::new(3, 2).expect("building the HA topology");
        let prefix = format!("{}-", topo.prefix());
        let backends = topo.start_backends().expect("starting the backends");
        let lbs = topo.start_lb_servers().expect("starting the lb servers");
        let client = topo.client_ns().expect("a thread in the client namespace");
        let lb2 = SocketAddrV4::new(topo.lb_front_addr(2), 80);
        let timeout = Duration::from_millis(500);
        assert_eq!(client.http_get(lb2, timeout).expect("lb2 answers"), "lb2");

        topo.isolate(2).expect("isolating lb2");
        // Forget lb2's MAC, so that the client has to ask for it again.
        topo.client()
            .ip(&["neigh", "flush", "dev", "cli0"])
            .expect("flushing the client's ARP table");
        assert!(
            client.http_get(lb2, timeout).is_err(),
            "an isolated lb must not answer"
        );
        let b2 = SocketAddrV4::new(topo.backend_addr(2), 80);
        assert!(
            topo.lb(2)
                .in_thread(move || http_get(b2, timeout))
                .expect("a thread in lb2")
                .is_err(),
            "an isolated lb must not reach the backends"
        );
        topo.rejoin(2).expect("rejoining lb2");
        // The failed attempts left ARP entries resolving, whose next probe may be a second
        // away: the first answer after rejoining may take that long.
        let rejoined = Duration::from_secs(3);
        assert_eq!(
            client.http_get(lb2, rejoined).expect("lb2 answers again"),
            "lb2"
        );
        let b2_name = topo
            .lb(2)
            .in_thread(move || http_get(b2, rejoined))
            .expect("a thread in lb2")
            .expect("lb2 reaches backend 2 again");
        assert_eq!(b2_name, "b2");

        drop((client, lbs, backends, topo));
        assert_eq!(
            namespaces_left(&prefix).expect("listing namespaces"),
            Vec::<String>::new(),
            "namespaces left behind"
        );
    }

    /// keepalived in lb1 and a balancer agent in lb2, as the interoperability tests run
    /// them: the agent comes up with its pins in lb2's own bpf filesystem, keepalived
    /// becomes the one Master on the wire and hears nothing it complains about.
    #[test]
    fn keepalived_and_an_agent_run_side_by_side() {
        require_root();
        let topo = HaTopology::new(2, 1).expect("building the HA topology");
        let capture = topo
            .capture_front()
            .expect("starting tcpdump on the front bridge");
        let variant = Variant {
            version: 3,
            unicast: false,
        };
        let ka_config = config(&topo, 1, variant);
        let agent_config = topo.agent_config(2, "maglev");
        let (ka, agent) = topo
            .keepalived_and_agent(1, &ka_config, 2, &agent_config)
            .expect("starting keepalived in lb1 and the agent in lb2");
        let status = agent.status_json();
        assert!(
            status.to_string().contains(&HA_VIP.to_string()),
            "the agent in lb2 should serve {HA_VIP}: {status}"
        );
        let pins = |i: usize| -> Vec<String> {
            std::fs::read_dir(topo.pin_dir(i))
                .unwrap_or_else(|e| panic!("reading lb{i}'s pin directory: {e}"))
                .map(|entry| entry.expect("a pin").file_name().to_string_lossy().into())
                // A fresh bpf filesystem holds the kernel's `maps.debug` and `progs.debug`.
                .filter(|name: &String| !matches!(name.as_str(), "maps.debug" | "progs.debug"))
                .collect()
        };
        assert!(!pins(2).is_empty(), "the agent in lb2 pinned nothing");
        assert_eq!(pins(1), Vec::<String>::new(), "lb1 runs no agent");

        ka.wait_state(VrrpState::Master, ka_config.master_down_interval() + SLACK)
            .expect("keepalived in lb1 becomes Master alone");
        assert_eq!(topo.holders(HA_VIP).expect("addresses"), vec![1]);
        // Two adverts after it became Master.
        thread::sleep(Duration::from_millis(2100));
        let adverts = capture.adverts().expect("reading the capture");
        let lb1 = topo.lb_front_addr(1);
        let spans = assert_one_master(&adverts, TRANSITION_WINDOW);
        assert!(
            spans.len() == 1 && spans[0].src == lb1 && spans[0].adverts >= 2,
            "lb1 alone should advertise:\n{}",
            timeline(&adverts)
        );
        let first = &adverts[0];
        assert_eq!(
            (first.raw[0], first.raw[1], first.raw[2]),
            (0x31, VRID, PRIORITY[0]),
            "version 3 advert (type 1), VRID, priority: {first}"
        );
        assert_eq!(first.checksum, VrrpChecksum::WithPseudoHeader, "{first}");
        ka.assert_no_complaints();
    }
}
