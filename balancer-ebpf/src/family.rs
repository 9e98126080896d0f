//! What differs between IPv4 and IPv6 on a packet's way: each family's maps, and the few
//! steps that touch the IP header (its rewrite, its checksum, the FIB's parameters, the
//! martian sources). Everything else is written once, generic over [`Family`], and
//! compiled once per family: the IPv4 path is the code it was before IPv6.
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use balancer_common::{
    stat, Addr, Backend, Conn, FlowCacheEntry, FlowKey, NatEntry, NextHop, NoPort, Settings,
    VipKey, VipMeta, SNAT_PORT_PROBES, V4, V6,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    csum,
    forward::Send,
    maps,
    nat::Rewrite,
    parse::{ptr_at, Packet},
    DropReason,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The line a new flow that found no SNAT port logs (at most one a second, see
/// `stats::log_due`), for an address `{:i}` formats.
macro_rules! warn_no_port {
    ($ctx:expr, $vip_id:expr, $addr:expr) => {
        warn!(
            $ctx,
            "vip {}: no free SNAT port for a new flow from {:i} ({} ports probed; at most one such line a second, drop_snat_exhausted counts them all); widen nat.port_range or add nat.source_addresses",
            $vip_id,
            $addr,
            SNAT_PORT_PROBES
        )
    };
}

/// An address family: its maps and its IP-header steps.
pub trait Family: Addr {
    /// How many SNAT ports a new flow probes (see `snat::allocate_port`): IPv4's
    /// `SNAT_PORT_PROBES`; fewer for IPv6, whose unrolled probes, four times as wide,
    /// would take more than the verifier's budget of instructions.
    const SNAT_PROBES: u32;

    /// Whether established flows are served from this CPU's flow cache, whose copies keep
    /// the translation's checksum changes, which the lookups then work out (otherwise
    /// the delivery does, see `nat::deliver_diffs`).
    const CACHED: bool;

    fn vips() -> &'static HashMap<VipKey<Self>, VipMeta>;
    fn backends() -> &'static Array<Backend<Self>>;
    fn conns() -> &'static LruHashMap<FlowKey<Self>, Conn<Self>>;
    fn nat() -> &'static LruHashMap<FlowKey<Self>, NatEntry<Self>>;
    fn flow_cache() -> &'static PerCpuArray<FlowCacheEntry<Self>>;
    fn no_port() -> &'static PerCpuArray<NoPort<Self>>;
    fn next_hops() -> &'static PerCpuArray<NextHop<Self>>;
    fn client_hops() -> &'static PerCpuArray<NextHop<Self>>;

    /// Whether two keys are the same tuple.
    fn same(a: &FlowKey<Self>, b: &FlowKey<Self>) -> bool;

    /// Whether no host can have this source address: a flow from it would take a SNAT
    /// port for replies that can go nowhere.
    fn martian(&self) -> bool;

    /// Logs that a new flow from this address to VIP `vip_id` found no free SNAT port.
    fn warn_no_port(&self, ctx: &XdpContext, vip_id: u32);

    /// Whether the IP header's own checksum is right (IPv6 has none).
    fn header_checksum_ok(ctx: &XdpContext, pkt: &Packet<Self>) -> bool;

    /// Rewrites the IP header's addresses to `to`'s, takes one hop off its TTL or hop
    /// limit, and applies `ip_diff` to its checksum (IPv4).
    fn rewrite_header(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        to: &Rewrite<Self>,
        ip_diff: csum::Diff,
    ) -> Result<(), DropReason>;

    /// Fills the family's fields of a FIB lookup for a packet from `src` to `dst` (`tos`:
    /// the IPv4 TOS or IPv6 traffic class).
    fn fib_params(params: &mut bpf_fib_lookup, src: &Self, dst: &Self, tos: u8);

    /// The destination (or gateway) a successful FIB lookup left in `params`.
    fn fib_dst(params: &bpf_fib_lookup) -> Self;

    /// A tunnel flow's packet: encapsulated to its backend (IPv4 only for now: the agent
    /// never gives an IPv6 VIP `VIP_F_TUNNEL`).
    fn encapsulate(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        send: &Send<Self>,
        settings: &Settings,
        now: u64,
    ) -> Result<u32, DropReason>;
}

/// A family's map accessors, from its maps' names (in the order `Family` declares them).
macro_rules! family_maps {
    ($vips:ident, $backends:ident, $conns:ident, $nat:ident, $cache:ident, $no_port:ident,
     $next_hops:ident, $client_hops:ident) => {
        #[inline(always)]
        fn vips() -> &'static HashMap<VipKey<Self>, VipMeta> {
            &maps::$vips
        }
        #[inline(always)]
        fn backends() -> &'static Array<Backend<Self>> {
            &maps::$backends
        }
        #[inline(always)]
        fn conns() -> &'static LruHashMap<FlowKey<Self>, Conn<Self>> {
            &maps::$conns
        }
        #[inline(always)]
        fn nat() -> &'static LruHashMap<FlowKey<Self>, NatEntry<Self>> {
            &maps::$nat
        }
        #[inline(always)]
        fn flow_cache() -> &'static PerCpuArray<FlowCacheEntry<Self>> {
            &maps::$cache
        }
        #[inline(always)]
        fn no_port() -> &'static PerCpuArray<NoPort<Self>> {
            &maps::$no_port
        }
        #[inline(always)]
        fn next_hops() -> &'static PerCpuArray<NextHop<Self>> {
            &maps::$next_hops
        }
        #[inline(always)]
        fn client_hops() -> &'static PerCpuArray<NextHop<Self>> {
            &maps::$client_hops
        }
    };
}

impl Family for V4 {
    const CACHED: bool = true;
    const SNAT_PROBES: u32 = SNAT_PORT_PROBES;

    family_maps!(
        VIPS,
        BACKENDS,
        CONNS,
        NAT,
        FLOW_CACHE,
        NO_PORT,
        NEXT_HOPS,
        CLIENT_HOPS
    );

    #[inline(always)]
    fn same(a: &FlowKey<Self>, b: &FlowKey<Self>) -> bool {
        // Two compares instead of one per field.
        a.words() == b.words()
    }

    /// RFC 1812 5.3.7: "this network" 0/8, loopback 127/8, multicast 224/4, reserved
    /// 240/4 and broadcast.
    #[inline(always)]
    fn martian(&self) -> bool {
        let first = u32::from_be(*self) >> 24;
        first == 0 || first == 127 || first >= 224
    }

    #[inline(always)]
    fn warn_no_port(&self, ctx: &XdpContext, vip_id: u32) {
        warn_no_port!(ctx, vip_id, u32::from_be(*self));
    }

    #[inline(always)]
    fn header_checksum_ok(ctx: &XdpContext, pkt: &Packet<Self>) -> bool {
        csum::sum_of(ctx, pkt.ip_off, pkt.l4_off - pkt.ip_off)
            .is_some_and(|sum| csum::fold(sum) == 0xffff)
    }

    #[inline(always)]
    fn rewrite_header(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        to: &Rewrite<Self>,
        ip_diff: csum::Diff,
    ) -> Result<(), DropReason> {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.ip_off)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            // Forwarded as a router forwards: one hop less.
            (*ip).ttl -= 1;
            (*ip).src_addr = to.src_addr.to_ne_bytes();
            (*ip).dst_addr = to.dst_addr.to_ne_bytes();
            let check = u16::from_ne_bytes((*ip).check);
            (*ip).check = ip_diff.apply(check).to_ne_bytes();
        }
        Ok(())
    }

    #[inline(always)]
    fn fib_params(params: &mut bpf_fib_lookup, src: &Self, dst: &Self, tos: u8) {
        params.family = AF_INET;
        params.__bindgen_anon_2.tos = tos;
        params.__bindgen_anon_3.ipv4_src = *src;
        params.__bindgen_anon_4.ipv4_dst = *dst;
    }

    #[inline(always)]
    fn fib_dst(params: &bpf_fib_lookup) -> Self {
        // SAFETY: a plain u32 field of the union the helper wrote.
        unsafe { params.__bindgen_anon_4.ipv4_dst }
    }

    #[inline(always)]
    fn encapsulate(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        send: &Send<Self>,
        settings: &Settings,
        now: u64,
    ) -> Result<u32, DropReason> {
        crate::forward::tunnel(ctx, pkt, send, settings, now)
    }
}

impl Family for V6 {
    const CACHED: bool = false;
    const SNAT_PROBES: u32 = SNAT_PORT_PROBES / 2;

    family_maps!(
        VIPS6,
        BACKENDS6,
        CONNS6,
        NAT6,
        FLOW_CACHE6,
        NO_PORT6,
        NEXT_HOPS6,
        CLIENT_HOPS6
    );

    #[inline(always)]
    fn same(a: &FlowKey<Self>, b: &FlowKey<Self>) -> bool {
        a.src_addr[0] == b.src_addr[0]
            && a.src_addr[1] == b.src_addr[1]
            && a.src_addr[2] == b.src_addr[2]
            && a.src_addr[3] == b.src_addr[3]
            && a.dst_addr[0] == b.dst_addr[0]
            && a.dst_addr[1] == b.dst_addr[1]
            && a.dst_addr[2] == b.dst_addr[2]
            && a.dst_addr[3] == b.dst_addr[3]
            && a.folded_words()[1] == b.folded_words()[1]
    }

    /// The unspecified address, loopback `::1`, multicast `ff00::/8`, and IPv4-mapped
    /// `::ffff:0:0/96` (RFC 4291 2.5.2, 2.5.3, 2.7; RFC 4038: mapped addresses never
    /// appear on the wire).
    #[inline(always)]
    fn martian(&self) -> bool {
        let first = u32::from_be(self[0]);
        let low_zero = self[0] == 0 && self[1] == 0;
        first >> 24 == 0xff
            || (low_zero && self[2] == 0 && u32::from_be(self[3]) <= 1)
            || (low_zero && u32::from_be(self[2]) == 0xffff)
    }

    #[inline(always)]
    fn warn_no_port(&self, ctx: &XdpContext, vip_id: u32) {
        warn_no_port!(ctx, vip_id, bytes(self));
    }

    #[inline(always)]
    fn header_checksum_ok(_: &XdpContext, _: &Packet<Self>) -> bool {
        true
    }

    #[inline(always)]
    fn rewrite_header(
        ctx: &XdpContext,
        pkt: &Packet<Self>,
        to: &Rewrite<Self>,
        _: csum::Diff,
    ) -> Result<(), DropReason> {
        // At its constant offset (`parse6` takes untagged frames only), not `pkt.ip_off`:
        // read back from the map that holds an IPv6 packet's description, that is a
        // number the verifier knows nothing of.
        let _ = pkt;
        let ip: *mut Ipv6Hdr = ptr_at(ctx, EthHdr::LEN)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            (*ip).hop_limit -= 1;
            (*ip).src_addr = bytes(&to.src_addr);
            (*ip).dst_addr = bytes(&to.dst_addr);
        }
        Ok(())
    }

    #[inline(always)]
    fn fib_params(params: &mut bpf_fib_lookup, src: &Self, dst: &Self, tos: u8) {
        params.family = AF_INET6;
        // Traffic class in the flow information's top byte after the version nibble.
        params.__bindgen_anon_2.flowinfo = (u32::from(tos) << 20).to_be();
        params.__bindgen_anon_3.ipv6_src = *src;
        params.__bindgen_anon_4.ipv6_dst = *dst;
    }

    #[inline(always)]
    fn fib_dst(params: &bpf_fib_lookup) -> Self {
        // SAFETY: plain u32 fields of the union the helper wrote.
        unsafe { params.__bindgen_anon_4.ipv6_dst }
    }

    #[inline(always)]
    fn encapsulate(
        _: &XdpContext,
        _: &Packet<Self>,
        _: &Send<Self>,
        _: &Settings,
        _: u64,
    ) -> Result<u32, DropReason> {
        Err(stat::DROP_FIB)
    }
}

/// An IPv6 address from the maps as header bytes, word by word (an array copy would be a
/// memcpy call on BPF).
#[inline(always)]
pub fn bytes(addr: &V6) -> [u8; 16] {
    let [a, b, c, d] = [
        addr[0].to_ne_bytes(),
        addr[1].to_ne_bytes(),
        addr[2].to_ne_bytes(),
        addr[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// IPv6 header bytes as an address of the maps.
#[inline(always)]
pub fn addr6(bytes: &[u8; 16]) -> V6 {
    [
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        u32::from_ne_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    ]
}
