//! Maglev ring build times of the agent's own builder (`balancer::ring::maglev`).

use std::cmp::Ordering;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use balancer::ring::{self, RingBackend};

use crate::stats::{summarize, Summary};
use crate::Stop;

/// One configuration of the builder and its build times.
#[derive(Clone, Debug)]
pub struct RingBuild {
    pub m: u32,
    pub backends: usize,
    /// "fresh" (no previous table), a rebuild from the previous table, or
    /// [`PAPER`], the reference.
    pub kind: &'static str,
    /// Build times in ms.
    pub ms: Summary,
}

/// [`RingBuild::kind`] of the reference: the Maglev paper's own population algorithm.
pub const PAPER: &str = "Maglev paper's populate (reference)";

/// The Maglev paper's population algorithm (Eisenbud et al., NSDI 2016, section 3.4,
/// Pseudocode 1), as a same-machine reference for the builder: the backends take turns,
/// each taking the next free slot of its permutation `(offset + j * skip) mod m`, until
/// every slot is filled. The permutation is stepped on the fly instead of read from the
/// paper's precomputed N x M table (262 MB for 1000 backends). The offset is the key mod
/// `m`, the skip comes from its upper half (the key is already a well-mixed hash). `m`
/// must be prime, as in the paper, or a walk could circle forever: an empty table is
/// returned for a non-prime `m`, as for no keys.
#[must_use]
pub fn paper_populate(keys: &[u64], m: u32) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX;
    if keys.is_empty() || !ring::is_prime(m) {
        return Vec::new();
    }
    let mut table = vec![EMPTY; m as usize];
    let m64 = u64::from(m);
    // (next slot to try, skip) per backend
    let mut walk: Vec<(u32, u32)> = keys
        .iter()
        .map(|&k| ((k % m64) as u32, ((k >> 32) % (m64 - 1) + 1) as u32))
        .collect();
    let mut filled = 0u32;
    loop {
        for (i, (next, skip)) in walk.iter_mut().enumerate() {
            let step = |c: u32| {
                if c >= m - *skip {
                    c - (m - *skip)
                } else {
                    c + *skip
                }
            };
            let mut c = *next;
            while table[c as usize] != EMPTY {
                c = step(c);
            }
            table[c as usize] = i as u32;
            *next = step(c);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// Slots the Maglev builder's walks take, and the slots they leave free, for `n`
/// backends of equal weight and ring size `m`: rounds in which every backend below quota
/// takes one slot, until at most `m / ENDGAME_FRACTION` are free.
pub fn walk_slots(m: u64, n: u64) -> (u64, u64) {
    let (quota, one_more) = (m / n, m % n);
    let (mut free, mut round) = (m, 0);
    while free > m / ring::ENDGAME_FRACTION as u64 {
        let active = match round.cmp(&quota) {
            Ordering::Less => n,
            Ordering::Equal => one_more,
            Ordering::Greater => 0,
        };
        if active == 0 {
            break;
        }
        free -= active;
        round += 1;
    }
    (m - free, free)
}

/// Probes into the table of a fresh build of `n` backends of equal weight into `m` slots,
/// estimated as random probing: the builder's walks until its endgame ([`walk_slots`]), and
/// the paper's algorithm, which walks to the last slot. With `k` of `m` slots free a probe
/// finds one in `m / k` tries on average, so filling down to `left` free slots takes about
/// `m ln(m / left)` probes, and to the last one `m H_m`.
pub fn probe_estimates(m: u64, n: u64) -> (f64, f64) {
    const EULER_GAMMA: f64 = 0.577_215_664_9;
    let (_, left) = walk_slots(m, n);
    let mf = m as f64;
    (
        mf * (mf / left.max(1) as f64).ln(),
        mf * (mf.ln() + EULER_GAMMA),
    )
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

/// Fresh builds for M = 65537 with 10, 100, 1000 backends and M = 655373 with 1000; the
/// agent's incremental builds (from the previous table) after removing one of 1000
/// backends and after adding one to 10 and to 1000; and [`paper_populate`] for M = 65537
/// with 1000 backends.
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
        backends: fewer.len(),
        kind: "rebuild after removing 1 (previous table given)",
        ms: time_builds(builds, || ring::maglev(&fewer, m, Some(&prev))),
    });
    for before in [10, 1000] {
        stop.check()?;
        let more = backends(before + 1);
        let prev = ring::maglev(&more[..before], m, None);
        out.push(RingBuild {
            m,
            backends: before + 1,
            kind: "rebuild after adding 1 (previous table given)",
            ms: time_builds(builds, || ring::maglev(&more, m, Some(&prev))),
        });
    }
    stop.check()?;
    let keys: Vec<u64> = all.iter().map(|b| b.key).collect();
    out.push(RingBuild {
        m,
        backends: n,
        kind: PAPER,
        ms: time_builds(builds, || paper_populate(&keys, m)),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_populate_fills_every_slot_in_turns() {
        for (m, n) in [(7u32, 3usize), (251, 10), (65_537, 1000)] {
            let keys: Vec<u64> = backends(n).iter().map(|b| b.key).collect();
            let table = paper_populate(&keys, m);
            assert_eq!(table.len(), m as usize);
            let mut counts = vec![0u32; n];
            for &b in &table {
                counts[b as usize] += 1;
            }
            // One slot per turn: the first m % n backends get one more.
            let (lo, hi) = (m / n as u32, m.div_ceil(n as u32));
            for (i, &c) in counts.iter().enumerate() {
                let want = if (i as u32) < m % n as u32 { hi } else { lo };
                assert_eq!(c, want, "m={m} n={n} backend {i}");
            }
        }
        assert!(paper_populate(&[], 7).is_empty());
        assert!(paper_populate(&[5], 8).is_empty(), "non-prime m");
        assert_eq!(paper_populate(&[5], 2), vec![0, 0]);
    }

    #[test]
    fn walk_slots_follows_the_builders_rounds() {
        // 65537 = 65 * 1000 + 537: 64 full rounds leave 1537 <= 2048 free.
        assert_eq!(walk_slots(65_537, 1000), (64_000, 1537));
        // 10 backends: 6553 rounds each and 7 takes in the last, until <= 2048 are free.
        assert_eq!(walk_slots(65_537, 10), (63_490, 2047));
        // Fewer slots than backends: one round, every slot taken by a walk.
        assert_eq!(walk_slots(5, 10), (5, 0));
    }
}
