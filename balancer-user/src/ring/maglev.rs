//! Maglev consistent hashing with quotas and minimal disruption.
//!
//! Backends are sorted by `(key, id)` so a fresh build is a pure function of the
//! backend set and `m`. Backend `i` owns the permutation
//! `slot(j) = (offset + j * skip) % m` with `offset = splitmix64(key) % m` and
//! `skip = fmix64(key ^ SKIP_SEED) % (m - 1) + 1`, a full cycle because `m` is prime
//! (for a non-prime `m` the skip steps up, wrapping from `m - 1` to 1, until it is
//! coprime with `m`).
//!
//! 1. **Quotas.** Every backend gets `floor(m * w / W)` slots; the remaining units
//!    go one each by largest remainder (ties by key, then id). When a previous table
//!    is given, backends that kept more than their floor from it are served first,
//!    then backends that kept fewer than their floor (they gain slots anyway), then
//!    the rest; within each group by largest remainder. A backend whose exact share
//!    is an integer never gets a unit, so every quota is within one slot of the
//!    exact share `m * w / W`.
//! 2. **Keep** (previous table only). A slot keeps its previous owner when that
//!    owner is still present with weight > 0. An owner that kept more than its
//!    quota releases the excess slots that come latest in its own permutation.
//! 3. **Fill.** Maglev rounds in sorted order: each backend below quota advances its
//!    permutation cursor (starting at 0) to the next free slot and takes it. Once a
//!    round ends with at most `m / 32` slots free, the rest go round-robin, in slot
//!    order, to the backends still below quota (the endgame: walking to the very last
//!    free slots would cost most of the probes).
//!
//! Guarantees when a previous table is given (argued in comments in [`maglev`]'s
//! code and checked by the tests). Builds with a previous table depend on history,
//! so they need not equal a fresh build of the same configuration.
//! * a slot only changes owner if its previous owner is gone, drained, or had to
//!   shrink to its new quota;
//! * a slot only moves *to* a surviving backend whose slot count grows, and that
//!   backend keeps all of its previous slots;
//! * removing or draining one backend from a fresh-built table is strict (no slot
//!   moves between survivors) for equal weights, provably, and for unequal weights
//!   whenever the survivors that kept `floor + 1` slots are no more than the
//!   remainder units. That fails only in rare, tiny-share cases (none in 3000 random
//!   trials; e.g. weights 651/174/43/869/54/38/582 with m = 31, removing 174): then
//!   balance wins and each survivor that must shrink releases one slot, the latest
//!   in its permutation.

use std::cmp::{Ordering, Reverse};

use super::{fmix64, gcd, is_prime, splitmix64, RingBackend, NO_BACKEND};

/// Seed xored into the key before hashing it for the permutation's skip.
const SKIP_SEED: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Internal marker for a slot without an owner during a build.
const FREE: u32 = u32::MAX;

/// Ids up to this value are indexed with a dense table when reading `prev`.
const DENSE_ID_LIMIT: u32 = 1 << 16;

/// A backend's Maglev permutation: `slot(j) = (offset + j * skip) % m`.
#[derive(Clone, Copy)]
struct Perm {
    /// First slot of the permutation.
    offset: u32,
    /// Step between consecutive preferences, in `1..m` and coprime with `m`, so the
    /// permutation visits every slot (always the case for a prime `m`).
    skip: u32,
}

impl Perm {
    /// `prime` tells whether `m` is prime; then every skip in `1..m` is coprime with
    /// it and the gcd, a chain of 64-bit divisions per backend, is not needed.
    fn new(key: u64, m: u32, prime: bool) -> Perm {
        let m64 = u64::from(m);
        let offset = (splitmix64(key) % m64) as u32;
        let mut skip = if m > 1 {
            (fmix64(key ^ SKIP_SEED) % (m64 - 1) + 1) as u32
        } else {
            1
        };
        // Only for a non-prime `m` (a caller's bug); the loop ends at the latest at 1,
        // which is coprime with anything.
        if !prime {
            while gcd(u64::from(skip), m64) != 1 {
                skip = skip % (m - 1) + 1;
            }
        }
        Perm { offset, skip }
    }
}

/// A backend in the fill phase: where its permutation walk stands, and what it writes.
struct Walker {
    /// Slot the walk looks at next.
    cursor: u32,
    /// The permutation's step.
    skip: u32,
    /// The backend's id, written into the slots it takes.
    id: u32,
}

/// One Maglev round of the fill phase: each backend in `active`, in order, takes the
/// next free slot of its permutation. Permutations visit every slot and the caller
/// only starts a round while every backend in it is below quota (so enough slots are
/// free), so every walk ends. Kept out of line: with the loop on its own, the compiler
/// keeps its state in registers, which made fresh builds about 12% faster than the
/// same loop inline in [`maglev`].
#[inline(never)]
fn fill_round(
    taken: &mut [u64],
    owner: &mut [u32],
    walkers: &mut [Walker],
    active: &[u32],
    m: u32,
) {
    for &i in active {
        let w = &mut walkers[i as usize];
        let (mut cursor, skip) = (w.cursor, w.skip);
        let back = m - skip;
        let (slot, word) = loop {
            let s = cursor as usize;
            cursor = if cursor >= back {
                cursor - back
            } else {
                cursor + skip
            };
            let word = taken[s / 64];
            if word & (1 << (s % 64)) == 0 {
                break (s, word);
            }
        };
        w.cursor = cursor;
        taken[slot / 64] = word | (1 << (slot % 64));
        owner[slot] = w.id;
    }
}

/// Inverse of `a` modulo `m` (extended Euclid), if `gcd(a, m) == 1`.
#[expect(
    clippy::many_single_char_names,
    reason = "the textbook's names for the extended Euclidean algorithm"
)]
fn mod_inverse(a: u32, m: u32) -> Option<u32> {
    let (mut old_r, mut r) = (i64::from(a), i64::from(m));
    let (mut old_s, mut s) = (1i64, 0i64);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    if old_r != 1 {
        return None;
    }
    Some(old_s.rem_euclid(i64::from(m)) as u32)
}

/// Maps backend ids to indices into the sorted backend list.
enum IdIndex {
    /// `table[id]` is the index, or `FREE`.
    Dense(Vec<u32>),
    /// `(id, index)` sorted; the first entry of an id wins.
    Sorted(Vec<(u32, u32)>),
}

impl IdIndex {
    fn new(live: &[RingBackend]) -> IdIndex {
        let max_id = live.iter().map(|b| b.id).max().unwrap_or(0);
        if max_id < DENSE_ID_LIMIT {
            let mut table = vec![FREE; max_id as usize + 1];
            for (i, b) in live.iter().enumerate() {
                let entry = &mut table[b.id as usize];
                if *entry == FREE {
                    *entry = i as u32;
                }
            }
            IdIndex::Dense(table)
        } else {
            let mut pairs: Vec<(u32, u32)> = live
                .iter()
                .enumerate()
                .map(|(i, b)| (b.id, i as u32))
                .collect();
            pairs.sort_unstable();
            IdIndex::Sorted(pairs)
        }
    }

    fn get(&self, id: u32) -> Option<u32> {
        match self {
            IdIndex::Dense(table) => table
                .get(id as usize)
                .copied()
                .filter(|&i| i != FREE && id != NO_BACKEND),
            IdIndex::Sorted(_) if id == NO_BACKEND => None,
            IdIndex::Sorted(pairs) => {
                let at = pairs.partition_point(|&(pid, _)| pid < id);
                pairs
                    .get(at)
                    .filter(|&&(pid, _)| pid == id)
                    .map(|&(_, i)| i)
            }
        }
    }
}

/// Slot quotas for `live` (sorted, all weights > 0): `floor(m*w/W)` plus at most one
/// remainder unit each, summing to `m`. `kept[i]` (previous-table builds only) is the
/// number of slots backend `i` holds from the previous table.
fn quotas(live: &[RingBackend], m: u32, kept: Option<&[u32]>) -> Vec<u32> {
    let total: u64 = live.iter().map(|b| u64::from(b.weight)).sum();
    let m64 = u64::from(m);
    let mut quota = Vec::with_capacity(live.len());
    let mut rem = Vec::with_capacity(live.len());
    for b in live {
        // m and w are both < 2^32, so the product fits in u64.
        let share = m64 * u64::from(b.weight);
        quota.push((share / total) as u32);
        rem.push(share % total);
    }
    let assigned: u64 = quota.iter().map(|&q| u64::from(q)).sum();
    let units = (m64 - assigned) as usize;
    if units == 0 {
        return quota;
    }
    // Lower groups are served first. Without a previous table everybody with a
    // remainder is in group 0, which is plain largest-remainder apportionment. A
    // backend whose share is an exact integer (remainder 0) never gets a unit: there
    // are fewer units than backends with a positive remainder, and they come last.
    let group = |i: usize| -> u8 {
        match kept {
            _ if rem[i] == 0 => 3,
            None => 0,
            Some(kept) => match kept[i].cmp(&quota[i]) {
                Ordering::Greater => 0,
                Ordering::Less => 1,
                Ordering::Equal => 2,
            },
        }
    };
    let mut order: Vec<usize> = (0..live.len()).collect();
    // Index order is (key, id) order, so it is the documented tie-break.
    order.sort_unstable_by_key(|&i| (group(i), Reverse(rem[i]), i));
    for &i in &order[..units] {
        quota[i] += 1;
    }
    quota
}

/// Maglev lookup table of size `m` (m prime, 2..=some large bound, e.g. `655373` must work; the caller validates primality).
/// `prev`: the table this VIP had before the change (same m), or None for a fresh build.
///
/// Backends with weight 0 are ignored (drained). With no positive weight every slot
/// is [`NO_BACKEND`]. A `prev` whose length differs from `m` is ignored. A non-prime
/// `m` still yields a complete, balanced table (never a hang or panic): each skip is
/// stepped until it is coprime with `m`, so every permutation still covers the ring,
/// but permutations spread less evenly than with a prime `m`.
///
/// Every backend with weight `w` gets `floor(m*w/W)` or that plus one slots. See the
/// module documentation for the algorithm and the minimal-disruption guarantees.
#[must_use]
pub fn maglev(backends: &[RingBackend], m: u32, prev: Option<&[u32]>) -> Vec<u32> {
    let mut live: Vec<RingBackend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
    if live.is_empty() || m == 0 {
        return vec![NO_BACKEND; m as usize];
    }
    live.sort_unstable_by_key(|b| (b.key, b.id, b.weight));
    let n = live.len();
    let m_len = m as usize;
    let prev = prev.filter(|p| p.len() == m_len);

    // owner[slot] = index into `live`, or FREE.
    let mut owner = vec![FREE; m_len];
    let mut count = vec![0u32; n];
    let prime = is_prime(m);
    let perms: Vec<Perm> = live.iter().map(|b| Perm::new(b.key, m, prime)).collect();

    // Keep phase, part 1: every slot whose previous owner is still live stays put.
    if let Some(prev) = prev {
        let index = IdIndex::new(&live);
        for (slot, &id) in owner.iter_mut().zip(prev) {
            if let Some(i) = index.get(id) {
                *slot = i;
                count[i as usize] += 1;
            }
        }
    }

    let quota = quotas(&live, m, prev.map(|_| count.as_slice()));

    // Keep phase, part 2: owners above quota release the slots latest in their own
    // permutation. Why removal is strict: with old shares x_i = m*w_i/W' and new
    // shares y_i = m*w_i/W >= x_i, a survivor kept q'_i <= floor(x_i) + 1 <=
    // floor(y_i) + 1 slots, so only survivors with kept == floor + 1 (served first
    // by `quotas`; y_i > x_i, so their remainder is not 0) could exceed; when there
    // are no more of them than remainder units (always for equal weights) nobody
    // releases anything.
    // A backend below quota after this phase released nothing, so it kept every
    // previous slot: slots only move to backends that grow.
    //
    // Each owner above quota lists its slots by position in its own permutation
    // (grouped by owner in one pass over the table), keeps the `quota` earliest and
    // frees the rest: linear in m, where sorting all held slots was m log m.
    let over: Vec<bool> = (0..n).map(|i| count[i] > quota[i]).collect();
    if over.iter().any(|&o| o) {
        // Start of each owner's group in `held`; owners not above quota get none.
        let mut start = vec![0usize; n + 1];
        for o in 0..n {
            start[o + 1] = start[o] + if over[o] { count[o] as usize } else { 0 };
        }
        // Skips are coprime with m, so every inverse exists.
        let inverse: Vec<u64> = perms
            .iter()
            .zip(&over)
            .map(|(p, &o)| {
                if o {
                    mod_inverse(p.skip, m).map_or(1, u64::from)
                } else {
                    0
                }
            })
            .collect();
        let m64 = u64::from(m);
        // (position in the owner's permutation, slot), grouped by owner.
        let mut held = vec![(0u32, 0u32); start[n]];
        let mut next = start.clone();
        for (s, &o) in owner.iter().enumerate() {
            if o != FREE && over[o as usize] {
                let o = o as usize;
                let offset = perms[o].offset as usize;
                let delta = if s >= offset {
                    s - offset
                } else {
                    s + m_len - offset
                };
                let pos = (delta as u64 * inverse[o] % m64) as u32;
                held[next[o]] = (pos, s as u32);
                next[o] += 1;
            }
        }
        for o in (0..n).filter(|&o| over[o]) {
            let group = &mut held[start[o]..start[o + 1]];
            let keep = quota[o] as usize;
            group.select_nth_unstable(keep);
            for &(_, s) in &group[keep..] {
                owner[s as usize] = FREE;
            }
            count[o] = quota[o];
        }
    }

    // Fill phase: Maglev rounds over the backends still below quota, in sorted order.
    // The quotas sum to m, so a backend below quota always has a free slot to find,
    // and slots never become free again, so no free slot lies behind its cursor.
    // Probing uses a bitmap of taken slots (m / 8 bytes, cache-friendly).
    // From here on `owner` holds backend ids (the output) and `taken` tells which slots
    // have one.
    let ids: Vec<u32> = live.iter().map(|b| b.id).collect();
    let mut taken = vec![0u64; m_len.div_ceil(64)];
    let mut free = m_len;
    if prev.is_some() {
        for (s, o) in owner.iter_mut().enumerate() {
            if *o != FREE {
                taken[s / 64] |= 1 << (s % 64);
                free -= 1;
                *o = ids[*o as usize];
            }
        }
    }
    let mut active: Vec<u32> = (0..n as u32)
        .filter(|&i| count[i as usize] < quota[i as usize])
        .collect();
    let mut walkers: Vec<Walker> = perms
        .iter()
        .zip(&ids)
        .map(|(p, &id)| Walker {
            cursor: p.offset,
            skip: p.skip,
            id,
        })
        .collect();
    // Filling the last few free slots by permutation walks costs most of the probes
    // (each walk passes ever more taken slots): the endgame below takes over for them.
    let endgame = m_len / ENDGAME_FRACTION;
    while !active.is_empty() && free > endgame {
        fill_round(&mut taken, &mut owner, &mut walkers, &active, m);
        free -= active.len();
        for &i in &active {
            count[i as usize] += 1;
        }
        active.retain(|&i| count[i as usize] < quota[i as usize]);
    }

    // Endgame: the remaining free slots, in slot order, go round-robin to the backends
    // still below quota (in sorted order). Quotas sum to m, so the deficits add up to
    // exactly the free slots; the result stays deterministic and exactly balanced.
    let mut turns = Vec::with_capacity(free);
    while !active.is_empty() {
        for &i in &active {
            turns.push(i);
            count[i as usize] += 1;
        }
        active.retain(|&i| count[i as usize] < quota[i as usize]);
    }
    // Free slots in order, a bitmap word at a time.
    let free_slots = taken.iter().enumerate().flat_map(|(w, &word)| {
        let mut free = !word;
        std::iter::from_fn(move || {
            let bit = (free != 0).then(|| free.trailing_zeros() as usize)?;
            free &= free - 1;
            Some(w * 64 + bit)
        })
    });
    for (slot, i) in free_slots.take_while(|&s| s < m_len).zip(turns) {
        owner[slot] = ids[i as usize];
    }
    owner
}

/// The permutation walks stop when `m / ENDGAME_FRACTION` slots are left free (about 3%):
/// walking to the very last free slot costs about ln(m) probes per slot in all, the
/// endgame cuts that to about `ln(ENDGAME_FRACTION)`.
pub const ENDGAME_FRACTION: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::*;
    use crate::ring::{is_prime, round_robin, MAX_RING_SIZE};
    use std::collections::{HashMap, HashSet};
    use std::time::Instant;

    const M: u32 = MAX_RING_SIZE;

    /// Every positive backend is within one slot of m*w/W (and within 1% of it when
    /// that is >= 100); drained backends and unknown ids hold nothing.
    fn assert_balanced(backends: &[RingBackend], m: u32, table: &[u32]) {
        assert_eq!(table.len(), m as usize);
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let c = counts(table);
        let mut seen = 0;
        for b in backends {
            let got = c.get(&b.id).copied().unwrap_or(0);
            if b.weight == 0 {
                assert_eq!(got, 0, "drained backend {} holds slots", b.id);
                continue;
            }
            seen += got;
            let exact = u128::from(m) * u128::from(b.weight);
            let have = u128::from(got) * u128::from(total);
            assert!(
                have.abs_diff(exact) < u128::from(total),
                "backend {} has {got} slots, share {}",
                b.id,
                exact as f64 / total as f64
            );
            let ideal = exact as f64 / total as f64;
            if ideal >= 100.0 {
                assert!((got as f64 - ideal).abs() <= ideal * 0.01);
            }
        }
        assert_eq!(seen, u64::from(m), "table holds ids of no positive backend");
    }

    /// No slot whose previous owner is in `survivors` changed owner.
    fn assert_strict(prev: &[u32], next: &[u32], survivors: &HashSet<u32>) {
        for (s, (&a, &b)) in prev.iter().zip(next).enumerate() {
            if survivors.contains(&a) {
                assert_eq!(a, b, "slot {s} moved from survivor {a} to {b}");
            }
        }
    }

    fn ids(backends: &[RingBackend]) -> HashSet<u32> {
        backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| b.id)
            .collect()
    }

    #[test]
    fn permutation_position_inverts_the_walk() {
        // Non-prime sizes too: their skips are made coprime with m.
        for m in [2u32, 3, 4, 7, 100, 251, 65536, 65537, 655_373] {
            for key in 0..20u64 {
                let p = Perm::new(splitmix64(key), m, is_prime(m));
                assert!(p.skip >= 1 && p.skip < m.max(2));
                assert_eq!(
                    gcd(u64::from(p.skip), u64::from(m)),
                    1,
                    "skip {} m {m}",
                    p.skip
                );
                let inv = mod_inverse(p.skip, m).unwrap();
                let m64 = u64::from(m);
                for j in [0u64, 1, 2, u64::from(m) / 2, m64 - 1] {
                    let slot = (u64::from(p.offset) + j * u64::from(p.skip)) % m64;
                    let delta = (slot + m64 - u64::from(p.offset)) % m64;
                    assert_eq!(delta * u64::from(inv) % m64, j % m64);
                }
            }
        }
        assert_eq!(mod_inverse(4, 8), None);
        assert_eq!(mod_inverse(3, 7), Some(5));
    }

    #[test]
    fn maglev_share_within_one_percent() {
        for n in [1u32, 2, 3, 7, 10, 50, 100] {
            let b = equal(n);
            let table = maglev(&b, M, None);
            assert_balanced(&b, M, &table);
        }
        let b = cycling(100);
        let table = maglev(&b, M, None);
        assert_balanced(&b, M, &table);
    }

    #[test]
    fn maglev_small_and_odd_sizes_are_complete_and_balanced() {
        for m in [2u32, 3, 5, 7, 13, 251] {
            for n in [1u32, 2, 3, 5, 10, 20] {
                let b = cycling(n);
                assert_balanced(&b, m, &maglev(&b, m, None));
                let b = equal(n);
                assert_balanced(&b, m, &maglev(&b, m, None));
            }
        }
        // Non-prime sizes are the caller's bug, but must still terminate and balance,
        // fresh and from a previous table.
        for m in [1u32, 4, 100, 65536] {
            let b = cycling(30);
            let prev = maglev(&b, m, None);
            assert_balanced(&b, m, &prev);
            let mut fewer = b.clone();
            fewer.remove(7);
            assert_balanced(&fewer, m, &maglev(&fewer, m, Some(&prev)));
            let mut more = b.clone();
            more.push(backend(30, 25));
            assert_balanced(&more, m, &maglev(&more, m, Some(&prev)));
        }
    }

    fn check_removal(b: &[RingBackend], m: u32, remove: usize) {
        let prev = maglev(b, m, None);
        let mut after = b.to_vec();
        let gone = after.remove(remove);
        let next = maglev(&after, m, Some(&prev));
        assert_balanced(&after, m, &next);
        assert!(!next.contains(&gone.id));
        assert_strict(&prev, &next, &ids(&after));
    }

    #[test]
    fn maglev_removal_is_strict() {
        for n in [3u32, 10, 100] {
            let b = equal(n);
            let n = n as usize;
            for remove in [0, n / 2, n - 1] {
                check_removal(&b, M, remove);
            }
        }
        // Also for the weighted set used above and a small ring.
        let b = cycling(100);
        for remove in [0, 1, 50, 99] {
            check_removal(&b, M, remove);
        }
        for remove in [0, 5, 9] {
            check_removal(&equal(10), 251, remove);
        }
    }

    /// The rare case where strictness and balance conflict: three tiny backends kept
    /// one slot each but only two remainder units exist. Balance wins; exactly one
    /// survivor gives up exactly one slot, and the general guarantees still hold.
    #[test]
    fn maglev_removal_when_balance_forces_a_move() {
        let m = 31;
        let b: Vec<RingBackend> = [651u32, 174, 43, 869, 54, 38, 582]
            .iter()
            .enumerate()
            .map(|(i, &w)| backend(i as u32, w))
            .collect();
        let prev = maglev(&b, m, None);
        assert_balanced(&b, m, &prev);
        let mut after = b.clone();
        after.remove(1);
        let next = maglev(&after, m, Some(&prev));
        assert_balanced(&after, m, &next);
        assert_prev_guarantees(&prev, &next, &after);
        let live = ids(&after);
        let moved: Vec<u32> = prev
            .iter()
            .zip(&next)
            .filter(|(a, z)| live.contains(a) && a != z)
            .map(|(&a, _)| a)
            .collect();
        assert_eq!(moved.len(), 1);
        assert!([2, 4, 5].contains(&moved[0]), "a tiny backend releases");
    }

    #[test]
    fn maglev_successive_removals_stay_strict() {
        let mut b = equal(20);
        let mut table = maglev(&b, M, None);
        for remove in [3usize, 0, 10, 15, 7] {
            b.remove(remove);
            let next = maglev(&b, M, Some(&table));
            assert_balanced(&b, M, &next);
            assert_strict(&table, &next, &ids(&b));
            table = next;
        }
    }

    #[test]
    fn maglev_drain_equals_removal() {
        for n in [3u32, 10, 100] {
            let b = equal(n);
            let prev = maglev(&b, M, None);
            for which in [0usize, n as usize / 2, n as usize - 1] {
                let mut drained = b.clone();
                drained[which].weight = 0;
                let mut removed = b.clone();
                removed.remove(which);
                let by_drain = maglev(&drained, M, Some(&prev));
                let by_removal = maglev(&removed, M, Some(&prev));
                assert_eq!(by_drain, by_removal);
                assert_balanced(&drained, M, &by_drain);
                assert_strict(&prev, &by_drain, &ids(&drained));
                // A fresh build does not care either.
                assert_eq!(maglev(&drained, M, None), maglev(&removed, M, None));
            }
        }
    }

    /// Adding one backend to N=10 equal ones: every slot that changes owner goes to
    /// the new backend (guaranteed for equal weights whenever floor(m/N) >
    /// floor(m/(N+1)): all old backends then shrink, so none can gain a slot).
    #[test]
    fn maglev_add_moves_slots_only_to_the_new_backend() {
        let b = equal(10);
        let prev = maglev(&b, M, None);
        let mut after = b.clone();
        after.push(backend(10, 1));
        let next = maglev(&after, M, Some(&prev));
        assert_balanced(&after, M, &next);
        let mut moved = 0;
        for (&a, &z) in prev.iter().zip(&next) {
            if a != z {
                assert_eq!(z, 10, "slot moved from {a} to old backend {z}");
                moved += 1;
            }
        }
        assert_eq!(moved, counts(&next)[&10]);
    }

    /// General guarantee with a previous table (any weights, any change): a slot only
    /// moves to a surviving backend whose slot count grew and which kept every slot it
    /// had; a surviving backend only loses slots if its count shrank.
    fn assert_prev_guarantees(prev: &[u32], next: &[u32], after: &[RingBackend]) {
        let (pc, nc) = (counts(prev), counts(next));
        let live = ids(after);
        let mut gained_from_old: HashMap<u32, u64> = HashMap::new();
        for (&a, &z) in prev.iter().zip(next) {
            if a == z {
                continue;
            }
            if live.contains(&a) {
                assert!(
                    nc.get(&a).copied().unwrap_or(0) < pc[&a],
                    "{a} lost a slot but did not shrink"
                );
            }
            if let Some(&before) = pc.get(&z) {
                assert!(nc[&z] > before, "{z} gained a slot but did not grow");
                *gained_from_old.entry(z).or_insert(0) += 1;
            }
        }
        // Grew only by what it received: it kept all its old slots.
        for (z, g) in &gained_from_old {
            assert_eq!(nc[z] - pc[z], *g);
        }
        for (&a, &z) in prev.iter().zip(next) {
            if gained_from_old.contains_key(&a) {
                assert_eq!(z, a, "{a} received slots but also lost one");
            }
        }
    }

    #[test]
    fn maglev_weighted_changes_keep_guarantees() {
        let mut rng = Rng(42);
        for round in 0..50 {
            let n = 2 + rng.below(40) as u32;
            let m = [13u32, 251, 1009, 4099, 65537][round % 5];
            let b: Vec<RingBackend> = (0..n)
                .map(|i| backend(i, 1 + rng.below(20) as u32))
                .collect();
            let prev = maglev(&b, m, None);
            // add one
            let mut after = b.clone();
            after.push(backend(n, 1 + rng.below(20) as u32));
            let next = maglev(&after, m, Some(&prev));
            assert_balanced(&after, m, &next);
            assert_prev_guarantees(&prev, &next, &after);
            // change one weight
            let mut after = b.clone();
            let i = rng.below(u64::from(n)) as usize;
            after[i].weight = 1 + rng.below(40) as u32;
            let next = maglev(&after, m, Some(&prev));
            assert_balanced(&after, m, &next);
            assert_prev_guarantees(&prev, &next, &after);
            // remove one
            let mut after = b.clone();
            after.remove(rng.below(u64::from(n)) as usize);
            let next = maglev(&after, m, Some(&prev));
            assert_balanced(&after, m, &next);
            assert_prev_guarantees(&prev, &next, &after);
        }
    }

    #[test]
    fn maglev_rebuild_with_same_config_changes_nothing() {
        for b in [equal(10), cycling(100)] {
            let prev = maglev(&b, M, None);
            assert_eq!(maglev(&b, M, Some(&prev)), prev);
        }
    }

    #[test]
    fn maglev_prev_of_wrong_length_is_ignored() {
        let b = equal(10);
        let fresh = maglev(&b, M, None);
        let other = maglev(&equal(3), 251, None);
        assert_eq!(maglev(&b, M, Some(&other)), fresh);
    }

    #[test]
    fn maglev_large_ids_use_sorted_index() {
        let b: Vec<RingBackend> = (0..10)
            .map(|i| RingBackend {
                id: 1_000_000 + i * 7,
                ..backend(i, 1)
            })
            .collect();
        let prev = maglev(&b, M, None);
        let mut after = b.clone();
        after.remove(4);
        let next = maglev(&after, M, Some(&prev));
        assert_balanced(&after, M, &next);
        assert_strict(&prev, &next, &ids(&after));
    }

    #[test]
    fn maglev_order_independent() {
        let mut rng = Rng(7);
        for b in [equal(10), cycling(100)] {
            let reference = maglev(&b, M, None);
            let mut shuffled = b.clone();
            for _ in 0..3 {
                rng.shuffle(&mut shuffled);
                assert_eq!(maglev(&shuffled, M, None), reference);
            }
            shuffled.reverse();
            assert_eq!(maglev(&shuffled, M, None), reference);
        }
    }

    #[test]
    fn maglev_no_backends_gives_no_backend() {
        assert_eq!(maglev(&[], M, None), vec![NO_BACKEND; M as usize]);
        let mut b = equal(5);
        let prev = maglev(&b, M, None);
        for x in &mut b {
            x.weight = 0;
        }
        assert_eq!(maglev(&b, M, None), vec![NO_BACKEND; M as usize]);
        assert_eq!(maglev(&b, M, Some(&prev)), vec![NO_BACKEND; M as usize]);
        // And coming back from an empty table is a normal fresh build.
        let empty = vec![NO_BACKEND; M as usize];
        let b = equal(5);
        assert_eq!(maglev(&b, M, Some(&empty)), maglev(&b, M, None));
        assert!(maglev(&b, 0, None).is_empty());
    }

    /// Runs in well under a second in debug builds, so it is not #[ignore]d.
    #[test]
    fn maglev_large_ring_1000_backends() {
        let m = 655_373;
        let b = equal(1000);
        let table = maglev(&b, m, None);
        assert_balanced(&b, m, &table);
        let mut after = b.clone();
        after.remove(500);
        let next = maglev(&after, m, Some(&table));
        assert_balanced(&after, m, &next);
        assert_strict(&table, &next, &ids(&after));
        let b = cycling(1000);
        assert_balanced(&b, m, &maglev(&b, m, None));
    }

    fn time_build(b: &[RingBackend], m: u32) -> (f64, f64) {
        let reps = 20;
        let start = Instant::now();
        let mut table = Vec::new();
        for _ in 0..reps {
            table = maglev(b, m, None);
        }
        let fresh = start.elapsed().as_secs_f64() * 1e3 / f64::from(reps);
        let mut after = b.to_vec();
        after.remove(after.len() / 2);
        let start = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(maglev(&after, m, Some(&table)));
        }
        let removal = start.elapsed().as_secs_f64() * 1e3 / f64::from(reps);
        (fresh, removal)
    }

    /// `cargo test --release -- --ignored --nocapture maglev_timing`
    #[test]
    #[ignore = "timing report, run in release"]
    fn maglev_timing() {
        for (m, n) in [(M, 10u32), (M, 100), (M, 1000), (655_373, 1000)] {
            let (fresh, removal) = time_build(&equal(n), m);
            println!("m={m} n={n}: fresh {fresh:.3} ms, removal with prev {removal:.3} ms");
        }
        let (fresh, removal) = time_build(&cycling(1000), M);
        println!("m={M} n=1000 weighted 1..=10: fresh {fresh:.3} ms, removal {removal:.3} ms");
        for n in [10u32, 1000] {
            let b = equal(n);
            let prev = maglev(&b, M, None);
            let mut after = b.clone();
            after.push(backend(n, 1));
            let start = Instant::now();
            std::hint::black_box(maglev(&after, M, Some(&prev)));
            let ms = start.elapsed().as_secs_f64() * 1e3;
            println!("m={M} n={n}: adding one backend with prev {ms:.3} ms");
        }
        let b: Vec<RingBackend> = (0..4096).map(|i| backend(i, 1 + i % 7)).collect();
        let start = Instant::now();
        let seq = round_robin(&b, M);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        println!(
            "round_robin 4096 backends, {} entries: {ms:.3} ms",
            seq.len()
        );
    }

    /// Exploration: how often a single removal from a fresh weighted table is not
    /// strict (not guaranteed in general; see the module docs).
    #[test]
    #[ignore = "slow statistical exploration"]
    fn maglev_weighted_removal_exploration() {
        let mut rng = Rng(1);
        let (mut cases, mut violations, mut moved) = (0, 0, 0);
        for round in 0..3000 {
            let n = 2 + rng.below(60) as u32;
            let m = [13u32, 251, 1009, 4099, 65537][round % 5];
            let b: Vec<RingBackend> = (0..n)
                .map(|i| backend(i, 1 + rng.below(30) as u32))
                .collect();
            let prev = maglev(&b, m, None);
            let mut after = b.clone();
            after.remove(rng.below(u64::from(n)) as usize);
            let next = maglev(&after, m, Some(&prev));
            assert_balanced(&after, m, &next);
            let live = ids(&after);
            let bad = prev
                .iter()
                .zip(&next)
                .filter(|(a, z)| live.contains(a) && a != z)
                .count();
            cases += 1;
            if bad > 0 {
                violations += 1;
                moved += bad;
            }
        }
        println!("{violations}/{cases} non-strict removals, {moved} slots moved");
    }
}
