//! The agent's memory and open descriptors, sampled from `/proc` once a second.

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: usize,
}

/// Reads one sample of process `pid`; `None` if it is gone.
fn sample(pid: u32, at: Duration) -> Option<Sample> {
    let rss_kib = crate::util::rss_kib(pid).ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample {
        at,
        pid,
        rss_kib,
        fds,
    })
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Samples whichever agent `pid` names (0: none) until [`Sampler::finish`].
    pub fn start(pid: Arc<AtomicU32>, t0: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let pid = pid.load(Ordering::Relaxed);
                    if pid != 0 {
                        samples.extend(sample(pid, t0.elapsed()));
                    }
                    thread::sleep(EVERY);
                }
                samples
            })
        };
        Sampler { stop, thread }
    }

    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
