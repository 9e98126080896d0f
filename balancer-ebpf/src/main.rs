//! XDP entry point: maps the fallible body's result to a verdict and counts it.
//!
//! A packet's way, one module per concern: `parse`, then for a VIP's address (`vip`) this
//! CPU's `flow_cache`, else the connection table (`conntrack`), else a new flow
//! (`schedule`: `select` picks the backend, `snat` the port); a reply goes back through
//! `conntrack`. What is to be sent is rewritten (`nat`) and leaves by `forward`. ICMP
//! errors about flows take their own way (`icmp`).
// On the BPF target it is a `no_std` object with no `main`; on the host it is an ordinary
// binary that does nothing, so that `cargo check`/`clippy --workspace` can read it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![expect(
    clippy::inline_always,
    reason = "a BPF program is one function: every helper must be inlined into it (the verifier \
              and the 512-byte stack decide, not the optimizer's cost model)"
)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map methods take keys as `impl Borrow<K>`: passed by value, a key is \
              first copied to another slot of the 512-byte BPF stack, so keys go by reference"
)]

mod clock;
mod conntrack;
mod csum;
mod decap;
mod flow_cache;
mod forward;
mod icmp;
mod maps;
mod nat;
mod parse;
mod schedule;
mod select;
mod snat;
mod stats;
mod timeouts;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use balancer_common::{stat, Settings};
use forward::Action;

/// Why a packet was dropped: an index into `GLOBAL_STATS` (`balancer_common::stat`).
pub type DropReason = u32;

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature aya's #[xdp] macro expects"
)]
pub fn balancer(ctx: XdpContext) -> u32 {
    let verdict = match try_balancer(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => {
            stats::count(reason);
            xdp_action::XDP_DROP
        }
    };
    stats::count_verdict(verdict);
    verdict
}

/// The backends' decapsulation program (`balancer decap`, see [`decap`]).
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature aya's #[xdp] macro expects"
)]
pub fn balancer_decap(ctx: XdpContext) -> u32 {
    decap::count(decap::run(&ctx));
    decap::VERDICT
}

/// Parse, then either balance a packet for a VIP (an established flow by the connection
/// table alone, a new one by its VIP), translate a reply back to its client, translate an
/// ICMP error about a flow for its other end, or leave the packet alone. Every translated
/// TCP/UDP packet leaves through the one [`forward::deliver`]; translated ICMP errors go to
/// the stack ([`icmp::translate`]).
#[inline(always)]
fn try_balancer(ctx: &XdpContext) -> Result<u32, DropReason> {
    let pkt = match parse::parse(ctx)? {
        parse::Parsed::Flow(pkt) => pkt,
        parse::Parsed::IcmpError(error) => return icmp::translate(ctx, &error, clock::settings()?),
        parse::Parsed::Other => return Ok(xdp_action::XDP_PASS),
    };
    if pkt.ttl <= 1 {
        // Not to be forwarded: the stack answers with an ICMP time exceeded.
        stats::count(stat::PASS_TTL_EXPIRED);
        return Ok(xdp_action::XDP_PASS);
    }
    let settings = clock::settings()?;
    let now = clock::now(settings);
    match route(ctx, &pkt, settings, now)? {
        Action::Send(send) => forward::deliver(ctx, &pkt, &send, settings, now),
        Action::Verdict(verdict) => Ok(verdict),
    }
}

/// What becomes of a parsed packet ([`try_balancer`]).
#[inline(always)]
fn route(
    ctx: &XdpContext,
    pkt: &parse::Packet,
    settings: &Settings,
    now: u64,
) -> Result<Action, DropReason> {
    if vip::maybe_vip(pkt.key.dst_addr) {
        let stamp = flow_cache::stamp(settings);
        // Established flows first: from this CPU's flow cache (an array read), else by one
        // connection-table lookup; no VIPS lookup either way.
        if let Some(send) = flow_cache::cached(pkt, settings, stamp, now) {
            return Ok(Action::Send(send));
        }
        let ended = match conntrack::established(pkt, settings, stamp, now) {
            conntrack::Established::Live(send) => return Ok(Action::Send(send)),
            conntrack::Established::Ended(ended) => ended,
        };
        // SAFETY: the value is copied out at once; the agent replaces VIP entries whole.
        if let Some(vip) = unsafe { maps::VIPS.get(&vip::vip_key(&pkt.key)) } {
            let vip = *vip;
            return schedule::new_flow(ctx, pkt, &vip, ended.as_ref(), settings, stamp, now);
        }
    }
    Ok(match conntrack::to_client(pkt, settings, now)? {
        Some(send) => Action::Send(send),
        None => Action::Verdict(xdp_action::XDP_PASS),
    })
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

// Keep the stat index type honest: DROP reasons are stat indices.
const _: () = assert!(stat::DROP_MALFORMED < stat::COUNT);
