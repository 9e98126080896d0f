//! The BPF maps of the data plane; their key and value types live in `balancer-common`.
use crate::staged::Work;
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use balancer_common::{
    decap_stat, stat, Backend, Conn, DecapSettings, FlowCacheEntry, FlowKey, FlowStats, NatEntry,
    NextHop, NoPort, RrState, Settings, VipKey, VipMeta, CLIENT_HOP_SLOTS, CONN6_TABLE_SIZE,
    CONN_TABLE_SIZE, FLOW_CACHE_SLOTS, MAX_BACKENDS, MAX_DECAP_ADDRS, MAX_VIPS, NO_PORT_SLOTS,
    RING_ELEMENTS, V6, VIP_ADDR_SLOTS,
};

/// (address, port, protocol) -> VIP id, scheduler and active ring slice.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// How many VIPs have an address in each `addr_slot` (a filter in front of `VIPS`).
#[map]
pub static VIP_ADDRS: Array<u32> = Array::with_max_entries(VIP_ADDR_SLOTS, 0);

/// VIP id -> the `generation` of the VIP holding it, 0 when none: lets a packet of an
/// established flow skip the `VIPS` lookup.
#[map]
pub static VIP_GENS: Array<u32> = Array::with_max_entries(MAX_VIPS, 0);

/// Backend ids, `MAX_RING_SIZE` slots per ring slice, two slices per VIP, two slots per
/// element (`RING_SLOTS_PER_ELEMENT`). Memory-mapped by the agent, which writes slots as
/// plain stores instead of one syscall each.
#[map]
pub static RING: Array<[u32; 2]> = Array::with_max_entries(RING_ELEMENTS, BPF_F_MMAPABLE);

/// Backend id -> address, port, SNAT address.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Client tuple -> backend and translation. A shared (not per-CPU) LRU: with NAT the
/// reply side must find the flow whichever CPU the client's packets landed on.
#[map]
pub static CONNS: LruHashMap<FlowKey, Conn> = LruHashMap::with_max_entries(CONN_TABLE_SIZE, 0);

/// Per-CPU, what forwarding recently used flows needs (their translation and its checksum
/// changes, from their `CONNS` entries), direct-mapped by `flow_slot` (an exact-match
/// cache: an array read and a key compare instead of a hash-table lookup).
#[map]
pub static FLOW_CACHE: PerCpuArray<FlowCacheEntry> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

// The IPv6 twins of the maps above whose keys or values hold addresses (`family::Family`
// picks a family's). Ids (VIP, backend), rings, generations, counters and `VIP_ADDRS` are
// shared: a VIP or backend id names one of either family.
#[map]
pub static VIPS6: HashMap<VipKey<V6>, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);
#[map]
pub static BACKENDS6: Array<Backend<V6>> = Array::with_max_entries(MAX_BACKENDS, 0);
#[map]
pub static CONNS6: LruHashMap<FlowKey<V6>, Conn<V6>> =
    LruHashMap::with_max_entries(CONN6_TABLE_SIZE, 0);
#[map]
pub static NAT6: LruHashMap<FlowKey<V6>, NatEntry<V6>> =
    LruHashMap::with_max_entries(CONN6_TABLE_SIZE, 0);
#[map]
pub static FLOW_CACHE6: PerCpuArray<FlowCacheEntry<V6>> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);
#[map]
pub static NO_PORT6: PerCpuArray<NoPort<V6>> = PerCpuArray::with_max_entries(NO_PORT_SLOTS, 0);
#[map]
pub static NEXT_HOPS6: PerCpuArray<NextHop<V6>> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
#[map]
pub static CLIENT_HOPS6: PerCpuArray<NextHop<V6>> =
    PerCpuArray::with_max_entries(CLIENT_HOP_SLOTS, 0);

/// Per CPU, room for the bytes whose checksum a new flow's packet has checked
/// (`csum::sum_of`).
#[map]
pub static CSUM_BUF: PerCpuArray<[u64; CSUM_BUF_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// 8-byte words of [`CSUM_BUF`]: `csum::MAX_CHECKED` bytes and a few more.
pub const CSUM_BUF_WORDS: usize = 8;
const _: () = assert!(CSUM_BUF_WORDS * 8 >= crate::csum::MAX_CHECKED);

/// The programs of the families other than IPv4, which `balancer` tail-calls: the agent
/// puts `balancer_ipv6` in slot [`FAMILY_IPV6`].
#[map]
pub static FAMILIES: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot of `balancer_ipv6` in [`FAMILIES`].
pub const FAMILY_IPV6: u32 = balancer_common::FAMILY_IPV6_SLOT;

/// Per CPU, what the stages of an IPv6 packet's way pass on to each other (`staged`).
#[map]
pub static WORK6: PerCpuArray<Work<V6>> = PerCpuArray::with_max_entries(1, 0);

/// One value, changed (to one it never had) whenever a new flow takes the SNAT port of a
/// flow whose `CONNS` entry is gone (evicted): every `FLOW_CACHE` copy made before is then
/// stale, as it may be of that flow.
#[map]
pub static FLOW_EVICTIONS: Array<u32> = Array::with_max_entries(1, 0);

/// Per CPU, how many times this CPU changed `FLOW_EVICTIONS` (part of the new value).
#[map]
pub static EVICTION_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Reply tuple (backend -> SNAT address:port) -> client and VIP.
#[map]
pub static NAT: LruHashMap<FlowKey, NatEntry> = LruHashMap::with_max_entries(CONN_TABLE_SIZE, 0);

/// One entry: timeouts and the SNAT port range.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Round-robin position per VIP and CPU.
#[map]
pub static RR_STATE: PerCpuArray<RrState> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per-CPU next hop of each backend (no FIB lookup per forwarded packet).
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU next hop of reply destinations (clients), direct-mapped by client address.
#[map]
pub static CLIENT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(CLIENT_HOP_SLOTS, 0);

#[map]
pub static VIP_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Verdicts and drop/pass reasons, indexed by `balancer_common::stat`.
#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Per CPU, flows that recently found no free SNAT port: their packets are dropped at once
/// for `NO_PORT_HOLD_NS` instead of probing the same ports on every packet.
#[map]
pub static NO_PORT: PerCpuArray<NoPort> = PerCpuArray::with_max_entries(NO_PORT_SLOTS, 0);

/// When the data plane last logged a line that may repeat per packet (one value, shared):
/// such lines are written at most once a second; counters count every case.
#[map]
pub static LOG_AT: Array<u64> = Array::with_max_entries(1, 0);

/// Per CPU, room for the quote of an ICMP "fragmentation needed" the data plane builds
/// (`forward::too_big`): the stack has none left on that path.
#[map]
pub static QUOTE: PerCpuArray<[u16; QUOTE_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// 16-bit words of [`QUOTE`]: the longest IPv4 header and 8 bytes after it.
pub const QUOTE_WORDS: usize = 34;

/// The decapsulation program's outer destinations (network byte order; the value is
/// unused): only packets to these are decapsulated.
#[map]
pub static DECAP_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_DECAP_ADDRS, 0);

/// The decapsulation program's settings (one entry).
#[map]
pub static DECAP_SETTINGS: Array<DecapSettings> = Array::with_max_entries(1, 0);

/// What the decapsulation program did, indexed by `balancer_common::decap_stat`.
#[map]
pub static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap_stat::COUNT, 0);
