//! A real etcd (Debian's `etcd-server`) for the discovery tests: started in a test
//! namespace with a data directory of its own, stopped and started again on that directory,
//! and driven with `etcdctl` (put, delete, list, compact).
//!
//! etcd listens for clients on an address of its own that the test adds to a bridge
//! ([`Etcd::on_bridge`]: the switch of a [`crate::Topology`], the back bridge of a
//! [`crate::HaTopology`]), so that agents in lb namespaces and secretaries in backend
//! namespaces reach it, as they would reach an etcd cluster on the service network. Its
//! peer port is on loopback: a cluster of one.

use crate::netns::Netns;
use crate::util::{output_with_timeout, terminate, TempDir};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The address [`Etcd::on_bridge`] gives etcd (on no test host's subnet position: backends
/// are .11 and up to .210, balancers .1 and .11 to .19).
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 250);
/// etcd's client port (the namespace is the test's own, so it is free).
pub const ETCD_PORT: u16 = 2379;
/// How long etcd may take to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `etcdctl` call may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// A running etcd in a namespace; dropping it kills it and removes its data.
pub struct Etcd {
    ns: String,
    addr: Ipv4Addr,
    child: Option<Child>,
    /// Serving TLS, with client certificates required ([`Etcd::on_bridge_with_tls`]).
    tls: Option<Tls>,
    /// `etcdctl`'s `--user` once authentication is on ([`Etcd::enable_auth`]).
    user: Option<String>,
    // Removed on drop, after etcd is stopped.
    dir: TempDir,
}

/// Panics with a clear message unless `program` runs (asked its version with `arg`): the
/// discovery tests never skip, CI installs both packages (`cargo xtask setup`).
fn require(program: &str, arg: &str, package: &str) {
    let ok = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{program} {arg}` could not be run: the etcd tests need Debian's {package} \
         (`apt-get install {package}`, or `cargo xtask setup`)"
    );
}

/// The PEM files of a TLS etcd: a CA, etcd's certificate (for its address and 127.0.0.1)
/// and a client certificate, all signed by that CA.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    /// Makes the CA and both certificates in `dir` with `openssl`.
    fn make(dir: &Path, addr: Ipv4Addr) -> Result<Tls> {
        let p = |name: &str| dir.join(name);
        let tls = Tls {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server-key.pem"),
            client_cert: p("client.pem"),
            client_key: p("client-key.pem"),
        };
        let openssl = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .context("running openssl")?;
            if !out.status.success() {
                bail!(
                    "`openssl {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=balancer test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ])?;
        let sans = format!("subjectAltName=IP:{addr},IP:127.0.0.1");
        for (name, cn, ext) in [
            ("server", "etcd", sans.as_str()),
            ("client", "root", "extendedKeyUsage=clientAuth"),
        ] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
            ])?;
            std::fs::write(dir.join(format!("{name}.ext")), format!("{ext}\n"))?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ])?;
        }
        Ok(tls)
    }
}

impl Etcd {
    /// Puts [`ETCD_ADDR`]/24 on `ns`'s bridge `br0` and starts etcd there.
    pub fn on_bridge(ns: &Netns) -> Result<Etcd> {
        ns.ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "br0"])?;
        Etcd::start(ns, ETCD_ADDR, false)
    }

    /// Like [`Etcd::on_bridge`], serving TLS only and requiring client certificates
    /// signed by its CA ([`Etcd::tls`]).
    pub fn on_bridge_with_tls(ns: &Netns) -> Result<Etcd> {
        ns.ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "br0"])?;
        Etcd::start(ns, ETCD_ADDR, true)
    }

    /// Starts etcd in `ns`, serving clients on `addr`:2379 (and on loopback), with a fresh
    /// data directory, over TLS if `tls`; returns once it answers. Panics when etcd or
    /// etcdctl is missing.
    pub fn start(ns: &Netns, addr: Ipv4Addr, tls: bool) -> Result<Etcd> {
        require("etcd", "--version", "etcd-server");
        require("etcdctl", "version", "etcd-client");
        let dir = TempDir::new(&format!("{}-etcd", ns.name()))?;
        let tls = if tls {
            require("openssl", "version", "openssl");
            Some(Tls::make(dir.path(), addr)?)
        } else {
            None
        };
        let mut etcd = Etcd {
            ns: ns.name().to_owned(),
            addr,
            child: None,
            tls,
            user: None,
            dir,
        };
        etcd.resume()?;
        Ok(etcd)
    }

    /// `http://ADDRESS:2379` (`https://` with TLS), as the agents' configurations and
    /// `balancer register` take it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{ETCD_PORT}", self.addr)
    }

    /// The TLS files, when etcd serves TLS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// Turns authentication on, with user `root` and `password` (every later request,
    /// `etcdctl`'s too, must then give them).
    pub fn enable_auth(&mut self, password: &str) -> Result<()> {
        self.ctl(&["user", "add", &format!("root:{password}")])?;
        self.ctl(&["auth", "enable"])?;
        self.user = Some(format!("root:{password}"));
        Ok(())
    }

    /// Stops etcd (SIGTERM); its data stays for [`Etcd::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// Starts etcd (again) on its data directory and waits until it answers.
    pub fn resume(&mut self) -> Result<()> {
        self.stop();
        let data = self.dir.path().join("data");
        let log_path = self.dir.path().join("etcd.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_urls = format!("{},{scheme}://127.0.0.1:{ETCD_PORT}", self.endpoint());
        let peer = "http://127.0.0.1:2380";
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns, "etcd", "--name", "test"])
            .arg("--data-dir")
            .arg(&data);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--listen-client-urls", &client_urls])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning etcd")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.ctl(&["endpoint", "health"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "etcd did not answer within {READY_TIMEOUT:?} ({e:#}); its log:\n{}",
                        self.log()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Whether etcd's process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        let path = self.dir.path().join("etcd.log");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
    }

    /// Runs `etcdctl --endpoints ENDPOINT args...` in etcd's namespace; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_with_input(args, None)
    }

    fn ctl_with_input(&self, args: &[&str], input: Option<&Path>) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcdctl"])
            .args(["--endpoints", &self.endpoint()])
            .args(["--dial-timeout=1s", "--command-timeout=5s"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        if let Some(user) = &self.user {
            cmd.args(["--user", user]);
        }
        cmd.args(args);
        let out = match input {
            None => output_with_timeout(&mut cmd, CTL_TIMEOUT)?,
            Some(path) => {
                cmd.stdin(File::open(path).with_context(|| format!("{}", path.display()))?);
                cmd.output().context("running etcdctl")?
            }
        };
        if !out.status.success() {
            bail!(
                "`etcdctl {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Puts `key` = `value`; the revision it made.
    pub fn put(&self, key: &str, value: &str) -> Result<i64> {
        revision_of(&self.ctl(&["put", "-w", "json", key, value])?)
    }

    /// Puts `key` = `value` where the value is too long for a command line (read from a
    /// file by etcdctl); the revision it made.
    pub fn put_large(&self, key: &str, value: &[u8]) -> Result<i64> {
        let path = self.dir.path().join("value");
        std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
        revision_of(&self.ctl_with_input(&["put", "-w", "json", key], Some(&path))?)
    }

    /// Deletes `key` (which must exist).
    pub fn delete(&self, key: &str) -> Result<()> {
        let deleted = self.ctl(&["del", key])?;
        if deleted.trim() != "1" {
            bail!("deleting {key}: etcdctl says {deleted:?} keys were deleted");
        }
        Ok(())
    }

    /// The keys under `prefix` and their values.
    pub fn list(&self, prefix: &str) -> Result<BTreeMap<String, String>> {
        let out = self.ctl(&["get", "--prefix", prefix])?;
        let mut lines = out.lines();
        let mut kvs = BTreeMap::new();
        while let Some(key) = lines.next() {
            let value = lines.next().context("etcdctl get: a key without a value")?;
            kvs.insert(key.to_owned(), value.to_owned());
        }
        Ok(kvs)
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        revision_of(&self.ctl(&["get", "-w", "json", "/"])?)
    }

    /// Compacts the history up to `revision`: watches from before it are cancelled.
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.ctl(&["compact", &revision.to_string()])?;
        Ok(())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "===== etcd log =====\n{}\n===== end of etcd log =====",
                self.log().trim_end()
            );
        }
    }
}

/// `header.revision` of an `etcdctl -w json` answer.
fn revision_of(json: &str) -> Result<i64> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("etcdctl printed {json:?}"))?;
    v["header"]["revision"]
        .as_i64()
        .with_context(|| format!("no header.revision in {json:?}"))
}
