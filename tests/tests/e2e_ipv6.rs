//! End-to-end: IPv6. The topology gets IPv6 beside IPv4 (`Topology::add_ipv6`); an IPv6
//! VIP in `nat` mode over two IPv6 backends answers HTTP from both, its and their counters
//! move, `status --json` and `vip list` show the addresses, and the IPv4 VIP beside it
//! still works.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

use balancer_tests::{
    agent::agent_and_nat, client::http_get, default_config, require_root, testsrv_path, Agent,
    Topology, DEFAULT_TIMEOUT, LB_BACKEND_ADDR, LB_BACKEND_ADDR6, VIP6,
};

/// The test server of each backend, on its IPv6 address only; killed on drop.
struct Servers6(Vec<Child>);

impl Servers6 {
    /// Starts `testsrv --name b{i} --http [fd00:2::(10+i)]:80` in each backend and waits
    /// (at most 5 s) until each answers from the lb namespace.
    fn start(topo: &Topology) -> Servers6 {
        let bin = testsrv_path();
        let bin = bin.to_str().expect("a UTF-8 path");
        let mut servers = Servers6(Vec::new());
        for i in 1..=topo.n_backends() {
            let http = topo.backend_http6(i).to_string();
            let name = topo.backend_name(i);
            servers.0.push(
                topo.backend(i)
                    .spawn(bin, &["--name", &name, "--http", &http]),
            );
        }
        for i in 1..=topo.n_backends() {
            let (addr, name) = (topo.backend_http6(i), topo.backend_name(i));
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let got = topo
                    .lb()
                    .in_thread(|| http_get(addr, Duration::from_millis(500)))
                    .expect("a thread in the lb namespace");
                match got {
                    Ok(body) if body == name => break,
                    other if Instant::now() >= deadline => {
                        panic!("testsrv {name} at {addr} did not answer in 5 s: {other:?}")
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        servers
    }
}

impl Drop for Servers6 {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The default configuration with SNAT sources of both families, and pool "web6" (the
/// backends' IPv6 addresses) behind VIP "web6" on `[fd00:100::1]:80`.
fn config(topo: &Topology) -> String {
    let base = default_config(topo, "maglev");
    let single = format!("source_address = \"{LB_BACKEND_ADDR}\"");
    assert!(base.contains(&single), "{base}");
    assert!(base.starts_with("# Written by") && base.contains(&agent_and_nat(topo)));
    let both = format!("source_addresses = [\"{LB_BACKEND_ADDR}\", \"{LB_BACKEND_ADDR6}\"]");
    let backends: Vec<String> = (1..=topo.n_backends())
        .map(|i| format!("{{ address = \"{}\", port = 80 }}", topo.backend_addr6(i)))
        .collect();
    format!(
        "{}\n[[pool]]\nname = \"web6\"\nbackends = [{}]\n\n[[vip]]\nname = \"web6\"\n\
         address = \"{VIP6}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round-robin\"\n\
         pool = \"web6\"\n",
        base.replacen(&single, &both, 1),
        backends.join(", ")
    )
}

#[test]
fn http_through_an_ipv6_nat_vip_reaches_both_backends() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    topo.add_ipv6().expect("IPv6 in the topology");
    let _servers6 = Servers6::start(&topo);
    let _servers = topo
        .start_backends()
        .expect("starting the IPv4 test servers");
    let agent = Agent::start(&topo, &config(&topo)).expect("starting the agent");
    let client = topo.client_ns().expect("a client worker");

    let tally = client.http_get_many(Topology::vip6_http(), 40, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "requests through [{VIP6}]:80 failed: {tally}\nclient's routes:\n{}\nagent log:\n{}",
        topo.client().ip(&["-6", "route"]).unwrap_or_default(),
        agent.log()
    );
    for i in 1..=2 {
        assert!(
            tally.count(&topo.backend_name(i)) > 0,
            "backend {i} never answered through the IPv6 VIP: {tally}"
        );
    }
    // The IPv4 VIP beside it.
    let v4 = client.http_get_many(Topology::vip_http(), 10, DEFAULT_TIMEOUT);
    assert!(v4.failures.is_empty(), "the IPv4 VIP: {v4}");

    // Counters of the VIP and of each backend, in both directions.
    let vip = agent.vip_status("web6");
    assert_eq!(vip["address"], VIP6.to_string(), "{vip:#}");
    assert_eq!(vip["forwarding"], "nat", "{vip:#}");
    let counters = &vip["counters"];
    assert!(counters["new_flows"].as_u64().unwrap() >= 40, "{vip:#}");
    assert!(counters["reply_packets"].as_u64().unwrap() >= 40, "{vip:#}");
    let status = agent.status_json();
    let pool = status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == "web6"))
        .unwrap_or_else(|| panic!("no pool web6 in {status:#}"));
    for i in 1..=2 {
        let address = topo.backend_addr6(i).to_string();
        let backend = pool["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["address"] == address.as_str()))
            .unwrap_or_else(|| panic!("no backend {address} in {pool:#}"));
        assert_eq!(backend["state"], "active", "{backend:#}");
        let packets = backend["counters"]["packets"].as_u64().unwrap();
        let replies = backend["counters"]["reply_packets"].as_u64().unwrap();
        assert!(packets > 0 && replies > 0, "{backend:#}");
    }

    // The human-readable lists write an IPv6 address with its port as `[ADDRESS]:PORT`.
    let vips = agent.cli_ok(&["vip", "list"]).unwrap();
    assert!(vips.contains(&format!("[{VIP6}]:80/tcp")), "{vips}");
    let backends = agent.cli_ok(&["backend", "list", "web6"]).unwrap();
    let first = SocketAddr::new(topo.backend_addr6(1).into(), 80);
    assert!(backends.contains(&first.to_string()), "{backends}");
}
