//! How a translated packet leaves: counted, rewritten ([`nat`]) and sent to its next hop.
//! Full NAT through the kernel's FIB ([`fib`]) is the one forwarding mode; other modes
//! (direct server return, tunnels) go here beside it, as `dsr.rs` and `tunnel.rs`, chosen
//! by [`deliver`].
mod fib;

use aya_ebpf::programs::XdpContext;

use crate::{
    csum,
    nat::{self, Rewrite},
    parse::Packet,
    stats::{self, Dir},
    DropReason,
};

/// What becomes of a packet: it leaves translated, or gets this verdict as it is.
pub enum Action {
    Send(Send),
    Verdict(u32),
}

/// How a translated packet leaves ([`deliver`]).
pub struct Send {
    /// (VIP id, backend id) of its flow: for the counters, and the backend's next hop.
    ids: (u32, u32),
    to: Rewrite,
    /// The changes to the IPv4 and the TCP/UDP checksums ([`nat::csum_diffs`]).
    diffs: (csum::Diff, csum::Diff),
    dir: Dir,
    new_flow: bool,
}

impl Send {
    #[inline(always)]
    pub fn to_backend(
        ids: (u32, u32),
        to: Rewrite,
        diffs: (csum::Diff, csum::Diff),
        new_flow: bool,
    ) -> Send {
        Send {
            ids,
            to,
            diffs,
            dir: Dir::ToBackend,
            new_flow,
        }
    }

    /// A reply of an established flow (never a new flow).
    #[inline(always)]
    pub fn to_client(ids: (u32, u32), to: Rewrite, diffs: (csum::Diff, csum::Diff)) -> Send {
        Send {
            ids,
            to,
            diffs,
            dir: Dir::ToClient,
            new_flow: false,
        }
    }
}

/// Counts a translated packet, rewrites it and transmits it: the one exit of the cached,
/// the `CONNS`, the new-flow and the reply paths, so that the next-hop and transmit code
/// is in the program once (every inlined copy of it made the common paths slower).
#[inline(always)]
pub fn deliver(ctx: &XdpContext, pkt: &Packet, send: &Send, now: u64) -> Result<u32, DropReason> {
    let (vip_id, backend_id) = send.ids;
    stats::count_flow(vip_id, backend_id, pkt.len, send.dir, send.new_flow);
    let (ip_diff, l4_diff) = send.diffs;
    nat::rewrite_with(ctx, pkt, &send.to, ip_diff, l4_diff)?;
    fib::transmit(ctx, pkt, &send.to, send.dir, backend_id, now)
}
