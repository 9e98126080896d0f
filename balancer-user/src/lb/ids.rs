//! Ids and generations that follow what they name, so that an agent taking pinned flow
//! tables over gives each VIP and backend what the previous agent gave it.

use std::net::SocketAddr;

use crate::{dataplane::AnyVipKey, ring};

/// Ids that follow what they name (a VIP, a backend of a pool): each gets the first free
/// id from a hash of its identity, so an agent that takes pinned flow tables over gives
/// each the id the previous agent gave it, whatever the order of the file and whichever
/// others come and go (unless hashes collide: then that order decides; the data plane
/// copes, see `nat::renumbered` and `nat::must_move`).
pub(super) struct HashedIds {
    taken: Vec<bool>,
    /// How many are not taken.
    free: usize,
}

impl HashedIds {
    pub(super) fn new(limit: u32) -> Self {
        Self {
            taken: vec![false; limit as usize],
            free: limit as usize,
        }
    }

    pub(super) fn available(&self) -> usize {
        self.free
    }

    /// The first free id from `hash`'s, wrapping around.
    pub(super) fn alloc(&mut self, hash: u64) -> Option<u32> {
        let n = self.taken.len();
        let start = (hash % n as u64) as usize;
        let id = (0..n)
            .map(|i| (start + i) % n)
            .find(|&id| !self.taken[id])?;
        self.taken[id] = true;
        self.free -= 1;
        Some(id as u32)
    }

    pub(super) fn release(&mut self, id: u32) {
        if std::mem::replace(&mut self.taken[id as usize], false) {
            self.free += 1;
        }
    }
}

/// A hash of a backend's identity (its pool and address) that every agent computes alike.
pub(super) fn backend_hash(pool: &str, addr: SocketAddr) -> u64 {
    // FNV-1a over the pool's name.
    let pool_hash = pool.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ring::backend_key(addr.ip(), addr.port()) ^ pool_hash
}

/// A hash of a VIP's key that every agent computes alike (not std's, which is seeded).
pub(super) fn vip_hash(key: AnyVipKey) -> u64 {
    ring::backend_key(key.addr(), u16::from_be(key.port())) ^ u64::from(key.proto())
}

/// The generation of the VIP with hash `hash` when it is added for the `incarnation`th time
/// in this agent (from 0). The first is the same in every agent, so the flows of the VIP
/// that an agent took over from the previous one stay the VIP's; a VIP deleted and added
/// again gets another, so the flows of the deleted one stop. Never 0.
pub(super) fn vip_generation(hash: u64, incarnation: u32) -> u32 {
    match generation_base(hash).wrapping_add(incarnation.wrapping_mul(GENERATION_STEP)) {
        0 => 1,
        g => g,
    }
}

/// The first generation of the VIP with hash `hash`, before 0 is made 1.
pub(super) fn generation_base(hash: u64) -> u32 {
    (hash >> 32) as u32 ^ hash as u32
}

/// Generations step by this (odd, so invertible modulo 2^32) per re-add.
pub(super) const GENERATION_STEP: u32 = 0x9e37_79b9;

/// [`GENERATION_STEP`]'s inverse modulo 2^32, by Newton's iteration: an odd number is its
/// own inverse modulo 8, and each step doubles the correct low bits (3, 6, 12, 24, 48).
pub(super) const GENERATION_STEP_INVERSE: u32 = {
    let mut x = GENERATION_STEP;
    let mut i = 0;
    while i < 4 {
        x = x.wrapping_mul(2u32.wrapping_sub(GENERATION_STEP.wrapping_mul(x)));
        i += 1;
    }
    x
};
const _: () = assert!(GENERATION_STEP.wrapping_mul(GENERATION_STEP_INVERSE) == 1);

/// How many re-adds of a VIP in all (they count on from agent to agent) a later agent
/// recognizes in the generation it finds in `VIP_GENS` ([`Balancer::from_config`]); after
/// more, the VIP's flows are scheduled again as after a delete.
pub(super) const GENERATIONS_RECOGNIZED: u32 = 1 << 16;

/// Which incarnation of the VIP with hash `hash` has `generation`, if one of the first
/// [`GENERATIONS_RECOGNIZED`] does.
pub(super) fn incarnation_of(hash: u64, generation: u32) -> Option<u32> {
    if generation == 0 {
        return None;
    }
    // A generation of 1 may also be a step that came to 0 (see `vip_generation`).
    let steps_to = |g: u32| {
        g.wrapping_sub(generation_base(hash))
            .wrapping_mul(GENERATION_STEP_INVERSE)
    };
    [steps_to(generation), steps_to(0)]
        .into_iter()
        .find(|&k| k < GENERATIONS_RECOGNIZED && vip_generation(hash, k) == generation)
}
