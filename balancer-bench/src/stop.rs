//! What every part of the bench shares: when to stop (a signal or the time budget) and
//! pinning a thread to one CPU.

use std::time::Instant;

use anyhow::{bail, Result};
use balancer_tests::util::interrupted;

/// Whether the bench must stop: a signal came, or the time budget is spent.
pub struct Stop {
    deadline: Instant,
}

impl Stop {
    pub fn new(deadline: Instant) -> Stop {
        Stop { deadline }
    }

    pub fn stopped(&self) -> bool {
        interrupted() || Instant::now() >= self.deadline
    }

    /// An error when the bench must stop.
    pub fn check(&self) -> Result<()> {
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() >= self.deadline {
            bail!("the bench's time budget is spent");
        }
        Ok(())
    }
}

/// Pins thread (or process) `tid` to one CPU.
pub fn pin(tid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked by the caller's 2-CPU requirement).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, size_of_val(&set), &raw const set) };
    if rc != 0 {
        bail!(
            "sched_setaffinity({tid}, cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
