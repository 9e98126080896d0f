//! Full NAT: client -> VIP becomes SNAT address:port -> backend, and the reply
//! backend -> SNAT address:port becomes VIP -> client, in either family (NAT44, NAT66).
//! Rewrites addresses and ports and keeps the IPv4 and TCP/UDP checksums right by
//! incremental updates.
use aya_ebpf::programs::XdpContext;
use balancer_common::{Addr, Conn, FlowKey, NatEntry, PROTO_UDP, V4};

use crate::{
    csum,
    family::Family,
    parse::{ptr_at, Packet, TCP_CHECK_OFF, UDP_CHECK_OFF},
    DropReason,
};

/// 16-bit words of the UDP header, and of the TCP header up to its checksum's end.
const UDP_WORDS: usize = UDP_CHECK_OFF / 2 + 1;
const TCP_WORDS: usize = TCP_CHECK_OFF / 2 + 1;

/// The addresses and ports (network byte order) a translated packet leaves with.
pub struct Rewrite<A = V4> {
    pub src_addr: A,
    pub dst_addr: A,
    pub src_port: u16,
    pub dst_port: u16,
}

impl<A: Addr> Rewrite<A> {
    /// The tuple of a packet the other way.
    #[inline(always)]
    pub fn reversed(&self) -> Rewrite<A> {
        Rewrite {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// How a packet of `conn` leaves for its backend.
#[inline(always)]
pub fn to_backend<A: Addr>(conn: &Conn<A>) -> Rewrite<A> {
    Rewrite {
        src_addr: conn.snat_addr,
        dst_addr: conn.backend_addr,
        src_port: conn.snat_port,
        dst_port: conn.backend_port,
    }
}

/// How a reply of the flow that owns the reply entry `entry` leaves for its client.
#[inline(always)]
pub fn to_client_of<A: Addr>(entry: &NatEntry<A>) -> Rewrite<A> {
    Rewrite {
        src_addr: entry.vip_addr,
        dst_addr: entry.client_addr,
        src_port: entry.vip_port,
        dst_port: entry.client_port,
    }
}

/// The changes to the IPv4 and the TCP/UDP checksums when the tuple `from` becomes `to`
/// (the addresses are in both: the TCP/UDP checksum covers a pseudo-header) and the TTL
/// goes down by one, as [`rewrite_with`] does. (IPv6 has no header checksum: the first
/// is unused.)
#[inline(always)]
pub fn csum_diffs<A: Addr>(from: &FlowKey<A>, to: &Rewrite<A>) -> (csum::Diff, csum::Diff) {
    let addr_diff = csum::Diff::default()
        .addr(&from.src_addr, &to.src_addr)
        .addr(&from.dst_addr, &to.dst_addr);
    let l4_diff = addr_diff
        .u16(from.src_port, to.src_port)
        .u16(from.dst_port, to.dst_port);
    // The TTL is the first byte of the word it shares with the protocol: read in host
    // order (as `csum` reads words), that word goes down by one (the TTL is at least 2:
    // `try_balancer` passes the rest, so there is no borrow from the protocol byte).
    (addr_diff.u16(1, 0), l4_diff)
}

/// [`csum_diffs`] for a family whose lookups work them out (`Family::CACHED`: the flow
/// cache keeps them); for the other, nothing yet: [`deliver_diffs`] works them out.
#[inline(always)]
pub fn early_diffs<A: Family>(from: &FlowKey<A>, to: &Rewrite<A>) -> (csum::Diff, csum::Diff) {
    if A::CACHED {
        csum_diffs(from, to)
    } else {
        (csum::Diff::default(), csum::Diff::default())
    }
}

/// The checksum changes a translated packet leaves with: those its lookups worked out
/// (`early`, see [`early_diffs`]), or, for a family whose lookups do not, worked out
/// now (IPv6: its way's stages have no stack room for them before).
#[inline(always)]
pub fn deliver_diffs<A: Family>(
    pkt: &Packet<A>,
    to: &Rewrite<A>,
    early: (csum::Diff, csum::Diff),
) -> (csum::Diff, csum::Diff) {
    if A::CACHED {
        early
    } else {
        csum_diffs(&pkt.key, to)
    }
}

/// Rewrites addresses and ports to `to` and applies the checksum changes worked out for it
/// (see [`csum_diffs`]).
#[inline(always)]
pub fn rewrite_with<A: Family>(
    ctx: &XdpContext,
    pkt: &Packet<A>,
    to: &Rewrite<A>,
    ip_diff: csum::Diff,
    l4_diff: csum::Diff,
) -> Result<(), DropReason> {
    // Forwarded as a router forwards: one hop less.
    A::rewrite_header(ctx, pkt, to, ip_diff)?;
    let (src_port, dst_port) = (to.src_port, to.dst_port);

    // Source and destination ports are the first 4 bytes of both TCP and UDP headers.
    // One pointer per header for the ports and the checksum: the verifier learns the
    // bounds of the pointer a check was made on, and at an offset it cannot know (an
    // IPv6 packet's, after its extension headers) not those of another.
    if pkt.key.proto == PROTO_UDP {
        let udp: *mut [u16; UDP_WORDS] = ptr_at(ctx, pkt.l4_off)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            (*udp)[0] = src_port;
            (*udp)[1] = dst_port;
            // A zero UDP checksum means "none" and stays zero; a computed zero is sent as 0xffff.
            let check = (*udp)[UDP_CHECK_OFF / 2];
            if check != 0 {
                let new = l4_diff.apply(check);
                (*udp)[UDP_CHECK_OFF / 2] = if new == 0 { 0xffff } else { new };
            }
        }
    } else {
        let tcp: *mut [u16; TCP_WORDS] = ptr_at(ctx, pkt.l4_off)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            (*tcp)[0] = src_port;
            (*tcp)[1] = dst_port;
            (*tcp)[TCP_CHECK_OFF / 2] = l4_diff.apply((*tcp)[TCP_CHECK_OFF / 2]);
        }
    }
    Ok(())
}
