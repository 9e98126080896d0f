//! Full NAT: client -> VIP becomes SNAT address:port -> backend, and the reply
//! backend -> SNAT address:port becomes VIP -> client. Allocates the SNAT port of a new flow
//! and keeps IPv4 and TCP/UDP checksums right by incremental updates.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::warn;
use balancer_common::{
    stat, Conn, FlowKey, NatEntry, Settings, VipKey, VipMeta, BACKEND_F_PRESENT, FLOW_CLOSING,
    PROTO_UDP, SNAT_PORT_PROBES, VIP_F_PASS_ALL_DOWN,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    csum, flow_cache,
    forward::{Action, Send},
    maps::{BACKENDS, CONNS},
    parse::{ptr_at, Packet, TCP_CHECK_OFF, TCP_FIN, TCP_RST, UDP_CHECK_OFF},
    select, snat, stats, DropReason,
};

/// The `VIPS` key of the VIP a client packet with tuple `key` is for.
#[inline(always)]
pub fn vip_key(key: &FlowKey) -> VipKey {
    VipKey {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    }
}

/// A packet for `vip` that is no established flow: schedule a new flow; the packet goes
/// to its backend. `ended`: the flow that ended on the packet's tuple.
#[inline(always)]
pub fn new_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    vip: &VipMeta,
    ended: Option<&Conn>,
    settings: &Settings,
    stamp: flow_cache::Stamp,
    now: u64,
) -> Result<Action, DropReason> {
    let conn = match schedule(pkt, vip, ended, settings, now) {
        Ok(Some(conn)) => conn,
        Ok(None) => return all_down(vip).map(Action::Verdict),
        Err(reason) => {
            if reason == stat::DROP_SNAT_EXHAUSTED {
                warn!(
                    ctx,
                    "vip {}: no free SNAT port for a new flow from {:i} ({} ports probed); widen nat.port_range",
                    vip.vip_id,
                    u32::from_be(pkt.key.src_addr),
                    SNAT_PORT_PROBES
                );
            }
            return Err(reason);
        }
    };
    let to = to_backend(&conn);
    let diffs = csum_diffs(&pkt.key, &to);
    flow_cache::remember(&pkt.key, &conn, stamp, diffs);
    let ids = (conn.vip_id, conn.backend_id);
    Ok(Action::Send(Send::to_backend(ids, to, diffs, true)))
}

/// How a packet of `conn` leaves for its backend.
#[inline(always)]
pub fn to_backend(conn: &Conn) -> Rewrite {
    Rewrite {
        src_addr: conn.snat_addr,
        dst_addr: conn.backend_addr,
        src_port: conn.snat_port,
        dst_port: conn.backend_port,
    }
}

/// No backend can take a new flow: drop it, or pass it to the stack if the VIP says so.
#[inline(always)]
fn all_down(vip: &VipMeta) -> Result<u32, DropReason> {
    if vip.flags & VIP_F_PASS_ALL_DOWN != 0 {
        stats::count(stat::PASS_ALL_DOWN);
        Ok(xdp_action::XDP_PASS)
    } else {
        Err(stat::DROP_NO_BACKEND)
    }
}

/// A new flow: pick a backend, allocate a SNAT port, record both directions. `None` when
/// the VIP has no usable backend. A TCP RST starts no flow: it is dropped.
#[inline(always)]
fn schedule(
    pkt: &Packet,
    vip: &VipMeta,
    ended: Option<&Conn>,
    settings: &Settings,
    now: u64,
) -> Result<Option<Conn>, DropReason> {
    if pkt.tcp_flags & TCP_RST != 0 {
        // Nothing to reset: a new SNAT port would carry it to a backend that never saw
        // the connection.
        return Err(stat::DROP_STRAY_RST);
    }
    let hash = select::flow_hash(&pkt.key);
    let Some(backend_id) = select::pick_backend(vip, hash) else {
        return Ok(None);
    };
    let Some(backend) = BACKENDS.get(backend_id).copied() else {
        return Ok(None);
    };
    if backend.flags & BACKEND_F_PRESENT == 0 {
        return Ok(None);
    }
    let state = if pkt.tcp_flags & TCP_FIN != 0 {
        FLOW_CLOSING
    } else {
        0
    };
    let mut conn = Conn {
        backend_addr: backend.addr,
        snat_addr: backend.snat_addr,
        backend_port: backend.port,
        snat_port: 0,
        backend_id,
        vip_id: vip.vip_id,
        state,
        vip_gen: vip.generation,
        _pad: 0,
        last_seen_ns: now,
    };
    if let Err(reason) = snat::allocate_port(pkt, &backend, &mut conn, ended, settings, now, hash) {
        // Whatever failed, no forward entry may name a port this flow does not hold.
        let _ = CONNS.remove(&pkt.key);
        return Err(reason);
    }
    Ok(Some(conn))
}

/// The addresses and ports (network byte order) a translated packet leaves with.
pub struct Rewrite {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Rewrite {
    /// The tuple of a packet the other way.
    #[inline(always)]
    pub fn reversed(&self) -> Rewrite {
        Rewrite {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// How a reply of the flow that owns the reply entry `entry` leaves for its client.
#[inline(always)]
pub fn to_client_of(entry: &NatEntry) -> Rewrite {
    Rewrite {
        src_addr: entry.vip_addr,
        dst_addr: entry.client_addr,
        src_port: entry.vip_port,
        dst_port: entry.client_port,
    }
}

/// The changes to the IPv4 and the TCP/UDP checksums when the tuple `from` becomes `to`
/// (the addresses are in both: the TCP/UDP checksum covers a pseudo-header).
#[inline(always)]
pub fn csum_diffs(from: &FlowKey, to: &Rewrite) -> (csum::Diff, csum::Diff) {
    let addr_diff = csum::Diff::default()
        .u32(from.src_addr, to.src_addr)
        .u32(from.dst_addr, to.dst_addr);
    let l4_diff = addr_diff
        .u16(from.src_port, to.src_port)
        .u16(from.dst_port, to.dst_port);
    (addr_diff, l4_diff)
}

/// Rewrites addresses and ports to `to` and applies the checksum changes worked out for it
/// (see [`csum_diffs`]).
#[inline(always)]
pub fn rewrite_with(
    ctx: &XdpContext,
    pkt: &Packet,
    to: &Rewrite,
    ip_diff: csum::Diff,
    l4_diff: csum::Diff,
) -> Result<(), DropReason> {
    let &Rewrite {
        src_addr,
        dst_addr,
        src_port,
        dst_port,
    } = to;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.ip_off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe {
        (*ip).src_addr = src_addr.to_ne_bytes();
        (*ip).dst_addr = dst_addr.to_ne_bytes();
        let check = u16::from_ne_bytes((*ip).check);
        (*ip).check = ip_diff.apply(check).to_ne_bytes();
    }

    // Source and destination ports are the first 4 bytes of both TCP and UDP headers.
    let ports: *mut [u16; 2] = ptr_at(ctx, pkt.l4_off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { *ports = [src_port, dst_port] };
    if pkt.key.proto == PROTO_UDP {
        let check: *mut u16 = ptr_at(ctx, pkt.l4_off + UDP_CHECK_OFF)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            // A zero UDP checksum means "none" and stays zero; a computed zero is sent as 0xffff.
            if *check != 0 {
                let new = l4_diff.apply(*check);
                *check = if new == 0 { 0xffff } else { new };
            }
        }
    } else {
        let check: *mut u16 = ptr_at(ctx, pkt.l4_off + TCP_CHECK_OFF)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { *check = l4_diff.apply(*check) };
    }
    Ok(())
}
