//! How a packet of a flow leaves: counted, rewritten ([`nat`]) and sent to its next hop
//! through the kernel's FIB ([`fib`]); a direct-server-return flow's packet gets only its
//! MACs changed, towards a backend on a link of the balancer; a tunnel flow's packet is
//! encapsulated to its backend ([`encap`]), or answered with an ICMP "fragmentation
//! needed" when it would not fit the tunnel ([`too_big`]). [`deliver`] chooses.
mod encap;
mod fib;
mod too_big;

use aya_ebpf::programs::XdpContext;
use balancer_common::{stat, FlowKey, Settings, FLOW_DSR, FLOW_GUE, FLOW_TUNNEL, V4};

use crate::{
    csum,
    family::Family,
    nat::{self, Rewrite},
    parse::Packet,
    stats::{self, Dir},
    DropReason,
};

/// What becomes of a packet: it leaves translated, or gets this verdict as it is.
pub enum Action<A: Family> {
    Send(Send<A>),
    Verdict(u32),
}

/// How a packet of a flow travels to its backend.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Full NAT (and every reply).
    Nat,
    /// Direct server return: only the MACs change.
    Dsr,
    /// Untranslated inside an outer IPv4 header (IPIP) or outer IPv4 and UDP (GUE).
    Ipip,
    Gue,
}

impl Way {
    /// The way of an untranslated flow (`FLOW_DSR`) with state bits `state`.
    #[inline(always)]
    fn untranslated(state: u32) -> Way {
        if state & FLOW_TUNNEL == 0 {
            Way::Dsr
        } else if state & FLOW_GUE == 0 {
            Way::Ipip
        } else {
            Way::Gue
        }
    }
}

/// How a translated packet leaves ([`deliver`]).
pub struct Send<A: Family> {
    /// (VIP id, backend id) of its flow: for the counters, and the backend's next hop.
    ids: (u32, u32),
    to: Rewrite<A>,
    /// The changes to the IPv4 and the TCP/UDP checksums ([`nat::early_diffs`]).
    diffs: (csum::Diff, csum::Diff),
    dir: Dir,
    new_flow: bool,
    way: Way,
}

impl<A: Family> Send<A> {
    #[inline(always)]
    pub fn to_backend(
        ids: (u32, u32),
        to: Rewrite<A>,
        diffs: (csum::Diff, csum::Diff),
        new_flow: bool,
    ) -> Send<A> {
        Send {
            ids,
            to,
            diffs,
            dir: Dir::ToBackend,
            new_flow,
            way: Way::Nat,
        }
    }

    /// A packet of an untranslated flow (`FLOW_DSR`, with state bits `state`) for
    /// `backend_addr` (network byte order): it keeps its addresses and ports, and goes
    /// direct or through a tunnel.
    #[inline(always)]
    pub fn untranslated(
        ids: (u32, u32),
        key: &FlowKey<A>,
        backend_addr: &A,
        state: u32,
        new_flow: bool,
    ) -> Send<A> {
        debug_assert!(state & FLOW_DSR != 0);
        Send {
            ids,
            to: Rewrite {
                src_addr: key.src_addr,
                dst_addr: *backend_addr,
                src_port: key.src_port,
                dst_port: key.dst_port,
            },
            diffs: (csum::Diff::default(), csum::Diff::default()),
            dir: Dir::ToBackend,
            new_flow,
            way: Way::untranslated(state),
        }
    }

    /// A reply of an established flow (never a new flow).
    #[inline(always)]
    pub fn to_client(ids: (u32, u32), to: Rewrite<A>, diffs: (csum::Diff, csum::Diff)) -> Send<A> {
        Send {
            ids,
            to,
            diffs,
            dir: Dir::ToClient,
            new_flow: false,
            way: Way::Nat,
        }
    }
}

/// Counts a packet, rewrites it and transmits it: the one exit of the cached, the
/// `CONNS`, the new-flow and the reply paths, so that the next-hop and transmit code is in
/// the program once (every inlined copy of it made the common paths slower).
#[inline(always)]
pub fn deliver<A: Family>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    send: &Send<A>,
    settings: &Settings,
    now: u64,
) -> Result<u32, DropReason> {
    let backend_id = send.ids.1;
    match send.way {
        Way::Nat => {
            count(pkt, send);
            let (ip_diff, l4_diff) = nat::deliver_diffs(pkt, &send.to, send.diffs);
            nat::rewrite_with(ctx, pkt, &send.to, ip_diff, l4_diff)?;
            let via = fib::Via::Routed(pkt.key.proto, pkt.ip_len);
            fib::transmit(ctx, pkt, &send.to, send.dir, backend_id, via, now)
        }
        Way::Dsr => {
            count(pkt, send);
            fib::transmit(
                ctx,
                pkt,
                &send.to,
                send.dir,
                backend_id,
                fib::Via::OnLink,
                now,
            )
        }
        Way::Ipip | Way::Gue => A::encapsulate(ctx, pkt, send, settings, now),
    }
}

/// A packet of an IPv4 tunnel flow: encapsulated, or answered with an ICMP "fragmentation
/// needed" when it would not fit `tunnel.mtu` once encapsulated.
#[inline(always)]
pub fn tunnel(
    ctx: &XdpContext,
    pkt: &Packet<V4>,
    send: &Send<V4>,
    settings: &Settings,
    now: u64,
) -> Result<u32, DropReason> {
    let gue = send.way == Way::Gue;
    let overhead = encap::overhead(gue);
    if u32::from(pkt.ip_len) + u32::from(overhead) > u32::from(settings.tunnel_mtu) {
        stats::count(stat::TUNNEL_TOO_BIG);
        return too_big::reply(ctx, pkt, settings.tunnel_mtu.saturating_sub(overhead));
    }
    count(pkt, send);
    let (outer, via) = encap::push(ctx, pkt, gue, send.to.dst_addr, settings)?;
    fib::transmit(ctx, pkt, &outer, send.dir, send.ids.1, via, now)
}

#[inline(always)]
fn count<A: Family>(pkt: &Packet<A>, send: &Send<A>) {
    let (vip_id, backend_id) = send.ids;
    stats::count_flow(vip_id, backend_id, pkt.len, send.dir, send.new_flow);
}
