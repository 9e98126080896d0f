//! The agent's HTTP proxy (an HTTP-mode VIP) beside HAProxy in `mode http` with the same
//! rules (the seeds' static/app split), in the end-to-end topology and against the same
//! nginx backends: requests/s and latency with keep-alive and a connection per request,
//! small and 100 KiB responses, and the memory each idle keep-alive connection costs.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use balancer_tests::agent::agent_and_nat;
use balancer_tests::{util::TempDir, Agent, Topology, HTTP_PORT, VIP};

use super::load::{wrk, WrkRun};
use super::observe::{namespace_inodes, start_clean};
use super::paths::{start_backends, start_haproxy, unpinned, wait_path, HaproxyGuard, BIG_BODY};
use super::{topology, HttpResult, Params};
use crate::{perf, say, Stop};

/// Idle keep-alive connections opened to each proxy for its memory per connection.
pub const IDLE_CONNECTIONS: usize = 2000;

/// The agent's tokio runtime has a fixed number of worker threads (`balancer run` sets it).
pub const AGENT_THREADS: usize = 2;

/// A compared HTTP proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// The agent's proxy.
    Balancer,
    /// HAProxy with `nbthread` threads.
    Haproxy(usize),
}

impl Proxy {
    pub const ALL: [Proxy; 3] = [Proxy::Balancer, Proxy::Haproxy(1), Proxy::Haproxy(2)];
    /// The proxy the targets compare with: HAProxy with as many threads as the agent.
    pub const REFERENCE: Proxy = Proxy::Haproxy(AGENT_THREADS);

    pub fn name(self) -> String {
        match self {
            Proxy::Balancer => format!("balancer ({AGENT_THREADS} threads)"),
            Proxy::Haproxy(1) => "HAProxy (1 thread)".into(),
            Proxy::Haproxy(n) => format!("HAProxy ({n} threads)"),
        }
    }
}

/// One load: keep-alive or a connection per request, a small or a 100 KiB response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub close: bool,
    pub big: bool,
}

impl Case {
    pub const ALL: [Case; 4] = [
        Case {
            close: false,
            big: false,
        },
        Case {
            close: true,
            big: false,
        },
        Case {
            close: false,
            big: true,
        },
        Case {
            close: true,
            big: true,
        },
    ];

    pub fn name(self) -> String {
        format!(
            "{}, {}",
            if self.close {
                "conn/request"
            } else {
                "keep-alive"
            },
            if self.big {
                format!("{} KiB", BIG_BODY / 1024)
            } else {
                "small".to_string()
            }
        )
    }

    /// The request's path: no rule matches it, so it goes to the default pool ("app").
    fn path(self) -> String {
        if self.big {
            format!("/bytes/{BIG_BODY}")
        } else {
            "/".into()
        }
    }
}

/// The proxy's resident memory around [`IDLE_CONNECTIONS`] idle keep-alive connections.
#[derive(Clone, Copy, Debug)]
pub struct IdleMemory {
    pub connections: usize,
    /// `VmRSS` in bytes before the connections were opened and while they were open.
    pub rss_before: u64,
    pub rss_after: u64,
    /// Established connections from the lb to the backends while they were open.
    pub upstream: usize,
}

impl IdleMemory {
    pub fn per_connection(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.connections as f64
    }
}

/// One proxy in one round.
#[derive(Clone, Debug)]
pub struct L7Run {
    pub proxy: Proxy,
    pub round: usize,
    pub http: Vec<(Case, HttpResult)>,
    pub idle: Option<IdleMemory>,
    pub errors: Vec<String>,
    /// The agent's counters of its HTTP VIP after the runs (balancer only).
    pub counters: Option<String>,
    /// `perf record -a` during the first round's small keep-alive run.
    pub profile: Option<Result<Vec<perf::Sample>, String>>,
}

/// Everything the HTTP proxy comparison measured.
#[derive(Clone, Debug)]
pub struct L7 {
    pub params: Params,
    pub runs: Vec<L7Run>,
}

impl L7 {
    /// Every round's `f` of `proxy` under `case`.
    pub fn values(&self, proxy: Proxy, case: Case, f: impl Fn(&HttpResult) -> f64) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.proxy == proxy)
            .flat_map(|r| r.http.iter().filter(|(c, _)| *c == case).map(|(_, h)| f(h)))
            .collect()
    }

    /// Every round's bytes per idle connection of `proxy`.
    pub fn idle_bytes(&self, proxy: Proxy) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.proxy == proxy)
            .filter_map(|r| r.idle.map(|m| m.per_connection()))
            .collect()
    }
}

/// The agent with one HTTP VIP: the seeds' rules, "static" = backend 1, "app" = the others.
fn agent_config(topo: &Topology) -> Result<String> {
    let backend = |i: usize| {
        format!(
            "{{ address = \"{}\", port = {HTTP_PORT} }}",
            topo.backend_addr(i)
        )
    };
    let app: Vec<String> = (2..=topo.n_backends()).map(backend).collect();
    let config = format!(
        r#"{agent}
[[pool]]
name = "static"
backends = [{static_}]

[[pool]]
name = "app"
backends = [{app}]

[[vip]]
name = "www"
address = "{VIP}"
port = {HTTP_PORT}
protocol = "tcp"
mode = "http"
pool = "app"

[[vip.rule]]
name = "static"
pool = "static"
path_prefix = ["/static/", "/images/"]

[[vip.rule]]
name = "static-ext"
pool = "static"
path_suffix = [".css", ".js"]
"#,
        agent = agent_and_nat(topo),
        static_ = backend(1),
        app = app.join(", "),
    );
    unpinned(topo, &config)
}

/// HAProxy in `mode http` with the same rules and pools, `nbthread` threads. `option
/// forwardfor`: the agent adds X-Forwarded-For (and -Proto, -Host) by default.
fn haproxy_conf(topo: &Topology, nbthread: usize) -> String {
    let server = |i: usize| format!("    server b{i} {}:{HTTP_PORT}", topo.backend_addr(i));
    let app: Vec<String> = (2..=topo.n_backends()).map(server).collect();
    format!(
        r"# Written by the balancer bench: the seeds' HTTP rules.
global
    # Two descriptors per connection: 2 x maxconn must fit under the hard RLIMIT_NOFILE.
    maxconn 8000
    nbthread {nbthread}

defaults
    mode http
    maxconn 8000
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend www
    bind {VIP}:{HTTP_PORT}
    acl url_static path_beg /static /images
    acl url_static path_end .css .js
    use_backend static if url_static
    default_backend app

backend static
    balance roundrobin
{static_}

backend app
    balance roundrobin
{app}
",
        static_ = server(1),
        app = app.join("\n"),
    )
}

/// A running proxy; dropping it stops it.
enum Running {
    Agent(Box<Agent>),
    Haproxy(HaproxyGuard),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Agent(a) => a.pid(),
            Running::Haproxy(h) => h.pid(),
        }
    }
}

fn start(topo: &Topology, proxy: Proxy, dir: &Path) -> Result<Running> {
    Ok(match proxy {
        Proxy::Balancer => Running::Agent(Box::new(Agent::start(topo, &agent_config(topo)?)?)),
        Proxy::Haproxy(n) => Running::Haproxy(start_haproxy(topo, dir, &haproxy_conf(topo, n))?),
    })
}

/// `VmRSS` of process `pid`, in bytes.
fn rss(pid: u32) -> Result<u64> {
    Ok(balancer_tests::util::rss_kib(pid)? * 1024)
}

/// Lets this process hold `n` more sockets (the soft `RLIMIT_NOFILE` up to the hard one).
fn allow_files(n: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    let want = (n + 1024).min(limit.rlim_max);
    if limit.rlim_cur < want {
        limit.rlim_cur = want;
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens `n` connections to `addr`, sends one request on each and reads its answer, so
/// that each is an idle keep-alive connection the proxy has served once.
fn open_idle(addr: SocketAddrV4, n: usize) -> Result<Vec<TcpStream>> {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
            .with_context(|| format!("idle connection {i}"))?;
        s.write_all(request.as_bytes())?;
        conns.push(s);
    }
    let mut buf = [0u8; 4096];
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let got = s
            .read(&mut buf)
            .with_context(|| format!("reading the answer on idle connection {i}"))?;
        ensure!(
            buf[..got].starts_with(b"HTTP/1.1 200"),
            "idle connection {i} got {:?}",
            String::from_utf8_lossy(&buf[..got.min(40)])
        );
    }
    Ok(conns)
}

fn idle_memory(topo: &Topology, running: &Running) -> Result<IdleMemory> {
    let pid = running.pid().context("the proxy has no process id")?;
    allow_files(IDLE_CONNECTIONS as u64)?;
    let rss_before = rss(pid)?;
    let conns = topo
        .client()
        .in_thread(|| open_idle(Topology::vip_http(), IDLE_CONNECTIONS))??;
    // Whatever the proxy does after an answer (pooling the upstream connection, timers).
    thread::sleep(Duration::from_millis(500));
    let rss_after = rss(pid)?;
    let upstream = topo
        .lb()
        .run(&["ss", "-Htn", "state", "established", "dst", "10.0.2.0/24"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    drop(conns);
    Ok(IdleMemory {
        connections: IDLE_CONNECTIONS,
        rss_before,
        rss_after,
        upstream,
    })
}

fn run_proxy(
    topo: &Topology,
    proxy: Proxy,
    round: usize,
    p: &Params,
    dir: &Path,
    stop: &Stop,
) -> L7Run {
    let mut run = L7Run {
        proxy,
        round,
        http: Vec::new(),
        idle: None,
        errors: Vec::new(),
        counters: None,
        profile: None,
    };
    let running = match start(topo, proxy, dir).and_then(|r| {
        wait_path(topo, Topology::vip_http(), None)?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            let log = match proxy {
                Proxy::Balancer => String::new(),
                Proxy::Haproxy(_) => std::fs::read_to_string(dir.join("haproxy.log"))
                    .map(|l| format!(" (haproxy log: {})", l.trim()))
                    .unwrap_or_default(),
            };
            run.errors.push(format!("set-up failed: {e:#}{log}"));
            return run;
        }
    };
    let name = proxy.name();
    say(&format!(
        "  {name} round {}: idle connections...",
        round + 1
    ));
    match idle_memory(topo, &running) {
        Ok(m) => run.idle = Some(m),
        Err(e) => run.errors.push(format!("idle connections: {e:#}")),
    }
    let ours = namespace_inodes(topo);
    for case in Case::ALL {
        if stop.stopped() {
            break;
        }
        say(&format!(
            "  {name} round {}: wrk {}...",
            round + 1,
            case.name()
        ));
        start_clean(topo, &mut run.errors);
        let profiled = round == 0 && case == Case::ALL[0] && proxy != Proxy::Haproxy(1);
        let recording = match p.profile_secs {
            Some(secs) if profiled && perf::available() => {
                let secs = secs.min(p.http_duration.as_secs().saturating_sub(2)).max(1);
                let tag = format!(
                    "l7-{}",
                    if proxy == Proxy::Balancer {
                        "balancer"
                    } else {
                        "haproxy"
                    }
                );
                Some(perf::record(perf::Scope::System, secs, dir, &tag))
            }
            _ => None,
        };
        let result = wrk(&WrkRun {
            client: topo.client(),
            ours: ours.clone(),
            url: format!("http://{VIP}{}", case.path()),
            script: None,
            close: case.close,
            threads: p.wrk_threads,
            connections: p.wrk_connections,
            duration: p.http_duration,
        });
        if let Some(rec) = recording {
            run.profile = Some(
                rec.and_then(|r| r.finish(400, true))
                    .map_err(|e| format!("{e:#}")),
            );
        }
        match result {
            Ok(h) => run.http.push((case, h)),
            Err(e) => run.errors.push(format!("{}: {e:#}", case.name())),
        }
    }
    if let Running::Agent(agent) = &running {
        let status = agent.status_json();
        let vip = &status["http"][0];
        run.counters = Some(format!(
            "requests {}, responses {}, errors {}",
            vip["requests"], vip["responses"], vip["errors"]
        ));
    }
    drop(running);
    run
}

/// Builds the topology and runs every proxy `rounds` times, interleaved.
pub fn run(p: &Params, stop: &Stop) -> Result<L7> {
    let topo = topology()?;
    let dir = TempDir::new(&format!("{}-l7", topo.prefix()))?;
    say("HTTP proxies: starting nginx on the backends");
    let backends = start_backends(&topo, dir.path())?;
    let mut runs = Vec::new();
    'rounds: for round in 0..p.rounds {
        for proxy in Proxy::ALL {
            if stop.stopped() {
                break 'rounds;
            }
            let run = run_proxy(&topo, proxy, round, p, dir.path(), stop);
            for e in &run.errors {
                say(&format!("  {} round {}: {e}", proxy.name(), round + 1));
            }
            runs.push(run);
        }
    }
    drop(backends);
    Ok(L7 {
        params: p.clone(),
        runs,
    })
}
