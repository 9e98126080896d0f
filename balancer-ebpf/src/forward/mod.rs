//! How a packet of a flow leaves: counted, rewritten ([`nat`]) and sent to its next hop
//! through the kernel's FIB ([`fib`]); a direct-server-return flow's packet gets only its
//! MACs changed, towards a backend on a link of the balancer. (Tunnels go here beside them,
//! chosen by [`deliver`].)
mod fib;

use aya_ebpf::programs::XdpContext;
use balancer_common::FlowKey;

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
    /// Direct server return: not translated, only MACs change (`to` names the backend).
    direct: bool,
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
            direct: false,
        }
    }

    /// A packet of a direct-server-return flow for `backend_addr` (network byte order):
    /// it keeps its addresses and ports.
    #[inline(always)]
    pub fn direct(ids: (u32, u32), key: &FlowKey, backend_addr: u32, new_flow: bool) -> Send {
        Send {
            ids,
            to: Rewrite {
                src_addr: key.src_addr,
                dst_addr: backend_addr,
                src_port: key.src_port,
                dst_port: key.dst_port,
            },
            diffs: (csum::Diff::default(), csum::Diff::default()),
            dir: Dir::ToBackend,
            new_flow,
            direct: true,
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
            direct: false,
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
    if !send.direct {
        let (ip_diff, l4_diff) = send.diffs;
        nat::rewrite_with(ctx, pkt, &send.to, ip_diff, l4_diff)?;
    }
    fib::transmit(ctx, pkt, &send.to, send.dir, backend_id, send.direct, now)
}
