//! ICMP errors about balanced flows (destination unreachable, "fragmentation needed"
//! included, time exceeded, parameter problem): translated for the flow's other end as its
//! packets are, the quoted header included, so that path MTU discovery and "port
//! unreachable" work across the NAT. They are rare: translated in place, then passed to
//! the stack, which forwards them (as it does packets without a neighbour entry).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{stat, FlowKey, Settings, PMTU_FLOOR, PROTO_UDP};
use network_types::ip::Ipv4Hdr;

use crate::{
    csum::Diff,
    maps::{CONNS, NAT},
    nat::{to_backend, to_client_of, Rewrite},
    parse::{ptr_at, IcmpError, ICMP_CHECK_OFF, TCP_CHECK_OFF, UDP_CHECK_OFF},
    snat::{client_key, holds, names, reply_key_of},
    stats, DropReason,
};

/// Translates `error` when it is about a balanced flow; passes it either way.
///
/// * About a packet the balancer sent to a backend: the quote is SNAT address:port ->
///   backend, whose reversal is the flow's reply tuple (`NAT`'s key). The error goes to
///   the client, from the VIP, quoting client -> VIP.
/// * About a reply the balancer sent to a client: the quote is VIP -> client, whose
///   reversal is the flow's key in `CONNS`. The error goes to the backend, from the SNAT
///   address, quoting backend -> SNAT address:port. A "fragmentation needed" below
///   `PMTU_FLOOR` is not passed on (see there).
///
/// As with Linux's NAT, the new source is the address the other end talks to, whoever
/// sent the error (the peer itself, or a router on the way). An error about a tuple that
/// has moved on (the client's tuple now has another backend or SNAT port, or the SNAT
/// port another client) is not translated.
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    error: &IcmpError,
    settings: &Settings,
) -> Result<u32, DropReason> {
    let quote = &error.quote;
    // An error goes to the quoted packet's sender; anything else is not about our flow.
    if error.dst_addr != quote.src_addr {
        return Ok(xdp_action::XDP_PASS);
    }
    let flow = FlowKey {
        src_addr: quote.dst_addr,
        dst_addr: quote.src_addr,
        src_port: quote.dst_port,
        dst_port: quote.src_port,
        ..*quote
    };
    let Some((to, counter)) = other_end(&flow, settings) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // (An MTU of 0, from a router that predates RFC 1191, is below it too: the backend
    // would fall back to its minimum.)
    if counter == stat::ICMP_TO_BACKEND && error.frag_needed != 0 && error.mtu < PMTU_FLOOR {
        stats::count(stat::PASS_ICMP_LOW_MTU);
        return Ok(xdp_action::XDP_PASS);
    }
    // The error travels as the flow's packets to that end do; it quotes one the other way.
    rewrite(ctx, error, (to.src_addr, to.dst_addr), &to.reversed())?;
    stats::count(counter);
    Ok(xdp_action::XDP_PASS)
}

/// For the flow whose reversed tuple an error quotes: how the flow's packets to the end
/// the error is for are translated, and the counter of that direction. `None` when no
/// balanced flow has that tuple now.
#[inline(always)]
fn other_end(flow: &FlowKey, settings: &Settings) -> Option<(Rewrite, u32)> {
    let port = u16::from_be(flow.dst_port);
    if port >= settings.snat_port_min && port <= settings.snat_port_max {
        // SAFETY: the value is copied out at once.
        if let Some(entry) = unsafe { NAT.get(flow) }.copied() {
            // SAFETY: read-only look at a map value. (No entry: evicted, nothing tells.)
            let holder = unsafe { CONNS.get(&client_key(&entry, flow.proto)) };
            if holder.is_some_and(|conn| !holds(conn, flow)) {
                return None;
            }
            return Some((to_client_of(&entry), stat::ICMP_TO_CLIENT));
        }
    }
    if !crate::vip::maybe_vip(&flow.dst_addr) {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let conn = unsafe { CONNS.get(flow) }.copied()?;
    let reply = reply_key_of(&conn, flow.proto);
    // SAFETY: read-only look at a map value. (No entry: evicted, nothing tells.)
    if unsafe { NAT.get(&reply) }.is_some_and(|entry| !names(entry, flow)) {
        return None;
    }
    Some((to_backend(&conn), stat::ICMP_TO_BACKEND))
}

/// Rewrites the quoted packet's tuple to `quoted` and the error's own addresses to
/// `(src, dst)`. Checksums are updated incrementally: the quoted IPv4 header's, the quoted
/// TCP/UDP checksum when the quote reaches it, the ICMP checksum (which covers the whole
/// quote, so every word changed in it) and the outer IPv4 header's.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    error: &IcmpError,
    (src, dst): (u32, u32),
    quoted: &Rewrite,
) -> Result<(), DropReason> {
    let quote = &error.quote;
    let addr_diff = Diff::default()
        .u32(quote.src_addr, quoted.src_addr)
        .u32(quote.dst_addr, quoted.dst_addr);
    let l4_diff = addr_diff
        .u16(quote.src_port, quoted.src_port)
        .u16(quote.dst_port, quoted.dst_port);

    let ip: *mut Ipv4Hdr = ptr_at(ctx, error.quote_ip_off)?;
    // SAFETY: ptr_at checked the bounds.
    let mut icmp_diff = unsafe {
        let old = u16::from_ne_bytes((*ip).check);
        let new = addr_diff.apply(old);
        (*ip).src_addr = quoted.src_addr.to_ne_bytes();
        (*ip).dst_addr = quoted.dst_addr.to_ne_bytes();
        (*ip).check = new.to_ne_bytes();
        l4_diff.u16(old, new)
    };
    let ports: *mut [u16; 2] = ptr_at(ctx, error.quote_l4_off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { *ports = [quoted.src_port, quoted.dst_port] };
    let udp = quote.proto == PROTO_UDP;
    let check_off = error.quote_l4_off + if udp { UDP_CHECK_OFF } else { TCP_CHECK_OFF };
    // Only when the quote (within the datagram) reaches it. (The frame's check first, as
    // in `parse`.)
    let check = ptr_at::<u16>(ctx, check_off)
        .ok()
        .filter(|_| check_off + 2 <= error.ip_end);
    if let Some(check) = check {
        // SAFETY: ptr_at checked the bounds.
        unsafe {
            let old = *check;
            // A zero UDP checksum means "none" and stays zero.
            if !(udp && old == 0) {
                let new = match l4_diff.apply(old) {
                    0 if udp => 0xffff,
                    new => new,
                };
                *check = new;
                icmp_diff = icmp_diff.u16(old, new);
            }
        }
    }
    let check: *mut u16 = ptr_at(ctx, error.icmp_off + ICMP_CHECK_OFF)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { *check = icmp_diff.apply(*check) };

    let ip: *mut Ipv4Hdr = ptr_at(ctx, error.ip_off)?;
    let outer = Diff::default()
        .u32(error.src_addr, src)
        .u32(error.dst_addr, dst);
    // SAFETY: ptr_at checked the bounds.
    unsafe {
        (*ip).src_addr = src.to_ne_bytes();
        (*ip).dst_addr = dst.to_ne_bytes();
        (*ip).check = outer.apply(u16::from_ne_bytes((*ip).check)).to_ne_bytes();
    }
    Ok(())
}
