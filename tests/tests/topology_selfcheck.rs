//! Self-checks of the test network and test servers, without the balancer: the lb namespace reaches every backend, offloads are set, and everything is removed on drop.

use balancer_tests::{
    http_get, http_request, require_root, udp_request, ClientNs, KeepAlive, Topology,
    LB_CLIENT_ADDR,
};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running `ip netns list`");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lb_reaches_every_backend_over_http_and_udp() {
    require_root();
    let topo = Topology::new(3).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");
    let lb = ClientNs::new(topo.lb()).expect("worker thread in the lb namespace");
    for i in 1..=3 {
        let name = topo.backend_name(i);
        let http = lb
            .http_request(topo.backend_http(i), T)
            .unwrap_or_else(|e| panic!("HTTP from the lb to backend {i} failed: {e:#}"));
        assert_eq!(http.status, 200, "status from {name}");
        assert_eq!(http.body, name, "HTTP body from backend {i}");
        assert_eq!(http.header("x-backend"), Some(name.as_str()), "X-Backend");
        let udp = lb
            .udp_request(topo.backend_udp(i), b"hello", T)
            .unwrap_or_else(|e| panic!("UDP from the lb to backend {i} failed: {e:#}"));
        assert_eq!(udp, name, "UDP answer from backend {i}");
    }

    // Keep-alive: several requests on one connection, same local port all along.
    let addr = topo.backend_http(2);
    let mut ka = lb
        .run(move || KeepAlive::connect(addr))
        .expect("keep-alive connection to backend 2");
    let port = ka.local_addr();
    for n in 1..=5 {
        let body = ka
            .get()
            .unwrap_or_else(|e| panic!("keep-alive request {n} to backend 2 failed: {e:#}"));
        assert_eq!(body, "b2", "keep-alive request {n}");
    }
    assert_eq!(
        ka.local_addr(),
        port,
        "the keep-alive connection was replaced"
    );
    assert_eq!(ka.requests(), 5);
}

#[test]
fn client_reaches_lb_but_not_backends_directly() {
    require_root();
    let topo = Topology::new(1).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the test servers");

    // A listener on the lb's client-side address, served from the lb namespace.
    let lb = ClientNs::new(topo.lb()).expect("worker thread in the lb namespace");
    let listener = lb
        .run(|| TcpListener::bind(SocketAddrV4::new(LB_CLIENT_ADDR, 8080)))
        .expect("listening on 10.0.1.1:8080 in the lb namespace");
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        s.write_all(peer.ip().to_string().as_bytes())
            .expect("write");
    });
    let client = topo
        .client_ns()
        .expect("worker thread in the client namespace");
    let seen_as = client.run(|| {
        let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(LB_CLIENT_ADDR, 8080).into(), T)
            .expect("the client cannot connect to the lb at 10.0.1.1:8080");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("read");
        buf
    });
    server.join().unwrap();
    assert_eq!(
        seen_as, "10.0.1.2",
        "the lb should see the client as 10.0.1.2"
    );

    // NAT mode: the client has no route to the backend subnet, only to the VIP range.
    let direct = client.http_get(topo.backend_http(1), Duration::from_millis(300));
    assert!(
        direct.is_err(),
        "the client reached backend 1 directly ({direct:?}); it must only reach the VIP range"
    );
    // Without a balancer attached, nothing answers on the VIP.
    let vip = client.http_get(Topology::vip_http(), Duration::from_millis(300));
    assert!(
        vip.is_err(),
        "something answered on the VIP without a balancer: {vip:?}"
    );
    // The bulk helpers give up early on a dead path instead of timing out n times.
    let tally = client.http_get_many(Topology::vip_http(), 50, Duration::from_millis(200));
    assert_eq!(tally.ok(), 0);
    assert_eq!(
        tally.failures.len(),
        balancer_tests::client::MAX_CONSECUTIVE_FAILURES + 1,
        "{tally}"
    );
    assert!(
        tally.failures.last().unwrap().contains("gave up"),
        "{tally}"
    );
}

#[test]
fn offloads_and_forwarding_are_configured() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    let feature = |ns: &balancer_tests::Netns, dev: &str, name: &str| -> String {
        let out = ns.run(&["ethtool", "-k", dev]).expect("ethtool -k");
        out.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in `ethtool -k {dev}`:\n{out}"))
            .to_string()
    };
    let on = |v: String| v.starts_with("on");
    assert!(
        !on(feature(topo.client(), "cli0", "tx-checksumming")),
        "cli0 tx checksum offload must be off"
    );
    assert!(
        on(feature(topo.client(), "cli0", "generic-receive-offload")),
        "cli0 GRO must be on"
    );
    assert!(
        on(feature(topo.switch(), "swlb", "generic-receive-offload")),
        "swlb GRO must be on"
    );
    for b in topo.backends() {
        assert!(
            !on(feature(b, "eth0", "tx-checksumming")),
            "{} eth0 tx checksum offload must be off",
            b.name()
        );
    }
    let fwd = topo
        .lb()
        .run(&["sysctl", "-n", "net.ipv4.ip_forward"])
        .expect("sysctl");
    assert_eq!(fwd.trim(), "1", "forwarding in the lb namespace");
    let routes = topo
        .backend(1)
        .ip(&["-4", "route", "show"])
        .expect("ip route");
    assert!(
        !routes.contains("default") && routes.lines().count() == 1,
        "backends must only have their subnet route, got:\n{routes}"
    );
}

#[test]
fn backend_stop_and_restart() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    let mut servers = topo.start_backends().expect("starting the test servers");
    let addr = topo.backend_http(2);
    let lb = ClientNs::new(topo.lb()).expect("worker thread in the lb namespace");

    servers.stop(2);
    assert!(!servers.is_running(2));
    let r = lb.run(move || http_get(addr, Duration::from_millis(500)));
    assert!(r.is_err(), "backend 2 answered after stop: {r:?}");

    servers
        .start_with_status(2, 503)
        .expect("restarting backend 2 with status 503");
    let resp = lb
        .run(move || http_request(addr, T))
        .expect("request to backend 2");
    assert_eq!((resp.status, resp.body.as_str()), (503, "b2"));
    let r = lb.run(move || http_get(addr, T));
    assert!(
        r.is_err(),
        "http_get must report a 503 as an error, got {r:?}"
    );

    servers.start(2).expect("restarting backend 2");
    assert!(servers.is_running(2));
    assert_eq!(lb.run(move || http_get(addr, T)).expect("request"), "b2");
    let udp = topo.backend_udp(1);
    assert_eq!(
        lb.run(move || udp_request(udp, b"x", T)).expect("udp"),
        "b1"
    );
}

#[test]
fn namespaces_are_removed_on_drop() {
    require_root();
    let topo = Topology::new(2).expect("building the topology");
    let prefix = topo.prefix().to_string();
    let run_dir = topo.run_dir().to_path_buf();
    let servers = topo.start_backends().expect("starting the test servers");
    assert_eq!(
        netns_list()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .count(),
        5,
        "expected 5 namespaces named {prefix}-*:\n{}",
        netns_list()
    );
    drop(servers);
    drop(topo);
    let left: Vec<String> = netns_list()
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
    assert!(!run_dir.exists(), "{} left after drop", run_dir.display());
}

#[test]
fn bad_topology_size_is_an_error() {
    require_root();
    assert!(Topology::new(0).is_err());
    assert!(Topology::new(1000).is_err());
}
