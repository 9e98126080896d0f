//! End-to-end: tunnel VIPs. The backends run `balancer decap` (no kernel tunnel device:
//! this kernel has none) and hold the VIP on `lo`; they answer the client by a path of their
//! own. HTTP through an IPIP and then a GUE VIP works, every client packet is counted and
//! no reply, and the backends' decapsulation programs count what they took; a large upload
//! through a tunnel whose path has a smaller MTU completes, by the client's path MTU
//! discovery on the balancer's "fragmentation needed".

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use balancer_tests::{
    balancer_path, config_for, require_root, Agent, BpfMount, NsThread, Topology, DEFAULT_TIMEOUT,
    LB_BACKEND_ADDR, VIP,
};
use serde_json::Value;

/// Attaches the decapsulation program to each backend's `eth0`, pinned below `pins`, and
/// returns the pin directory of each.
fn decap_on_backends(topo: &Topology, pins: &BpfMount) -> Vec<String> {
    let mut dirs = Vec::new();
    for (i, backend) in topo.backends().iter().enumerate() {
        let dir = pins
            .path()
            .join(format!("b{}", i + 1))
            .display()
            .to_string();
        let addr = topo.backend_addr(i + 1).to_string();
        let bin = balancer_path().display().to_string();
        let out = backend
            .run(&[
                &bin,
                "decap",
                "--interface",
                "eth0",
                "--address",
                &addr,
                "--pin-dir",
                &dir,
            ])
            .unwrap_or_else(|e| panic!("balancer decap on backend {}: {e:#}", i + 1));
        assert!(
            out.contains("eth0: decapsulation attached") && out.contains(&addr),
            "{out}"
        );
        dirs.push(dir);
    }
    dirs
}

/// `balancer decap status --json` on backend `i` (1-based): its counters by name.
fn decap_counters(topo: &Topology, i: usize, dir: &str) -> Value {
    let bin = balancer_path().display().to_string();
    let out = topo
        .backend(i)
        .run(&[&bin, "decap", "status", "--json", "--pin-dir", dir])
        .expect("balancer decap status");
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let counters = &status[0]["counters"];
    let mut by_name = serde_json::Map::new();
    for pair in counters.as_array().unwrap_or_else(|| panic!("{status:#}")) {
        by_name.insert(pair[0].as_str().unwrap().to_owned(), pair[1].clone());
    }
    Value::Object(by_name)
}

/// The standard configuration with the "web" VIP a tunnel VIP of `encapsulation`, and
/// the `[tunnel]` section: the outer source is the balancer's backend-side address.
fn tunnel_config(topo: &Topology, encapsulation: &str, extra: &str) -> String {
    let backends: Vec<usize> = (1..=topo.n_backends()).collect();
    let config = config_for(topo, "maglev", &backends);
    let marker = "scheduler = \"maglev\"\npool = \"web\"\n";
    assert!(config.contains(marker), "{config}");
    let vip = format!("{marker}forwarding = \"tunnel\"\nencapsulation = \"{encapsulation}\"\n");
    format!(
        "{}\n[tunnel]\nsource = \"{LB_BACKEND_ADDR}\"\n{extra}",
        config.replacen(marker, &vip, 1)
    )
}

#[test]
fn http_through_ipip_and_gue_tunnels_is_answered_by_the_backends_directly() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    topo.add_direct_return_path();
    let pins = BpfMount::new("decap").expect("a bpf filesystem for the decap pins");
    let dirs = decap_on_backends(&topo, &pins);
    let _servers = topo.start_backends().expect("starting the test servers");
    let client = topo.client_ns().expect("a client worker");

    for (encapsulation, counter) in [("ipip", "decap_ipip"), ("gue", "decap_gue")] {
        eprintln!("{encapsulation}");
        let mut agent = Agent::start(&topo, &tunnel_config(&topo, encapsulation, ""))
            .expect("starting the agent");
        let vips = agent.cli_ok(&["vip", "list"]).unwrap();
        assert!(
            vips.lines()
                .any(|l| l.starts_with("web ") && l.contains(&format!("maglev, {encapsulation}"))),
            "{vips}"
        );
        agent.assert_answered_directly(&client, "tunnel");
        for (i, dir) in dirs.iter().enumerate() {
            let decap = decap_counters(&topo, i + 1, dir);
            assert!(
                decap[counter].as_u64().unwrap() > 0,
                "backend {}: {decap:#}",
                i + 1
            );
        }
        let tally = client.udp_request_many(Topology::vip_udp(), 10, DEFAULT_TIMEOUT);
        assert!(tally.failures.is_empty(), "the NAT VIP beside it: {tally}");
        agent.stop();
    }

    // Without the decapsulation program, a backend's kernel drops the tunnel's packets.
    let bin = balancer_path().display().to_string();
    for (i, dir) in dirs.iter().enumerate() {
        let out = topo
            .backend(i + 1)
            .run(&[
                &bin,
                "decap",
                "detach",
                "--interface",
                "eth0",
                "--pin-dir",
                dir,
            ])
            .expect("balancer decap detach");
        assert!(out.contains("eth0: decapsulation detached"), "{out}");
    }
    let _agent = Agent::start(&topo, &tunnel_config(&topo, "ipip", "")).unwrap();
    let broken = client.http_get(Topology::vip_http(), Duration::from_millis(800));
    assert!(
        broken.is_err(),
        "answered without decapsulation: {broken:?}"
    );
}

/// Listens on `port` in backend 1's namespace; a thread accepts one connection, reads it
/// to its end and answers with the number of bytes read.
fn byte_counter(topo: &Topology, port: u16) -> std::thread::JoinHandle<()> {
    let worker = NsThread::new(topo.backend(1)).expect("a backend worker");
    // (A socket belongs to the namespace it was made in, whichever thread uses it.)
    let listener = worker
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .expect("the counter listens");
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("a connection");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        let _ = conn.write_all(total.to_string().as_bytes());
    })
}

#[test]
fn a_large_upload_through_a_tunnel_with_a_smaller_mtu_on_the_path_completes() {
    const PORT: u16 = 9000;
    const SIZE: usize = 4 << 20;
    require_root();
    let topo = Topology::new(1).expect("building the topology");
    topo.add_direct_return_path();
    let pins = BpfMount::new("decap").expect("a bpf filesystem for the decap pins");
    let dirs = decap_on_backends(&topo, &pins);
    // The way to the backends has a smaller MTU than the client's link.
    let [_, lbs] = topo.lb_interfaces();
    topo.lb().ip(&["link", "set", lbs, "mtu", "1400"]).unwrap();
    for port in ["swlb", "sw1"] {
        topo.switch()
            .ip(&["link", "set", port, "mtu", "1400"])
            .unwrap();
    }
    topo.backend(1)
        .ip(&["link", "set", "eth0", "mtu", "1400"])
        .unwrap();
    // An agent whose tunnel.mtu (1500 by default) the interface cannot carry says so.
    let mut agent = Agent::start(&topo, &tunnel_config(&topo, "ipip", "")).unwrap();
    agent.stop();
    assert!(
        agent
            .log()
            .contains(&format!("{lbs}: MTU 1400 is below tunnel.mtu 1500")),
        "no warning of the interface's MTU:\n{}",
        agent.log()
    );
    let _counter = byte_counter(&topo, PORT);

    let upload = format!(
        r#"
[[pool]]
name = "sink"
check = {{ type = "tcp", interval = "200ms", rise = 1, initial_state = "down" }}
backends = [{{ address = "{}", port = {PORT} }}]

[[vip]]
name = "upload"
address = "{VIP}"
port = {PORT}
protocol = "tcp"
pool = "sink"
forwarding = "tunnel"
"#,
        topo.backend_addr(1)
    );
    let config = tunnel_config(&topo, "ipip", "mtu = 1400\n") + &upload;
    let agent = Agent::start(&topo, &config).expect("starting the agent");
    // Its check's SYNs make the balancer's neighbour entry of the backend, without which
    // untranslated packets are dropped (never handed to the stack).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.status_json()["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == "sink"))
        .is_none_or(|p| p["backends"][0]["health"] != "up")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never came up:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = topo.client_ns().expect("a client worker");
    let answer = client.run(move || -> std::io::Result<String> {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddrV4::new(VIP, PORT).into(), DEFAULT_TIMEOUT)?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.write_all(&vec![0x42; SIZE])?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    });
    let global = &agent.status_json()["global"];
    let answer =
        answer.unwrap_or_else(|e| panic!("the upload through the tunnel: {e}; {global:#}"));
    assert_eq!(answer, SIZE.to_string(), "every byte arrived");
    assert!(
        global["tunnel_too_big"].as_u64().unwrap() >= 1,
        "the client learnt the path MTU from the balancer: {global:#}"
    );
    assert_eq!(global["drop_tunnel_mtu"], 0, "{global:#}");
    let decap = decap_counters(&topo, 1, &dirs[0]);
    assert!(
        decap["decap_ipip"].as_u64().unwrap() > (SIZE / 1400) as u64,
        "{decap:#}"
    );
}
