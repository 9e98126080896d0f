//! Named network namespaces (`ip netns`) that delete themselves on drop, and threads that run code inside one.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix unique to this process and call: `blt{pid}-{counter}`.
///
/// Namespaces of one topology share a prefix, so `ip netns list | grep blt` shows what a
/// run left behind (nothing, when the Drop guards ran).
pub fn unique_prefix() -> String {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(delete_orphans);
    let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("blt{}-{n}", std::process::id())
}

/// Deletes the namespaces that test processes which no longer exist left behind (a test
/// killed by a timeout runs no `Drop`), with the processes still inside them; those of
/// live processes, such as another test run's, are left alone.
fn delete_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("blt")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!(
                "deleting network namespace {name}, left by test process {pid}, which is gone"
            );
            drop(Netns { name });
        }
    }
}

/// Runs a command to completion; on failure the error names the command and its stderr.
pub(crate) fn run_command(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program} {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves the calling thread into the network namespace bound at `path`
/// (e.g. `/run/netns/NAME`). Sockets the thread creates afterwards live in that namespace,
/// and keep living there when handed to other threads.
pub fn enter_netns_path(path: &Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("bad namespace path {}", path.display()))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening {}", path.display()));
    }
    // SAFETY: fd is an open descriptor we own; setns only affects the calling thread.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed exactly once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err).with_context(|| format!("setns({}, CLONE_NEWNET)", path.display()));
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside the namespace bound at `path` and returns its
/// result; a panic in `f` is re-raised in the caller.
pub fn run_in_netns_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    thread::scope(|s| {
        let handle = s.spawn(|| -> Result<T> {
            enter_netns_path(path)?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    })
}

/// A named network namespace created with `ip netns add`; on drop, the processes inside it
/// are killed and it is deleted with `ip netns del`.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (fails if it exists). Keep names short and unique, e.g.
    /// built from [`unique_prefix`].
    pub fn new(name: &str) -> Result<Netns> {
        run_command("ip", &["netns", "add", name])
            .with_context(|| format!("creating network namespace {name}"))?;
        Ok(Netns {
            name: name.to_string(),
        })
    }

    /// Creates a namespace named `{unique_prefix()}{suffix}`.
    pub fn unique(suffix: &str) -> Result<Netns> {
        Netns::new(&format!("{}{suffix}", unique_prefix()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names the namespace: `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A `Command` for `ip netns exec NAME program`; add arguments and stdio as needed.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip netns exec NAME args...` to completion and returns its stdout; the error
    /// names the command and its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("Netns::run({}) needs a command", self.name))?;
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(rest);
        run_command("ip", &full)
    }

    /// Runs `ip -n NAME args...` (cheaper than `run(&["ip", ...])`) and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_command("ip", &full)
    }

    /// The id of the XDP program on interface `iface`, as `ip -d link` shows it (`None`:
    /// none attached). Panics if `ip` fails (no such interface).
    pub fn xdp_prog(&self, iface: &str) -> Option<u64> {
        let link = self
            .ip(&["-d", "link", "show", iface])
            .unwrap_or_else(|e| panic!("ip link show {iface}: {e:#}"));
        let mut words = link.split_whitespace();
        // "... prog/xdp id 42 ..."
        words.find(|&w| w == "prog/xdp")?;
        words.find(|&w| w == "id")?;
        words.next()?.parse().ok()
    }

    /// Spawns `cmd args...` inside the namespace (stdin from /dev/null, stdout and stderr
    /// inherited). `ip netns exec` execs the command, so the child's pid is the command's.
    ///
    /// Panics if `ip` cannot be spawned at all.
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> Child {
        self.command(cmd)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `ip netns exec {} {cmd}`: {e}", self.name))
    }

    /// Moves the calling thread into this namespace (`setns(CLONE_NEWNET)`). Use it from a
    /// dedicated thread (see [`NsThread`] and [`Netns::in_thread`]), never from a thread
    /// that goes on doing unrelated work.
    pub fn enter_current_thread(&self) -> Result<()> {
        enter_netns_path(&self.path())
    }

    /// Runs `f` on a short-lived thread inside this namespace and returns its result.
    pub fn in_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in_netns_path(&self.path(), f)
    }

    /// Pids of the processes whose network namespace is this one (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        run_command("ip", &["netns", "pids", &self.name])
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let me = std::process::id() as i32;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let pids: Vec<i32> = self.pids().into_iter().filter(|&p| p != me).collect();
            if pids.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = run_command("ip", &["netns", "del", &self.name]) {
            eprintln!(
                "warning: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A worker thread that lives inside a network namespace and runs closures there.
///
/// Sockets created by those closures belong to the namespace and can be returned to (and
/// used from) any thread. Drop it before the namespace's owner (declare it after the
/// [`crate::Topology`]): while the thread lives, it keeps the namespace's interfaces alive.
pub struct NsThread {
    ns_name: String,
    jobs: Option<mpsc::Sender<Job>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl NsThread {
    /// Starts a worker thread inside `ns`.
    pub fn new(ns: &Netns) -> Result<NsThread> {
        let path = ns.path();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let handle = thread::Builder::new()
            .name(format!("ns-{}", ns.name()))
            .spawn(move || {
                let entered = enter_netns_path(&path);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in jobs_rx {
                        job();
                    }
                }
            })
            .context("spawning a namespace worker thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("namespace worker thread for {} died", ns.name()))?
            .with_context(|| format!("entering namespace {}", ns.name()))?;
        Ok(NsThread {
            ns_name: ns.name().to_string(),
            jobs: Some(jobs_tx),
            handle: Some(handle),
        })
    }

    /// Name of the namespace the thread lives in.
    pub fn ns_name(&self) -> &str {
        &self.ns_name
    }

    /// Runs `f` on the worker thread and returns its result; a panic in `f` is re-raised
    /// in the caller (the worker survives it).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        assert!(
            sent,
            "the worker thread in namespace {} is gone",
            self.ns_name
        );
        match rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(mpsc::RecvError) => {
                panic!("the worker thread in namespace {} is gone", self.ns_name)
            }
        }
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
