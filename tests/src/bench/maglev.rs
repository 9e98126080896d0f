//! Maglev ring build times of the agent's own builder (`balancer::ring::maglev`).

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use balancer::ring::{self, RingBackend};

use super::stats::{summarize, Summary};
use super::Stop;

/// One configuration of the builder and its build times.
#[derive(Clone, Debug)]
pub struct RingBuild {
    pub m: u32,
    pub backends: usize,
    /// "fresh" (no previous table) or "rebuild, 1 removed" (previous table given).
    pub kind: &'static str,
    /// Build times in ms.
    pub ms: Summary,
}

fn backends(n: usize) -> Vec<RingBackend> {
    (0..n)
        .map(|i| {
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i as u32);
            RingBackend {
                id: i as u32,
                key: ring::backend_key(addr, 80),
                weight: 1,
            }
        })
        .collect()
}

fn time_builds(builds: usize, mut build: impl FnMut() -> Vec<u32>) -> Summary {
    // One untimed build first: page faults of the first allocation are not the builder's.
    std::hint::black_box(build());
    let ms: Vec<f64> = (0..builds)
        .map(|_| {
            let started = Instant::now();
            let table = build();
            let elapsed = started.elapsed();
            std::hint::black_box(table);
            elapsed.as_secs_f64() * 1e3
        })
        .collect();
    summarize(&ms)
}

/// Fresh builds for M = 65537 with 10, 100, 1000 backends and M = 655373 with 1000, and
/// the agent's incremental case: a rebuild from the previous table after removing one of
/// 1000 backends.
pub fn ring_builds(builds: usize, stop: &Stop) -> Result<Vec<RingBuild>> {
    let mut out = Vec::new();
    for (m, n) in [(65_537, 10), (65_537, 100), (65_537, 1000), (655_373, 1000)] {
        stop.check()?;
        let b = backends(n);
        let builds = if m > 100_000 {
            builds.div_ceil(2)
        } else {
            builds
        };
        out.push(RingBuild {
            m,
            backends: n,
            kind: "fresh",
            ms: time_builds(builds, || ring::maglev(&b, m, None)),
        });
    }
    stop.check()?;
    let (m, n) = (65_537, 1000);
    let all = backends(n);
    let prev = ring::maglev(&all, m, None);
    let fewer: Vec<RingBackend> = all[1..].to_vec();
    out.push(RingBuild {
        m,
        backends: n,
        kind: "rebuild after removing 1 (previous table given)",
        ms: time_builds(builds, || ring::maglev(&fewer, m, Some(&prev))),
    });
    Ok(out)
}
