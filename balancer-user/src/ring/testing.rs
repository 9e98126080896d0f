//! Test helpers shared by the ring builders' tests.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{backend_key, splitmix64, RingBackend};

pub fn backend(i: u32, weight: u32) -> RingBackend {
    let addr = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    RingBackend {
        id: i,
        key: backend_key(addr, 8080),
        weight,
    }
}

pub fn equal(n: u32) -> Vec<RingBackend> {
    (0..n).map(|i| backend(i, 1)).collect()
}

pub fn cycling(n: u32) -> Vec<RingBackend> {
    (0..n).map(|i| backend(i, i % 10 + 1)).collect()
}

pub fn counts(table: &[u32]) -> HashMap<u32, u64> {
    let mut c = HashMap::new();
    for &id in table {
        *c.entry(id).or_insert(0) += 1;
    }
    c
}

/// Deterministic test RNG.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}
