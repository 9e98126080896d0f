//! The data plane's clock read from userspace, so that the agent judges a flow's
//! `last_seen_ns` as the program does: `jiffies` times `Settings::ns_per_tick` (the
//! program reads `bpf_jiffies64`), or `CLOCK_MONOTONIC_COARSE` without a tick length (the
//! program's `bpf_ktime_get_coarse_ns`).

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
};

/// Where the kernel shows `jiffies` (the same counter `bpf_jiffies64` reads).
const TIMER_LIST: &str = "/proc/timer_list";

/// The data plane's clock now, in ns, for a program given `ns_per_tick`.
///
/// # Errors
/// When the kernel's counters cannot be read.
pub fn now_ns(ns_per_tick: u32) -> io::Result<u64> {
    if ns_per_tick == 0 {
        return monotonic_coarse_ns();
    }
    let jiffies = match File::open(TIMER_LIST).and_then(|f| jiffies_in(BufReader::new(f))) {
        Ok(jiffies) => jiffies,
        // Without /proc/timer_list: jiffies as the kernel starts and advances them, from
        // the monotonic clock (they drift apart by well under a second).
        Err(_) => estimated_jiffies(monotonic_coarse_ns()?, ns_per_tick),
    };
    Ok(jiffies.wrapping_mul(u64::from(ns_per_tick)))
}

/// The first `jiffies: N` line of `/proc/timer_list` text.
fn jiffies_in(text: impl BufRead) -> io::Result<u64> {
    for line in text.lines() {
        if let Some(n) = line?.strip_prefix("jiffies: ") {
            return n
                .trim()
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("jiffies: {e}")));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no jiffies line in /proc/timer_list",
    ))
}

/// `jiffies` as the kernel counts them: from `INITIAL_JIFFIES` (five minutes before the
/// 32-bit wrap) at boot, one per tick of `ns_per_tick`.
fn estimated_jiffies(monotonic_ns: u64, ns_per_tick: u32) -> u64 {
    let hz = 1_000_000_000 / u64::from(ns_per_tick.max(1));
    let initial = (1u64 << 32) - 300 * hz;
    initial + monotonic_ns / u64::from(ns_per_tick.max(1))
}

fn monotonic_coarse_ns() -> io::Result<u64> {
    // SAFETY: an all-zero timespec is valid; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid for writes.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(secs * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jiffies_come_from_the_first_cpu_block() {
        let text = "Timer List Version: v0.10\nnow at 53085298008002 nsecs\n\ncpu: 0\n \
                    .expires_next   : 53085300000000 nsecs\njiffies: 4308163554\n\ncpu: 1\n\
                    jiffies: 4308163555\n";
        assert_eq!(jiffies_in(text.as_bytes()).unwrap(), 4_308_163_554);
        assert!(jiffies_in("now at 1 nsecs\n".as_bytes()).is_err());
        assert!(jiffies_in("jiffies: many\n".as_bytes()).is_err());
    }

    #[test]
    fn the_estimate_starts_five_minutes_before_the_wrap() {
        // HZ = 250: 4 ms ticks.
        assert_eq!(estimated_jiffies(0, 4_000_000), (1 << 32) - 75_000);
        assert_eq!(
            estimated_jiffies(1_000_000_000, 4_000_000),
            (1 << 32) - 75_000 + 250
        );
    }

    /// This host's kernel: the estimate and `/proc/timer_list` agree within a second, and
    /// the clock the data plane would read advances with the monotonic one.
    #[test]
    fn the_data_plane_clock_of_this_host() {
        let tick = crate::lb::ns_per_tick();
        assert_ne!(tick, 0, "CLOCK_MONOTONIC_COARSE gives no tick length here");
        let exact = File::open(TIMER_LIST)
            .and_then(|f| jiffies_in(BufReader::new(f)))
            .expect("jiffies from /proc/timer_list");
        let estimate = estimated_jiffies(monotonic_coarse_ns().unwrap(), tick);
        let second = 1_000_000_000 / u64::from(tick);
        assert!(
            exact.abs_diff(estimate) < second,
            "timer_list says {exact} jiffies, the estimate {estimate}"
        );
        let before = now_ns(tick).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = now_ns(tick).unwrap();
        assert!(
            (30_000_000..1_000_000_000).contains(&(after - before)),
            "{before} -> {after}"
        );
        let coarse = now_ns(0).unwrap();
        assert!(coarse.abs_diff(monotonic_coarse_ns().unwrap()) < 100_000_000);
    }
}
