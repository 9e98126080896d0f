//! The connection table on a packet's way: the `CONNS` entry of an established flow
//! (found by the client's tuple, still its VIP's, live, its backend not to be left, then
//! touched) and the `NAT` entry of a reply (found by the backend's tuple, its flow then
//! touched). How long entries live is [`timeouts`]' policy.
use balancer_common::{
    stat, Conn, NatEntry, Settings, BACKEND_F_RESCHEDULE, FLOW_DSR, FLOW_ESTABLISHED,
};

use crate::{
    clock,
    family::Family,
    flow_cache::{self, Stamp},
    forward::Send,
    maps::VIP_GENS,
    nat::{early_diffs, to_backend, to_client_of},
    parse::{Packet, TCP_FIN, TCP_RST, TCP_SYN},
    snat::{client_key, holds, keep_reply_entry, take_back},
    stats, timeouts,
    vip::vip_key,
    DropReason,
};

/// What [`established`] found for a packet.
pub enum Established<A: Family> {
    /// A live flow: the packet goes to its backend.
    Live(Send<A>),
    /// No live flow on the packet's tuple: the caller looks the VIP up and schedules a
    /// new flow. `Some` holds the entry of the flow that ended there (its SNAT port is
    /// the one the new flow tries first).
    Ended(Option<Conn<A>>),
}

/// A packet of an established flow: found in `CONNS`, still its VIP's, not expired, its
/// backend not to be left: it goes to the backend. No `VIPS` lookup here.
#[inline(always)]
pub fn established<A: Family>(
    pkt: &Packet<A>,
    settings: &Settings,
    stamp: Stamp,
    now: u64,
) -> Established<A> {
    let Some(entry) = A::conns().get_ptr_mut(&pkt.key) else {
        return Established::Ended(None);
    };
    // SAFETY: map value pointer, copied out whole.
    let mut conn = unsafe { *entry };
    if VIP_GENS.get(conn.vip_id).copied() != Some(conn.vip_gen) {
        if !renumbered(entry, pkt) {
            // Its VIP was deleted (or its id now names another VIP).
            return Established::Ended(Some(conn));
        }
        // SAFETY: as above.
        conn.vip_id = unsafe { (*entry).vip_id };
    }
    if !timeouts::is_live(&conn, pkt, settings, now) {
        stats::count(stat::CONN_EXPIRED);
        return Established::Ended(Some(conn));
    }
    if must_move(&conn) {
        stats::count(stat::CONN_RESCHEDULED);
        return Established::Ended(Some(conn));
    }
    let ids = (conn.vip_id, conn.backend_id);
    if conn.state & FLOW_DSR != 0 {
        // No SNAT port or reply entry to keep.
        timeouts::touch(entry, pkt, timeouts::From::Client, now);
        // SAFETY: as above; the entry as touched.
        let touched = unsafe { &*entry };
        if touched.state & FLOW_ESTABLISHED != 0 {
            flow_cache::remember(&pkt.key, touched, stamp, Default::default());
        }
        return Established::Live(Send::untranslated(
            ids,
            &pkt.key,
            &conn.backend_addr,
            conn.state,
            false,
        ));
    }
    // A half-open flow's port may have been taken by a new flow (see `snat`): its packets
    // check every time (there are few of them) that the port is still theirs. A client
    // that proves it exists (it acknowledges the backend's SYN-ACK: its ACK was late, in a
    // flood) takes its port back from a flow that has not.
    let half_open = timeouts::half_open(conn.state, pkt.key.proto);
    if (timeouts::touch_due(conn.last_seen_ns, now) || half_open)
        && !keep_reply_entry(pkt, &conn, now)
        && !(half_open
            && timeouts::acks_handshake(&conn, pkt)
            && take_back(pkt, &conn, settings, now))
    {
        stats::count(stat::SNAT_PORT_LOST);
        return Established::Ended(Some(conn));
    }
    timeouts::touch(entry, pkt, timeouts::From::Client, now);
    let to = to_backend(&conn);
    let diffs = early_diffs(&pkt.key, &to);
    // SAFETY: as above; the entry as touched.
    flow_cache::remember(&pkt.key, unsafe { &*entry }, stamp, diffs);
    Established::Live(Send::to_backend(ids, to, diffs, false))
}

/// Whether the VIP of the flow in `entry`, whose id no longer names it, is there under
/// another id: then the entry gets that id. A VIP's generation follows from its key, so
/// the VIP at the packet's destination with the flow's generation is the flow's, though
/// an agent that took the pinned tables over gave it another id (VIP ids come from a hash
/// too, but collisions depend on which VIPs exist). A deleted VIP has no `VIPS` entry,
/// and one deleted and added again has another generation: their flows still end.
#[inline(always)]
fn renumbered<A: Family>(entry: *mut Conn<A>, pkt: &Packet<A>) -> bool {
    // SAFETY: read-only look at a map value.
    let Some(vip) = (unsafe { A::vips().get(&vip_key(&pkt.key)) }) else {
        return false;
    };
    // SAFETY: `entry` points into a map value; single aligned 4-byte accesses.
    unsafe {
        if vip.generation != (*entry).vip_gen {
            return false;
        }
        (*entry).vip_id = vip.vip_id;
    }
    true
}

/// Is the flow's backend down with a policy that moves its flows? (Only if the backend
/// with the flow's id is still the flow's: an id is reused after its backend is deleted,
/// and an agent that took the pinned flow tables over numbers backends afresh.)
#[inline(always)]
fn must_move<A: Family>(conn: &Conn<A>) -> bool {
    A::backends().get(conn.backend_id).is_some_and(|b| {
        b.flags & BACKEND_F_RESCHEDULE != 0
            && b.addr == conn.backend_addr
            && b.port == conn.backend_port
    })
}

/// A reply from a backend to a SNAT address:port: it goes back to the client. `Ok(None)`
/// when the packet is not a reply of a balanced flow.
#[inline(always)]
pub fn to_client<A: Family>(
    pkt: &Packet<A>,
    settings: &Settings,
    now: u64,
) -> Result<Option<Send<A>>, DropReason> {
    let port = u16::from_be(pkt.key.dst_port);
    if port < settings.snat_port_min || port > settings.snat_port_max {
        return Ok(None);
    }
    let Some(slot) = A::nat().get_ptr_mut(&pkt.key) else {
        return Ok(None);
    };
    // SAFETY: map value pointer, copied out whole.
    let entry = unsafe { *slot };
    let tick = clock::reply_tick(now);
    let closes = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    // A SYN-ACK always reaches the flow's entry: it holds the handshake's acknowledgement.
    if closes || pkt.tcp_flags & TCP_SYN != 0 || entry.touched != tick {
        if !refresh(&entry, pkt, now) && closes {
            return Err(stat::DROP_STALE_REPLY);
        }
        if entry.touched != tick {
            // SAFETY: map value; a single aligned 4-byte store.
            unsafe { (*slot).touched = tick };
        }
    }
    stats::count(stat::NAT_REPLY);
    let to = to_client_of(&entry);
    let diffs = early_diffs(&pkt.key, &to);
    Ok(Some(Send::to_client(
        (entry.vip_id, entry.backend_id),
        to,
        diffs,
    )))
}

/// A reply keeps its flow alive as the client's packets do (a flow in which only the
/// backend sends does not expire), and a FIN or RST from the backend starts the closing
/// timeout: [`timeouts::touch`] on the client's `CONNS` entry, if that flow is still
/// the one on this reply tuple. `false` when the client's tuple has another flow now
/// (moved to another backend or port); `true` also when the entry is gone (evicted:
/// nothing tells the reply is stale).
#[inline(always)]
fn refresh<A: Family>(entry: &NatEntry<A>, pkt: &Packet<A>, now: u64) -> bool {
    let client_key = client_key(entry, pkt.key.proto);
    let Some(conn) = A::conns().get_ptr_mut(&client_key) else {
        return true;
    };
    // SAFETY: `conn` points into a map value; read whole.
    let current = holds(unsafe { &*conn }, &pkt.key);
    if current {
        timeouts::touch(conn, pkt, timeouts::From::Backend, now);
    }
    current
}
