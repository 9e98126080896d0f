//! Map ABI shared by the XDP program (`balancer-ebpf`) and the agent (`balancer-user`).
//!
//! Every type here is `#[repr(C)]` with explicit padding, holds no `bool` or `Option`,
//! and has a compile-time size assertion: the kernel and userspace see the same bytes.
//!
//! Byte order: fields named `*_addr` and `*_port` are in **network byte order** (as on the
//! wire, so the kernel copies them without swapping); every other integer is in host
//! byte order.
#![no_std]
#![expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding fields are public so that keys can be written as struct literals"
)]
#![expect(
    clippy::inline_always,
    reason = "the XDP program calls these: on the BPF target everything is inlined into one function"
)]

/// Maximum number of VIPs (sizes `VIPS`, `VIP_GENS`, `VIP_STATS`, `RR_STATE` and the
/// ring, which takes `MAX_RING_SIZE * RING_SLICES_PER_VIP` slots of 4 bytes per VIP: the
/// bulk of the program's memory beside the flow tables).
pub const MAX_VIPS: u32 = 128;
/// Maximum number of backends over all pools (sizes `BACKENDS` and `BACKEND_STATS`).
pub const MAX_BACKENDS: u32 = 4096;
/// Largest ring a VIP may use (a prime, Maglev's default `M`).
pub const MAX_RING_SIZE: u32 = 65537;
/// Each VIP owns two ring slices of `MAX_RING_SIZE` slots; the agent writes the inactive
/// one and then flips `VipMeta::ring_base`, so no packet sees a half-written ring.
pub const RING_SLICES_PER_VIP: u32 = 2;
/// Slots of the ring, over all VIPs.
pub const RING_ENTRIES: u32 = MAX_VIPS * RING_SLICES_PER_VIP * MAX_RING_SIZE;
/// Ring slots per element of the `RING` array: the kernel stores array elements 8 bytes
/// apart, so a lone u32 per element would leave half the ring's memory unused.
pub const RING_SLOTS_PER_ELEMENT: u32 = 2;
/// Elements of the `RING` array (`[u32; 2]` each): slot `i` is element `i / 2`, half `i % 2`,
/// at byte `4 * i` of the array's memory.
pub const RING_ELEMENTS: u32 = RING_ENTRIES / RING_SLOTS_PER_ELEMENT;
const _: () = assert!(RING_ENTRIES.is_multiple_of(RING_SLOTS_PER_ELEMENT));
/// Default capacity of each connection-table LRU (forward and reply direction).
pub const CONN_TABLE_SIZE: u32 = 1 << 20;
/// How many IPv6 extension headers (hop-by-hop, routing, destination options) the data
/// plane skips to find a packet's TCP/UDP header; a packet with more is passed.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// Capacity of each IPv6 connection-table LRU: a quarter of the IPv4 one, as its entries
/// are twice the size and the tables are allocated whole at load, used or not.
pub const CONN6_TABLE_SIZE: u32 = 1 << 18;
/// Version of the meaning of the connection tables' keys and values (`FlowKey`, `Conn`,
/// `NatEntry`): part of the names they are pinned under (`CONNS_v1`; bpffs refuses dots),
/// so that an agent never takes over tables it would misread. Bump it with any change to those types or to how the
/// data plane reads them, even one that keeps their sizes.
pub const FLOW_TABLES_VERSION: u32 = 2;
/// Most SNAT source addresses per backend (`nat.source_addresses`); a power of two, so
/// the data plane can mask an index into `Backend::snat_addrs`.
pub const MAX_SNAT_ADDRS: usize = 8;
/// How many consecutive SNAT ports the kernel tries for a new flow before giving up.
pub const SNAT_PORT_PROBES: u32 = 16;
/// A backend id meaning "no backend".
pub const NO_BACKEND: u32 = u32::MAX;

/// Names of the maps in the object file (userspace looks them up by these).
pub mod map_names {
    pub const VIPS: &str = "VIPS";
    // The IPv6 twins of the maps whose keys or values hold addresses.
    pub const VIPS6: &str = "VIPS6";
    pub const BACKENDS6: &str = "BACKENDS6";
    pub const CONNS6: &str = "CONNS6";
    pub const NAT6: &str = "NAT6";
    pub const NEXT_HOPS6: &str = "NEXT_HOPS6";
    pub const CLIENT_HOPS6: &str = "CLIENT_HOPS6";
    pub const FLOW_CACHE6: &str = "FLOW_CACHE6";
    pub const NO_PORT6: &str = "NO_PORT6";
    pub const RING: &str = "RING";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONNS: &str = "CONNS";
    pub const NAT: &str = "NAT";
    pub const SETTINGS: &str = "SETTINGS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const RR_STATE: &str = "RR_STATE";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    pub const CLIENT_HOPS: &str = "CLIENT_HOPS";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const VIP_GENS: &str = "VIP_GENS";
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
    pub const FLOW_EVICTIONS: &str = "FLOW_EVICTIONS";
    pub const NO_PORT: &str = "NO_PORT";
    pub const LOG_AT: &str = "LOG_AT";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
    pub const DECAP_SETTINGS: &str = "DECAP_SETTINGS";
    pub const FAMILIES: &str = "FAMILIES";
}

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "balancer";
/// Name of the IPv6 program, which `balancer` tail-calls from slot
/// [`FAMILY_IPV6_SLOT`] of `FAMILIES` (the loader puts it there).
pub const IPV6_PROGRAM_NAME: &str = "balancer_ipv6";
pub const FAMILY_IPV6_SLOT: u32 = 0;
/// Name of the backends' decapsulation program (`balancer decap`) in the same object.
pub const DECAP_PROGRAM_NAME: &str = "balancer_decap";

mod decap;
pub use decap::{decap_stat, DecapSettings, MAX_DECAP_ADDRS};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// The lowest next-hop MTU of a "fragmentation needed" the data plane passes on to a
/// backend (the IPv6 minimum; `PPPoE`, VPN and tunnel links stay above it). Behind full NAT
/// a backend keeps one path MTU for the SNAT address, shared by all its clients, so one
/// client's error must not shrink everyone's segments to the minimum.
pub const PMTU_FLOOR: u16 = 1280;

/// An address as the maps hold it, in network byte order: IPv4 in one `u32` ([`V4`]),
/// IPv6 in four ([`V6`], Linux's `in6_addr` as `__be32[4]`). Every key and value that
/// holds an address is generic over it, one definition for both families (as Katran's
/// v4/v6 union), and each family has maps of its own (as Cilium's): an IPv4 flow's key
/// stays 16 bytes, so its lookups and the flow cache cost what they did before IPv6.
pub trait Addr: Copy + Eq + Default + 'static {
    /// Number of 32-bit words.
    const WORDS: usize;
    /// Word `i` (`< WORDS`), as it lies in memory.
    fn word(&self, i: usize) -> u32;
    /// The words folded to one (XOR): what [`addr_slot`] and the flow hashes start from.
    #[inline(always)]
    fn folded(&self) -> u32 {
        let mut folded = 0;
        let mut i = 0;
        while i < Self::WORDS {
            folded ^= self.word(i);
            i += 1;
        }
        folded
    }
}

/// An IPv4 address in the maps.
pub type V4 = u32;
/// An IPv6 address in the maps.
pub type V6 = [u32; 4];

impl Addr for V4 {
    const WORDS: usize = 1;
    #[inline(always)]
    fn word(&self, _: usize) -> u32 {
        *self
    }
    #[inline(always)]
    fn folded(&self) -> u32 {
        *self
    }
}

impl Addr for V6 {
    const WORDS: usize = 4;
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        self[i & 3]
    }
    #[inline(always)]
    fn folded(&self) -> u32 {
        self[0] ^ self[1] ^ self[2] ^ self[3]
    }
}

/// Key of `VIPS`: the destination a client uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey<A = V4> {
    /// Network byte order.
    pub addr: A,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number (`PROTO_TCP` or `PROTO_UDP`).
    pub proto: u8,
    pub _pad: u8,
}

/// Scheduler of a VIP (`VipMeta::scheduler`).
pub const SCHED_MAGLEV: u32 = 0;
pub const SCHED_ROUND_ROBIN: u32 = 1;

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into `VIP_STATS` and `RR_STATE`; `< MAX_VIPS`.
    pub vip_id: u32,
    /// `SCHED_MAGLEV` or `SCHED_ROUND_ROBIN`.
    pub scheduler: u32,
    /// First `RING` index of the active slice.
    pub ring_base: u32,
    /// Slots in use from `ring_base`; 0 means no backend can take new flows.
    pub ring_size: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// Which VIP holds `vip_id` (never 0; a new number each time a VIP is added): the
    /// VIP's flows carry it, and `VIP_GENS[vip_id]` holds it while the VIP exists.
    pub generation: u32,
}

/// New flows of a VIP with no usable backend go to the stack (`XDP_PASS`) instead of
/// being dropped (`on_all_down = "pass"`).
pub const VIP_F_PASS_ALL_DOWN: u32 = 1;
/// Direct server return (`forwarding = "dsr"`): a new flow's packets go to the backend with
/// only the destination MAC changed (the backend holds the VIP and answers the client
/// itself); its flows carry `FLOW_DSR`.
pub const VIP_F_DSR: u32 = 2;
/// Tunnel (`forwarding = "tunnel"`): a new flow's packets go to the backend untranslated,
/// inside an outer IPv4 header to the backend (IPIP, or GUE with [`VIP_F_GUE`]); the
/// backend decapsulates them and answers the client itself. Its flows carry `FLOW_DSR`
/// and `FLOW_TUNNEL` (and `FLOW_GUE`).
pub const VIP_F_TUNNEL: u32 = 4;
/// With [`VIP_F_TUNNEL`]: GUE (the inner packet in UDP to `Settings::gue_port`, Katran's
/// "GUE variant 1" without a GUE header) instead of IPIP.
pub const VIP_F_GUE: u32 = 8;

/// Value of `BACKENDS` (indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend<A = V4> {
    /// Network byte order.
    pub addr: A,
    /// Backend port, network byte order.
    pub port: u16,
    pub _pad: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Source addresses the balancer uses towards this backend (SNAT), network byte
    /// order: each gives the backend's flows the whole SNAT port range. Every slot is
    /// filled, the configured addresses repeated in order, so the data plane picks one
    /// with a mask (the verifier cannot bound a remainder).
    pub snat_addrs: [A; MAX_SNAT_ADDRS],
}

/// The backend slot holds a configured backend.
pub const BACKEND_F_PRESENT: u32 = 1;
/// The backend is down and its pinned flows must move (`on_backend_down = "shutdown"`): a
/// connection-table hit on it is treated as a miss and the flow is scheduled again.
pub const BACKEND_F_RESCHEDULE: u32 = 2;

/// Key of both connection tables. In `CONNS` it is the client's tuple as received
/// (client -> VIP); in `NAT` it is the reply's tuple as received (backend -> SNAT address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey<A = V4> {
    /// Network byte order.
    pub src_addr: A,
    /// Network byte order.
    pub dst_addr: A,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    // Two fields, not `[u8; 3]`: the BPF target turns zeroing a 3-byte array into a
    // memset call per packet.
    pub _pad0: u8,
    pub _pad1: u16,
}

impl FlowKey<V4> {
    /// The key as two words, as it lies in memory (little-endian): two compares instead of
    /// one per field.
    #[inline(always)]
    #[expect(
        clippy::used_underscore_binding,
        reason = "the padding is part of the key's bytes"
    )]
    pub const fn words(&self) -> [u64; 2] {
        [
            (self.src_addr as u64) | (self.dst_addr as u64) << 32,
            (self.src_port as u64)
                | (self.dst_port as u64) << 16
                | (self.proto as u64) << 32
                | (self._pad0 as u64) << 40
                | (self._pad1 as u64) << 48,
        ]
    }
}

impl<A: Addr> FlowKey<A> {
    /// The key folded to two words: the addresses ([`Addr::folded`]), and the rest as in
    /// [`FlowKey::words`]. For IPv4 it is the key itself.
    #[inline(always)]
    #[expect(
        clippy::used_underscore_binding,
        reason = "the padding is part of the key's bytes"
    )]
    pub fn folded_words(&self) -> [u64; 2] {
        [
            u64::from(self.src_addr.folded()) | u64::from(self.dst_addr.folded()) << 32,
            u64::from(self.src_port)
                | u64::from(self.dst_port) << 16
                | u64::from(self.proto) << 32
                | u64::from(self._pad0) << 40
                | u64::from(self._pad1) << 48,
        ]
    }
}

/// Flow state bits (`Conn::state`).
/// A FIN or RST was seen: the entry lives only `Settings::closing_timeout_ns` more.
pub const FLOW_CLOSING: u32 = 1;
/// The backend sent the first FIN, and no RST followed: the backend closed actively and
/// keeps the tuple in TIME-WAIT, so the flow's SNAT port rests (see
/// `Settings::snat_time_wait_ns`). An RST ends TIME-WAIT (Linux's default, RFC 1337).
pub const FLOW_BACKEND_CLOSED: u32 = 2;
/// The backend has answered.
pub const FLOW_REPLIED: u32 = 4;
/// TCP: the client completed the handshake: its ACK acknowledged the backend's SYN-ACK
/// (`Conn::handshake_ack`), or, for a flow picked up mid-stream (`FLOW_MIDSTREAM`), the
/// backend answered with neither SYN nor RST. A TCP flow without it is half-open: it idles
/// out after `Settings::tcp_handshake_timeout_ns`, is never served from the flow cache, and
/// a new flow may take its SNAT port when no probed port is free, so spoofed SYNs (which
/// a live backend answers) cannot hold ports. Unused for UDP.
pub const FLOW_ESTABLISHED: u32 = 8;
/// TCP: the flow's first packet was not a SYN (a connection the balancer picks up after
/// its table lost it).
pub const FLOW_MIDSTREAM: u32 = 16;
/// A flow of a direct-server-return VIP: not translated (no SNAT port, no `NAT` entry),
/// and its replies never pass the balancer, so a TCP flow is established by the client's
/// first ACK without SYN or RST.
pub const FLOW_DSR: u32 = 32;
/// With `FLOW_DSR`: the flow's packets are encapsulated to its backend (`VIP_F_TUNNEL`),
/// in GUE when `FLOW_GUE` is set too, else IPIP.
pub const FLOW_TUNNEL: u32 = 64;
pub const FLOW_GUE: u32 = 128;

/// Bytes an IPIP encapsulation adds (the outer IPv4 header).
pub const IPIP_OVERHEAD: u16 = 20;
/// Bytes a GUE encapsulation adds (outer IPv4 and UDP headers; variant 1 has no GUE
/// header).
pub const GUE_OVERHEAD: u16 = 28;
/// Outer UDP source ports of GUE packets are taken from the flow's hash in
/// `GUE_SPORT_BASE..GUE_SPORT_BASE + GUE_SPORT_SPAN` (the ephemeral range), so that a
/// backend's NIC spreads flows over its queues.
pub const GUE_SPORT_BASE: u16 = 49152;
pub const GUE_SPORT_SPAN: u16 = 16384;
/// GUE's registered port (RFC 8086, "gue"), the default `tunnel.gue_port`.
pub const GUE_DEFAULT_PORT: u16 = 6080;

/// Value of `CONNS`: where a client flow goes and how it is translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Conn<A = V4> {
    /// Backend address, network byte order (kept here so a flow outlives its backend's
    /// removal from the configuration: established flows are never moved).
    pub backend_addr: A,
    /// SNAT source address, network byte order.
    pub snat_addr: A,
    /// Backend port, network byte order.
    pub backend_port: u16,
    /// SNAT source port, network byte order.
    pub snat_port: u16,
    /// Backend id (for counters and for flushing a backend's flows).
    pub backend_id: u32,
    /// VIP id (for counters).
    pub vip_id: u32,
    /// `FLOW_*` bits.
    pub state: u32,
    /// The VIP's `generation` when the flow began: the flow is the VIP's only while
    /// `VIP_GENS[vip_id]` still holds it (a deleted VIP's flows stop at once).
    pub vip_gen: u32,
    /// TCP: the acknowledgement number (network byte order) that completes the handshake,
    /// the backend's initial sequence number + 1, taken from its SYN-ACK; 0 before it.
    pub handshake_ack: u32,
    /// Last packet seen, by the data plane's clock (ns; see `Settings::ns_per_tick`).
    pub last_seen_ns: u64,
}

/// Value of `NAT`: how a reply is translated back to the client. Whether an entry is still
/// in use is decided by its flow's forward (`CONNS`) entry, which replies refresh too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry<A = V4> {
    /// Client address, network byte order.
    pub client_addr: A,
    /// VIP address, network byte order.
    pub vip_addr: A,
    /// Client port, network byte order.
    pub client_port: u16,
    /// VIP port, network byte order.
    pub vip_port: u16,
    pub backend_id: u32,
    pub vip_id: u32,
    /// When a reply last refreshed the flow's `CONNS` entry, in [`REPLY_TICK_SHIFT`] units
    /// of the data plane's clock (the flow's start when none did yet): replies look
    /// `CONNS` up once per such tick, not per packet.
    pub touched: u32,
}

/// A reply refreshes its flow's `CONNS` entry at most once per `2^REPLY_TICK_SHIFT` ns
/// (about 268 ms) of the data plane's clock; timeouts are whole seconds.
pub const REPLY_TICK_SHIFT: u32 = 28;

/// The single entry of the `SETTINGS` array: knobs the agent sets at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Idle timeout of a TCP flow.
    pub tcp_timeout_ns: u64,
    /// Idle timeout of a half-open TCP flow (`FLOW_ESTABLISHED` unset): a connection
    /// attempt that fails, or a spoofed SYN, gives its SNAT port back soon.
    pub tcp_handshake_timeout_ns: u64,
    /// Idle timeout of a UDP flow.
    pub udp_timeout_ns: u64,
    /// Lifetime of a TCP flow after FIN or RST.
    pub closing_timeout_ns: u64,
    /// How long the SNAT port of a flow the backend closed (`FLOW_BACKEND_CLOSED`) rests
    /// after the flow's last packet before another client's flow gets it while other
    /// ports are free: the backends' TIME-WAIT, during which they may reject that
    /// client's SYN (PAWS).
    pub snat_time_wait_ns: u64,
    /// SNAT port range, inclusive, host byte order.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Changes after every write to `VIP_GENS` and every write of a backend flagged
    /// `BACKEND_F_RESCHEDULE` (the agent's maps layer counts it; whoever else builds a
    /// `Settings` leaves it 0): a `FLOW_CACHE` entry of another epoch is not used, so the
    /// cache never hides a deleted VIP or a backend whose flows must move.
    pub flow_epoch: u32,
    /// Length of the kernel's tick (jiffy) in ns, as the resolution of
    /// `CLOCK_MONOTONIC_COARSE` tells: the data plane's clock is `bpf_jiffies64()` times
    /// this (an inlined load instead of a helper call). 0: it calls
    /// `bpf_ktime_get_coarse_ns` instead.
    pub ns_per_tick: u32,
    /// Outer source of tunnelled packets, network byte order: `tunnel_src` with the bits
    /// of `tunnel_src_mask` (network byte order) taken from the flow's hash, so that an
    /// IPIP backend's NIC spreads flows (a /32 source gives the mask 0).
    pub tunnel_src: u32,
    pub tunnel_src_mask: u32,
    /// Largest packet (IPv4 total length) that may leave encapsulated, host byte order:
    /// a larger one is answered with an ICMP "fragmentation needed" giving this less the
    /// encapsulation's overhead. 0: no tunnel VIP is configured.
    pub tunnel_mtu: u16,
    /// GUE destination port, network byte order.
    pub gue_port: u16,
}

/// Counters per VIP (`VIP_STATS`) and per backend (`BACKEND_STATS`), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// Packets and bytes from clients (towards backends).
    pub packets: u64,
    pub bytes: u64,
    /// Flows scheduled (connection-table misses).
    pub new_flows: u64,
    /// Reply packets and bytes (backends towards clients).
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Backends only: new flows that probed for a SNAT port towards this backend, and how
    /// many of them found their first probed port taken. The first probe falls on a port
    /// chosen by a hash, so the ratio estimates the share of the backend's ports in use.
    pub snat_first_probes: u64,
    pub snat_first_taken: u64,
}

/// Index of `GLOBAL_STATS` (a per-CPU array of u64): verdicts, then drop/pass reasons.
pub mod stat;

/// A backend's next hop as the FIB gave it (`NEXT_HOPS`, per-CPU array by backend id), so
/// the forward path needs no FIB lookup per packet. Trusted only while `addr` is the
/// flow's backend address and `at_ns` is younger than `NEXT_HOP_TTL_NS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop<A = V4> {
    /// Backend address it was looked up for, network byte order.
    pub addr: A,
    /// Egress interface; 0 = nothing cached.
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// 1 when the FIB's next hop is the address itself (no gateway): a direct-server-return
    /// packet may use it.
    pub on_link: u32,
    /// When it was looked up, by the data plane's clock (ns; see `Settings::ns_per_tick`).
    pub at_ns: u64,
}

/// How long a cached next hop is used before the FIB is asked again (a neighbour's MAC
/// or a route change is picked up within this time).
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// Slots of the per-CPU next-hop cache of replies (`CLIENT_HOPS`), direct-mapped by
/// [`addr_slot`] of the client address. A client whose slot holds another client costs a
/// FIB lookup, which then takes the slot.
pub const CLIENT_HOP_SLOTS: u32 = 1 << ADDR_SLOT_BITS;

/// Slots of `VIP_ADDRS`: how many VIPs have an address whose [`addr_slot`] is the index.
/// A packet whose destination's slot counts none is for no VIP, so the `VIPS` lookup is
/// skipped (replies and other traffic then cost an array read, not a hash lookup).
pub const VIP_ADDR_SLOTS: u32 = 1 << ADDR_SLOT_BITS;

/// `CLIENT_HOPS` and `VIP_ADDRS` have 2^12 slots.
pub const ADDR_SLOT_BITS: u32 = 12;

/// The slot of an address (as stored in keys, network byte order; an IPv6 address by its
/// words folded) in a table of 2^[`ADDR_SLOT_BITS`] slots: Fibonacci hashing, whose top bits are well mixed.
/// The agent and the kernel must agree on it.
#[inline(always)]
pub fn addr_slot<A: Addr>(addr: &A) -> u32 {
    addr.folded().wrapping_mul(0x9e37_79b9) >> (32 - ADDR_SLOT_BITS)
}

/// Slots of the per-CPU flow cache (`FLOW_CACHE`), direct-mapped by [`flow_slot`].
pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_BITS;
/// `FLOW_CACHE` has 2^12 slots per CPU (64 bytes each: 256 KiB per CPU).
pub const FLOW_CACHE_BITS: u32 = 12;

/// Slots of the per-CPU `NO_PORT` table, direct-mapped by [`flow_slot`] (its low bits).
pub const NO_PORT_SLOTS: u32 = 1 << 10;
/// How long the packets of a flow that found no free SNAT port are dropped without
/// probing again (a port may have come free after it).
pub const NO_PORT_HOLD_NS: u64 = 1_000_000_000;

/// Value of `NO_PORT`: a flow that found every probed SNAT port taken, and until when
/// (the data plane's clock, ns) its next packets are dropped at once rather than probing
/// the same ports again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NoPort<A = V4> {
    pub key: FlowKey<A>,
    pub until_ns: u64,
}

/// The slot of a client tuple in `FLOW_CACHE`: the tuple folded to one 64-bit word, then
/// Fibonacci hashing (the top bits of the product are well mixed).
#[inline(always)]
pub fn flow_slot<A: Addr>(key: &FlowKey<A>) -> u32 {
    let [addrs, rest] = key.folded_words();
    let folded = addrs ^ rest.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_CACHE_BITS)) as u32
}

/// Value of `FLOW_CACHE` (a per-CPU array, one cache line per slot): what forwarding a
/// packet of an established flow needs, copied from its `CONNS` entry as this CPU last left
/// it, with the translation's checksum changes worked out. The data plane forwards from it,
/// without the `CONNS` lookup, while the copy's `last_seen_ns` is less than the touch
/// interval old (when touching the `CONNS` entry would change nothing), the packet has no
/// SYN, FIN or RST, `Settings::flow_epoch` is still the one the copy was made in (the VIP's
/// generation and the backend's flags were checked then), and `FLOW_EVICTIONS` has not
/// changed since (no SNAT port was taken from a flow whose `CONNS` entry the LRU evicted: it
/// could be this one's); everything else takes the `CONNS` path, which refreshes the copy.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCacheEntry<A = V4> {
    /// The client's tuple (the `CONNS` key).
    pub key: FlowKey<A>,
    /// `Conn::backend_addr`, `snat_addr`, `backend_port`, `snat_port` (network byte order).
    pub backend_addr: A,
    pub snat_addr: A,
    pub backend_port: u16,
    pub snat_port: u16,
    /// The translation's change to the IPv4 header checksum: the one's-complement sum of
    /// the new address words and the complements of the old ones (RFC 1624), folded.
    pub ip_csum_diff: u16,
    /// The same for the TCP/UDP checksum: the addresses (pseudo-header) and the ports.
    pub l4_csum_diff: u16,
    pub backend_id: u32,
    pub vip_id: u32,
    /// `Conn::state`.
    pub state: u32,
    pub _pad: u32,
    /// `Conn::last_seen_ns`.
    pub last_seen_ns: u64,
    /// `Settings::flow_epoch` when the copy was made.
    pub epoch: u32,
    /// `FLOW_EVICTIONS[0]` when the copy was made.
    pub evictions: u32,
}

/// Round-robin position of a VIP on one CPU (`RR_STATE`, per-CPU array by vip id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RrState {
    pub next: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<VipKey>() == 8);
const _: () = assert!(size_of::<VipKey<V6>>() == 20);
const _: () = assert!(size_of::<Backend<V6>>() == 152);
const _: () = assert!(size_of::<FlowKey<V6>>() == 40);
const _: () = assert!(size_of::<Conn<V6>>() == 64);
const _: () = assert!(size_of::<NatEntry<V6>>() == 48);
const _: () = assert!(size_of::<NoPort<V6>>() == 48);
const _: () = assert!(size_of::<NextHop<V6>>() == 48);
const _: () = assert!(size_of::<FlowCacheEntry<V6>>() == 112);
const _: () = assert!(size_of::<VipMeta>() == 24);
const _: () = assert!(size_of::<Backend>() == 44);
const _: () = assert!(MAX_SNAT_ADDRS.is_power_of_two());
const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<Conn>() == 40);
const _: () = assert!(size_of::<NatEntry>() == 24);
const _: () = assert!(size_of::<Settings>() == 64);

impl Settings {
    /// How long a flow in `state` (`FLOW_*` bits) of protocol `proto` may stay idle: the
    /// data plane expires flows by it, and the agent counts live flows by it.
    #[inline(always)]
    #[expect(
        clippy::inline_always,
        reason = "the data plane is one BPF function: everything it calls is inlined"
    )]
    #[must_use]
    pub fn idle_timeout_ns(&self, state: u32, proto: u8) -> u64 {
        if state & FLOW_CLOSING != 0 {
            self.closing_timeout_ns
        } else if proto == PROTO_TCP {
            if state & FLOW_ESTABLISHED != 0 {
                self.tcp_timeout_ns
            } else {
                self.tcp_handshake_timeout_ns
            }
        } else {
            self.udp_timeout_ns
        }
    }
}
const _: () = assert!(size_of::<FlowStats>() == 56);
const _: () = assert!(size_of::<RrState>() == 8);
const _: () = assert!(size_of::<NoPort>() == 24);
const _: () = assert!(size_of::<NextHop>() == 32);
const _: () = assert!(size_of::<FlowCacheEntry>() == 64);

#[cfg(feature = "user")]
mod pod {
    use super::{
        Backend, Conn, DecapSettings, FlowCacheEntry, FlowKey, FlowStats, NatEntry, NextHop,
        NoPort, RrState, Settings, VipKey, VipMeta, V6,
    };
    // SAFETY: all types are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for NoPort {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Conn {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for RrState {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for FlowCacheEntry {}
    unsafe impl aya::Pod for DecapSettings {}
    unsafe impl aya::Pod for VipKey<V6> {}
    unsafe impl aya::Pod for NoPort<V6> {}
    unsafe impl aya::Pod for Backend<V6> {}
    unsafe impl aya::Pod for FlowKey<V6> {}
    unsafe impl aya::Pod for Conn<V6> {}
    unsafe impl aya::Pod for NatEntry<V6> {}
    unsafe impl aya::Pod for NextHop<V6> {}
    unsafe impl aya::Pod for FlowCacheEntry<V6> {}
}
