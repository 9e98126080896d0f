//! The balancer: the agent's view of VIPs, pools and backends (the source of truth), and an
//! API shaped like Katran's `KatranLb` (`add_vip`, `del_vip`, `add_backend`, ...) that keeps
//! the data plane's maps derived from it.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::Instant,
};

use balancer_common::{
    stat, Backend, FlowStats, Settings, VipKey, VipMeta, BACKEND_F_PRESENT, BACKEND_F_RESCHEDULE,
    MAX_BACKENDS, MAX_RING_SIZE, MAX_VIPS, NO_BACKEND, PROTO_TCP, PROTO_UDP, RING_SLICES_PER_VIP,
    SCHED_MAGLEV, SCHED_ROUND_ROBIN, VIP_F_PASS_ALL_DOWN,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{
        self, AllDownPolicy, CheckConfig, Config, DownPolicy, NatConfig, PoolConfig, Protocol,
        Scheduler, Timeouts, VipConfig, MAX_WEIGHT,
    },
    health::{self, Health, HealthEvent, LatestSlot},
    maps::{Maps, MapsError},
    ring::{self, RingBackend},
};

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("unknown VIP {0:?}")]
    UnknownVip(String),
    #[error("no pool or VIP named {0:?}")]
    UnknownTarget(String),
    #[error("VIP {0:?} already exists")]
    DuplicateVip(String),
    #[error("VIP {name:?} already serves {address}:{port}/{protocol}")]
    DuplicateVipAddress {
        name: String,
        address: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    },
    #[error("backend {backend} is already in pool {pool:?}")]
    DuplicateBackend { pool: String, backend: SocketAddrV4 },
    #[error("backend {backend} is not in pool {pool:?}")]
    UnknownBackend { pool: String, backend: SocketAddrV4 },
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("too many VIPs (the data plane holds {MAX_VIPS})")]
    TooManyVips,
    #[error("too many backends (the data plane holds {MAX_BACKENDS} over all pools)")]
    TooManyBackends,
    #[error("no source address towards backend {backend}: {why}")]
    NoSourceAddress { backend: SocketAddrV4, why: String },
    #[error("data plane update failed: {0}")]
    Maps(#[from] MapsError),
    /// An error while applying one part of a configuration file.
    #[error("{place}: {error}")]
    In {
        place: String,
        error: Box<BalancerError>,
    },
}

/// How the SNAT source address towards a backend is chosen.
#[derive(Clone, Copy, Debug)]
pub enum SnatSource {
    /// Always this address.
    Fixed(Ipv4Addr),
    /// The address the routing table would use to reach the backend.
    Route,
}

impl SnatSource {
    fn resolve(self, backend: SocketAddrV4) -> Result<Ipv4Addr, BalancerError> {
        match self {
            SnatSource::Fixed(addr) => Ok(addr),
            SnatSource::Route => {
                // connect() on a UDP socket sends nothing; it asks the kernel for the route.
                let err = |e: std::io::Error| BalancerError::NoSourceAddress {
                    backend,
                    why: e.to_string(),
                };
                let socket = UdpSocket::bind("0.0.0.0:0").map_err(err)?;
                socket.connect(backend).map_err(err)?;
                match socket.local_addr().map_err(err)?.ip() {
                    std::net::IpAddr::V4(addr) => Ok(addr),
                    other => Err(BalancerError::NoSourceAddress {
                        backend,
                        why: format!("route gives non-IPv4 source {other}"),
                    }),
                }
            }
        }
    }
}

/// Counters of a VIP or a backend, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl From<FlowStats> for Counters {
    fn from(s: FlowStats) -> Self {
        Counters {
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            reply_packets: s.reply_packets,
            reply_bytes: s.reply_bytes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    #[serde(flatten)]
    pub config: VipConfig,
    /// Backends that take new flows (weight > 0 and up).
    pub active_backends: usize,
    pub counters: Counters,
}

/// The newest health check of a backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastCheck {
    pub ok: bool,
    pub latency_ms: f64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// "active", "drained" (weight 0) or "down" (failed its health checks).
    pub state: String,
    pub health: Health,
    /// Check type ("none", "tcp", "http", "udp").
    pub check: String,
    pub last_check: Option<LastCheck>,
    /// Seconds since the health last changed (or since the backend was added).
    pub since_change_secs: f64,
    /// Why the health last changed.
    pub change_reason: String,
    pub counters: Counters,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub on_backend_down: DownPolicy,
    pub backends: Vec<BackendStatus>,
}

/// Everything `balancer status` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub vips: Vec<VipStatus>,
    pub pools: Vec<PoolStatus>,
    /// Verdicts and drop/pass reasons (`balancer_common::stat::NAMES`).
    pub global: BTreeMap<String, u64>,
}

#[derive(Clone, Debug)]
struct PoolBackend {
    addr: SocketAddrV4,
    weight: u32,
    id: u32,
    /// Source address the data plane uses towards this backend.
    snat_addr: Ipv4Addr,
    check: CheckConfig,
    health: Health,
    last_check: Option<LastCheck>,
    /// Where the backend's check task keeps its newest check (newer than `last_check`,
    /// which only changes with the result).
    latest: Option<LatestSlot>,
    /// Number of that task ([`health::LatestCheck::task`]); results of other tasks are
    /// ignored. 0 until a task is started.
    check_task: u64,
    changed_at: Instant,
    change_reason: String,
}

impl PoolBackend {
    /// The newest check: from the check task's slot when there is one.
    fn newest_check(&self) -> Option<LastCheck> {
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
    fn usable(&self) -> bool {
        self.weight > 0 && self.health == Health::Up
    }
}

#[derive(Clone, Debug, Default)]
struct Pool {
    backends: Vec<PoolBackend>,
    /// Check of backends added later (from the CLI).
    check: CheckConfig,
    on_backend_down: DownPolicy,
}

#[derive(Clone, Debug)]
struct Vip {
    config: VipConfig,
    id: u32,
    /// Distinguishes this VIP from earlier holders of `id` (`VipMeta::generation`).
    generation: u32,
    /// Which ring slice the kernel reads (0 or 1).
    active_slice: u32,
    /// What each slice holds in the kernel, so a rebuild writes only changed slots.
    slices: [Vec<u32>; 2],
}

impl Vip {
    fn key(&self) -> VipKey {
        vip_key(&self.config)
    }
}

fn vip_key(c: &VipConfig) -> VipKey {
    VipKey {
        addr: u32::from_ne_bytes(c.address.octets()),
        port: c.port.to_be(),
        proto: match c.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        _pad: 0,
    }
}

/// Ids that follow what they name (a VIP, a backend of a pool): each gets the first free
/// id from a hash of its identity, so an agent that takes pinned flow tables over gives
/// each the id the previous agent gave it, whatever the order of the file and whichever
/// others come and go (unless hashes collide: then that order decides; the data plane
/// copes, see `nat::renumbered` and `nat::must_move`).
struct HashedIds {
    taken: Vec<bool>,
    /// How many are not taken.
    free: usize,
}

impl HashedIds {
    fn new(limit: u32) -> Self {
        Self {
            taken: vec![false; limit as usize],
            free: limit as usize,
        }
    }

    fn available(&self) -> usize {
        self.free
    }

    /// The first free id from `hash`'s, wrapping around.
    fn alloc(&mut self, hash: u64) -> Option<u32> {
        let n = self.taken.len();
        let start = (hash % n as u64) as usize;
        let id = (0..n)
            .map(|i| (start + i) % n)
            .find(|&id| !self.taken[id])?;
        self.taken[id] = true;
        self.free -= 1;
        Some(id as u32)
    }

    fn release(&mut self, id: u32) {
        if std::mem::replace(&mut self.taken[id as usize], false) {
            self.free += 1;
        }
    }
}

/// A hash of a backend's identity (its pool and address) that every agent computes alike.
fn backend_hash(pool: &str, addr: SocketAddrV4) -> u64 {
    // FNV-1a over the pool's name.
    let pool_hash = pool.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    ring::backend_key(*addr.ip(), addr.port()) ^ pool_hash
}

/// A hash of a VIP's key that every agent computes alike (not std's, which is seeded).
fn vip_hash(key: &VipKey) -> u64 {
    let addr = Ipv4Addr::from(key.addr.to_ne_bytes());
    ring::backend_key(addr, u16::from_be(key.port)) ^ u64::from(key.proto)
}

/// The generation of the VIP with hash `hash` when it is added for the `incarnation`th time
/// in this agent (from 0). The first is the same in every agent, so the flows of the VIP
/// that an agent took over from the previous one stay the VIP's; a VIP deleted and added
/// again gets another, so the flows of the deleted one stop. Never 0.
fn vip_generation(hash: u64, incarnation: u32) -> u32 {
    match generation_base(hash).wrapping_add(incarnation.wrapping_mul(GENERATION_STEP)) {
        0 => 1,
        g => g,
    }
}

/// The first generation of the VIP with hash `hash`, before 0 is made 1.
fn generation_base(hash: u64) -> u32 {
    (hash >> 32) as u32 ^ hash as u32
}

/// Generations step by this (odd, so invertible modulo 2^32) per re-add.
const GENERATION_STEP: u32 = 0x9e37_79b9;

/// [`GENERATION_STEP`]'s inverse modulo 2^32, by Newton's iteration: an odd number is its
/// own inverse modulo 8, and each step doubles the correct low bits (3, 6, 12, 24, 48).
const GENERATION_STEP_INVERSE: u32 = {
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
const GENERATIONS_RECOGNIZED: u32 = 1 << 16;

/// Which incarnation of the VIP with hash `hash` has `generation`, if one of the first
/// [`GENERATIONS_RECOGNIZED`] does.
fn incarnation_of(hash: u64, generation: u32) -> Option<u32> {
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

/// Kernel settings derived from the configuration.
pub fn settings(timeouts: &Timeouts, nat: &NatConfig) -> Settings {
    Settings {
        tcp_timeout_ns: timeouts.tcp.as_nanos() as u64,
        tcp_unreplied_timeout_ns: timeouts.tcp_unreplied.min(timeouts.tcp).as_nanos() as u64,
        udp_timeout_ns: timeouts.udp.as_nanos() as u64,
        closing_timeout_ns: timeouts.tcp_closing.as_nanos() as u64,
        snat_time_wait_ns: timeouts.snat_time_wait.as_nanos() as u64,
        snat_port_min: nat.port_min,
        snat_port_max: nat.port_max,
        flow_epoch: 0,
        ns_per_tick: ns_per_tick(),
        _pad: 0,
    }
}

/// The kernel's tick length in ns: the resolution of `CLOCK_MONOTONIC_COARSE`, which
/// advances once per tick (4 ms at HZ=250). 0 when that cannot be read or makes no sense
/// (the data plane then uses its coarse clock helper).
pub fn ns_per_tick() -> u32 {
    // SAFETY: an all-zero timespec is valid; clock_getres only writes it.
    let mut res: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `res` is valid for writes.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    if rc != 0 || res.tv_sec != 0 {
        return 0;
    }
    // A tick of HZ = 100 to 1000 (10 ms to 1 ms); anything else is not a jiffy.
    u32::try_from(res.tv_nsec)
        .ok()
        .filter(|ns| (1_000_000..=10_000_000).contains(ns))
        .unwrap_or(0)
}

/// The one owner of the data plane's maps.
pub struct Balancer<M: Maps> {
    maps: M,
    snat: SnatSource,
    pools: BTreeMap<String, Pool>,
    vips: BTreeMap<String, Vip>,
    vip_ids: HashedIds,
    backend_ids: HashedIds,
    /// How often each VIP (by key hash) was added in this agent: its next generation.
    incarnations: HashMap<u64, u32>,
    /// `VIP_GENS` as [`Balancer::from_config`] found it (pinned: from the previous
    /// agent), until the agent's program runs everywhere.
    found_gens: Vec<u32>,
}

impl<M: Maps> Balancer<M> {
    pub fn new(mut maps: M, settings: &Settings, snat: SnatSource) -> Result<Self, BalancerError> {
        maps.set_settings(settings)?;
        Ok(Self {
            maps,
            snat,
            pools: BTreeMap::new(),
            vips: BTreeMap::new(),
            vip_ids: HashedIds::new(MAX_VIPS),
            backend_ids: HashedIds::new(MAX_BACKENDS),
            incarnations: HashMap::new(),
            found_gens: Vec::new(),
        })
    }

    /// A balancer set up from a configuration file's contents.
    pub fn from_config(maps: M, config: &Config) -> Result<Self, BalancerError> {
        let snat = match config.nat.source_address {
            Some(addr) => SnatSource::Fixed(addr),
            None => SnatSource::Route,
        };
        let mut lb = Self::new(maps, &settings(&config.timeouts, &config.nat), snat)?;
        let within = |place: String| {
            move |e| BalancerError::In {
                place,
                error: Box::new(e),
            }
        };
        for pool in &config.pools {
            lb.configure_pool(pool)
                .map_err(within(format!("pool {:?}", pool.name)))?;
            for b in &pool.backends {
                let addr = SocketAddrV4::new(b.address, b.port);
                lb.insert_backend(&pool.name, addr, b.weight, b.check.clone())
                    .map_err(within(format!("pool {:?}, backend {addr}", pool.name)))?;
            }
        }
        // A VIP that an earlier agent deleted and added again (pinned `VIP_GENS`) keeps
        // the generation its flows carry: they stay its flows, and those of its earlier
        // incarnations stay ended. Its generation is looked for along the ids it can get,
        // its own first (ids follow the VIP), so another VIP's rarely passes for its.
        lb.found_gens = lb.maps.vip_gens()?;
        let n = lb.found_gens.len();
        for vip in &config.vips {
            let hash = vip_hash(&vip_key(vip));
            let start = (hash % n.max(1) as u64) as usize;
            let found = (0..n)
                .map(|i| lb.found_gens[(start + i) % n])
                .find_map(|g| incarnation_of(hash, g));
            if let Some(k) = found.filter(|&k| k > 0) {
                log::info!(
                    "vip {}: keeps the generation an earlier agent gave it (re-added {k} times)",
                    vip.name
                );
                lb.incarnations.insert(hash, k);
            }
            if let Err(e) = lb.add_vip(vip.clone()) {
                lb.restore_vip_gens();
                return Err(within(format!("vip {:?}", vip.name))(e));
            }
        }
        Ok(lb)
    }

    /// Puts `VIP_GENS` back as [`Balancer::from_config`] found it, when the agent cannot
    /// start after all: the previous program may run on (a kept link), and the next agent
    /// must find the generations its flows carry.
    pub fn restore_vip_gens(&mut self) {
        for (id, generation) in (0u32..).zip(std::mem::take(&mut self.found_gens)) {
            if let Err(e) = self.maps.write_vip_gen(id, generation) {
                log::warn!("VIP id {id}: cannot put its generation {generation} back: {e}");
            }
        }
    }

    /// Clears the generation of every VIP id that no VIP holds: the pinned `VIP_GENS`
    /// still names the previous agent's VIPs, whose flows must end when this agent has
    /// not got them (or has them under other ids). The agent calls it once its program
    /// runs on every interface: until then a kept link still runs the previous program,
    /// whose VIPs these are.
    pub fn clear_other_vip_gens(&mut self) -> Result<(), BalancerError> {
        let held: HashSet<u32> = self.vips.values().map(|v| v.id).collect();
        for (id, generation) in (0u32..).zip(std::mem::take(&mut self.found_gens)) {
            if generation != 0 && !held.contains(&id) {
                self.maps.write_vip_gen(id, 0)?;
            }
        }
        Ok(())
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Creates an empty pool (no-op if it exists).
    pub fn add_pool(&mut self, name: &str) -> Result<(), BalancerError> {
        if !config::is_valid_name(name) {
            return Err(BalancerError::Invalid {
                what: "pool name",
                why: format!("{name:?} (use 1-64 of A-Z a-z 0-9 _ . -)"),
            });
        }
        if !self.pools.contains_key(name) {
            if let Some(vip) = self.vips.get(name) {
                return Err(BalancerError::Invalid {
                    what: "pool name",
                    why: format!(
                        "{name:?} is the name of VIP {name:?}, which uses pool {:?} \
                         (backend commands naming {name:?} would be ambiguous)",
                        vip.config.pool
                    ),
                });
            }
        }
        self.pools.entry(name.to_string()).or_default();
        Ok(())
    }

    /// Creates a pool (if needed) with the configuration's check and down policy.
    pub fn configure_pool(&mut self, config: &PoolConfig) -> Result<(), BalancerError> {
        self.add_pool(&config.name)?;
        let pool = self.pools.get_mut(&config.name).expect("just added");
        pool.check = config.check.clone();
        pool.on_backend_down = config.on_backend_down;
        Ok(())
    }

    /// Adds a VIP; its pool is created empty if it does not exist yet.
    pub fn add_vip(&mut self, config: VipConfig) -> Result<(), BalancerError> {
        if !config::is_valid_name(&config.name) {
            return Err(BalancerError::Invalid {
                what: "VIP name",
                why: format!("{:?} (use 1-64 of A-Z a-z 0-9 _ . -)", config.name),
            });
        }
        if self.vips.contains_key(&config.name) {
            return Err(BalancerError::DuplicateVip(config.name));
        }
        if let Some(other) = self.vips.values().find(|v| v.key() == vip_key(&config)) {
            return Err(BalancerError::DuplicateVipAddress {
                name: other.config.name.clone(),
                address: config.address,
                port: config.port,
                protocol: config.protocol,
            });
        }
        if config.port == 0 {
            return Err(BalancerError::Invalid {
                what: "VIP port",
                why: format!("0 (VIP {:?})", config.name),
            });
        }
        if config.ring_size > MAX_RING_SIZE || !ring::is_prime(config.ring_size) {
            return Err(BalancerError::Invalid {
                what: "ring size",
                why: format!(
                    "{} (VIP {:?}: Maglev needs a prime <= {MAX_RING_SIZE}, e.g. 65537)",
                    config.ring_size, config.name
                ),
            });
        }
        if config.pool != config.name && self.pools.contains_key(&config.name) {
            return Err(BalancerError::Invalid {
                what: "VIP name",
                why: format!(
                    "{:?} is the name of a pool, and this VIP uses pool {:?} (backend commands \
                     naming {:?} would be ambiguous; a VIP may share its name only with its own pool)",
                    config.name, config.pool, config.name
                ),
            });
        }
        if self.vip_ids.available() == 0 {
            return Err(BalancerError::TooManyVips);
        }
        // A pool this call creates goes again if the VIP cannot be added.
        let new_pool = (!self.pools.contains_key(&config.pool)).then(|| config.pool.clone());
        self.add_pool(&config.pool)?;
        let hash = vip_hash(&vip_key(&config));
        let id = self.vip_ids.alloc(hash).expect("an id is available");
        let name = config.name.clone();
        let incarnation = self.incarnations.get(&hash).copied().unwrap_or(0);
        let vip = Vip {
            config,
            id,
            generation: vip_generation(hash, incarnation),
            active_slice: 1,
            slices: [Vec::new(), Vec::new()],
        };
        self.vips.insert(name.clone(), vip);
        let result = self
            .maps
            .clear_vip_stats(id)
            .map_err(BalancerError::from)
            .and_then(|()| self.apply_ring(&name));
        if let Err(e) = result {
            // Leave no half-added VIP behind.
            let vip = self.vips.remove(&name).expect("just inserted");
            let _ = self.maps.del_vip(&vip.key());
            self.vip_ids.release(id);
            if let Some(pool) = new_pool {
                self.pools.remove(&pool);
            }
            return Err(e);
        }
        self.incarnations.insert(hash, incarnation.wrapping_add(1));
        log::info!("vip {name}: added");
        Ok(())
    }

    pub fn del_vip(&mut self, name: &str) -> Result<(), BalancerError> {
        let vip = self
            .vips
            .get(name)
            .ok_or_else(|| BalancerError::UnknownVip(name.to_string()))?;
        self.maps.del_vip(&vip.key())?;
        let vip = self.vips.remove(name).expect("checked above");
        self.vip_ids.release(vip.id);
        log::info!("vip {name}: deleted");
        Ok(())
    }

    /// The pool a CLI target names: a pool, or the pool of a VIP of that name.
    fn pool_name(&self, target: &str) -> Result<String, BalancerError> {
        if self.pools.contains_key(target) {
            Ok(target.to_string())
        } else if let Some(vip) = self.vips.get(target) {
            Ok(vip.config.pool.clone())
        } else {
            Err(BalancerError::UnknownTarget(target.to_string()))
        }
    }

    /// Adds a backend with its pool's health check.
    pub fn add_backend(
        &mut self,
        target: &str,
        addr: SocketAddrV4,
        weight: u32,
    ) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        let check = self.pools[&pool_name].check.clone();
        self.insert_backend(&pool_name, addr, weight, check)
    }

    fn insert_backend(
        &mut self,
        target: &str,
        addr: SocketAddrV4,
        weight: u32,
        check: CheckConfig,
    ) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        check_weight(weight, &pool_name, addr)?;
        if let Some(why) = config::not_a_host(*addr.ip()) {
            return Err(BalancerError::Invalid {
                what: "backend address",
                why: format!("{addr} (pool {pool_name:?}): {} is {why}", addr.ip()),
            });
        }
        if addr.port() == 0 {
            return Err(BalancerError::Invalid {
                what: "backend address",
                why: format!("{addr} (pool {pool_name:?}): port 0"),
            });
        }
        let pool = &self.pools[&pool_name];
        if pool.backends.iter().any(|b| b.addr == addr) {
            return Err(BalancerError::DuplicateBackend {
                pool: pool_name,
                backend: addr,
            });
        }
        if self.backend_ids.available() == 0 {
            return Err(BalancerError::TooManyBackends);
        }
        let snat_addr = self.snat.resolve(addr)?;
        let id = self
            .backend_ids
            .alloc(backend_hash(&pool_name, addr))
            .ok_or(BalancerError::TooManyBackends)?;
        let health = if check.is_enabled() {
            check.initial_state
        } else {
            Health::Up
        };
        let backend = PoolBackend {
            addr,
            weight,
            id,
            snat_addr,
            check,
            health,
            last_check: None,
            latest: None,
            check_task: 0,
            changed_at: Instant::now(),
            change_reason: format!("initial state {}", health.as_str()),
        };
        let entry = backend_entry(&backend, self.pools[&pool_name].on_backend_down);
        if let Err(e) = self
            .maps
            .clear_backend_stats(id)
            .and_then(|()| self.maps.set_backend(id, &entry))
        {
            self.backend_ids.release(id);
            return Err(e.into());
        }
        self.pools
            .get_mut(&pool_name)
            .expect("checked above")
            .backends
            .push(backend);
        let applied = self.apply_pool_or_undo(&pool_name, |lb| {
            lb.pool_mut(&pool_name).backends.retain(|b| b.addr != addr);
        });
        if let Err(e) = applied {
            let _ = self.maps.set_backend(id, &Backend::default());
            self.backend_ids.release(id);
            return Err(e);
        }
        log::info!("pool {pool_name}: backend {addr} added (weight {weight}, source {snat_addr})");
        Ok(())
    }

    /// Removes a backend: it takes no new flows; its established flows are not moved to
    /// other backends (the connection table keeps sending them to its address).
    pub fn del_backend(&mut self, target: &str, addr: SocketAddrV4) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        let pool = self.pools.get_mut(&pool_name).expect("resolved");
        let index = pool
            .backends
            .iter()
            .position(|b| b.addr == addr)
            .ok_or_else(|| BalancerError::UnknownBackend {
                pool: pool_name.clone(),
                backend: addr,
            })?;
        let removed = pool.backends.remove(index);
        let put_back = |lb: &mut Self| {
            lb.pool_mut(&pool_name)
                .backends
                .insert(index, removed.clone());
        };
        self.apply_pool_or_undo(&pool_name, put_back)?;
        if let Err(e) = self.maps.set_backend(removed.id, &Backend::default()) {
            // Keep the backend rather than leave its entry behind with its id released.
            put_back(self);
            self.reapply(&pool_name);
            return Err(e.into());
        }
        self.backend_ids.release(removed.id);
        log::info!("pool {pool_name}: backend {addr} deleted");
        Ok(())
    }

    /// Sets a backend's weight; 0 drains it (no new flows, established ones stay).
    pub fn set_weight(
        &mut self,
        target: &str,
        addr: SocketAddrV4,
        weight: u32,
    ) -> Result<(), BalancerError> {
        let pool_name = self.pool_name(target)?;
        check_weight(weight, &pool_name, addr)?;
        let pool = self.pools.get_mut(&pool_name).expect("resolved");
        let backend = pool
            .backends
            .iter_mut()
            .find(|b| b.addr == addr)
            .ok_or_else(|| BalancerError::UnknownBackend {
                pool: pool_name.clone(),
                backend: addr,
            })?;
        let old = std::mem::replace(&mut backend.weight, weight);
        self.apply_pool_or_undo(&pool_name, |lb| {
            if let Some(b) = lb.backend_mut(&pool_name, addr) {
                b.weight = old;
            }
        })?;
        log::info!("pool {pool_name}: backend {addr} weight {old} -> {weight}");
        Ok(())
    }

    /// Rebuilds the rings of every VIP that uses `pool`.
    fn apply_pool(&mut self, pool: &str) -> Result<(), BalancerError> {
        let names: Vec<String> = self
            .vips
            .values()
            .filter(|v| v.config.pool == pool)
            .map(|v| v.config.name.clone())
            .collect();
        for name in names {
            self.apply_ring(&name)?;
        }
        Ok(())
    }

    /// [`Self::apply_pool`] after a change to `pool`. If that fails, `undo` reverts the
    /// change and the rings are rebuilt from the reverted pool, so that the agent's state
    /// and the data plane stay as they were; the first error is returned.
    fn apply_pool_or_undo(
        &mut self,
        pool: &str,
        undo: impl FnOnce(&mut Self),
    ) -> Result<(), BalancerError> {
        let Err(e) = self.apply_pool(pool) else {
            return Ok(());
        };
        undo(self);
        self.reapply(pool);
        Err(e)
    }

    /// Rebuilds `pool`'s rings after a change was reverted; a failure here is only logged
    /// (the caller reports the first one). A VIP whose ring was not rebuilt keeps serving
    /// its active slice, which the failed update never touched.
    fn reapply(&mut self, pool: &str) {
        if let Err(e) = self.apply_pool(pool) {
            log::error!("pool {pool}: restoring the rings after a failed update: {e}");
        }
    }

    fn pool_mut(&mut self, pool: &str) -> &mut Pool {
        self.pools.get_mut(pool).expect("caller resolved the pool")
    }

    fn backend_mut(&mut self, pool: &str, addr: SocketAddrV4) -> Option<&mut PoolBackend> {
        self.pools
            .get_mut(pool)?
            .backends
            .iter_mut()
            .find(|b| b.addr == addr)
    }

    /// Builds the VIP's ring, writes it to the inactive slice (only the slots that differ
    /// from what that slice holds), then flips the VIP to it in one map update.
    fn apply_ring(&mut self, name: &str) -> Result<(), BalancerError> {
        let vip = self.vips.get(name).expect("caller checked");
        let pool = self.pools.get(&vip.config.pool).expect("VIP pools exist");
        let backends: Vec<RingBackend> = pool
            .backends
            .iter()
            .map(|b| RingBackend {
                id: b.id,
                key: ring::backend_key(*b.addr.ip(), b.addr.port()),
                weight: if b.usable() { b.weight } else { 0 },
            })
            .collect();
        let active = &vip.slices[vip.active_slice as usize];
        let table = match vip.config.scheduler {
            Scheduler::Maglev => {
                let prev = (active.len() == vip.config.ring_size as usize).then_some(&active[..]);
                ring::maglev(&backends, vip.config.ring_size, prev)
            }
            Scheduler::RoundRobin => ring::round_robin(&backends, MAX_RING_SIZE),
        };
        let usable = table.iter().any(|&id| id != NO_BACKEND);

        let target = 1 - vip.active_slice;
        let base = (vip.id * RING_SLICES_PER_VIP + target) * MAX_RING_SIZE;
        let key = vip.key();
        let meta = VipMeta {
            vip_id: vip.id,
            scheduler: match vip.config.scheduler {
                Scheduler::Maglev => SCHED_MAGLEV,
                Scheduler::RoundRobin => SCHED_ROUND_ROBIN,
            },
            ring_base: base,
            ring_size: if usable { table.len() as u32 } else { 0 },
            flags: match vip.config.on_all_down {
                AllDownPolicy::Drop => 0,
                AllDownPolicy::Pass => VIP_F_PASS_ALL_DOWN,
            },
            generation: vip.generation,
        };
        // What the inactive slice holds is unknown while it is being written.
        let shadow =
            std::mem::take(&mut self.vips.get_mut(name).expect("checked").slices[target as usize]);
        for (slot, &id) in table.iter().enumerate() {
            if shadow.get(slot) != Some(&id) {
                self.maps.set_ring_slot(base + slot as u32, id)?;
            }
        }
        let vip = self.vips.get_mut(name).expect("caller checked");
        vip.slices[target as usize] = table;
        self.maps.set_vip(&key, &meta)?;
        vip.active_slice = target;
        Ok(())
    }

    pub fn status(&self) -> Result<Status, BalancerError> {
        let mut vips = Vec::new();
        for vip in self.vips.values() {
            let c = &vip.config;
            let active_backends = self
                .pools
                .get(&c.pool)
                .map_or(0, |p| p.backends.iter().filter(|b| b.usable()).count());
            vips.push(VipStatus {
                config: c.clone(),
                active_backends,
                counters: self.maps.vip_stats(vip.id)?.into(),
            });
        }
        let mut pools = Vec::new();
        for (name, pool) in &self.pools {
            let mut backends = Vec::new();
            for b in &pool.backends {
                let state = if b.health == Health::Down {
                    "down"
                } else if b.weight == 0 {
                    "drained"
                } else {
                    "active"
                };
                backends.push(BackendStatus {
                    address: *b.addr.ip(),
                    port: b.addr.port(),
                    weight: b.weight,
                    state: state.to_string(),
                    health: b.health,
                    check: b.check.kind.check_type().to_string(),
                    last_check: b.newest_check(),
                    since_change_secs: b.changed_at.elapsed().as_secs_f64(),
                    change_reason: b.change_reason.clone(),
                    counters: self.maps.backend_stats(b.id)?.into(),
                });
            }
            pools.push(PoolStatus {
                name: name.clone(),
                on_backend_down: pool.on_backend_down,
                backends,
            });
        }
        let global = self
            .maps
            .global_stats()?
            .into_iter()
            .enumerate()
            .map(|(i, v)| (stat::NAMES[i].to_string(), v))
            .collect();
        Ok(Status {
            vips,
            pools,
            global,
        })
    }
}

impl<M: Maps> Balancer<M> {
    /// Every checked backend: (pool, address, check, current health), for the agent to keep
    /// its health checker in step.
    pub fn checks(&self) -> Vec<(String, SocketAddrV4, CheckConfig, Health)> {
        self.pools
            .iter()
            .flat_map(|(name, pool)| {
                pool.backends
                    .iter()
                    .filter(|b| b.check.is_enabled())
                    .map(move |b| (name.clone(), b.addr, b.check.clone(), b.health))
            })
            .collect()
    }

    /// Gives a backend the slot where its check task keeps the newest check (see
    /// [`health::Checker::start`]); unknown backends are ignored.
    pub fn set_latest_slot(&mut self, pool: &str, backend: SocketAddrV4, slot: LatestSlot) {
        if let Some(b) = self.backend_mut(pool, backend) {
            b.check_task = health::latest(&slot).task;
            b.latest = Some(slot);
        }
    }

    /// Takes one health check result; a transition updates the ring and the backend's
    /// flags at once. Results for backends deleted meanwhile, and results of a check task
    /// that was replaced (a backend deleted and added again), are ignored.
    pub fn record_health(&mut self, event: &HealthEvent) -> Result<(), BalancerError> {
        let Some(pool) = self.pools.get_mut(&event.pool) else {
            return Ok(());
        };
        let policy = pool.on_backend_down;
        let Some(backend) = pool
            .backends
            .iter_mut()
            .find(|b| b.addr == event.backend && b.check_task == event.task)
        else {
            return Ok(());
        };
        backend.last_check = Some(LastCheck {
            ok: event.outcome.ok,
            latency_ms: event.outcome.latency.as_secs_f64() * 1000.0,
            reason: event.outcome.reason.clone(),
        });
        if backend.health == event.health {
            return Ok(());
        }
        let old = std::mem::replace(&mut backend.health, event.health);
        let old_since = std::mem::replace(&mut backend.changed_at, Instant::now());
        let old_reason =
            std::mem::replace(&mut backend.change_reason, event.outcome.reason.clone());
        let (id, addr) = (backend.id, backend.addr);
        let entry = backend_entry(backend, policy);
        let pool_name = event.pool.clone();
        // A failed update leaves the backend in its old state, so that the next result
        // (the check task reports every change of outcome) tries the transition again.
        let revert = |lb: &mut Self| {
            if let Some(b) = lb.backend_mut(&pool_name, addr) {
                b.health = old;
                b.changed_at = old_since;
                b.change_reason.clone_from(&old_reason);
            }
        };
        // Down: leave the ring first, then flag the pinned flows. Up: the reverse.
        if event.health == Health::Down {
            self.apply_pool_or_undo(&pool_name, revert)?;
            if let Err(e) = self.maps.set_backend(id, &entry) {
                revert(self);
                self.reapply(&pool_name);
                return Err(e.into());
            }
        } else {
            if let Err(e) = self.maps.set_backend(id, &entry) {
                revert(self);
                return Err(e.into());
            }
            let flagged = self.apply_pool_or_undo(&pool_name, revert);
            if let Err(e) = flagged {
                if let Some(b) = self.backend_mut(&pool_name, addr) {
                    let entry = backend_entry(b, policy);
                    let _ = self.maps.set_backend(id, &entry);
                }
                return Err(e);
            }
        }
        log::info!(
            "pool {pool_name}: backend {addr} {} -> {} ({})",
            old.as_str(),
            event.health.as_str(),
            event.outcome.reason
        );
        Ok(())
    }
}

/// The data plane's view of a backend.
fn backend_entry(b: &PoolBackend, policy: DownPolicy) -> Backend {
    let mut flags = BACKEND_F_PRESENT;
    if b.health == Health::Down && policy == DownPolicy::Shutdown {
        flags |= BACKEND_F_RESCHEDULE;
    }
    Backend {
        addr: u32::from_ne_bytes(b.addr.ip().octets()),
        snat_addr: u32::from_ne_bytes(b.snat_addr.octets()),
        port: b.addr.port().to_be(),
        _pad: 0,
        flags,
    }
}

fn check_weight(weight: u32, pool: &str, addr: SocketAddrV4) -> Result<(), BalancerError> {
    if weight > MAX_WEIGHT {
        return Err(BalancerError::Invalid {
            what: "weight",
            why: format!("{weight} for backend {addr} in pool {pool:?} (0..={MAX_WEIGHT})"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
