//! New flows: a packet for a VIP that no established flow takes gets a backend from the
//! VIP's ring ([`select`]), or the VIP's policy when no backend is up, and a SNAT port
//! ([`snat`]); the flow is then in both tables and in this CPU's flow cache.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{
    stat, Conn, NatEntry, Settings, VipMeta, BACKEND_F_PRESENT, FLOW_CLOSING, FLOW_DSR, FLOW_GUE,
    FLOW_MIDSTREAM, FLOW_TUNNEL, PROTO_TCP, VIP_F_DSR, VIP_F_GUE, VIP_F_PASS_ALL_DOWN,
    VIP_F_TUNNEL,
};

use crate::{
    csum,
    family::Family,
    flow_cache::{self, Stamp},
    forward::{Action, Send},
    nat::{early_diffs, to_backend},
    parse::{Packet, TCP_FIN, TCP_RST, TCP_SYN},
    select, snat, stats, DropReason,
};

/// Whether a packet that would start a flow may: `Err` when it comes from a martian
/// source, from a flow that just found no SNAT port, or has a bad checksum (see
/// [`csum::verify`]). [`new_flow`] follows.
#[inline(always)]
pub fn admit<A: Family>(ctx: &XdpContext, pkt: &Packet<A>, now: u64) -> Result<(), DropReason> {
    if pkt.key.src_addr.martian() {
        return Err(stat::DROP_MARTIAN);
    }
    // A flow that just found no port: the same ports again would most likely be taken.
    if snat::no_port_lately(&pkt.key, now) {
        return Err(stat::DROP_SNAT_EXHAUSTED);
    }
    if !csum::verify(ctx, pkt) {
        return Err(stat::DROP_BAD_CHECKSUM);
    }
    Ok(())
}

/// A packet for `vip` that is no established flow, and that [`admit`] let in: schedule a
/// new flow ([`start`], [`finish`]); the packet goes to its backend. `ended`: the flow
/// that ended on the packet's tuple.
#[inline(always)]
pub fn new_flow<A: Family>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    vip: &VipMeta,
    ended: Option<&Conn<A>>,
    settings: &Settings,
    stamp: Stamp,
    now: u64,
) -> Result<Action<A>, DropReason> {
    let mut conn = Conn::default();
    let mut entry = NatEntry::default();
    let Some(hash) = start(pkt, vip, &mut conn, now)? else {
        return all_down(vip).map(Action::Verdict);
    };
    let flow = (&mut conn, &mut entry, hash);
    finish(ctx, pkt, vip, ended, flow, settings, stamp, now)
}

/// The second half of [`new_flow`]: the flow `conn` that [`start`] began, with its hash,
/// gets its SNAT port and is recorded (its reply entry written in `entry`); the packet
/// goes to its backend.
#[expect(
    clippy::too_many_arguments,
    reason = "the state of one packet's new flow, handed on to a step that is always inlined"
)]
#[inline(always)]
pub fn finish<A: Family>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    vip: &VipMeta,
    ended: Option<&Conn<A>>,
    (conn, entry, hash): (&mut Conn<A>, &mut NatEntry<A>, u64),
    settings: &Settings,
    stamp: Stamp,
    now: u64,
) -> Result<Action<A>, DropReason> {
    if let Err(reason) = record(pkt, vip, ended, (conn, entry, hash), settings, now) {
        if reason == stat::DROP_SNAT_EXHAUSTED {
            snat::remember_no_port(&pkt.key, now);
            if stats::log_due(now) {
                pkt.key.src_addr.warn_no_port(ctx, vip.vip_id);
            }
        }
        return Err(reason);
    }
    let ids = (conn.vip_id, conn.backend_id);
    if conn.state & FLOW_DSR != 0 {
        // (Half-open: not remembered until its client's ACK establishes it.)
        return Ok(Action::Send(Send::untranslated(
            ids,
            &pkt.key,
            &conn.backend_addr,
            conn.state,
            true,
        )));
    }
    let to = to_backend(conn);
    let diffs = early_diffs(&pkt.key, &to);
    flow_cache::remember(&pkt.key, conn, stamp, diffs);
    Ok(Action::Send(Send::to_backend(ids, to, diffs, true)))
}

/// No backend can take a new flow: drop it, or pass it to the stack if the VIP says so.
#[inline(always)]
pub fn all_down(vip: &VipMeta) -> Result<u32, DropReason> {
    if vip.flags & VIP_F_PASS_ALL_DOWN != 0 {
        stats::count(stat::PASS_ALL_DOWN);
        Ok(xdp_action::XDP_PASS)
    } else {
        Err(stat::DROP_NO_BACKEND)
    }
}

/// The first half of a new flow: pick its backend and describe the flow in `conn` (its
/// SNAT address and port not yet chosen). The flow's hash, or `None` when the VIP has no
/// usable backend. A TCP RST starts no flow: it is dropped.
#[inline(always)]
pub fn start<A: Family>(
    pkt: &Packet<A>,
    vip: &VipMeta,
    conn: &mut Conn<A>,
    now: u64,
) -> Result<Option<u64>, DropReason> {
    if pkt.tcp_flags & TCP_RST != 0 {
        // Nothing to reset: a new SNAT port would carry it to a backend that never saw
        // the connection.
        return Err(stat::DROP_STRAY_RST);
    }
    let hash = select::flow_hash(&pkt.key);
    let Some(backend_id) = select::pick_backend(vip, hash) else {
        return Ok(None);
    };
    // By reference: an IPv6 backend (152 bytes) copied would take stack room.
    let Some(backend) = A::backends().get(backend_id) else {
        return Ok(None);
    };
    if backend.flags & BACKEND_F_PRESENT == 0 {
        return Ok(None);
    }
    let mut state = if pkt.tcp_flags & TCP_FIN != 0 {
        FLOW_CLOSING
    } else {
        0
    };
    if pkt.key.proto == PROTO_TCP && pkt.tcp_flags & TCP_SYN == 0 {
        state |= FLOW_MIDSTREAM;
    }
    if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
        // Not translated: no SNAT port, no reply entry; only the forward entry pins it.
        state |= FLOW_DSR;
        if vip.flags & VIP_F_TUNNEL != 0 {
            state |= FLOW_TUNNEL;
            if vip.flags & VIP_F_GUE != 0 {
                state |= FLOW_GUE;
            }
        }
    }
    *conn = Conn {
        backend_addr: backend.addr,
        // Both set by the port allocator, with the address it chose.
        snat_addr: A::default(),
        backend_port: backend.port,
        snat_port: 0,
        backend_id,
        vip_id: vip.vip_id,
        state,
        vip_gen: vip.generation,
        handshake_ack: 0,
        last_seen_ns: now,
    };
    Ok(Some(hash))
}

/// Records the flow `conn` in the connection tables: a direct-server-return flow only its
/// own entry; any other after the port allocator gave it a SNAT port towards its backend.
#[inline(always)]
fn record<A: Family>(
    pkt: &Packet<A>,
    vip: &VipMeta,
    ended: Option<&Conn<A>>,
    (conn, entry, hash): (&mut Conn<A>, &mut NatEntry<A>, u64),
    settings: &Settings,
    now: u64,
) -> Result<(), DropReason> {
    if vip.flags & (VIP_F_DSR | VIP_F_TUNNEL) != 0 {
        return A::conns()
            .insert(&pkt.key, conn, 0)
            .map_err(|_| stat::DROP_CONN_TABLE);
    }
    let Some(backend) = A::backends().get(conn.backend_id) else {
        return Err(stat::DROP_NO_BACKEND);
    };
    if let Err(reason) = snat::allocate_port(pkt, backend, conn, entry, ended, settings, now, hash)
    {
        // Whatever failed, no forward entry may name a port this flow does not hold.
        let _ = A::conns().remove(&pkt.key);
        return Err(reason);
    }
    Ok(())
}
