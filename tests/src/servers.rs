//! Test backends: one `testsrv` (HTTP on :80, UDP on :5300) per backend namespace, started, stopped and killed on drop.

use crate::client::{http_request, udp_request};
use crate::netns::{run_in_netns_path, Netns};
use crate::topology::{Topology, HTTP_PORT, UDP_PORT};
use crate::util::{find_binary, terminate};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a started server may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Path of the `testsrv` binary: `$BALANCER_TESTSRV_BIN`, else next to the running
/// executable (`target/<profile>/testsrv` for tests in `target/<profile>/deps/` and for the
/// demo). Panics with a clear message when none exists.
pub fn testsrv_path() -> PathBuf {
    find_binary("testsrv", "BALANCER_TESTSRV_BIN", &[]).unwrap_or_else(|e| {
        panic!(
            "cannot find the testsrv binary ({e}); build it with `cargo build -p balancer-tests`"
        )
    })
}

#[derive(Debug)]
struct Backend {
    ns_name: String,
    name: String,
    addr: Ipv4Addr,
    child: Option<Child>,
}

/// The running test servers of a topology's backends (1-based indices, like
/// [`Topology::backend`]). Dropping it kills them.
#[derive(Debug)]
pub struct Servers {
    bin: PathBuf,
    /// Namespace the readiness checks run from (the lb's, which reaches every backend).
    probe_ns: PathBuf,
    backends: Vec<Backend>,
}

/// One test server to start: the namespace it runs in, the name it answers with and the
/// address it is probed at.
#[derive(Debug, Clone)]
pub struct ServerSpec<'a> {
    pub ns: &'a Netns,
    pub name: String,
    pub addr: Ipv4Addr,
}

impl Topology {
    /// Starts `testsrv --name b{i} --http 0.0.0.0:80 --udp 0.0.0.0:5300` in every backend
    /// namespace and waits (at most 5 s each) until each answers HTTP and UDP from the lb
    /// namespace. That also fills the lb's neighbour table with the backends.
    pub fn start_backends(&self) -> Result<Servers> {
        let specs: Vec<ServerSpec> = (1..=self.n_backends())
            .map(|i| ServerSpec {
                ns: self.backend(i),
                name: self.backend_name(i),
                addr: self.backend_addr(i),
            })
            .collect();
        Servers::start_in(self.lb(), &specs)
    }
}

impl Servers {
    /// Starts `testsrv --name NAME --http 0.0.0.0:80 --udp 0.0.0.0:5300` in each of
    /// `specs` (server `i` is `specs[i - 1]`) and waits (at most 5 s each) until each
    /// answers HTTP and UDP at its address from the namespace `probe_ns`.
    pub fn start_in(probe_ns: &Netns, specs: &[ServerSpec]) -> Result<Servers> {
        let mut servers = Servers {
            bin: testsrv_path(),
            probe_ns: probe_ns.path(),
            backends: specs
                .iter()
                .map(|spec| Backend {
                    ns_name: spec.ns.name().to_string(),
                    name: spec.name.clone(),
                    addr: spec.addr,
                    child: None,
                })
                .collect(),
        };
        for i in 1..=servers.len() {
            servers.spawn(i, 200)?;
        }
        for i in 1..=servers.len() {
            servers.wait_ready(i)?;
        }
        Ok(servers)
    }

    /// Number of backends (running or not).
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether there are no backends at all.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Path of the testsrv binary in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// (Re)starts backend `i` answering 200 and waits until it answers.
    pub fn start(&mut self, i: usize) -> Result<()> {
        self.start_with_status(i, 200)
    }

    /// (Re)starts backend `i` answering HTTP requests with `status` and waits until it
    /// answers.
    pub fn start_with_status(&mut self, i: usize, status: u16) -> Result<()> {
        self.stop(i);
        self.spawn(i, status)?;
        self.wait_ready(i)
    }

    /// Stops backend `i` (SIGTERM, then SIGKILL); a no-op if it is not running. Its open
    /// connections are closed by the kernel.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.backend_mut(i).child.take() {
            terminate(&mut child, Duration::from_secs(2));
        }
    }

    /// Whether backend `i`'s process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.backend_mut(i).child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn backend_mut(&mut self, i: usize) -> &mut Backend {
        assert!(
            (1..=self.backends.len()).contains(&i),
            "backend index {i} out of range 1..={}",
            self.backends.len()
        );
        &mut self.backends[i - 1]
    }

    fn spawn(&mut self, i: usize, status: u16) -> Result<()> {
        let bin = self.bin.clone();
        let b = self.backend_mut(i);
        let http = format!("0.0.0.0:{HTTP_PORT}");
        let udp = format!("0.0.0.0:{UDP_PORT}");
        let status = status.to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &b.ns_name])
            .arg(&bin)
            .args([
                "--name", &b.name, "--http", &http, "--udp", &udp, "--status",
            ])
            .arg(&status)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Own process group: a Ctrl-C at the terminal goes to the test or demo only,
            // which then tears everything down in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {} in namespace {}", bin.display(), b.ns_name))?;
        b.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, i: usize) -> Result<()> {
        let probe_ns = self.probe_ns.clone();
        let b = self.backend_mut(i);
        let (name, addr) = (b.name.clone(), b.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = b.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    b.child = None;
                    bail!(
                        "testsrv {name} in namespace {} exited early: {status}",
                        b.ns_name
                    );
                }
            }
            let last_error = match run_in_netns_path(&probe_ns, || probe(addr, &name))? {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "testsrv {name} at {addr} did not answer within {READY_TIMEOUT:?}: {last_error:#}"
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

/// One HTTP and one UDP request to a backend; both must come from `name`.
fn probe(addr: Ipv4Addr, name: &str) -> Result<()> {
    let timeout = Duration::from_millis(500);
    let resp = http_request(SocketAddrV4::new(addr, HTTP_PORT), timeout)?;
    if resp.body != name {
        bail!("HTTP answer {:?} is not from {name}", resp.body);
    }
    let udp = udp_request(SocketAddrV4::new(addr, UDP_PORT), b"ready?", timeout)?;
    if udp != name {
        bail!("UDP answer {udp:?} is not from {name}");
    }
    Ok(())
}

impl Drop for Servers {
    fn drop(&mut self) {
        for b in &mut self.backends {
            if let Some(child) = b.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
