//! etcd discovery against a real etcd: keys put, changed and deleted under a pool's prefix
//! reach `status` and the traffic (a deleted key's backend within one second); `balancer
//! register` keeps a key only while its service is healthy and its process alive; the
//! agent rides out an etcd restart and a compaction past its watch; two agents watching one
//! prefix send each of 10,000 flows to the same backend.
//!
//! etcd runs in the switch namespace (the back bridge of the HA topology) on
//! [`ETCD_ADDR`], which the balancers and the backends reach. A test fails, never skips,
//! when etcd or etcdctl is missing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use balancer_tests::agent::agent_and_nat;
use balancer_tests::util::{exit_code, terminate, wait_timeout};
use balancer_tests::{
    balancer_path, require_root, Agent, ClientNs, Etcd, HaTopology, Servers, Topology,
    DEFAULT_TIMEOUT, HA_VIP, HTTP_PORT, UDP_PORT, VIP,
};
use serde_json::Value;

/// Pool web's prefix.
const PREFIX: &str = "/services/web/";
/// How often the tests poll `status` when they time a change.
const POLL: Duration = Duration::from_millis(25);
/// The issue's bound: a deleted key's backend leaves the pool within this.
const REMOVAL_BOUND: Duration = Duration::from_secs(1);
/// How long a change may take when it involves a restart or a lease's expiry.
const SLOW_CHANGE: Duration = Duration::from_secs(10);

/// The agent's pool "web" from `endpoint`'s prefix, and VIP "web" on
/// `vip`:`port`/`protocol`, Maglev.
fn discovery_pool(endpoint: &str, vip: Ipv4Addr, port: u16, protocol: &str) -> String {
    format!(
        "\n[[pool]]\nname = \"web\"\ndiscovery = {{ etcd = {{ endpoints = [\"{endpoint}\"], \
         prefix = \"{PREFIX}\" }} }}\n\n[[vip]]\nname = \"web\"\naddress = \"{vip}\"\nport = {port}\n\
         protocol = \"{protocol}\"\nscheduler = \"maglev\"\npool = \"web\"\n"
    )
}

/// A topology whose pool "web" (the HTTP VIP) takes its backends from etcd. Fields drop in
/// declaration order: client, agent, servers, etcd, then the namespaces.
struct Discovery {
    client: ClientNs,
    agent: Agent,
    servers: Servers,
    etcd: Etcd,
    topo: Topology,
}

impl Discovery {
    /// `backends` test servers, etcd, and an agent.
    fn start(backends: usize) -> Discovery {
        require_root();
        let topo = Topology::new(backends).expect("building the topology");
        let servers = topo.start_backends().expect("starting the test servers");
        let etcd = Etcd::on_bridge(topo.switch()).expect("starting etcd");
        let config =
            agent_and_nat(&topo) + &discovery_pool(&etcd.endpoint(), VIP, HTTP_PORT, "tcp");
        let agent = Agent::start(&topo, &config).expect("starting the agent");
        let client = topo
            .client_ns()
            .expect("worker thread in the client namespace");
        Discovery {
            client,
            agent,
            servers,
            etcd,
            topo,
        }
    }

    /// Backend `i`'s HTTP address.
    fn addr(&self, i: usize) -> SocketAddrV4 {
        self.topo.backend_http(i)
    }

    /// Puts backend `i`'s key with `value`.
    fn put(&self, i: usize, value: &str) {
        self.etcd
            .put(&key(self.addr(i)), value)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Puts backend `i`'s key as JSON with `weight`.
    fn put_weight(&self, i: usize, weight: u32) {
        self.put(i, &json_value(self.addr(i), weight));
    }

    fn delete(&self, i: usize) {
        self.etcd
            .delete(&key(self.addr(i)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until pool web holds exactly `expected` (backend index -> weight), each from
    /// etcd and taking flows (weight 0: drained); how long that took.
    fn wait_for(&self, expected: &[(usize, u32)], within: Duration) -> Duration {
        let expected: BTreeMap<String, u32> = expected
            .iter()
            .map(|&(i, w)| (self.addr(i).to_string(), w))
            .collect();
        wait_for_set(&self.agent, &expected, within)
    }

    /// 60 new connections to the VIP, none failed; how many each backend answered.
    fn traffic(&self) -> BTreeMap<usize, usize> {
        let tally = self
            .client
            .http_get_many(Topology::vip_http(), 60, DEFAULT_TIMEOUT);
        assert!(
            tally.failures.is_empty(),
            "{tally}\nagent log:\n{}",
            self.agent.log()
        );
        (1..=self.topo.n_backends())
            .map(|i| (i, tally.count(&self.topo.backend_name(i))))
            .collect()
    }
}

/// The key of the backend at `addr`.
fn key(addr: SocketAddrV4) -> String {
    format!("{PREFIX}{addr}")
}

/// The JSON value `balancer register` writes.
fn json_value(addr: SocketAddrV4, weight: u32) -> String {
    format!(
        r#"{{"address": "{}", "port": {}, "weight": {weight}}}"#,
        addr.ip(),
        addr.port()
    )
}

/// Pool `name` of a `status --json`.
fn pool<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no pool {name} in {status:#}"))
}

/// Pool web's backends as `ADDRESS:PORT` -> weight, when each is from etcd and in the
/// state its weight calls for (`active`, or `drained` at weight 0); `Err` says why not.
fn web_set(status: &Value) -> Result<BTreeMap<String, u32>, String> {
    let mut set = BTreeMap::new();
    for b in pool(status, "web")["backends"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let addr = format!("{}:{}", b["address"].as_str().unwrap_or("?"), b["port"]);
        let weight = b["weight"].as_u64().and_then(|w| u32::try_from(w).ok());
        let state = if weight == Some(0) {
            "drained"
        } else {
            "active"
        };
        if b["source"] != "etcd" || b["state"] != state {
            return Err(format!(
                "{addr}: source {}, state {}",
                b["source"], b["state"]
            ));
        }
        set.insert(addr, weight.unwrap_or(u32::MAX));
    }
    Ok(set)
}

/// Polls `agent`'s status every [`POLL`] until pool web is `expected` (see [`web_set`]);
/// how long it took. Panics after `within` with the last status and the agent's log.
fn wait_for_set(agent: &Agent, expected: &BTreeMap<String, u32>, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let status = agent.status_json();
        let got = web_set(&status);
        if got.as_ref() == Ok(expected) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "pool web is not {expected:?} after {within:?}: {got:?}\n{:#}\nagent log:\n{}",
            pool(&status, "web"),
            agent.log()
        );
        thread::sleep(POLL);
    }
}

/// Pool web's `discovery` status.
fn discovery(agent: &Agent) -> Value {
    pool(&agent.status_json(), "web")["discovery"].clone()
}

#[test]
fn keys_put_changed_and_deleted_reach_the_pool_and_the_traffic() {
    let d = Discovery::start(3);
    // Both value formats.
    d.put(1, &d.addr(1).to_string());
    d.put_weight(2, 2);
    d.put_weight(3, 1);
    d.wait_for(&[(1, 1), (2, 2), (3, 1)], SLOW_CHANGE);
    let status = discovery(&d.agent);
    assert_eq!(status["state"], "watching", "{status:#}");
    assert_eq!(status["prefix"], PREFIX, "{status:#}");
    assert_eq!(status["revision"], d.etcd.revision().unwrap(), "{status:#}");
    let seen = d.traffic();
    assert!(
        seen.values().all(|&n| n > 0),
        "each backend takes flows: {seen:?}"
    );

    // Weight 0 drains backend 3: no new flow reaches it; back to 2, it takes flows again.
    d.put_weight(3, 0);
    d.wait_for(&[(1, 1), (2, 2), (3, 0)], REMOVAL_BOUND);
    let seen = d.traffic();
    assert_eq!(seen[&3], 0, "a drained backend took new flows: {seen:?}");
    d.put_weight(3, 2);
    d.wait_for(&[(1, 1), (2, 2), (3, 2)], REMOVAL_BOUND);
    assert!(d.traffic()[&3] > 0, "backend 3 takes flows again");

    // Deleted keys leave the pool within a second; established flows to the backends that
    // stay keep them.
    let (mut kept, name, index) = {
        let mut ka = d
            .client
            .keepalive(Topology::vip_http())
            .expect("a keep-alive connection to the VIP");
        let name = ka.get().expect("the first request on it");
        let index = d.topo.backend_index(&name).expect("a test backend");
        (ka, name, index)
    };
    let mut removals = Vec::new();
    let mut left: Vec<(usize, u32)> = vec![(1, 1), (2, 2), (3, 2)];
    for gone in (1..=3).filter(|&i| i != index) {
        left.retain(|&(i, _)| i != gone);
        let start = Instant::now();
        d.delete(gone);
        d.wait_for(&left, REMOVAL_BOUND);
        removals.push(start.elapsed());
        let seen = d.traffic();
        assert_eq!(seen[&gone], 0, "backend {gone} was deleted: {seen:?}");
        kept.expect_backend(&name, 3, &format!("deleting backend {gone}'s key"));
    }
    println!("a deleted key's backend left the pool after {removals:?} (bound {REMOVAL_BOUND:?})");
    assert!(removals.iter().all(|r| *r < REMOVAL_BOUND), "{removals:?}");
}

/// `balancer register` run beside a backend, in its namespace; killed on drop.
struct Secretary {
    child: Child,
    log: PathBuf,
}

impl Secretary {
    /// `balancer register` for backend `i` of `d`'s topology with a TCP check every
    /// 200 ms and a lease of `ttl` seconds.
    fn start(d: &Discovery, i: usize, ttl: u32) -> Secretary {
        let log = d.topo.run_dir().join(format!("register-b{i}.log"));
        let file = std::fs::File::create(&log).expect("creating the secretary's log");
        let child = d
            .topo
            .backend(i)
            .command(&balancer_path().display().to_string())
            .args(["register", "--etcd", &d.etcd.endpoint(), "--pool", "web"])
            .args([
                "--address",
                &d.addr(i).to_string(),
                "--ttl",
                &ttl.to_string(),
            ])
            .args(["--check", "tcp", "--check-interval", "200ms"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawning balancer register");
        Secretary { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }
}

impl Drop for Secretary {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(2));
        if thread::panicking() {
            eprintln!("===== secretary log =====\n{}", self.log().trim_end());
        }
    }
}

/// Polls etcd until backend `i`'s key is gone; how long it took.
fn wait_for_key_gone(d: &Discovery, i: usize, within: Duration) -> Duration {
    let key = key(d.addr(i));
    let start = Instant::now();
    loop {
        let keys = d.etcd.list(PREFIX).unwrap_or_else(|e| panic!("{e:#}"));
        if !keys.contains_key(&key) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "key {key} is still there after {within:?}: {keys:?}"
        );
        thread::sleep(POLL);
    }
}

#[test]
fn a_secretary_whose_service_stops_takes_its_key_away() {
    let mut d = Discovery::start(2);
    let secretaries = [Secretary::start(&d, 1, 10), Secretary::start(&d, 2, 10)];
    d.wait_for(&[(1, 1), (2, 1)], SLOW_CHANGE);
    assert_eq!(
        d.etcd.list(PREFIX).unwrap()[&key(d.addr(1))],
        json_value(d.addr(1), 1).replace(' ', ""),
        "the value register writes"
    );

    // Backend 1's service stops: its check fails, the lease is revoked, the key goes.
    d.servers.stop(1);
    let gone = wait_for_key_gone(&d, 1, Duration::from_secs(3));
    d.wait_for(&[(2, 1)], REMOVAL_BOUND);
    println!("service stopped: key gone from etcd after {gone:?}");
    let seen = d.traffic();
    assert_eq!(seen[&1], 0, "{seen:?}");
    assert!(
        secretaries[0].log().contains("unhealthy"),
        "{}",
        secretaries[0].log()
    );

    // Back up: registered again, and it takes flows.
    d.servers.start(1).expect("restarting backend 1");
    d.wait_for(&[(1, 1), (2, 1)], SLOW_CHANGE);
    assert!(d.traffic()[&1] > 0, "backend 1 takes flows again");
}

#[test]
fn a_secretary_killed_outright_leaves_its_key_until_the_lease_expires() {
    const TTL: u32 = 3;
    let d = Discovery::start(2);
    let mut killed = Secretary::start(&d, 1, TTL);
    let _other = Secretary::start(&d, 2, 30);
    d.wait_for(&[(1, 1), (2, 1)], SLOW_CHANGE);

    killed.signal(libc::SIGKILL);
    let _ = killed.child.wait();
    let start = Instant::now();
    // Nothing revoked it: the key stays while the lease runs (renewed every TTL/3 s).
    assert!(
        d.etcd.list(PREFIX).unwrap().contains_key(&key(d.addr(1))),
        "the key went at once"
    );
    wait_for_key_gone(&d, 1, Duration::from_secs(u64::from(TTL) + 2));
    let expired = start.elapsed();
    println!("SIGKILL: the lease expired and the key went after {expired:?} (TTL {TTL} s)");
    // The last renewal was at most a second (TTL/3) and a tick before the kill.
    assert!(
        expired + Duration::from_millis(1100) >= Duration::from_secs(u64::from(TTL)),
        "the key went after {expired:?}, before the lease could expire"
    );
    d.wait_for(&[(2, 1)], REMOVAL_BOUND);
    let seen = d.traffic();
    assert_eq!(seen[&1], 0, "{seen:?}");
}

#[test]
fn a_secretary_stopped_with_sigterm_revokes_its_key_at_once() {
    let d = Discovery::start(2);
    let mut stopped = Secretary::start(&d, 1, 30);
    let _other = Secretary::start(&d, 2, 30);
    d.wait_for(&[(1, 1), (2, 1)], SLOW_CHANGE);

    let start = Instant::now();
    stopped.signal(libc::SIGTERM);
    let status = wait_timeout(&mut stopped.child, Duration::from_secs(3))
        .unwrap()
        .expect("the secretary exits on SIGTERM");
    assert_eq!(exit_code(status), 0, "{}", stopped.log());
    // Well before the 30 s lease could expire.
    d.wait_for(&[(2, 1)], REMOVAL_BOUND);
    println!(
        "SIGTERM: backend gone from the pool after {:?}",
        start.elapsed()
    );
    assert!(!d.etcd.list(PREFIX).unwrap().contains_key(&key(d.addr(1))));
    assert!(stopped.log().contains("lease revoked"), "{}", stopped.log());
    let seen = d.traffic();
    assert_eq!(seen[&1], 0, "{seen:?}");
}

#[test]
fn an_etcd_restart_keeps_the_last_set_and_the_agent_resumes() {
    let mut d = Discovery::start(3);
    d.put_weight(1, 1);
    d.put_weight(2, 1);
    d.wait_for(&[(1, 1), (2, 1)], SLOW_CHANGE);

    d.etcd.stop();
    let start = Instant::now();
    let status = loop {
        let status = discovery(&d.agent);
        if status["state"] == "unreachable" {
            break status;
        }
        assert!(
            start.elapsed() < SLOW_CHANGE,
            "the agent does not see etcd gone: {status:#}"
        );
        thread::sleep(POLL);
    };
    assert!(
        status["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{status:#}"
    );
    let text = d.agent.cli_ok(&["status"]).unwrap();
    assert!(text.contains("unreachable"), "{text}");
    // The last known set stays in force.
    d.wait_for(&[(1, 1), (2, 1)], Duration::ZERO);
    let seen = d.traffic();
    assert!(seen[&1] > 0 && seen[&2] > 0, "{seen:?}");

    // Back, and changed at once: the agent lists again and ends with the final keys.
    d.etcd.resume().expect("starting etcd again");
    d.delete(1);
    d.put_weight(2, 3);
    d.put_weight(3, 2);
    d.wait_for(&[(2, 3), (3, 2)], SLOW_CHANGE);
    let status = discovery(&d.agent);
    assert_eq!(status["state"], "watching", "{status:#}");
    assert_eq!(status["last_error"], Value::Null, "{status:#}");
    assert_eq!(status["revision"], d.etcd.revision().unwrap(), "{status:#}");
    let seen = d.traffic();
    assert!(seen[&1] == 0 && seen[&3] > 0, "{seen:?}");
}

#[test]
fn a_compaction_past_the_watch_lists_again_and_ends_with_the_final_keys() {
    let d = Discovery::start(3);
    d.put_weight(1, 1);
    d.put_weight(2, 1);
    d.wait_for(&[(1, 1), (2, 1)], SLOW_CHANGE);

    // The agent stops reading; etcd's sending of its watch blocks (large values fill the
    // HTTP/2 windows) and then its queue of 128 responses overflows, so the watch falls
    // behind; then the history it needs is compacted away.
    let pid = libc::pid_t::try_from(d.agent.pid().expect("the agent runs")).unwrap();
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let resume = Resume(pid);
    let junk = format!("{PREFIX}junk");
    let large = vec![b'x'; 1 << 20];
    for _ in 0..10 {
        d.etcd.put_large(&junk, &large).unwrap();
    }
    let mut weight = 0;
    for n in 0..150 {
        weight = n % 5 + 1;
        d.put_weight(2, weight);
    }
    d.etcd.compact(d.etcd.revision().unwrap()).unwrap();
    drop(resume);
    d.delete(1);
    d.etcd.delete(&junk).unwrap();
    d.put_weight(3, 4);

    d.wait_for(&[(2, weight), (3, 4)], SLOW_CHANGE);
    let log = d.agent.log();
    assert!(
        log.contains("was compacted"),
        "the watch was not cancelled by the compaction:\n{log}"
    );
    // The large values are refused (logged as skipped), and quoted in part only.
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        log.contains("key /services/web/junk: ") && longest < 1000,
        "a log line of {longest} bytes"
    );
    let status = discovery(&d.agent);
    assert_eq!(status["state"], "watching", "{status:#}");
    assert_eq!(status["revision"], d.etcd.revision().unwrap(), "{status:#}");
    let seen = d.traffic();
    assert!(seen[&1] == 0 && seen[&2] > 0 && seen[&3] > 0, "{seen:?}");
}

/// Sends SIGCONT to a stopped agent on drop (also when the test fails meanwhile).
struct Resume(libc::pid_t);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: as for SIGSTOP.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// The backend that answered each UDP flow from `CLIENT:port` for every port of `ports`
/// to the VIP, sent through the balancer whose front MAC the client's neighbour entry for
/// the VIP names. A lost reply is asked again on the same flow.
fn answers(client: &ClientNs, ports: std::ops::Range<u16>) -> Vec<String> {
    client.run(move || {
        let vip = SocketAddrV4::new(HA_VIP, UDP_PORT);
        let mut names = Vec::with_capacity(ports.len());
        for port in ports {
            let sock = UdpSocket::bind(("0.0.0.0", port))
                .unwrap_or_else(|e| panic!("binding UDP port {port}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 256];
            let answer = (0..5).find_map(|_| {
                sock.send_to(b"which", vip).ok()?;
                let (n, _) = sock.recv_from(&mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            });
            names.push(answer.unwrap_or_else(|| panic!("flow from port {port}: no answer")));
        }
        names
    })
}

#[test]
fn two_agents_on_one_prefix_pick_the_same_backend_for_every_flow() {
    const FLOWS: u16 = 10_000;
    require_root();
    let topo = HaTopology::new(2, 4).expect("building the HA topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let etcd = Etcd::on_bridge(topo.back()).expect("starting etcd");
    let addr = |j: usize| SocketAddrV4::new(topo.backend_addr(j), UDP_PORT);
    let put = |j: usize, weight: u32| {
        etcd.put(&key(addr(j)), &json_value(addr(j), weight))
            .unwrap();
    };
    let config = |i: usize| {
        topo.agent_and_nat(i) + &discovery_pool(&etcd.endpoint(), HA_VIP, UDP_PORT, "udp")
    };
    // Agent 1 sees the keys change one by one; agent 2 starts later and lists the result.
    put(3, 1);
    put(1, 1);
    put(2, 1);
    let agent1 = topo.start_agent(1, &config(1)).unwrap();
    let step = |set: &[(usize, u32)]| -> BTreeMap<String, u32> {
        set.iter().map(|&(j, w)| (addr(j).to_string(), w)).collect()
    };
    wait_for_set(&agent1, &step(&[(1, 1), (2, 1), (3, 1)]), SLOW_CHANGE);
    put(4, 3);
    etcd.delete(&key(addr(3))).unwrap();
    put(2, 2);
    put(3, 1);
    let last = step(&[(1, 1), (2, 2), (3, 1), (4, 3)]);
    wait_for_set(&agent1, &last, SLOW_CHANGE);
    let agent2 = topo.start_agent(2, &config(2)).unwrap();
    wait_for_set(&agent2, &last, SLOW_CHANGE);
    for agent in [&agent1, &agent2] {
        assert_eq!(discovery(agent)["revision"], etcd.revision().unwrap());
    }

    // The same 10,000 flows through each balancer (no VRRP: the client's neighbour entry
    // for the VIP says which balancer gets them).
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");
    let new_flows = |agent: &Agent| {
        let status = agent.status_json();
        status["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|v| v["name"] == "web"))
            .and_then(|v| v["counters"]["new_flows"].as_u64())
            .unwrap_or_else(|| panic!("no counters of VIP web in {status:#}"))
    };
    let through = |i: usize| {
        let mac = topo.lb_front_mac(i).unwrap().to_string();
        topo.client()
            .ip(&[
                "neigh",
                "replace",
                &HA_VIP.to_string(),
                "lladdr",
                &mac,
                "dev",
                "cli0",
                "nud",
                "permanent",
            ])
            .unwrap();
        let start = Instant::now();
        let names = answers(&client, 20_000..20_000 + FLOWS);
        println!(
            "{FLOWS} flows through balancer {i} in {:?}",
            start.elapsed()
        );
        names
    };
    let one = through(1);
    assert!(
        new_flows(&agent1) >= u64::from(FLOWS) && new_flows(&agent2) == 0,
        "balancer 1 carried the flows"
    );
    let two = through(2);
    assert!(
        new_flows(&agent2) >= u64::from(FLOWS),
        "balancer 2 carried the flows"
    );
    let differ: Vec<usize> = (0..one.len()).filter(|&k| one[k] != two[k]).collect();
    assert!(
        differ.is_empty(),
        "{} of {FLOWS} flows went to another backend through balancer 2, e.g. port {}: {} vs {}",
        differ.len(),
        20_000 + differ[0],
        one[differ[0]],
        two[differ[0]]
    );
    let mut counts = BTreeMap::<&str, usize>::new();
    for name in &one {
        *counts.entry(name).or_default() += 1;
    }
    // Weighted 1:2:1:3: each backend takes flows, backend 4 the most.
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts["b4"] > counts["b1"] && counts["b4"] > counts["b3"],
        "{counts:?}"
    );
}

#[test]
fn discovery_works_over_tls_with_a_client_certificate_and_a_password() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let mut etcd = Etcd::on_bridge_with_tls(topo.switch()).expect("starting etcd with TLS");
    etcd.enable_auth("s3cret")
        .expect("turning etcd's authentication on");
    let tls = etcd.tls().expect("TLS files").clone();
    let settings = |password: &str| {
        format!(
            "prefix = \"{PREFIX}\", ca = \"{}\", cert = \"{}\", key = \"{}\", user = \"root\", \
             password = \"{password}\"",
            tls.ca.display(),
            tls.client_cert.display(),
            tls.client_key.display()
        )
    };
    let config = |password: &str| {
        agent_and_nat(&topo)
            + &discovery_pool(&etcd.endpoint(), VIP, HTTP_PORT, "tcp").replacen(
                &format!("prefix = \"{PREFIX}\""),
                &settings(password),
                1,
            )
    };
    let b1 = topo.backend_http(1);
    etcd.put(&key(b1), &b1.to_string()).expect("etcdctl put");

    // A wrong password is refused: the pool stays empty and the status says why.
    let mut refused = Agent::start(&topo, &config("wrong")).expect("starting the agent");
    let deadline = Instant::now() + SLOW_CHANGE;
    loop {
        let said = discovery(&refused);
        if said["last_error"].is_string() {
            assert_ne!(said["state"], "watching", "{said:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error with a wrong password: {said:#}\n{}",
            refused.log()
        );
        thread::sleep(POLL);
    }
    assert_eq!(web_set(&refused.status_json()), Ok(BTreeMap::new()));
    refused.stop();
    drop(refused);

    let agent = Agent::start(&topo, &config("s3cret")).expect("starting the agent");
    wait_for_set(&agent, &BTreeMap::from([(b1.to_string(), 1)]), SLOW_CHANGE);
    let client = topo.client_ns().expect("a client worker");
    assert_eq!(
        client
            .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
            .expect("through the VIP"),
        "b1"
    );
    let b2 = topo.backend_http(2);
    etcd.put(&key(b2), &b2.to_string()).expect("etcdctl put");
    wait_for_set(
        &agent,
        &BTreeMap::from([(b1.to_string(), 1), (b2.to_string(), 1)]),
        SLOW_CHANGE,
    );
}
