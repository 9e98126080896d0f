//! CPU cost of the agent's health checks: the real agent checks 1000 TCP backends at a 1 s
//! interval, and the bench reads how much CPU the agent (and its core) spent on it.
//!
//! The backends stand for other hosts: one listener in backend namespace `b1` accepts for
//! all 1000 addresses (`ip route add local 10.0.8.0/22 dev lo` there), reached from the lb
//! namespace over a veth pair of its own (`lbh0` - `hosts0`, no bridge: the "wire" is one
//! veth hop). `b1`'s received packets are steered to CPU 1 (RPS) and the listener is pinned
//! there, while the agent is pinned to CPU 0 and the packets the agent receives are steered
//! to CPU 0. So CPU 0 does what the balancer's host would do (the agent, its system calls,
//! its side of each handshake, the transmit up to the veth, whose hand-over to the other
//! CPU stands for a NIC's doorbell) and CPU 1 what the backends' hosts would do. Without
//! the steering, veth delivers in the sender's context and the backends' half of every
//! handshake would be billed to the agent (the loopback measurement of
//! `health_cpu_1000_tcp_backends` is such an upper bound).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use balancer_tests::{agent::agent_and_nat, Agent, Topology, HTTP_PORT, VIP};

use super::{pin, Stop};

/// The backends' addresses: 10.0.8.1 onwards, inside 10.0.8.0/22.
const BACKEND_NET: &str = "10.0.8.0/22";
/// The direct link between the lb namespace and the backends' namespace.
const LINK_LB: (&str, &str) = ("lbh0", "10.0.12.1/30");
const LINK_HOSTS: (&str, &str) = ("hosts0", "10.0.12.2/30");
const LINK_HOSTS_ADDR: &str = "10.0.12.2";
const FIRST_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 8, 1);
/// The agent's CPU and the backends' CPU.
const AGENT_CPU: usize = 0;
const BACKEND_CPU: usize = 1;

/// How the measurement is made.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub backends: usize,
    /// Length of the measured window (and of the idle baseline before it).
    pub window: Duration,
}

/// What the agent spent on health checks.
#[derive(Clone, Debug)]
pub struct HealthCpu {
    pub backends: usize,
    pub interval_secs: f64,
    pub window_secs: f64,
    /// TCP segments the backends sent per second in the window: one SYN-ACK per check (a
    /// check is a SYN, the SYN-ACK and the checking host's reset: the backends accept
    /// nothing).
    pub checks_per_sec: f64,
    /// Backends up with a successful last check at the end.
    pub up: usize,
    /// The agent process's user + system time, in % of one core.
    pub agent_pct: f64,
    pub agent_user_pct: f64,
    pub agent_sys_pct: f64,
    /// Busy time of the agent's CPU (wall time not idle: everything that ran on it, in any
    /// context) in the window, and in a window of the same length before the agent started.
    pub cpu_busy_pct: f64,
    pub cpu_idle_busy_pct: f64,
}

impl HealthCpu {
    /// The agent's CPU's busy time beyond its idle baseline: the agent plus the kernel
    /// work of its packets, whichever context ran it.
    pub fn cpu_net_pct(&self) -> f64 {
        (self.cpu_busy_pct - self.cpu_idle_busy_pct).max(0.0)
    }
}

/// Pins every thread of process `pid`.
fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    let dir = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let tid: libc::pid_t = task?
            .file_name()
            .to_string_lossy()
            .parse()
            .context("a task id")?;
        pin(tid, cpu)?;
    }
    Ok(())
}

/// Idle + iowait time of one CPU from /proc/stat, in clock ticks. Under `NO_HZ` the kernel
/// measures idle time exactly (the busy fields are only sampled at each tick, which
/// check batches on a grid of ticks can alias with), so busy time is taken as wall time
/// minus this.
fn cpu_idle_ticks(cpu: usize) -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} line in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    ensure!(f.len() >= 5, "short {name} line in /proc/stat: {line}");
    Ok(f[3] + f[4])
}

/// Measures how busy one CPU is while it lasts.
struct CpuBusy {
    cpu: usize,
    idle: u64,
    started: Instant,
}

impl CpuBusy {
    fn start(cpu: usize) -> Result<CpuBusy> {
        Ok(CpuBusy {
            cpu,
            idle: cpu_idle_ticks(cpu)?,
            started: Instant::now(),
        })
    }

    /// Busy % of the CPU since `start` (wall time not spent idle).
    fn percent(&self) -> Result<f64> {
        let idle = cpu_idle_ticks(self.cpu)? - self.idle;
        let wall = self.started.elapsed().as_secs_f64() * ticks_per_sec();
        Ok((100.0 * (1.0 - idle as f64 / wall)).clamp(0.0, 100.0))
    }
}

/// (user, system) jiffies of process `pid`.
pub(crate) fn process_jiffies(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}: {stat}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    Ok((num(11)?, num(12)?))
}

pub(crate) fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Busy % of `cpu` over `window`.
fn cpu_busy_over(cpu: usize, window: Duration) -> Result<f64> {
    let busy = CpuBusy::start(cpu)?;
    thread::sleep(window);
    busy.percent()
}

/// The listener standing for all backends: a thread inside `ns`, pinned to the backends'
/// CPU, that accepts (and drops) whatever reaches its queue.
struct Backends {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    ns_path: std::path::PathBuf,
}

impl Backends {
    fn start(topo: &Topology) -> Result<Backends> {
        let ns = topo.backend(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns_path = ns.path();
        let (quit, path) = (Arc::clone(&stop), ns_path.clone());
        let thread = thread::spawn(move || {
            let setup = || -> Result<TcpListener> {
                balancer_tests::netns::enter_netns_path(&path)?;
                pin(0, BACKEND_CPU)?;
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, HTTP_PORT))
                    .context("binding the backends' listener to 0.0.0.0:80")
            };
            let listener = match setup() {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for _conn in listener.incoming() {
                if quit.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        ready_rx
            .recv()
            .context("the backends' listener thread died")??;
        Ok(Backends {
            stop,
            thread: Some(thread),
            ns_path,
        })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with one last connection from inside the namespace.
        let _ = balancer_tests::netns::run_in_netns_path(&self.ns_path, || {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(FIRST_BACKEND, HTTP_PORT).into(),
                Duration::from_secs(1),
            )
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_BACKEND) + i as u32)
}

fn config(topo: &Topology, backends: usize) -> String {
    let list = (0..backends).fold(String::new(), |mut list, i| {
        let _ = writeln!(
            list,
            "  {{ address = \"{}\", port = {HTTP_PORT} }},",
            backend_addr(i)
        );
        list
    });
    format!(
        r#"{head}
[[pool]]
name = "checked"
check = {{ type = "tcp", interval = "1s", timeout = "1s" }}
backends = [
{list}]

[[vip]]
name = "checked"
address = "{VIP}"
port = {HTTP_PORT}
protocol = "tcp"
scheduler = "maglev"
pool = "checked"
"#,
        head = agent_and_nat(topo),
    )
}

/// `Tcp: OutSegs` of namespace `ns` (/proc/net/snmp as seen inside it).
fn tcp_out_segs(ns: &balancer_tests::netns::Netns) -> Result<u64> {
    let snmp = ns.run(&["cat", "/proc/net/snmp"])?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in /proc/net/snmp of {}", ns.name());
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no Tcp OutSegs in /proc/net/snmp of {}", ns.name()))
}

/// Writes an RPS CPU mask for `dev` in namespace `ns` (through `ip netns exec`, whose
/// /sys shows that namespace's devices).
fn steer(ns: &balancer_tests::netns::Netns, dev: &str, cpu: usize) -> Result<()> {
    let mask = format!("{:x}", 1u64 << cpu);
    ns.run(&[
        "sh",
        "-c",
        &format!("echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"),
    ])
    .with_context(|| format!("steering {dev} in {} to CPU {cpu}", ns.name()))?;
    Ok(())
}

/// Backends up with a successful last check, from `balancer status --json`.
fn up_and_ok(agent: &Agent) -> usize {
    agent.status_json()["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["backends"].as_array().into_iter().flatten())
        .filter(|b| b["health"] == "up" && b["last_check"]["ok"] == true)
        .count()
}

/// Runs the agent with `plan.backends` TCP-checked backends and measures its CPU.
pub fn measure(plan: Plan, stop: &Stop) -> Result<HealthCpu> {
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    ensure!(
        cpus >= 2,
        "needs 2 CPUs (one for the agent, one for the backends), this machine has {cpus}"
    );
    ensure!(
        plan.backends <= 1000,
        "at most 1000 backends fit {BACKEND_NET}"
    );
    let topo = Topology::new(1)?;
    let (lb, b1) = (topo.lb(), topo.backend(1));
    lb.ip(&[
        "link",
        "add",
        LINK_LB.0,
        "type",
        "veth",
        "peer",
        "name",
        LINK_HOSTS.0,
        "netns",
        b1.name(),
    ])?;
    lb.ip(&["addr", "add", LINK_LB.1, "dev", LINK_LB.0])?;
    b1.ip(&["addr", "add", LINK_HOSTS.1, "dev", LINK_HOSTS.0])?;
    lb.ip(&["link", "set", LINK_LB.0, "up"])?;
    b1.ip(&["link", "set", LINK_HOSTS.0, "up"])?;
    b1.ip(&["route", "add", "local", BACKEND_NET, "dev", "lo"])?;
    lb.ip(&["route", "add", BACKEND_NET, "via", LINK_HOSTS_ADDR])?;
    steer(b1, LINK_HOSTS.0, BACKEND_CPU)?;
    steer(lb, LINK_LB.0, AGENT_CPU)?;
    let _listener = Backends::start(&topo)?;

    stop.check()?;
    let idle = cpu_busy_over(AGENT_CPU, plan.window)?;

    let agent = Agent::start(&topo, &config(&topo, plan.backends))?;
    let pid = agent.pid().context("the agent has no pid")?;
    pin_process(pid, AGENT_CPU)?;
    // Every backend is checked once within the first interval; wait two.
    let warm = Instant::now() + Duration::from_secs(2);
    while Instant::now() < warm {
        stop.check()?;
        thread::sleep(Duration::from_millis(100));
    }
    // Threads the runtime may have started since are pinned too.
    pin_process(pid, AGENT_CPU)?;

    let started = Instant::now();
    let segs0 = tcp_out_segs(b1)?;
    let (u0, s0) = process_jiffies(pid)?;
    let busy = CpuBusy::start(AGENT_CPU)?;
    thread::sleep(plan.window);
    let cpu_busy_pct = busy.percent()?;
    let (u1, s1) = process_jiffies(pid)?;
    let segs1 = tcp_out_segs(b1)?;
    let secs = started.elapsed().as_secs_f64();
    let up = up_and_ok(&agent);

    let hz = ticks_per_sec();
    let pct = |ticks: u64| 100.0 * ticks as f64 / hz / secs;
    Ok(HealthCpu {
        backends: plan.backends,
        interval_secs: 1.0,
        window_secs: secs,
        checks_per_sec: segs1.saturating_sub(segs0) as f64 / secs,
        up,
        agent_pct: pct((u1 - u0) + (s1 - s0)),
        agent_user_pct: pct(u1 - u0),
        agent_sys_pct: pct(s1 - s0),
        cpu_busy_pct,
        cpu_idle_busy_pct: idle,
    })
}
