//! The agent's model of pools, backends and VIPs, and how each maps to the data plane's
//! entries.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use balancer_common::{
    Addr, Backend, BACKEND_F_PRESENT, BACKEND_F_RESCHEDULE, MAX_SNAT_ADDRS, PROTO_TCP, PROTO_UDP,
};

use crate::{
    api::LastCheck,
    config::{DownPolicy, Protocol, VipConfig},
    dataplane::{
        family::{v4_word, v6_words},
        AnyBackend, AnyVipKey,
    },
    health::{self, config::CheckConfig, Health, LatestSlot},
};

#[derive(Clone, Debug)]
pub(super) struct PoolBackend {
    pub(super) addr: SocketAddr,
    pub(super) weight: u32,
    pub(super) id: u32,
    /// Source addresses the data plane uses towards this backend (at least one).
    /// Of the backend's family.
    pub(super) snat_addrs: Vec<IpAddr>,
    pub(super) check: CheckConfig,
    pub(super) health: Health,
    /// Added at run time with a check, and not checked yet: down (it takes no flows), but
    /// not failed either.
    pub(super) unchecked: bool,
    pub(super) last_check: Option<LastCheck>,
    /// Where the backend's check task keeps its newest check (newer than `last_check`,
    /// which only changes with the result).
    pub(super) latest: Option<LatestSlot>,
    /// Number of that task ([`health::LatestCheck::task`]); results of other tasks are
    /// ignored. 0 until a task is started.
    pub(super) check_task: u64,
    pub(super) changed_at: Instant,
    pub(super) change_reason: String,
    /// Health changes (up to down and back) since the backend was added.
    pub(super) transitions: u64,
    /// Its SNAT ports' use, as the data plane's first probes tell (see [`super::snat_use`]).
    pub(super) snat_use: super::snat_use::SnatUse,
}

impl PoolBackend {
    /// The newest check: from the check task's slot when there is one.
    pub(super) fn newest_check(&self) -> Option<LastCheck> {
        let from_slot = self.latest.as_ref().and_then(|slot| {
            health::latest(slot).outcome.map(|o| LastCheck {
                ok: o.ok,
                latency_ms: o.latency.as_secs_f64() * 1000.0,
                reason: o.reason,
            })
        });
        from_slot.or_else(|| self.last_check.clone())
    }

    /// Takes new flows: not drained and not down.
    pub(super) fn usable(&self) -> bool {
        self.weight > 0 && self.health == Health::Up
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct Pool {
    pub(super) backends: Vec<PoolBackend>,
    /// Check of backends added later (from the CLI).
    pub(super) check: CheckConfig,
    pub(super) on_backend_down: DownPolicy,
    /// Build its VIPs' Maglev rings from the backend set alone, not from the previous
    /// ring (pools from discovery): every agent that watches the same prefix then has the
    /// same ring, whatever order and batches the changes came in. Established flows keep
    /// their backend anyway (the connection table); only new flows' spread moves more.
    pub(super) fresh_rings: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Vip {
    pub(super) config: VipConfig,
    pub(super) id: u32,
    /// Distinguishes this VIP from earlier holders of `id` (`VipMeta::generation`).
    pub(super) generation: u32,
    /// Which ring slice the kernel reads (0 or 1).
    pub(super) active_slice: u32,
    /// What each slice holds in the kernel, so a rebuild writes only changed slots.
    pub(super) slices: [Vec<u32>; 2],
}

impl Vip {
    pub(super) fn key(&self) -> AnyVipKey {
        vip_key(&self.config)
    }
}

pub(super) fn vip_key(c: &VipConfig) -> AnyVipKey {
    let proto = match c.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    AnyVipKey::new(c.address, c.port, proto)
}

/// The data plane's view of a backend, in its family's map.
pub(super) fn backend_entry(b: &PoolBackend, policy: DownPolicy) -> AnyBackend {
    let mut flags = BACKEND_F_PRESENT;
    // A backend not checked yet has no flows of its own to move.
    if b.health == Health::Down && !b.unchecked && policy == DownPolicy::Shutdown {
        flags |= BACKEND_F_RESCHEDULE;
    }
    match b.addr.ip() {
        IpAddr::V4(addr) => AnyBackend::V4(entry(v4_word(addr), b, flags, |a| match a {
            IpAddr::V4(a) => Some(v4_word(a)),
            IpAddr::V6(_) => None,
        })),
        IpAddr::V6(addr) => AnyBackend::V6(entry(v6_words(addr), b, flags, |a| match a {
            IpAddr::V6(a) => Some(v6_words(a)),
            IpAddr::V4(_) => None,
        })),
    }
}

/// Backend `b`'s entry at `addr` (its address in the family `A`), with its SNAT sources
/// of that family (`word`: the address in `A`, none for the other family's).
fn entry<A: Addr>(
    addr: A,
    b: &PoolBackend,
    flags: u32,
    word: impl Fn(IpAddr) -> Option<A>,
) -> Backend<A> {
    let sources: Vec<A> = b.snat_addrs.iter().filter_map(|&a| word(a)).collect();
    // Every slot filled, the addresses repeated (see `Backend::snat_addrs`).
    let mut snat_addrs = [A::default(); MAX_SNAT_ADDRS];
    for (slot, source) in snat_addrs.iter_mut().zip(sources.iter().cycle()) {
        *slot = *source;
    }
    Backend {
        addr,
        port: b.addr.port().to_be(),
        _pad: 0,
        flags,
        snat_addrs,
    }
}
