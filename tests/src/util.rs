//! Small helpers shared by the test-support modules: temporary directories, binary lookup, commands with a deadline, the one-topology-at-a-time lock, and the interrupt flag of the demo and bench binaries.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Set by SIGINT/SIGTERM once [`install_signal_handlers`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM only set a flag ([`interrupted`]): a long-running binary (demo,
/// bench) stops at its next step and its Drop guards tear namespaces and processes down.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether SIGINT or SIGTERM came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A directory under the system temp dir, unique to this process, removed (with its
/// contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<tag>-<pid>-<counter>`.
    pub fn new(tag: &str) -> Result<TempDir> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("{tag}-{}-{n}", std::process::id()));
        if path.exists() {
            // Left over by a crashed process that had the same pid: not ours any more.
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating temporary directory {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Finds a binary built by cargo for this workspace.
///
/// Order: the environment variable `env_var` (if set, it must exist), then next to the
/// current executable (`<exe dir>/../NAME` for test binaries in `target/<profile>/deps/`,
/// `<exe dir>/NAME` for binaries in `target/<profile>/`), then each of `fallbacks`.
/// Returns the candidates that were tried when none exists.
pub fn find_binary(name: &str, env_var: &str, fallbacks: &[PathBuf]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("{env_var}={} does not exist", p.display()));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            if let Some(parent) = dir.parent() {
                candidates.push(parent.join(name));
            }
            candidates.push(dir.join(name));
        }
    }
    candidates.extend(fallbacks.iter().cloned());
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(format!(
        "{env_var} is not set and no `{name}` binary in: {}",
        tried.join(", ")
    ))
}

/// Runs `cmd` to completion with stdout and stderr captured, killing it after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {desc}"))?;
    let out_reader = spawn_reader(child.stdout.take());
    let err_reader = spawn_reader(child.stderr.take());
    let Some(status) = wait_timeout(&mut child, timeout)? else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = err_reader.join().unwrap_or_default();
        bail!(
            "{desc} did not finish within {timeout:?}; stderr so far: {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn spawn_reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` to exit for at most `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The exit code of a process, or 128 + signal number when a signal ended it (as a shell
/// reports it), or -1 when neither is known.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Sends SIGTERM to `child`, waits up to `grace`, then SIGKILLs it; always reaps it.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped
        // child, so it cannot have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if let Ok(Some(status)) = wait_timeout(child, grace) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Lets one [`crate::Topology`] exist at a time in this process.
///
/// libtest runs the tests of one file in parallel threads; on the 2-core machines this
/// project runs on, several topologies with an XDP agent each would compete for CPU and
/// make timing bounds flaky, and agents may share global state (bpffs pins). The guard is
/// `Send`, unlike a `MutexGuard`.
#[derive(Debug)]
pub struct SerialGuard(());

static SERIAL_BUSY: Mutex<bool> = Mutex::new(false);
static SERIAL_FREE: Condvar = Condvar::new();

impl SerialGuard {
    /// Blocks until no other guard exists in this process.
    pub fn acquire() -> SerialGuard {
        let mut busy = SERIAL_BUSY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *busy {
            busy = SERIAL_FREE
                .wait(busy)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *busy = true;
        SerialGuard(())
    }
}

impl Drop for SerialGuard {
    fn drop(&mut self) {
        let mut busy = SERIAL_BUSY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *busy = false;
        SERIAL_FREE.notify_one();
    }
}

/// The resident memory (`VmRSS`) of process `pid`, in KiB.
///
/// # Errors
/// When the process is gone or its status has no such line.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .context("no VmRSS line")
}
