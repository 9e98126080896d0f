//! Smooth weighted round-robin sequences (nginx's algorithm) laid out in a VIP's ring
//! slice, so weights cost the kernel nothing: nginx's smooth weighted round-robin over the
//! positive-weight backends in input order, after dividing the weights by their gcd.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::{gcd, RingBackend};

/// A scaled entry count in [`scale_counts`]'s heap, ordered by how over-served it is.
#[derive(PartialEq, Eq)]
struct Scaled {
    count: u64,
    weight: u64,
    index: usize,
}

impl Ord for Scaled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Larger count/weight first, then the later backend.
        let lhs = u128::from(self.count) * u128::from(other.weight);
        let rhs = u128::from(other.count) * u128::from(self.weight);
        lhs.cmp(&rhs).then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Scaled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Apportions `target` entries (at least one per weight) by `weights` (all > 0):
/// largest remainder, then backends rounded down to 0 are raised to 1 and the units
/// are taken back from the most over-served backends that have more than one.
fn scale_counts(weights: &[u64], target: u64) -> Vec<u64> {
    let target = target.max(weights.len() as u64);
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut counts = Vec::with_capacity(weights.len());
    let mut rem = Vec::with_capacity(weights.len());
    for &w in weights {
        let share = u128::from(target) * u128::from(w);
        counts.push((share / total) as u64);
        rem.push(share % total);
    }
    let units = (target - counts.iter().sum::<u64>()) as usize;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_unstable_by_key(|&i| (Reverse(rem[i]), i));
    for &i in &order[..units] {
        counts[i] += 1;
    }
    let mut deficit = 0u64;
    for c in counts.iter_mut().filter(|c| **c == 0) {
        *c = 1;
        deficit += 1;
    }
    if deficit > 0 {
        let mut heap: BinaryHeap<Scaled> = counts
            .iter()
            .zip(weights)
            .enumerate()
            .filter(|&(_, (&c, _))| c > 1)
            .map(|(index, (&count, &weight))| Scaled {
                count,
                weight,
                index,
            })
            .collect();
        // sum(counts) - n = target + deficit - n >= deficit, so the heap never runs dry.
        while deficit > 0 {
            let Some(mut top) = heap.pop() else { break };
            top.count -= 1;
            counts[top.index] = top.count;
            deficit -= 1;
            if top.count > 1 {
                heap.push(top);
            }
        }
    }
    counts
}

/// Weighted round-robin sequence (smooth weighted round-robin like nginx's), length = sum of
/// (weight / gcd of all positive weights), scaled down proportionally if that exceeds `max_len`
/// (every positive-weight backend keeps at least one entry). Empty Vec if no positive weight.
///
/// Backends are taken in input order (it decides ties, as in nginx: the earliest
/// backend with the highest current weight is picked). When scaling, the counts are
/// a largest-remainder apportionment of exactly `max_len` entries, adjusted so that
/// every positive backend keeps one; if there are more positive backends than
/// `max_len`, each gets exactly one entry (the length then exceeds `max_len`).
/// Cost is O(length * distinct weights), at most O(length^1.5).
#[must_use]
pub fn round_robin(backends: &[RingBackend], max_len: u32) -> Vec<u32> {
    let live: Vec<&RingBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    let g = live.iter().fold(0u64, |g, b| gcd(g, u64::from(b.weight)));
    let mut weights: Vec<u64> = live.iter().map(|b| u64::from(b.weight) / g).collect();
    let total: u64 = weights.iter().sum();
    if total > u64::from(max_len) {
        weights = scale_counts(&weights, u64::from(max_len));
    }
    smooth_sequence(&live, &weights)
}

/// Backends of one (scaled) weight in a smooth weighted round-robin.
struct WeightClass {
    weight: u64,
    /// Indices into the backend list, ascending.
    members: Vec<usize>,
    /// Every member has been picked `rounds` times, those before `next` once more.
    rounds: u64,
    next: usize,
}

/// nginx's smooth weighted round-robin: each step adds every weight to its backend's
/// current weight, picks the earliest backend with the largest current weight and
/// subtracts the total from it. After t steps backend i's current weight is
/// `t * w_i - total * picks_i`, so among backends of equal weight the pick goes to
/// the earliest one picked least often, i.e. they take turns in index order. That
/// makes each step O(distinct weights), and distinct positive weights summing to
/// `total` number at most sqrt(2 * total).
fn smooth_sequence(live: &[&RingBackend], weights: &[u64]) -> Vec<u32> {
    let mut by_weight: Vec<(u64, usize)> = weights.iter().copied().zip(0..).collect();
    by_weight.sort_unstable();
    let mut classes: Vec<WeightClass> = Vec::new();
    for (weight, index) in by_weight {
        match classes.last_mut() {
            Some(class) if class.weight == weight => class.members.push(index),
            _ => classes.push(WeightClass {
                weight,
                members: vec![index],
                rounds: 0,
                next: 0,
            }),
        }
    }
    let total: u64 = weights.iter().sum();
    let mut out = Vec::with_capacity(total as usize);
    for step in 1..=total {
        let mut best = 0;
        let mut best_value = i128::MIN;
        let mut best_index = usize::MAX;
        for (c, class) in classes.iter().enumerate() {
            let value = i128::from(step) * i128::from(class.weight)
                - i128::from(total) * i128::from(class.rounds);
            let index = class.members[class.next];
            if value > best_value || (value == best_value && index < best_index) {
                (best, best_value, best_index) = (c, value, index);
            }
        }
        out.push(live[best_index].id);
        let class = &mut classes[best];
        class.next += 1;
        if class.next == class.members.len() {
            class.next = 0;
            class.rounds += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::*;

    fn rr(weights: &[u32], max_len: u32) -> Vec<u32> {
        let b: Vec<RingBackend> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| backend(i as u32, w))
            .collect();
        round_robin(&b, max_len)
    }

    /// nginx's algorithm verbatim, O(length * backends).
    fn naive_swrr(weights: &[u64]) -> Vec<u32> {
        let total: u64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = Vec::new();
        for _ in 0..total {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += weights[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            out.push(best as u32);
        }
        out
    }

    #[test]
    fn round_robin_matches_nginx_reference() {
        let mut rng = Rng(99);
        for _ in 0..300 {
            let n = 1 + rng.below(12) as usize;
            let max_w = [1u64, 2, 3, 10, 50][rng.below(5) as usize];
            let weights: Vec<u32> = (0..n).map(|_| rng.below(max_w + 1) as u32).collect();
            let positive: Vec<(u32, u64)> = weights
                .iter()
                .enumerate()
                .filter(|(_, &w)| w > 0)
                .map(|(i, &w)| (i as u32, u64::from(w)))
                .collect();
            let g = positive.iter().fold(0, |g, &(_, w)| gcd(g, w));
            let reduced: Vec<u64> = positive.iter().map(|&(_, w)| w / g).collect();
            let expected: Vec<u32> = naive_swrr(&reduced)
                .into_iter()
                .map(|k| positive[k as usize].0)
                .collect();
            assert_eq!(rr(&weights, 1_000_000), expected, "weights {weights:?}");
        }
    }

    #[test]
    fn round_robin_equal_weights() {
        assert_eq!(rr(&[1, 1, 1], 1000), [0, 1, 2]);
        assert_eq!(rr(&[7, 7, 7], 1000), [0, 1, 2]);
    }

    #[test]
    fn round_robin_is_smooth_like_nginx() {
        // nginx: a a b a c a a
        assert_eq!(rr(&[5, 1, 1], 1000), [0, 0, 1, 0, 2, 0, 0]);
        let seq = rr(&[5, 1, 1], 1000);
        let c = counts(&seq);
        assert_eq!((c[&0], c[&1], c[&2]), (5, 1, 1));
    }

    #[test]
    fn round_robin_reduces_by_gcd() {
        assert_eq!(rr(&[2, 4], 1000), [1, 0, 1]);
        assert_eq!(rr(&[6, 9, 3], 1000).len(), 6);
    }

    #[test]
    fn round_robin_skips_zero_weights() {
        assert_eq!(rr(&[0, 1, 0, 2], 1000), [3, 1, 3]);
        assert!(rr(&[0, 0], 1000).is_empty());
        assert!(rr(&[], 1000).is_empty());
    }

    #[test]
    fn round_robin_scales_to_max_len() {
        // 1000 + 1 + 1 > 100: scaled to exactly 100 entries, small ones keep one.
        let seq = rr(&[1000, 1, 1], 100);
        assert_eq!(seq.len(), 100);
        let c = counts(&seq);
        assert_eq!((c[&0], c[&1], c[&2]), (98, 1, 1));
        // Proportional scaling.
        let seq = rr(&[300, 200, 100, 1], 60);
        assert_eq!(seq.len(), 60);
        let c = counts(&seq);
        assert_eq!((c[&0], c[&1], c[&2], c[&3]), (30, 20, 9, 1));
        // Many tiny backends next to a huge one: every one keeps an entry.
        let mut w = vec![1u32; 50];
        w.push(1_000_000);
        let seq = rr(&w, 64);
        assert_eq!(seq.len(), 64);
        let c = counts(&seq);
        assert!((0..50).all(|i| c[&i] == 1));
        assert_eq!(c[&50], 14);
        // More positive backends than max_len: one entry each.
        let seq = rr(&[3, 5, 7, 11], 2);
        assert_eq!(seq.len(), 4);
        assert_eq!(counts(&seq).len(), 4);
        // Sum exactly max_len: untouched.
        assert_eq!(rr(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }
}
