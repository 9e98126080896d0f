//! The compared paths from the client to the backends (direct, the `XDP_PASS` control, the
//! agent in driver and generic mode, nftables DNAT, HAProxy), each set up and torn down
//! around its runs, and the backends' servers (nginx and testsrv's UDP echo).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use balancer_tests::{
    default_config, http_request, netns::run_in_netns_path, testsrv_path, udp_request,
    util::terminate, Agent, Topology, HTTP_PORT, UDP_PORT, VIP,
};

use super::{Peer, GENERIC_SNAT_PORTS};
use crate::xdp;

/// The size of the large response each nginx serves at `/bytes/<size>`.
pub(super) const BIG_BODY: usize = 100 * 1024;

/// Table name of the nftables comparison in the lb namespace.
const NFT_TABLE: &str = "blt_bench";

/// Child processes (in their own process group), terminated on drop.
#[derive(Default)]
pub(super) struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, what: &str, mut cmd: Command, log: &Path) -> Result<()> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Own process group: a Ctrl-C reaches only the bench, which stops these in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.children.push((what.to_string(), child));
        Ok(())
    }

    /// Fails if a process already exited; its log says why.
    fn check_running(&mut self, log_dir: &Path) -> Result<()> {
        for (what, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{what} exited ({status}); logs in {}", log_dir.display());
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            terminate(child, Duration::from_secs(2));
        }
    }
}

fn nginx_conf(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        r#"# Written by the balancer bench: backend {name}.
worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen {HTTP_PORT} backlog=8192;
        location / {{
            default_type text/plain;
            return 200 "{name}";
        }}
        # The large responses of the HTTP proxy comparison (`GET /bytes/N`, as testsrv).
        location /bytes/ {{
            default_type application/octet-stream;
            root {d}/www;
        }}
    }}
}}
"#
    )
}

/// nginx (HTTP) and testsrv (UDP echo) in every backend namespace; waits until each answers.
pub(super) fn start_backends(topo: &Topology, dir: &Path) -> Result<Procs> {
    let mut procs = Procs::default();
    let testsrv = testsrv_path();
    for i in 1..=topo.n_backends() {
        let ns = topo.backend(i);
        let name = topo.backend_name(i);
        let bdir = dir.join(&name);
        std::fs::create_dir_all(&bdir)?;
        let conf = bdir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&bdir, &name))?;
        let bytes = bdir.join("www/bytes");
        std::fs::create_dir_all(&bytes)?;
        std::fs::write(bytes.join(BIG_BODY.to_string()), vec![b'x'; BIG_BODY])?;
        let mut nginx = ns.command("nginx");
        nginx
            .arg("-p")
            .arg(&bdir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(bdir.join("error.log"));
        procs.spawn(&format!("nginx {name}"), nginx, &bdir.join("nginx.out"))?;
        let mut udp = ns.command(&testsrv.to_string_lossy());
        udp.args(["--name", &name, "--udp", &format!("0.0.0.0:{UDP_PORT}")]);
        procs.spawn(&format!("testsrv {name}"), udp, &bdir.join("testsrv.out"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 1..=topo.n_backends() {
        let (addr, name) = (topo.backend_addr(i), topo.backend_name(i));
        loop {
            procs.check_running(dir)?;
            let probe = run_in_netns_path(&topo.lb().path(), || -> Result<()> {
                let t = Duration::from_millis(500);
                let resp = http_request(SocketAddrV4::new(addr, HTTP_PORT), t)?;
                ensure!(
                    resp.body == name,
                    "HTTP answer {:?} is not {name}",
                    resp.body
                );
                let udp = udp_request(SocketAddrV4::new(addr, UDP_PORT), b"ready?", t)?;
                ensure!(udp == name, "UDP answer {udp:?} is not {name}");
                Ok(())
            })?;
            match probe {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context(format!("backend {name} never answered"))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(procs)
}

/// Whatever a peer set up; dropping it tears it down.
pub(super) enum Setup {
    Nothing,
    Agent(Box<Agent>),
    XdpPass {
        _links: Vec<xdp::XdpLink>,
        _prog: xdp::EmptyXdp,
    },
    Nft {
        _guard: NftGuard,
    },
    Haproxy {
        _guard: HaproxyGuard,
    },
}

pub(super) struct NftGuard {
    lb: String,
}

impl Drop for NftGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.lb, "nft", "delete", "table", "ip", NFT_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
    }
}

pub(super) struct HaproxyGuard {
    lb: String,
    procs: Procs,
}

impl HaproxyGuard {
    /// HAProxy's process id (`-db`: one process, no master).
    pub(super) fn pid(&self) -> Option<u32> {
        self.procs.children.first().map(|(_, c)| c.id())
    }
}

/// Runs HAProxy with configuration `conf` in the lb namespace, the VIP on its `lo`.
pub(super) fn start_haproxy(topo: &Topology, dir: &Path, conf: &str) -> Result<HaproxyGuard> {
    let lb = topo.lb();
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, conf)?;
    let mut guard = HaproxyGuard {
        lb: lb.name().to_string(),
        procs: Procs::default(),
    };
    lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    let mut cmd = lb.command("haproxy");
    cmd.arg("-f").arg(&file).arg("-db");
    guard
        .procs
        .spawn("haproxy", cmd, &dir.join("haproxy.log"))?;
    Ok(guard)
}

impl Drop for HaproxyGuard {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs.children {
            terminate(child, Duration::from_secs(2));
        }
        let _ = Command::new("ip")
            .args([
                "-n",
                &self.lb,
                "addr",
                "del",
                &format!("{VIP}/32"),
                "dev",
                "lo",
            ])
            .stderr(Stdio::null())
            .status();
    }
}

fn backend_list(topo: &Topology, sep: &str, f: impl Fn(usize, Ipv4Addr) -> String) -> String {
    (1..=topo.n_backends())
        .map(|i| f(i, topo.backend_addr(i)))
        .collect::<Vec<_>>()
        .join(sep)
}

fn nft_rules(topo: &Topology) -> String {
    let n = topo.n_backends();
    let map = backend_list(topo, ", ", |i, a| format!("{} : {a}", i - 1));
    format!(
        r#"# kube-proxy style kernel L4 balancing: DNAT to a backend chosen by a counter, then
# masquerade towards the backends so the replies come back through this namespace.
table ip {NFT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} tcp dport {HTTP_PORT} dnat to numgen inc mod {n} map {{ {map} }}
        ip daddr {VIP} udp dport {UDP_PORT} dnat to numgen inc mod {n} map {{ {map} }}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat oifname "lbs0" masquerade
    }}
}}
"#
    )
}

fn haproxy_conf(topo: &Topology) -> String {
    let servers = backend_list(topo, "\n", |i, a| {
        format!("    server b{i} {a}:{HTTP_PORT}")
    });
    format!(
        r"# Written by the balancer bench.
global
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind {VIP}:{HTTP_PORT}
    default_backend web

backend web
    balance roundrobin
{servers}
"
    )
}

pub(super) fn setup(topo: &Topology, peer: Peer, dir: &Path) -> Result<Setup> {
    let lb = topo.lb();
    Ok(match peer {
        Peer::Direct => Setup::Nothing,
        Peer::DirectXdpPass => {
            let prog = xdp::EmptyXdp::load()?;
            let fd = prog.raw_fd();
            let links = lb.in_thread(|| -> Result<Vec<xdp::XdpLink>> {
                topo.lb_interfaces()
                    .iter()
                    .map(|dev| xdp::attach_xdp(fd, dev))
                    .collect()
            })??;
            Setup::XdpPass {
                _links: links,
                _prog: prog,
            }
        }
        Peer::Balancer => Setup::Agent(Box::new(Agent::start(topo, &agent_config(topo)?)?)),
        Peer::BalancerGeneric => {
            let config = agent_config(topo)?;
            // Its own SNAT ports: it runs right after the driver-mode agent, whose
            // connections' tuples still sit in TIME-WAIT on the backends (60 s). A new
            // agent would hand those ports to other client connections, and the backends
            // reject such SYNs by PAWS (each one resent after a second).
            let generic = config
                .replace("xdp_mode = \"auto\"", "xdp_mode = \"skb\"")
                .replace(
                    "[nat]\n",
                    &format!("[nat]\nport_range = \"{GENERIC_SNAT_PORTS}\"\n"),
                );
            ensure!(
                generic.contains("xdp_mode = \"skb\"") && generic.contains("port_range"),
                "the test configuration has no `xdp_mode = \"auto\"` or `[nat]` to change"
            );
            Setup::Agent(Box::new(Agent::start(topo, &generic)?))
        }
        Peer::Nftables => {
            let file = dir.join("nft.rules");
            std::fs::write(&file, nft_rules(topo))?;
            let guard = NftGuard {
                lb: lb.name().to_string(),
            };
            lb.run(&["nft", "-f", &file.to_string_lossy()])
                .context("loading the nftables rules")?;
            Setup::Nft { _guard: guard }
        }
        Peer::Haproxy => Setup::Haproxy {
            _guard: start_haproxy(topo, dir, &haproxy_conf(topo))?,
        },
    })
}

/// Waits until one HTTP request (and, when `udp`, one UDP request) goes through.
pub(super) fn wait_path(
    topo: &Topology,
    http: SocketAddrV4,
    udp: Option<SocketAddrV4>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = topo.client().in_thread(|| -> Result<()> {
            let t = Duration::from_millis(500);
            let resp = http_request(http, t)?;
            ensure!(resp.status == 200, "HTTP status {}", resp.status);
            if let Some(udp) = udp {
                udp_request(udp, b"ready?", t)?;
            }
            Ok(())
        })?;
        match probe {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context("the path never carried a request")
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The agent's configuration in the bench: [`default_config`] with nothing pinned, so
/// that every run starts from empty flow tables (a pinned table would hand the previous
/// run's flows, of another path or XDP mode, to the next agent).
pub(super) fn agent_config(topo: &Topology) -> Result<String> {
    unpinned(topo, &default_config(topo, "maglev"))
}

/// `config` (of an agent in `topo`) with nothing pinned: see [`agent_config`].
pub(super) fn unpinned(topo: &Topology, config: &str) -> Result<String> {
    let pins = format!("pin_dir = \"{}\"", topo.pin_dir().display());
    ensure!(
        config.contains(&pins),
        "the test configuration has no `{pins}` to change"
    );
    Ok(config.replace(&pins, "pin_dir = \"\""))
}

/// A wrk script that points thread `i` at backend `i % n` (for "direct").
pub(super) fn direct_script(topo: &Topology) -> String {
    let hosts = backend_list(topo, ", ", |_, a| format!("\"{a}\""));
    format!(
        r#"-- Written by the balancer bench: thread i talks to backend i % n.
local hosts = {{ {hosts} }}
local n = 0
function setup(thread)
    thread.addr = wrk.lookup(hosts[(n % #hosts) + 1], "{HTTP_PORT}")[1]
    n = n + 1
end
"#
    )
}
