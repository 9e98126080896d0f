//! Drives the real `balancer` binary: runs the agent inside the lb namespace, calls the CLI, and writes test configurations.

use crate::netns::Netns;
use crate::topology::{Topology, HTTP_PORT, LB_BACKEND_ADDR, UDP_PORT, VIP};
use crate::util::{exit_code, find_binary, output_with_timeout, terminate, TempDir};
use anyhow::{bail, Context, Result};
use std::fmt::{self, Write as _};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long the agent may take to come up (control socket present and `status` succeeds).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one CLI call may take before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Path of the `balancer` binary: `$BALANCER_BIN`, else next to the running executable
/// (same target directory and profile), else `<workspace>/target/debug/balancer`.
/// Panics with a clear message when none exists.
pub fn balancer_path() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fallback = workspace.join("target").join("debug").join("balancer");
    find_binary("balancer", "BALANCER_BIN", &[fallback]).unwrap_or_else(|e| {
        panic!("cannot find the balancer binary ({e}); build it with `cargo xtask build`")
    })
}

/// What a CLI call printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliOutput {
    /// Exit code (128 + signal number if a signal ended it).
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `balancer --socket SOCKET args...` (the CLI half; from any namespace, the control
/// socket is a filesystem path). Panics if the binary cannot be run or hangs for 15 s.
pub fn balancer_cli(socket: &Path, args: &[&str]) -> CliOutput {
    let bin = balancer_path();
    let mut cmd = Command::new(&bin);
    cmd.arg("--socket").arg(socket).args(args);
    let out = output_with_timeout(&mut cmd, CLI_TIMEOUT)
        .unwrap_or_else(|e| panic!("running the balancer CLI failed: {e:#}"));
    CliOutput {
        status: exit_code(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running agent (`balancer run`) inside a topology's lb namespace.
///
/// Dropping it sends SIGTERM, waits up to 5 s, then SIGKILLs; when the thread is panicking
/// (a failed test) the agent's log is printed to stderr first.
pub struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    log_path: PathBuf,
    config_path: PathBuf,
    // Removed on drop, after the agent is stopped (fields drop after `Drop::drop`).
    dir: TempDir,
}

impl Agent {
    /// Writes `config_toml` to a fresh temporary directory and runs
    /// `ip netns exec <lb ns> balancer --socket <topo.control_socket()> run --config FILE`,
    /// logging stdout and stderr to `agent.log` there. Returns once the control socket
    /// exists and `balancer status` exits 0 (at most 10 s); if the agent exits or does not
    /// come up in time, the error includes its log.
    pub fn start(topo: &Topology, config_toml: &str) -> Result<Agent> {
        Agent::start_with_socket(topo, config_toml, &topo.control_socket())
    }

    /// Like [`Agent::start`] with an explicit control socket path (e.g. for a second agent
    /// in the same topology).
    pub fn start_with_socket(topo: &Topology, config_toml: &str, socket: &Path) -> Result<Agent> {
        Agent::start_in(topo.lb(), config_toml, socket)
    }

    /// Like [`Agent::start_with_socket`] in any namespace `ns` (e.g. one balancer of a
    /// [`crate::HaTopology`]); its temporary directory is named after the namespace.
    pub fn start_in(ns: &Netns, config_toml: &str, socket: &Path) -> Result<Agent> {
        let bin = balancer_path();
        let dir = TempDir::new(&format!("{}-agent", ns.name()))?;
        let config_path = dir.path().join("balancer.toml");
        let log_path = dir.path().join("agent.log");
        std::fs::write(&config_path, config_toml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        if socket.exists() {
            // Left by an earlier agent of this topology that did not clean up.
            let _ = std::fs::remove_file(socket);
        }
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(&bin)
            .arg("--socket")
            .arg(socket)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: Ctrl-C reaches only the test or demo, which stops the
            // agent in order.
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} in {}", bin.display(), ns.name()))?;
        let mut agent = Agent {
            child: Some(child),
            socket: socket.to_path_buf(),
            log_path,
            config_path,
            dir,
        };
        agent.wait_ready()?;
        Ok(agent)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("the control socket never appeared");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "the agent exited during startup ({status}); its log:\n{}",
                        self.log()
                    );
                }
            }
            if self.socket.exists() {
                let out = self.cli(&["status"]);
                if out.success() {
                    return Ok(());
                }
                last = format!("`balancer status` failed: {out}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent did not come up within {START_TIMEOUT:?} ({last}); its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `balancer --socket <sock> args...` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        balancer_cli(&self.socket, args)
    }

    /// Runs the CLI and returns its stdout; a non-zero exit is an error that shows the
    /// command and its whole output.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args);
        if !out.success() {
            bail!("`balancer {}` failed: {out}", args.join(" "));
        }
        Ok(out.stdout)
    }

    /// `balancer status --json`, parsed. Panics (with the output) if it fails.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.success(), "`balancer status --json` failed: {out}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!("`balancer status --json` printed invalid JSON ({e}): {out}")
        })
    }

    /// VIP `name`'s entry in `balancer status --json`. Panics (with the status) if there
    /// is none.
    pub fn vip_status(&self, name: &str) -> serde_json::Value {
        let status = self.status_json();
        status["vips"]
            .as_array()
            .and_then(|vips| vips.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no VIP {name} in {status:#}"))
    }

    /// Checks the "web" VIP of a topology with 2 backends that answer clients themselves
    /// (`forwarding`: "dsr" or "tunnel"): 40 requests through it all answered, by both
    /// backends; a kept-alive connection stays on its backend; the balancer counted every
    /// client packet and no reply.
    ///
    /// # Panics
    /// When any of that is not so.
    pub fn assert_answered_directly(&self, client: &crate::ClientNs, forwarding: &str) {
        let tally = client.http_get_many(Topology::vip_http(), 40, crate::DEFAULT_TIMEOUT);
        assert!(
            tally.failures.is_empty(),
            "through the {forwarding} VIP: {tally}"
        );
        assert_eq!(tally.distinct(), 2, "both backends answer: {tally}");
        let mut kept = client.keepalive(Topology::vip_http()).unwrap();
        let first = kept.get().unwrap();
        for _ in 0..10 {
            assert_eq!(
                kept.get().unwrap(),
                first,
                "a {forwarding} flow keeps its backend"
            );
        }
        let web = self.vip_status("web");
        let counters = &web["counters"];
        assert_eq!(web["forwarding"], forwarding, "{web:#}");
        assert!(
            counters["new_flows"].as_u64().unwrap() >= 41
                && counters["packets"].as_u64().unwrap() > 41 * 3,
            "the balancer sees every client packet: {counters}"
        );
        assert_eq!(
            counters["reply_packets"], 0,
            "the backends' answers do not pass the balancer: {counters}"
        );
    }

    /// The control socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The config file the agent was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The agent's temporary directory (config and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()))
    }

    /// Pid of the agent process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the agent with SIGKILL, as a crash would: it resigns nothing and removes
    /// nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent (SIGTERM, up to 5 s, then SIGKILL) and returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = terminate(child, STOP_GRACE);
        self.child = None;
        status.map(exit_code)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let status = self.stop();
        if thread::panicking() {
            eprintln!(
                "===== balancer agent log ({}, exit {:?}) =====\n{}\n===== end of agent log =====",
                self.log_path.display(),
                status,
                self.log().trim_end()
            );
        }
    }
}

/// The `[agent]` and `[nat]` sections for an agent in `topo`'s lb namespace: XDP on both
/// of its interfaces, the topology's control socket and pin directory, NAT from the
/// backend-side address.
pub fn agent_and_nat(topo: &Topology) -> String {
    let [lbc, lbs] = topo.lb_interfaces();
    format!(
        r#"[agent]
interfaces = ["{lbc}", "{lbs}"]
xdp_mode = "auto"
control_socket = "{socket}"
pin_dir = "{pins}"

[nat]
source_address = "{LB_BACKEND_ADDR}"
"#,
        socket = topo.control_socket().display(),
        pins = topo.pin_dir().display(),
    )
}

/// The standard test configuration: backends 1..=3 of `topo` (fewer if the topology has
/// fewer) in pool "web" (HTTP, port 80) and pool "dns" (UDP, port 5300), VIP "web" on
/// 10.0.100.1:80/tcp and VIP "dns" on 10.0.100.1:5300/udp, both with `scheduler`
/// (`"maglev"` or `"round-robin"`).
pub fn default_config(topo: &Topology, scheduler: &str) -> String {
    let backends: Vec<usize> = (1..=topo.n_backends().min(3)).collect();
    config_for(topo, scheduler, &backends)
}

/// Like [`default_config`] with an explicit list of backend indices (1-based) in both pools.
pub fn config_for(topo: &Topology, scheduler: &str, backends: &[usize]) -> String {
    let addrs: Vec<Ipv4Addr> = backends.iter().map(|&i| topo.backend_addr(i)).collect();
    format!(
        "# Written by balancer-tests for topology {prefix}.\n{head}\n{pools}",
        prefix = topo.prefix(),
        head = agent_and_nat(topo),
        pools = web_and_dns(&addrs, scheduler),
    )
}

/// Pool "web" (`backends` at port 80) and pool "dns" (the same addresses at port 5300), VIP
/// "web" on 10.0.100.1:80/tcp and VIP "dns" on 10.0.100.1:5300/udp, both with `scheduler`:
/// the configuration's `[[pool]]` and `[[vip]]` tables.
pub fn web_and_dns(backends: &[Ipv4Addr], scheduler: &str) -> String {
    web_and_dns_on(VIP, backends, scheduler)
}

/// Like [`web_and_dns`] with the VIPs on `vip` (e.g. [`crate::HA_VIP`]).
pub fn web_and_dns_on(vip: Ipv4Addr, backends: &[Ipv4Addr], scheduler: &str) -> String {
    let pool = |port: u16| -> String {
        backends.iter().fold(String::new(), |mut pool, addr| {
            let _ = writeln!(
                pool,
                "  {{ address = \"{addr}\", port = {port}, weight = 1 }},"
            );
            pool
        })
    };
    format!(
        r#"[[pool]]
name = "web"
backends = [
{web}]

[[pool]]
name = "dns"
backends = [
{dns}]

[[vip]]
name = "web"
address = "{vip}"
port = {HTTP_PORT}
protocol = "tcp"
scheduler = "{scheduler}"
pool = "web"

[[vip]]
name = "dns"
address = "{vip}"
port = {UDP_PORT}
protocol = "udp"
scheduler = "{scheduler}"
pool = "dns"
"#,
        web = pool(HTTP_PORT),
        dns = pool(UDP_PORT),
    )
}
