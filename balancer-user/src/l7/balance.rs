//! How an HTTP request picks a backend of its pool (HAProxy's `balance` and `cookie ...
//! insert indirect nocache`): smooth weighted round-robin, least active requests, or a
//! consistent hash of a request key, with optional cookie persistence. No I/O: the proxy
//! asks [`PoolSelector::pick`] once per attempt; the agent swaps in a new [`BackendSet`]
//! whenever health, weights or membership change, and requests never take a lock.

mod cookie;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Notify;

pub use cookie::{cookie_id_problem, cookie_name_problem, CookieHeader, SetCookie};

use crate::ring::{backend_key, maglev, round_robin, splitmix64, RingBackend, NO_BACKEND};
use crate::spelling::{config_words, ParseValueError};

/// Slots of a pool's consistent-hash table: a prime (Maglev needs one), far above any
/// pool's backend count so that shares stay within a fraction of a percent.
pub const HASH_TABLE_SIZE: u32 = 65_521;

/// Longest weighted round-robin sequence; larger weight sums are scaled down to it.
const ROUND_ROBIN_MAX_LEN: u32 = 8192;

// -- Settings -----------------------------------------------------------------

/// How a pool spreads HTTP requests over its backends: the pool's `balance`, `hash_key` and
/// `cookie`. Only VIPs in HTTP mode use these; an L4 VIP balances in the data plane with
/// its own `scheduler` and ignores them, so they are allowed on any pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolBalance {
    pub algorithm: Algorithm,
    /// Cookie persistence, tried before the algorithm.
    pub cookie: Option<CookiePersistence>,
}

/// `balance`: how a request without a (valid) persistence cookie picks a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round-robin (nginx's), the default.
    #[default]
    RoundRobin,
    /// Fewest active requests relative to weight: the lowest `(active + 1) / weight`, the
    /// load the backend would have with this request (HAProxy's), ties in round-robin order.
    LeastConn,
    /// A consistent hash of a request key: a Maglev table over the backends, so that
    /// adding or removing one moves only about its share of keys. A request without the
    /// key goes round-robin.
    Hash(HashKey),
}

impl Algorithm {
    /// The `balance` word of this algorithm.
    pub fn kind(&self) -> BalanceKind {
        match self {
            Algorithm::RoundRobin => BalanceKind::RoundRobin,
            Algorithm::LeastConn => BalanceKind::LeastConn,
            Algorithm::Hash(_) => BalanceKind::Hash,
        }
    }
}

/// The words of `balance` (the hash's key is `hash_key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BalanceKind {
    RoundRobin,
    LeastConn,
    Hash,
}

config_words!(BalanceKind, "balance", "\"roundrobin\", \"leastconn\" or \"hash\"", {
    RoundRobin => "roundrobin" | "round-robin" | "rr",
    LeastConn => "leastconn" | "least-conn",
    Hash => "hash",
});

/// `hash_key`: what a hashing pool hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// `"source"`: the client's address (an IPv4-mapped IPv6 address counts as IPv4).
    Source,
    /// `"uri"`: the request target's path and query, as sent.
    Uri,
    /// `"header:NAME"`: the values of header NAME (case-insensitive), in order.
    Header(HeaderName),
    /// `"cookie:NAME"`: the value of cookie NAME (case-sensitive, as cookies are).
    Cookie(String),
}

const HASH_KEY_WORDS: &str =
    "\"source\", \"uri\", \"header:NAME\" or \"cookie:NAME\" (NAME a header or cookie name)";

impl FromStr for HashKey {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseValueError::new("hash_key", s, HASH_KEY_WORDS);
        match s.split_once(':') {
            None if s.eq_ignore_ascii_case("source") => Ok(HashKey::Source),
            None if s.eq_ignore_ascii_case("uri") => Ok(HashKey::Uri),
            Some((kind, name)) if kind.eq_ignore_ascii_case("header") => HeaderName::from_str(name)
                .map(HashKey::Header)
                .map_err(|_| bad()),
            Some((kind, name)) if kind.eq_ignore_ascii_case("cookie") => {
                match cookie_name_problem(name) {
                    None => Ok(HashKey::Cookie(name.to_owned())),
                    Some(_) => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::Source => f.write_str("source"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// `cookie = { name = "SERVERID", insert = true, nocache = true, indirect = true }`:
/// persistence like HAProxy's `cookie SERVERID insert indirect nocache`. A request whose
/// cookie names a usable backend goes there; any other is balanced and, with `insert`,
/// its response sets the cookie to the chosen backend's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookiePersistence {
    /// The cookie's name.
    pub name: String,
    /// Set the cookie on responses to requests without a valid one. Without it the
    /// cookie is only read (the application sets it to a backend's id itself).
    pub insert: bool,
    /// Mark responses that set the cookie so that shared caches do not store the
    /// `Set-Cookie` (`Cache-Control: no-cache="set-cookie"`).
    pub nocache: bool,
    /// Remove the cookie from requests before they reach the backend.
    pub indirect: bool,
}

// -- Backends -----------------------------------------------------------------

/// One usable backend of a pool, as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// 0 = drained: no new requests, but clients persisted to it by cookie stay (HAProxy's).
    pub weight: u32,
    /// The id its persistence cookie carries (see [`default_cookie_id`]).
    pub cookie_id: String,
    /// Most requests in progress on it at once (HAProxy's `server ... maxconn`); 0: no
    /// limit. A full backend is passed over, persisted clients included; when every
    /// backend is full, requests wait ([`PoolSelector::saturated`], [`PoolSelector::released`]).
    pub maxconn: u32,
}

/// The cookie id of a backend that names none: its address and port's stable 64-bit key
/// (the one its Maglev permutation uses) in hex, so it survives restarts and reorderings
/// and differs between any two addresses.
pub fn default_cookie_id(addr: SocketAddr) -> String {
    format!("{:016x}", backend_key(addr.ip(), addr.port()))
}

/// An immutable snapshot of the usable backends of a pool (those up by their health
/// checks; drained ones included, see [`Backend::weight`]) with its balancing tables,
/// built once by the agent and swapped into a [`PoolSelector`].
#[derive(Debug)]
pub struct BackendSet {
    balance: PoolBalance,
    backends: Vec<Backend>,
    /// Per backend: its active-request counter (shared with the selector's registry).
    active: Vec<Arc<AtomicUsize>>,
    /// Per backend: the `Set-Cookie` value that persists a client to it, with `insert`.
    set_cookie: Vec<Option<HeaderValue>>,
    /// Cookie id -> index.
    by_cookie: HashMap<String, usize>,
    /// Smooth weighted round-robin sequence of indices (positive weights only).
    sequence: Vec<u32>,
    /// Indices of the positive-weight backends.
    live: Vec<usize>,
    /// The Maglev table of indices (hash only, else empty).
    table: Vec<u32>,
}

impl BackendSet {
    /// The set of `backends` (a repeated address keeps its first entry; a malformed cookie
    /// id is replaced by [`default_cookie_id`]) balanced by `balance`.
    pub fn new(backends: impl IntoIterator<Item = Backend>, balance: &PoolBalance) -> Self {
        Self::build(backends, balance, None)
    }

    /// Like [`BackendSet::new`], but a hash table is built from this set's, so that only
    /// the keys of backends that left (or whose share shrank) move. The agent builds each
    /// pool's next set this way.
    pub fn next(&self, backends: impl IntoIterator<Item = Backend>, balance: &PoolBalance) -> Self {
        Self::build(backends, balance, Some(self))
    }

    fn build(
        backends: impl IntoIterator<Item = Backend>,
        balance: &PoolBalance,
        prev: Option<&BackendSet>,
    ) -> Self {
        let mut list: Vec<Backend> = Vec::new();
        for mut b in backends {
            if list.iter().any(|o| o.addr == b.addr) {
                continue;
            }
            if let Some(why) = cookie_id_problem(&b.cookie_id) {
                log::warn!("backend {}: cookie id {:?}: {why}", b.addr, b.cookie_id);
                b.cookie_id = default_cookie_id(b.addr);
            }
            list.push(b);
        }
        let ring: Vec<RingBackend> = list
            .iter()
            .zip(0u32..)
            .map(|(b, id)| RingBackend {
                id,
                key: backend_key(b.addr.ip(), b.addr.port()),
                weight: b.weight,
            })
            .collect();
        let table = match &balance.algorithm {
            Algorithm::Hash(_) => {
                let prev = prev.and_then(|p| p.table_for(&list));
                maglev(&ring, HASH_TABLE_SIZE, prev.as_deref())
            }
            Algorithm::RoundRobin | Algorithm::LeastConn => Vec::new(),
        };
        let set_cookie = list
            .iter()
            .map(|b| {
                let c = balance.cookie.as_ref().filter(|c| c.insert)?;
                SetCookie::header_value(&c.name, &b.cookie_id)
            })
            .collect();
        let mut by_cookie = HashMap::with_capacity(list.len());
        for (i, b) in list.iter().enumerate() {
            by_cookie.entry(b.cookie_id.clone()).or_insert(i);
        }
        BackendSet {
            balance: balance.clone(),
            sequence: round_robin(&ring, ROUND_ROBIN_MAX_LEN),
            live: (0..list.len()).filter(|&i| list[i].weight > 0).collect(),
            active: list.iter().map(|_| Arc::default()).collect(),
            set_cookie,
            by_cookie,
            backends: list,
            table,
        }
    }

    /// This set's hash table with its indices translated to those of `backends` (a slot
    /// of a backend not among them becomes free), or `None` without a table.
    fn table_for(&self, backends: &[Backend]) -> Option<Vec<u32>> {
        if self.table.is_empty() {
            return None;
        }
        let index: HashMap<SocketAddr, u32> = backends
            .iter()
            .zip(0u32..)
            .map(|(b, i)| (b.addr, i))
            .collect();
        let translate = |old: u32| {
            let b = self.backends.get(old as usize)?;
            index.get(&b.addr).copied()
        };
        Some(
            self.table
                .iter()
                .map(|&old| translate(old).unwrap_or(NO_BACKEND))
                .collect(),
        )
    }

    /// The backends, in the order given.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// How the set balances.
    pub fn balance(&self) -> &PoolBalance {
        &self.balance
    }

    /// Whether no backend is usable.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

// -- Requests -----------------------------------------------------------------

/// What of a request the balancing may look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestKey<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The request target's path and query (`/a/b?c=d`).
    pub path_and_query: &'a str,
    /// The request's headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestKey<'a> {
    /// The value of the request's cookie `name` (the first, if several).
    pub fn cookie(&self, name: &str) -> Option<&'a [u8]> {
        cookie::find(self.headers, name)
    }

    /// The hash of `key` in this request, if the request has it.
    fn hash(&self, key: &HashKey) -> Option<u64> {
        let mut h = Fnv::default();
        match key {
            HashKey::Source => match self.client.to_canonical() {
                IpAddr::V4(a) => h.write(&a.octets()),
                IpAddr::V6(a) => h.write(&a.octets()),
            },
            HashKey::Uri => h.write(self.path_and_query.as_bytes()),
            HashKey::Header(name) => {
                let mut values = self.headers.get_all(name).iter().peekable();
                values.peek()?;
                for v in values {
                    // A byte no header value holds separates the values.
                    h.write(v.as_bytes());
                    h.write(b"\n");
                }
            }
            HashKey::Cookie(name) => h.write(self.cookie(name)?),
        }
        Some(splitmix64(h.0))
    }
}

/// FNV-1a, 64 bits: a hash of request keys that is the same on every build and machine,
/// so that a restarted agent sends each key where the last one did.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xCBF2_9CE4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
    }
}

/// The backend a request goes to.
#[derive(Debug)]
pub struct Pick {
    pub addr: SocketAddr,
    /// Counts the request as active on the backend until dropped: keep it for the whole
    /// exchange (response body included).
    pub guard: ActiveGuard,
    /// Headers to add to the response: the client gets (or moves to) this backend's cookie.
    pub cookie: Option<SetCookie>,
    /// What the forwarded request's `Cookie` header becomes (the persistence cookie
    /// removed, with `indirect`).
    pub request_cookie: CookieHeader,
}

/// One active request on a backend; dropping it ends the request.
#[derive(Debug)]
pub struct ActiveGuard(Arc<AtomicUsize>, Option<Arc<Notify>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        // A limited backend has room again: wake the requests waiting for one.
        if let Some(released) = &self.1 {
            released.notify_waiters();
        }
    }
}

// -- Selector -----------------------------------------------------------------

/// Picks backends for one pool's requests from the current [`BackendSet`]. `Send + Sync`
/// and lock-free on the request path: the set is read through an [`ArcSwap`], the
/// round-robin position and the active counts are atomics.
#[derive(Debug)]
pub struct PoolSelector {
    set: ArcSwap<BackendSet>,
    /// Round-robin position, over sequences and rotations; kept across updates.
    next: AtomicUsize,
    /// Every backend's counter while anything holds it (a set or an in-flight request),
    /// so that a backend keeps its count across sets, even one that left and came back.
    /// Locked by [`PoolSelector::update`] only.
    counters: Mutex<HashMap<SocketAddr, Weak<AtomicUsize>>>,
    /// Signalled when a request on a backend with a `maxconn` ends.
    released: Arc<Notify>,
}

impl PoolSelector {
    /// A selector over `set`.
    pub fn new(set: BackendSet) -> Self {
        let selector = PoolSelector {
            set: ArcSwap::from_pointee(BackendSet::new([], &PoolBalance::default())),
            next: AtomicUsize::new(0),
            counters: Mutex::new(HashMap::new()),
            released: Arc::new(Notify::new()),
        };
        selector.update(set);
        selector
    }

    /// Makes `set` the current one. Its backends take over the active counts they had in
    /// earlier sets; requests in flight keep counting until they end.
    pub fn update(&self, mut set: BackendSet) {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (b, active) in set.backends.iter().zip(&mut set.active) {
            match counters.get(&b.addr).and_then(Weak::upgrade) {
                Some(known) => *active = known,
                None => {
                    counters.insert(b.addr, Arc::downgrade(active));
                }
            }
        }
        self.set.store(Arc::new(set));
        counters.retain(|_, c| c.strong_count() > 0);
    }

    /// Builds the next set from the current one ([`BackendSet::next`]) and makes it current.
    pub fn set_backends(&self, backends: impl IntoIterator<Item = Backend>, balance: &PoolBalance) {
        let next = self.set.load().next(backends, balance);
        self.update(next);
    }

    /// The current set.
    pub fn current(&self) -> Arc<BackendSet> {
        self.set.load_full()
    }

    /// Requests active on `addr` now (0 for a backend never seen).
    pub fn active(&self, addr: SocketAddr) -> usize {
        let set = self.set.load();
        if let Some(i) = set.backends.iter().position(|b| b.addr == addr) {
            return set.active[i].load(Ordering::Relaxed);
        }
        drop(set);
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counters
            .get(&addr)
            .and_then(Weak::upgrade)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The backend for `request`, other than those in `exclude` (already tried), or `None`
    /// when no usable backend is left. A valid persistence cookie wins; otherwise the
    /// pool's algorithm decides among the backends of positive weight.
    pub fn pick(&self, request: &RequestKey<'_>, exclude: &[SocketAddr]) -> Option<Pick> {
        let set = self.set.load();
        if set.backends.is_empty() {
            return None;
        }
        let usable = |i: usize| !exclude.contains(&set.backends[i].addr) && has_room(&set, i);
        let persistence = set.balance.cookie.as_ref();
        let sent_id = persistence.and_then(|c| request.cookie(&c.name));
        let persisted = sent_id
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| set.by_cookie.get(v).copied())
            .filter(|&i| usable(i));
        let index = match persisted {
            Some(i) => i,
            None => self.balance(&set, request, &usable)?,
        };
        let active = Arc::clone(&set.active[index]);
        active.fetch_add(1, Ordering::Relaxed);
        // Inserted once: a request that was persisted needs no new cookie.
        let cookie = match persisted {
            Some(_) => None,
            None => set.set_cookie[index]
                .clone()
                .map(|value| SetCookie::new(value, persistence.is_some_and(|c| c.nocache))),
        };
        let request_cookie = match persistence {
            Some(c) if c.indirect && sent_id.is_some() => cookie::without(request.headers, &c.name),
            _ => CookieHeader::Unchanged,
        };
        Some(Pick {
            addr: set.backends[index].addr,
            guard: ActiveGuard(
                active,
                (set.backends[index].maxconn > 0).then(|| Arc::clone(&self.released)),
            ),
            cookie,
            request_cookie,
        })
    }

    /// Whether requests must wait: some backend not in `exclude` takes requests, and every
    /// such backend is at its `maxconn`.
    pub fn saturated(&self, exclude: &[SocketAddr]) -> bool {
        let set = self.set.load();
        let mut candidates = set
            .live
            .iter()
            .filter(|&&i| !exclude.contains(&set.backends[i].addr))
            .peekable();
        candidates.peek().is_some() && candidates.all(|&i| !has_room(&set, i))
    }

    /// Signalled whenever a request on a limited backend ends: await its `notified()`
    /// (created before looking again) to wait for room.
    pub fn released(&self) -> &Notify {
        &self.released
    }

    /// The pool's algorithm over the positive-weight backends that pass `usable`.
    fn balance(
        &self,
        set: &BackendSet,
        request: &RequestKey<'_>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match &set.balance.algorithm {
            Algorithm::RoundRobin => self.round_robin(set, usable),
            Algorithm::LeastConn => self.least_conn(set, usable),
            Algorithm::Hash(key) => match request.hash(key) {
                Some(h) => hashed(set, h, usable),
                None => self.round_robin(set, usable),
            },
        }
    }

    /// The next entry of the weighted sequence that is usable.
    fn round_robin(&self, set: &BackendSet, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = set.sequence.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| set.sequence[(start + k) % n] as usize)
            .find(|&i| usable(i))
    }

    /// The usable backend with the lowest `(active + 1) / weight`, scanning from a
    /// rotating start so that ties go round-robin.
    fn least_conn(&self, set: &BackendSet, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = set.live.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u128, u128)> = None;
        for k in 0..n {
            let i = set.live[(start + k) % n];
            if !usable(i) {
                continue;
            }
            let load = set.active[i].load(Ordering::Relaxed) as u128 + 1;
            let weight = u128::from(set.backends[i].weight);
            // load / weight < best_load / best_weight, without division.
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

/// Whether backend `i` of `set` may take another request under its `maxconn`.
fn has_room(set: &BackendSet, i: usize) -> bool {
    let maxconn = set.backends[i].maxconn;
    maxconn == 0 || set.active[i].load(Ordering::Relaxed) < maxconn as usize
}

/// The backend owning hash `h`'s slot, or, when it is excluded, the owner of the next
/// slot that belongs to a usable backend (the same for every retry of one key).
fn hashed(set: &BackendSet, h: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    if !set.live.iter().any(|&i| usable(i)) {
        return None;
    }
    let m = set.table.len();
    let start = (h % m as u64) as usize;
    (0..m)
        .map(|k| set.table[(start + k) % m])
        .filter(|&id| id != NO_BACKEND)
        .map(|id| id as usize)
        .find(|&i| usable(i))
}
