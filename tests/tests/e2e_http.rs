//! End-to-end: an HTTP-mode VIP served by the agent's proxy, with curl as the client. Rules
//! route by path prefix and suffix, host, negated method, client network and regex to
//! their pools, the rest to the default pool; the backends see who the client is; an L4
//! VIP works beside it; a backend that dies is retried around, then left out.

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use balancer_tests::agent::agent_and_nat;
use balancer_tests::{require_root, Agent, Topology, VIP};

/// The HTTP VIP and, on another address, an L4 VIP of the same pools.
const L4_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 2);

/// Pools "static" (backend 1), "api" (backend 2), "app" (backends 3 and 4); HTTP VIP "www"
/// with the rules under test (default pool "app"); L4 VIP "l4" to "app".
fn config(topo: &Topology, check: &str) -> String {
    let backend = |i: usize| format!("{{ address = \"{}\", port = 80 }}", topo.backend_addr(i));
    format!(
        r#"{agent}
[[pool]]
name = "static"
backends = [{b1}]

[[pool]]
name = "api"
backends = [{b2}]

[[pool]]
name = "app"
{check}
backends = [{b3}, {b4}]

[[vip]]
name = "www"
address = "{VIP}"
port = 80
protocol = "tcp"
mode = "http"
pool = "app"

[[vip.rule]]
name = "api"
pool = "api"
host = ["api.example", "*.api.example"]

[[vip.rule]]
name = "static"
pool = "static"
path_prefix = ["/static/", "/images/"]

[[vip.rule]]
name = "static-ext"
pool = "static"
path_suffix = [".css", ".js", ".jpg"]
not_method = ["POST"]

[[vip.rule]]
name = "internal"
pool = "api"
source = ["10.0.1.0/24"]
path_regex = ["^/internal(/|$)"]

[[vip]]
name = "l4"
address = "{L4_VIP}"
port = 80
protocol = "tcp"
pool = "app"
"#,
        agent = agent_and_nat(topo),
        b1 = backend(1),
        b2 = backend(2),
        b3 = backend(3),
        b4 = backend(4),
    )
}

/// curl from the client namespace: `(status, X-Backend)`; extra curl arguments first.
fn curl(topo: &Topology, args: &[&str], url: &str) -> (u16, String) {
    let mut command = topo.client().command("curl");
    command
        .args(["-s", "-o", "/dev/null", "--max-time", "5"])
        .args(["-w", "%{http_code} %header{x-backend}"])
        .args(args)
        .arg(url);
    let out = command.output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, backend) = text.split_once(' ').unwrap_or((&text, ""));
    (code.parse().unwrap_or(0), backend.to_owned())
}

#[test]
fn rules_route_requests_to_their_pools_and_l4_works_beside() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let agent = Agent::start(&topo, &config(&topo, "")).expect("starting the agent");
    let www = format!("http://{VIP}");
    let cases: [(&str, &[&str], &str, &[&str]); 10] = [
        ("path prefix", &[], "/static/logo.png", &["b1"]),
        ("path prefix, second value", &[], "/images/a", &["b1"]),
        ("suffix, query ignored", &[], "/a/b.css?v=2", &["b1"]),
        ("negated method", &["-X", "POST"], "/a/b.css", &["b3", "b4"]),
        (
            "host first",
            &["-H", "Host: api.example"],
            "/static/x",
            &["b2"],
        ),
        (
            "host *.suffix",
            &["-H", "Host: v1.api.example:80"],
            "/",
            &["b2"],
        ),
        (
            "bare suffix is not *.suffix",
            &["-H", "Host: xapi.example"],
            "/",
            &["b3", "b4"],
        ),
        ("CIDR and regex", &[], "/internal/status", &["b2"]),
        ("regex anchoring", &[], "/internalx", &["b3", "b4"]),
        ("default pool", &[], "/", &["b3", "b4"]),
    ];
    for (what, args, path, want) in cases {
        let (status, backend) = curl(&topo, args, &format!("{www}{path}"));
        assert_eq!(
            status,
            200,
            "{what}: {path} answered {status}\n{}",
            agent.log()
        );
        assert!(
            want.contains(&backend.as_str()),
            "{what}: {path} reached {backend:?}, not one of {want:?}"
        );
    }
    // The L4 VIP beside it: the data plane, not the proxy.
    let (status, backend) = curl(&topo, &[], &format!("http://{L4_VIP}/"));
    assert_eq!(
        (status, ["b3", "b4"].contains(&backend.as_str())),
        (200, true),
        "{backend}"
    );

    let status = agent.status_json();
    let www = status["http"]
        .as_array()
        .and_then(|vips| vips.iter().find(|v| v["name"] == "www"))
        .unwrap_or_else(|| panic!("no HTTP VIP www in status: {status:#}"));
    assert_eq!(www["requests"], 10, "{www:#}");
    assert_eq!(www["responses"]["2xx"], 10, "{www:#}");
    let hits: Vec<u64> = www["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hits"].as_u64().unwrap())
        .collect();
    assert_eq!(
        hits,
        [2, 2, 1, 1, 4],
        "hits of api, static, static-ext, internal, default"
    );
    let text = agent.cli_ok(&["status"]).expect("balancer status");
    assert!(
        text.contains("HTTP VIPs") && text.contains("rule static"),
        "{text}"
    );
    let vips = agent.cli_ok(&["vip", "list"]).expect("balancer vip list");
    assert!(
        vips.contains("10.0.100.1:80/http") && vips.contains("l4"),
        "{vips}"
    );
}

#[test]
fn a_dead_backend_is_retried_around_and_then_left_out() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let mut servers = topo.start_backends().expect("starting the backends");
    let check =
        "check = { type = \"tcp\", interval = \"300ms\", timeout = \"300ms\", fall = 2, rise = 2 }";
    let agent = Agent::start(&topo, &config(&topo, check)).expect("starting the agent");
    let url = format!("http://{VIP}/");
    thread::sleep(Duration::from_secs(1));
    servers.stop(3);
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut seen_b3 = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let (status, backend) = curl(&topo, &[], &url);
        if status != 200 {
            failed.push((started.elapsed(), status));
        }
        if backend == "b3" {
            seen_b3 += 1;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        failed,
        [],
        "requests failed although b4 was up\n{}",
        agent.log()
    );
    assert_eq!(seen_b3, 0, "the dead backend answered");
    let status = agent.status_json();
    let www = &status["http"][0];
    assert!(
        www["retries"].as_u64() > Some(0),
        "no retry counted: {www:#}"
    );
}

/// curl from the client namespace with a cookie jar: the response's headers (lower-case
/// names) and status.
fn curl_headers(topo: &Topology, jar: &std::path::Path, url: &str) -> (u16, Vec<(String, String)>) {
    let out = topo
        .client()
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "5", "-c"])
        .arg(jar)
        .arg("-b")
        .arg(jar)
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Sends `request` on a new connection from the client namespace and returns what came
/// back until the server closed or `wait` passed.
fn raw(topo: &Topology, request: Vec<u8>, wait: Duration) -> String {
    use std::io::{Read, Write};
    let client = topo.client_ns().expect("a thread in the client namespace");
    client.run(move || {
        let mut stream = std::net::TcpStream::connect((VIP, 80)).expect("connecting to the VIP");
        stream.set_read_timeout(Some(wait)).unwrap();
        let _ = stream.write_all(&request);
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    })
}

#[test]
fn cookies_persist_the_client_info_goes_on_and_upgrades_pass() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let cookie = "cookie = { name = \"SERVERID\", insert = true, nocache = true, indirect = true }";
    let agent = Agent::start(&topo, &config(&topo, cookie)).expect("starting the agent");
    let jar = topo.run_dir().join("cookies");
    let url = format!("http://{VIP}/");

    let (status, first) = curl_headers(&topo, &jar, &url);
    assert_eq!(status, 200, "{first:?}\n{}", agent.log());
    let set = header(&first, "set-cookie").unwrap_or_else(|| panic!("no Set-Cookie: {first:?}"));
    assert!(set.starts_with("SERVERID="), "{set}");
    assert_eq!(
        header(&first, "cache-control"),
        Some("no-cache=\"set-cookie\"")
    );
    assert_eq!(header(&first, "x-seen-forwarded-for"), Some("10.0.1.2"));
    let backend = header(&first, "x-backend").unwrap().to_owned();
    for _ in 0..6 {
        let (status, next) = curl_headers(&topo, &jar, &url);
        assert_eq!(status, 200);
        assert_eq!(
            header(&next, "x-backend"),
            Some(backend.as_str()),
            "persistence: {next:?}"
        );
        assert_eq!(
            header(&next, "set-cookie"),
            None,
            "the cookie is set once: {next:?}"
        );
        // indirect: the backend never sees our cookie.
        assert_eq!(header(&next, "x-seen-cookie"), None, "{next:?}");
    }

    // An upgrade to another protocol passes through, both ways.
    let echoed = raw(
        &topo,
        b"GET /chat HTTP/1.1\r\nHost: www\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping-pong"
            .to_vec(),
        Duration::from_secs(1),
    );
    assert!(echoed.starts_with("HTTP/1.1 101"), "{echoed:?}");
    assert!(echoed.ends_with("ping-pong"), "{echoed:?}");
}

#[test]
fn bad_and_slow_requests_are_refused_while_others_are_served() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let text = config(&topo, "")
        + "\n[http]\ntimeout_http_request = \"1s\"\nmax_headers = 20\nmax_header_bytes = 16384\n\
           access_log = true\n";
    let agent = Agent::start(&topo, &text).expect("starting the agent");
    let www = format!("http://{VIP}/");

    // Idle connections that never send a byte, and a slowloris that never ends its head.
    let client = topo.client_ns().expect("a thread in the client namespace");
    let idle = client.run(|| {
        (0..200)
            .filter_map(|_| std::net::TcpStream::connect((VIP, 80)).ok())
            .collect::<Vec<_>>()
    });
    assert_eq!(idle.len(), 200, "idle connections accepted");
    let slow_started = Instant::now();
    let slow = raw(
        &topo,
        b"GET / HTTP/1.1\r\nHost: www\r\nX-Slow: 1\r\n".to_vec(),
        Duration::from_secs(5),
    );
    let slow_took = slow_started.elapsed();
    assert!(
        slow_took < Duration::from_secs(3) && !slow.contains("200 OK"),
        "a request head unfinished after 1s must be closed: {slow:?} after {slow_took:?}"
    );
    assert_eq!(
        curl(&topo, &[], &www).0,
        200,
        "served beside the slow client"
    );

    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "bad header",
            b"GET / HTTP/1.1\r\nHost www\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            "too many headers",
            [
                b"GET / HTTP/1.1\r\nHost: www\r\n".to_vec(),
                (0..40)
                    .flat_map(|i| format!("X-H{i}: v\r\n").into_bytes())
                    .collect(),
                b"\r\n".to_vec(),
            ]
            .concat(),
            "HTTP/1.1 431",
        ),
        (
            "huge header",
            format!(
                "GET / HTTP/1.1\r\nHost: www\r\nX-Big: {}\r\n\r\n",
                "a".repeat(40_000)
            )
            .into_bytes(),
            "HTTP/1.1 431",
        ),
    ];
    for (what, request, want) in cases {
        let answer = raw(&topo, request, Duration::from_secs(3));
        assert!(
            answer.starts_with(want),
            "{what}: got {:?}",
            &answer[..answer.len().min(80)]
        );
        assert_eq!(curl(&topo, &[], &www).0, 200, "served after {what}");
    }
    drop(idle);
    assert!(
        agent.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        agent.log()
    );
}

/// The agent's peak resident memory so far (`VmHWM`), in KiB.
fn peak_rss_kib(agent: &Agent) -> u64 {
    let pid = agent.pid().expect("the agent runs");
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading the agent's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_gibibyte_streams_both_ways_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let agent = Agent::start(&topo, &config(&topo, "")).expect("starting the agent");
    assert_eq!(curl(&topo, &[], &format!("http://{VIP}/")).0, 200);
    let before = peak_rss_kib(&agent);

    let started = Instant::now();
    let down = topo
        .client()
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "120",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(format!("http://{VIP}/bytes/{GIB}"))
        .output()
        .expect("running curl");
    let down = String::from_utf8_lossy(&down.stdout).into_owned();
    assert_eq!(down, format!("200 {GIB}"), "download");
    let down_took = started.elapsed();

    let file = topo.run_dir().join("upload");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(GIB))
        .expect("a sparse 1 GiB file");
    let started = Instant::now();
    let up = topo
        .client()
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "120",
            "-w",
            "%{http_code} %{size_upload}",
            "-T",
        ])
        .arg(&file)
        .arg(format!("http://{VIP}/upload"))
        .output()
        .expect("running curl");
    let up = String::from_utf8_lossy(&up.stdout).into_owned();
    assert_eq!(up, format!("200 {GIB}"), "upload");
    let up_took = started.elapsed();

    let after = peak_rss_kib(&agent);
    eprintln!(
        "1 GiB through the proxy: download {down_took:?}, upload {up_took:?}; agent peak RSS \
         {before} KiB before, {after} KiB after"
    );
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "the agent's peak RSS grew from {before} KiB to {after} KiB: bodies are buffered"
    );
    let status = agent.status_json();
    assert!(
        status["http"][0]["bytes_out"].as_u64() >= Some(GIB),
        "{:#}",
        status["http"][0]
    );
    assert!(
        status["http"][0]["bytes_in"].as_u64() >= Some(GIB),
        "{:#}",
        status["http"][0]
    );
}

#[test]
fn hashing_a_header_keeps_each_user_on_one_backend() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let hash = "balance = \"hash\"\nhash_key = \"header:X-User\"";
    let agent = Agent::start(&topo, &config(&topo, hash)).expect("starting the agent");
    let url = format!("http://{VIP}/");
    let mut seen = std::collections::BTreeMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let header = format!("X-User: {user}");
        let first = curl(&topo, &["-H", &header], &url);
        assert_eq!(first.0, 200, "{}", agent.log());
        for _ in 0..3 {
            assert_eq!(curl(&topo, &["-H", &header], &url), first, "{user} moved");
        }
        seen.insert(user, first.1);
    }
    let backends: std::collections::BTreeSet<&String> = seen.values().collect();
    assert_eq!(
        backends.len(),
        2,
        "six users over two backends should reach both: {seen:?}"
    );
}

#[test]
fn a_backend_at_its_maxconn_is_passed_over_and_a_full_pool_queues() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let limited = |i: usize| {
        format!(
            "{{ address = \"{}\", port = 80, maxconn = 1 }}",
            topo.backend_addr(i)
        )
    };
    let text = config(&topo, "").replace(
        &format!(
            "backends = [{{ address = \"{}\", port = 80 }}, {{ address = \"{}\", port = 80 }}]",
            topo.backend_addr(3),
            topo.backend_addr(4)
        ),
        &format!("backends = [{}, {}]", limited(3), limited(4)),
    ) + "\n[http]\ntimeout_queue = \"1s\"\n";
    assert!(text.contains("maxconn = 1"), "{text}");
    let agent = Agent::start(&topo, &text).expect("starting the agent");
    // Two slow downloads hold both backends' only slot.
    let slow = |_| {
        topo.client()
            .command("curl")
            .args(["-s", "-o", "/dev/null", "--limit-rate", "50k"])
            .arg(format!("http://{VIP}/bytes/100000000"))
            .spawn()
            .expect("starting a slow download")
    };
    let mut downloads: Vec<_> = (0..2).map(slow).collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let busy = || -> u64 {
        let status = agent.status_json();
        status["http"][0]["backends"]
            .as_array()
            .map_or(0, |b| b.iter().filter_map(|b| b["active"].as_u64()).sum())
    };
    while busy() != 2 {
        assert!(
            Instant::now() < deadline,
            "the slow downloads did not start"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let (status, _) = curl(&topo, &[], &format!("http://{VIP}/"));
    let waited = started.elapsed();
    assert_eq!(
        status,
        503,
        "a third request while both backends are full: {:#}",
        agent.status_json()["http"][0]
    );
    assert!(
        waited >= Duration::from_millis(900),
        "it waited in the queue: {waited:?}"
    );
    // One slot frees: the next request is served.
    let mut first = downloads.remove(0);
    let _ = first.kill();
    let _ = first.wait();
    thread::sleep(Duration::from_millis(200));
    assert_eq!(curl(&topo, &[], &format!("http://{VIP}/")).0, 200);
    for mut d in downloads {
        let _ = d.kill();
        let _ = d.wait();
    }
    let status = agent.status_json();
    assert_eq!(
        status["http"][0]["errors"]["queue_timeout"], 1,
        "{:#}",
        status["http"][0]
    );
}

#[test]
fn a_stopping_agent_lets_requests_in_flight_finish() {
    require_root();
    let topo = Topology::new(4).expect("building the topology");
    let _servers = topo.start_backends().expect("starting the backends");
    let mut agent = Agent::start(&topo, &config(&topo, "")).expect("starting the agent");
    // About 3 s of download, more than the socket buffers hold.
    let size = 60_000_000;
    let mut download = topo
        .client()
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--limit-rate",
            "20M",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(format!("http://{VIP}/bytes/{size}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the download");
    thread::sleep(Duration::from_millis(700));
    assert!(
        matches!(download.try_wait(), Ok(None)),
        "the download must still be under way when the agent is told to stop"
    );
    let stopping = Instant::now();
    assert_eq!(agent.stop(), Some(0), "the agent's exit status");
    let stopped_after = stopping.elapsed();
    let out = download.wait_with_output().expect("the download ends");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("drain: the agent stopped {stopped_after:?} after SIGTERM; the download: {out}");
    assert_eq!(
        out,
        format!("200 {size}"),
        "the request in flight completes"
    );
}
