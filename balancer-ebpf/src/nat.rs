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
