//! Connection-table policy: idle timeouts (TCP, UDP, half-open and closing TCP), the TCP
//! handshake and FIN/RST handling, applied to entries that `conntrack`, `flow_cache` and
//! `snat` looked up (no map lookups here).
use balancer_common::{
    Addr, Conn, Settings, FLOW_BACKEND_CLOSED, FLOW_CLOSING, FLOW_DSR, FLOW_ESTABLISHED,
    FLOW_MIDSTREAM, FLOW_REPLIED, PROTO_TCP,
};

use crate::parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Refresh `last_seen_ns` only when it is this much older: saves a cache-line write per
/// packet; timeouts are whole seconds, so the error is negligible.
const TOUCH_INTERVAL_NS: u64 = 250_000_000;

/// Is an entry last touched at `last_seen_ns` due for a refresh ([`touch`] writes
/// `last_seen_ns` only then)?
#[inline(always)]
pub fn touch_due(last_seen_ns: u64, now: u64) -> bool {
    now.saturating_sub(last_seen_ns) > TOUCH_INTERVAL_NS
}

/// Is this entry still the flow of this packet? An idle-expired entry is not, and neither
/// is a closing one when the client opens the same tuple again with a SYN.
#[inline(always)]
pub fn is_live<A: Addr>(conn: &Conn<A>, pkt: &Packet<A>, settings: &Settings, now: u64) -> bool {
    if now.saturating_sub(conn.last_seen_ns) > settings.idle_timeout_ns(conn.state, pkt.key.proto) {
        return false;
    }
    !(conn.state & FLOW_CLOSING != 0
        && pkt.tcp_flags & TCP_SYN != 0
        && pkt.tcp_flags & TCP_ACK == 0)
}

/// Is this a TCP flow whose client has not completed the handshake (see
/// [`FLOW_ESTABLISHED`])?
#[inline(always)]
pub fn half_open(state: u32, proto: u8) -> bool {
    proto == PROTO_TCP && state & FLOW_ESTABLISHED == 0
}

/// May a packet of this flow be forwarded from a cached copy of its entry? Only when the
/// packet has no SYN, FIN or RST (which may change or end the flow), the flow is not
/// closing nor half-open (its client's ACK completes the handshake in `CONNS`, and its
/// port may be taken, see `snat`), it is live, and touching the entry would change nothing (`last_seen_ns` is
/// less than [`TOUCH_INTERVAL_NS`] old): then the `CONNS` path would do exactly what the
/// copy does.
#[inline(always)]
pub fn cache_serves<A: Addr>(
    state: u32,
    last_seen_ns: u64,
    pkt: &Packet<A>,
    settings: &Settings,
    now: u64,
) -> bool {
    let idle = now.saturating_sub(last_seen_ns);
    // With no SYN and not closing, `is_live` is this idle check alone.
    pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && state & FLOW_CLOSING == 0
        && !half_open(state, pkt.key.proto)
        && idle <= TOUCH_INTERVAL_NS
        && idle <= settings.idle_timeout_ns(state, pkt.key.proto)
}

/// Which way a packet of a flow goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    Client,
    Backend,
}

/// Updates the entry for a packet of its flow: FIN/RST start the closing timeout; the
/// first FIN from the backend marks it `FLOW_BACKEND_CLOSED`, an RST clears that; a packet
/// from the backend marks it `FLOW_REPLIED`; the handshake's end marks it
/// `FLOW_ESTABLISHED` ([`handshake`]).
#[inline(always)]
pub fn touch<A: Addr>(conn: *mut Conn<A>, pkt: &Packet<A>, from: From, now: u64) {
    // SAFETY: `conn` points into a map value; racing writers only store whole fields.
    unsafe {
        let mut state = (*conn).state;
        let mut changed = if from == From::Backend {
            FLOW_REPLIED
        } else {
            0
        };
        if half_open(state, pkt.key.proto) {
            changed |= handshake(conn, pkt, from, state);
        }
        if state | changed != state {
            state |= changed;
            (*conn).state = state;
            if changed & FLOW_ESTABLISHED != 0 {
                // The full TCP timeout counts from here.
                (*conn).last_seen_ns = now;
            }
        }
        if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 && state & FLOW_CLOSING == 0 {
            let first_fin = pkt.tcp_flags & TCP_RST == 0 && from == From::Backend;
            (*conn).state = state | FLOW_CLOSING | if first_fin { FLOW_BACKEND_CLOSED } else { 0 };
            (*conn).last_seen_ns = now;
        } else {
            if pkt.tcp_flags & TCP_RST != 0 && state & FLOW_BACKEND_CLOSED != 0 {
                (*conn).state = state & !FLOW_BACKEND_CLOSED;
            }
            // Every FIN counts: the backend's TIME-WAIT, which a resting port waits
            // out, starts at the last one.
            if pkt.tcp_flags & TCP_FIN != 0 || touch_due((*conn).last_seen_ns, now) {
                (*conn).last_seen_ns = now;
            }
        }
    }
}

/// Does client packet `pkt` acknowledge the backend's SYN-ACK of `conn`'s flow (the ACK
/// that completes the handshake, or a retransmission before the backend sent data)?
#[inline(always)]
pub fn acks_handshake<A: Addr>(conn: &Conn<A>, pkt: &Packet<A>) -> bool {
    pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK
        && conn.handshake_ack == pkt.tcp_ack
        && pkt.tcp_ack != 0
}

/// A packet of a half-open TCP flow: the backend's SYN-ACK gives the acknowledgement that
/// completes the handshake (recorded in `conn`); the client's ACK carrying it establishes
/// the flow, so a spoofed client, which never sees the SYN-ACK, cannot. A flow picked up
/// mid-stream has no handshake to see: the backend answering it without SYN or RST (it
/// knows the connection; to a stray ACK it answers RST) establishes it. Returns the state
/// bits to set.
///
/// # Safety
/// `conn` points into a map value.
#[inline(always)]
unsafe fn handshake<A: Addr>(conn: *mut Conn<A>, pkt: &Packet<A>, from: From, state: u32) -> u32 {
    let flags = pkt.tcp_flags;
    match from {
        From::Backend if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK => {
            let ack = u32::from_be(pkt.tcp_seq).wrapping_add(1).to_be();
            // SAFETY: the caller's; a single aligned 4-byte store.
            unsafe { (*conn).handshake_ack = ack };
            0
        }
        From::Backend if state & FLOW_MIDSTREAM != 0 && flags & (TCP_SYN | TCP_RST) == 0 => {
            FLOW_ESTABLISHED
        }
        // The balancer never sees a direct-server-return flow's SYN-ACK.
        From::Client
            if state & FLOW_DSR != 0 && flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK =>
        {
            FLOW_ESTABLISHED
        }
        // SAFETY: the caller's; read whole.
        From::Client if acks_handshake(unsafe { &*conn }, pkt) => FLOW_ESTABLISHED,
        _ => 0,
    }
}
