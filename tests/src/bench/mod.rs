//! The parts of `bench` (the binary behind `cargo xtask bench`): XDP per-packet cost,
//! end-to-end comparisons in namespaces, scale and control-plane figures, and the report.

pub mod e2e;
pub mod health;
pub mod maglev;
pub mod perf;
pub mod report;
pub mod stats;
pub mod udpload;
pub mod xdp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};

/// Set by SIGINT/SIGTERM (and by the overall deadline): every loop stops at its next check
/// and the Drop guards tear the namespaces and processes down.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the bench must stop: a signal came, or the time budget is spent.
pub struct Stop {
    deadline: Instant,
}

impl Stop {
    pub fn new(deadline: Instant) -> Stop {
        Stop { deadline }
    }

    pub fn stopped(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }

    /// An error when the bench must stop.
    pub fn check(&self) -> Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if Instant::now() >= self.deadline {
            bail!("the bench's time budget is spent");
        }
        Ok(())
    }
}
