//! Live reload (`balancer reload`, SIGHUP): the agent reads its file again and applies only
//! the differences. Established TCP and UDP flows through VIPs the reload keeps carry on;
//! an invalid file changes nothing; backends the CLI added stay; an HTTP VIP's rules are
//! swapped under a request loop without a failed request; five reloads in a row under a
//! loop of short TCP requests fail none; `config dump` round-trips.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use balancer_tests::agent::{agent_and_nat, balancer_cli};
use balancer_tests::{
    balancer_path, config_for, http_get, Agent, Running, Topology, DEFAULT_TIMEOUT, HTTP_PORT, VIP,
};

/// A second and a third VIP address (the client routes 10.0.100.0/24 to the balancer).
const OLD_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 2);
const NEW_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 3);

/// An L4 VIP of pool web on `address`:80.
fn web_vip(name: &str, address: Ipv4Addr) -> String {
    format!(
        "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n"
    )
}

/// Writes `text` over the agent's configuration file.
fn rewrite(agent: &Agent, text: &str) {
    std::fs::write(agent.config_path(), text)
        .unwrap_or_else(|e| panic!("writing {}: {e}", agent.config_path().display()));
}

/// `balancer reload`, which must succeed; what it printed.
fn reload(agent: &Agent) -> String {
    agent
        .cli_ok(&["reload"])
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()))
}

/// A UDP socket in the client namespace: one flow, whose requests name the backend.
fn udp_flow(run: &Running) -> UdpSocket {
    let sock = run
        .client
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("binding a UDP socket in the client namespace");
    sock.set_read_timeout(Some(DEFAULT_TIMEOUT)).unwrap();
    sock
}

fn udp_ask(sock: &UdpSocket, what: &str) -> String {
    sock.send_to(what.as_bytes(), Topology::vip_udp())
        .expect("sending on the UDP flow");
    let mut buf = [0u8; 512];
    let (n, _) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: no answer on the UDP flow: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Pool `name` of `balancer status --json`.
fn pool<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no pool {name} in {status:#}"))
}

#[test]
fn flows_survive_a_reload_that_adds_and_removes_vips_and_changes_backends() {
    let run = Running::start_with(4, |topo| {
        config_for(topo, "maglev", &[1, 2, 3]) + &web_vip("old", OLD_VIP)
    });
    let (mut tcp, tcp_backend, _) = run.pinned_connection();
    let udp = udp_flow(&run);
    let udp_backend = udp_ask(&udp, "before");
    let old_vip = SocketAddrV4::new(OLD_VIP, HTTP_PORT);
    let new_vip = SocketAddrV4::new(NEW_VIP, HTTP_PORT);
    assert!(run.client.http_get(old_vip, DEFAULT_TIMEOUT).is_ok());

    // VIP "old" goes, VIP "new" comes, backend 4 joins web, backend 1 weighs 3 in web,
    // and web's backends get a health check (which they pass).
    let b1 = run.topo.backend_addr(1);
    let b4 = run.topo.backend_addr(4);
    let text = config_for(&run.topo, "maglev", &[1, 2, 3])
        .replacen(
            &format!("{{ address = \"{b1}\", port = 80, weight = 1 }},"),
            &format!(
                "{{ address = \"{b1}\", port = 80, weight = 3 }},\n  {{ address = \"{b4}\", port = 80, weight = 1 }},"
            ),
            1,
        )
        .replacen(
            "name = \"web\"\nbackends",
            "name = \"web\"\ncheck = { type = \"http\", path = \"/\", interval = \"500ms\" }\nbackends",
            1,
        )
        + &web_vip("new", NEW_VIP);
    rewrite(&run.agent, &text);
    // New connections to the web VIP all along: none fails.
    let socket = run.agent.socket().to_path_buf();
    let reloader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(500));
        balancer_cli(&socket, &["reload"])
    });
    let tally = run.client.run(|| {
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut tally = balancer_tests::Tally::default();
        while Instant::now() < deadline {
            tally.record(http_get(Topology::vip_http(), DEFAULT_TIMEOUT));
        }
        tally
    });
    let out = reloader.join().unwrap();
    assert!(out.success(), "{out}\nagent log:\n{}", run.agent.log());
    let summary = "1 VIP added, 1 removed, 1 pool changed, 1 backend added, 3 changed, 3 \
                   checks restarted";
    assert_eq!(
        out.stdout.trim(),
        format!("reload: {summary} (configuration generation 2)")
    );
    assert!(
        run.agent.log().contains(&format!("reload: {summary}")),
        "{}",
        run.agent.log()
    );
    assert!(
        tally.total() > 20 && tally.failures.is_empty(),
        "during the reload: {tally}"
    );

    tcp.expect_backend(&tcp_backend, 5, "the reload");
    for i in 0..5 {
        assert_eq!(
            udp_ask(&udp, &format!("after {i}")),
            udp_backend,
            "the UDP flow moved to another backend after the reload"
        );
    }
    let answered = run
        .client
        .http_get(new_vip, DEFAULT_TIMEOUT)
        .expect("the VIP the reload added answers");
    assert!(run.topo.backend_index(&answered).is_some(), "{answered}");
    assert!(
        run.client
            .http_get(old_vip, Duration::from_millis(500))
            .is_err(),
        "the VIP the reload removed still answers"
    );
    // Backend 4 takes new flows: some of 60 connections reach it.
    let tally = run
        .client
        .http_get_many(Topology::vip_http(), 60, DEFAULT_TIMEOUT);
    assert!(tally.failures.is_empty(), "{tally}");
    assert!(tally.count(&run.topo.backend_name(4)) > 0, "{tally}");

    let status = run.agent.status_json();
    assert_eq!(status["config"]["generation"], 2, "{status:#}");
    assert_eq!(status["config"]["last_reload"]["ok"], true, "{status:#}");
    // The checks run and the backends stayed up through their restart.
    let web = pool(&status, "web");
    for b in web["backends"].as_array().unwrap() {
        assert_eq!(
            (&b["check"], &b["health"]),
            (&"http".into(), &"up".into()),
            "{b:#}"
        );
    }
}

#[test]
fn an_invalid_file_is_refused_whole_and_traffic_goes_on() {
    let run = Running::start(3, "maglev");
    let good = std::fs::read_to_string(run.agent.config_path()).unwrap();
    let before = run.agent.cli_ok(&["vip", "list"]).unwrap();
    let (mut tcp, tcp_backend, _) = run.pinned_connection();

    // A port out of range, and a VIP added beside it: nothing of it may be applied.
    let line = good
        .lines()
        .position(|l| l.starts_with("port = 80"))
        .unwrap()
        + 1;
    let bad = good.replacen("port = 80\n", "port = 80000\n", 1) + &web_vip("extra", NEW_VIP);
    rewrite(&run.agent, &bad);
    let out = run.agent.cli(&["reload"]);
    assert!(
        !out.success(),
        "a reload of an invalid file succeeded: {out}"
    );
    let place = format!("{}:{line}:8: ", run.agent.config_path().display());
    assert!(
        out.stderr.contains(&place) && out.stderr.contains("port 80000 is out of range"),
        "expected `{place}...` in: {out}"
    );
    assert_eq!(run.agent.cli_ok(&["vip", "list"]).unwrap(), before);
    let status = run.agent.status_json();
    assert_eq!(status["config"]["generation"], 1, "{status:#}");
    assert_eq!(status["config"]["last_reload"]["ok"], false, "{status:#}");
    tcp.expect_backend(&tcp_backend, 3, "a refused reload");
    assert!(run
        .client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .is_ok());

    // What needs a restart is refused by name.
    rewrite(
        &run.agent,
        &good.replacen("xdp_mode = \"auto\"", "xdp_mode = \"skb\"", 1),
    );
    let out = run.agent.cli(&["reload"]);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("agent.xdp_mode: changing how XDP is attached needs a restart"),
        "{out}"
    );

    // SIGHUP with the invalid file: logged, the agent runs on.
    rewrite(&run.agent, &bad);
    let pid = run.agent.pid().expect("the agent runs");
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    assert_eq!(
        unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGHUP) },
        0
    );
    let logged = format!("reload refused: {place}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !run.agent.log().contains(&logged) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        run.agent.log().contains(&logged),
        "expected {logged:?} in:\n{}",
        run.agent.log()
    );
    tcp.expect_backend(&tcp_backend, 3, "SIGHUP with an invalid file");
    assert_eq!(run.agent.cli_ok(&["vip", "list"]).unwrap(), before);
}

#[test]
fn a_backend_the_cli_added_survives_a_reload_that_does_not_touch_it() {
    let run = Running::start_with(4, |topo| config_for(topo, "maglev", &[1, 2]));
    let b4 = format!("{}:80", run.topo.backend_addr(4));
    run.agent
        .cli_ok(&["backend", "add", "web", &b4])
        .expect("backend add");
    // The file changes the dns pool only.
    let b1 = run.topo.backend_addr(1);
    let text = std::fs::read_to_string(run.agent.config_path())
        .unwrap()
        .replacen(
            &format!("{{ address = \"{b1}\", port = 5300, weight = 1 }}"),
            &format!("{{ address = \"{b1}\", port = 5300, weight = 2 }}"),
            1,
        );
    rewrite(&run.agent, &text);
    assert_eq!(
        reload(&run.agent).trim(),
        "reload: 1 backend changed (configuration generation 2)"
    );
    let listed = run.agent.cli_ok(&["backend", "list", "web"]).unwrap();
    let row = listed
        .lines()
        .find(|l| l.contains(&b4))
        .unwrap_or_else(|| panic!("{b4} is gone after the reload:\n{listed}"));
    assert!(row.trim_end().ends_with("cli"), "{listed}");
    let status = run.agent.status_json();
    let web = pool(&status, "web");
    let sources: Vec<(String, String)> = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                format!("{}:{}", b["address"].as_str().unwrap(), b["port"]),
                b["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [(1, "file"), (2, "file"), (4, "cli")]
        .iter()
        .map(|(i, s)| (format!("{}:80", run.topo.backend_addr(*i)), (*s).to_owned()))
        .collect();
    assert_eq!(sources, expected);
    let tally = run
        .client
        .http_get_many(Topology::vip_http(), 60, DEFAULT_TIMEOUT);
    assert!(tally.count(&run.topo.backend_name(4)) > 0, "{tally}");
}

/// An HTTP VIP on the VIP address whose one rule sends every request to pool `rule_pool`.
fn http_config(topo: &Topology, rule_pool: &str) -> String {
    let pool = |name: &str, i: usize| {
        format!(
            "[[pool]]\nname = \"{name}\"\nbackends = [{{ address = \"{}\", port = 80 }}]\n\n",
            topo.backend_addr(i)
        )
    };
    format!(
        "{agent}\n{a}{b}{c}[[vip]]\nname = \"www\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"http\"\npool = \"c\"\n\n[[vip.rule]]\nname = \"all\"\npool = \"{rule_pool}\"\n\
         path_prefix = [\"/\"]\n",
        agent = agent_and_nat(topo),
        a = pool("a", 1),
        b = pool("b", 2),
        c = pool("c", 3),
    )
}

#[test]
fn a_changed_http_rule_routes_at_once_and_no_request_fails() {
    let run = Running::start_with(3, |topo| http_config(topo, "a"));
    rewrite(&run.agent, &http_config(&run.topo, "b"));
    let socket = run.agent.socket().to_path_buf();
    let reloader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(800));
        let started = Instant::now();
        let out = balancer_cli(&socket, &["reload"]);
        (started, Instant::now(), out)
    });
    let answers = run.client.run(|| {
        let deadline = Instant::now() + Duration::from_millis(2500);
        let mut answers = Vec::new();
        while Instant::now() < deadline {
            let sent = Instant::now();
            answers.push((sent, http_get(Topology::vip_http(), DEFAULT_TIMEOUT)));
        }
        answers
    });
    let (started, done, out) = reloader.join().unwrap();
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("reload: 1 VIP changed"), "{out}");
    let (a, b) = (run.topo.backend_name(1), run.topo.backend_name(2));
    let failed: Vec<_> = answers.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "requests failed during the reload: {failed:?}"
    );
    let named = |from: Instant, to: Instant| -> Vec<&str> {
        answers
            .iter()
            .filter(|(sent, _)| *sent >= from && *sent < to)
            .map(|(_, r)| r.as_deref().unwrap())
            .collect()
    };
    let before = named(answers[0].0, started);
    let after = named(done, Instant::now());
    assert!(
        before.len() > 5 && after.len() > 5,
        "{} before, {} after",
        before.len(),
        after.len()
    );
    assert!(
        before.iter().all(|n| *n == a),
        "before the reload: {before:?}"
    );
    assert!(after.iter().all(|n| *n == b), "after the reload: {after:?}");
}

#[test]
fn config_dump_round_trips() {
    let run = Running::start(3, "maglev");
    let b3 = format!("{}:80", run.topo.backend_addr(3));
    run.agent
        .cli_ok(&["backend", "weight", "web", &b3, "4"])
        .unwrap();
    run.agent
        .cli_ok(&[
            "vip",
            "add",
            "api",
            "10.0.100.4:443/tcp",
            "--pool",
            "api",
            "--scheduler",
            "rr",
            "--ring-size",
            "251",
        ])
        .unwrap();
    run.agent
        .cli_ok(&[
            "backend",
            "add",
            "api",
            &format!("{}:443", run.topo.backend_addr(1)),
        ])
        .unwrap();
    run.agent.cli_ok(&["pool", "add", "spare"]).unwrap();
    let pools = run.agent.cli_ok(&["pool", "list"]).unwrap();
    let spare = pools
        .lines()
        .find(|l| l.starts_with("spare "))
        .unwrap_or_else(|| panic!("{pools}"));
    assert_eq!(
        spare.split_whitespace().collect::<Vec<_>>(),
        ["spare", "0", "0", "-", "cli"]
    );
    let dump = run.agent.cli_ok(&["config", "dump"]).unwrap();
    assert!(
        dump.contains("name = \"api\"")
            && dump.contains("weight = 4")
            && dump.contains("name = \"spare\""),
        "{dump}"
    );

    // What the dump says is what runs: check-config takes it, and a reload from it
    // changes nothing and makes everything the file's.
    rewrite(&run.agent, &dump);
    // In the lb namespace: the file's SNAT address and interfaces are that host's.
    let check = run
        .topo
        .lb()
        .command(&balancer_path().display().to_string())
        .args(["check-config", "--config"])
        .arg(run.agent.config_path())
        .output()
        .expect("running balancer check-config");
    assert!(
        check.status.success(),
        "check-config refused the dump: {check:?}\n{dump}"
    );
    assert_eq!(
        reload(&run.agent).trim(),
        "reload: no change (configuration generation 1)"
    );
    let status = run.agent.status_json();
    for vip in status["vips"].as_array().unwrap() {
        assert_eq!(vip["source"], "file", "{vip:#}");
    }
    assert_eq!(run.agent.cli_ok(&["config", "dump"]).unwrap(), dump);

    // A pool outlives the VIP that created it until `pool del`.
    run.agent.cli_ok(&["vip", "del", "api"]).unwrap();
    let refused = run.agent.cli(&["pool", "del", "web"]);
    assert!(
        !refused.success() && refused.stderr.contains("used by VIP web"),
        "{refused}"
    );
    run.agent.cli_ok(&["pool", "del", "api"]).unwrap();
    let pools = run.agent.cli_ok(&["pool", "list"]).unwrap();
    assert!(!pools.lines().any(|l| l.starts_with("api ")), "{pools}");
}

#[test]
fn runtime_changes_outlive_a_restart_of_the_agent() {
    let mut run = Running::start_with(3, |topo| config_for(topo, "maglev", &[1, 2]));
    let b3 = format!("{}:80", run.topo.backend_addr(3));
    run.agent.cli_ok(&["backend", "add", "web", &b3]).unwrap();
    let said = run
        .agent
        .cli_ok(&["vip", "add", "api", "10.0.100.4:80/tcp", "--pool", "web"])
        .unwrap();
    assert!(said.contains("kept across reloads and restarts"), "{said}");
    let text = std::fs::read_to_string(run.agent.config_path()).unwrap();
    assert_eq!(run.agent.stop(), Some(0), "log:\n{}", run.agent.log());

    run.agent = Agent::start(&run.topo, &text).expect("starting the agent again");
    assert!(
        run.agent
            .log()
            .contains("runtime changes of the previous agent restored"),
        "{}",
        run.agent.log()
    );
    let vips = run.agent.cli_ok(&["vip", "list"]).unwrap();
    let api = vips
        .lines()
        .find(|l| l.starts_with("api "))
        .unwrap_or_else(|| panic!("VIP api is gone after the restart:\n{vips}"));
    assert!(api.trim_end().ends_with("cli"), "{vips}");
    let listed = run.agent.cli_ok(&["backend", "list", "web"]).unwrap();
    assert!(listed.contains(&b3), "{listed}");
    let answered = run
        .client
        .http_get(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 100, 4), HTTP_PORT),
            DEFAULT_TIMEOUT,
        )
        .expect("the VIP the CLI added answers after the restart");
    assert!(run.topo.backend_index(&answered).is_some(), "{answered}");
}

#[test]
fn five_reloads_under_steady_load_fail_no_request() {
    let run = Running::start_with(4, |topo| config_for(topo, "maglev", &[1, 2, 3]));
    let base = std::fs::read_to_string(run.agent.config_path()).unwrap();
    let b1 = run.topo.backend_addr(1);
    let b4 = run.topo.backend_addr(4);
    let entry = |addr: Ipv4Addr, weight: u32| {
        format!("{{ address = \"{addr}\", port = 80, weight = {weight} }},")
    };
    // Each file differs from the one before: a weight, a backend in and out, a VIP, a
    // check, and back to the start.
    let files = [
        base.replacen(&entry(b1, 1), &entry(b1, 3), 1),
        base.replacen(
            &entry(b1, 1),
            &format!("{}\n  {}", entry(b1, 1), entry(b4, 1)),
            1,
        ),
        base.clone() + &web_vip("new", NEW_VIP),
        base.replacen(
            "name = \"web\"\nbackends",
            "name = \"web\"\ncheck = { type = \"tcp\", interval = \"300ms\" }\nbackends",
            1,
        ),
        base.clone(),
    ];
    assert!(
        files.windows(2).all(|w| w[0] != w[1]) && files[0] != base,
        "each reload must change something"
    );
    let (mut tcp, tcp_backend, _) = run.pinned_connection();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (path, socket, finished) = (
        run.agent.config_path().to_path_buf(),
        run.agent.socket().to_path_buf(),
        done.clone(),
    );
    let reloader = thread::spawn(move || {
        let mut outs = Vec::new();
        for text in &files {
            thread::sleep(Duration::from_millis(300));
            std::fs::write(&path, text).unwrap();
            outs.push(balancer_cli(&socket, &["reload"]));
        }
        thread::sleep(Duration::from_millis(300));
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        outs
    });
    // Short TCP requests, one connection each, until the last reload is done.
    let tally = run.client.run(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tally = balancer_tests::Tally::default();
        while !done.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            tally.record(http_get(Topology::vip_http(), DEFAULT_TIMEOUT));
        }
        tally
    });
    let outs = reloader.join().unwrap();
    for (k, out) in outs.iter().enumerate() {
        assert!(
            out.success() && !out.stdout.contains("no change"),
            "reload {}: {out}\nagent log:\n{}",
            k + 1,
            run.agent.log()
        );
    }
    assert!(
        outs[4].stdout.contains("configuration generation 6"),
        "{}",
        outs[4]
    );
    println!("during 5 reloads: {tally}");
    assert!(
        tally.total() > 50 && tally.failures.is_empty(),
        "during 5 reloads: {tally}"
    );
    // Backend 4 was in the pool for one reload, and took flows then.
    assert!(tally.count(&run.topo.backend_name(4)) > 0, "{tally}");
    tcp.expect_backend(&tcp_backend, 3, "5 reloads");
}
