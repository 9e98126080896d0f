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
mod family;
mod flow_cache;
mod forward;
mod icmp;
mod maps;
mod nat;
mod parse;
mod schedule;
mod select;
mod snat;
mod staged;
mod stats;
mod timeouts;
mod vip;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    macros::xdp,
    programs::XdpContext,
};
use balancer_common::{stat, Conn, Settings, VipMeta};
use family::Family;
use forward::Action;

/// Why a packet was dropped: an index into `GLOBAL_STATS` (`balancer_common::stat`).
pub type DropReason = u32;

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature aya's #[xdp] macro expects"
)]
pub fn balancer(ctx: XdpContext) -> u32 {
    let verdict = match parse::ether(&ctx) {
        Ok(parse::Ether::Ipv4) => balance4(ctx.ctx),
        Ok(parse::Ether::Ipv6) => {
            // SAFETY: a tail call; when it returns (no program in the slot), the packet
            // passes as before IPv6 support.
            unsafe { maps::FAMILIES.tail_call(&ctx, maps::FAMILY_IPV6) };
            xdp_action::XDP_PASS
        }
        Ok(parse::Ether::Other) => xdp_action::XDP_PASS,
        Err(reason) => dropped(reason),
    };
    stats::count_verdict(verdict);
    verdict
}

/// The IPv6 way: a program of its own, which `balancer` tail-calls (`maps::FAMILIES`),
/// so that the verifier's budget of instructions is each family's, not shared.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature aya's #[xdp] macro expects"
)]
pub fn balancer_ipv6(ctx: XdpContext) -> u32 {
    let verdict = balance6(ctx.ctx);
    stats::count_verdict(verdict);
    verdict
}

// Each family's way is a BPF function of its own (a call, not inlined), apart from the
// entry's frame.

/// An IPv4 frame: its verdict.
#[inline(never)]
fn balance4(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let result = match parse::parse4(&ctx) {
        Ok(parse::Parsed::Flow(pkt)) => balance(&ctx, &pkt),
        Ok(parse::Parsed::IcmpError(error)) => {
            clock::settings().and_then(|settings| icmp::translate(&ctx, &error, settings))
        }
        Ok(parse::Parsed::Other) => Ok(xdp_action::XDP_PASS),
        Err(reason) => Err(reason),
    };
    result.unwrap_or_else(dropped)
}

/// An IPv6 frame: its verdict. Its way is cut into stages ([`staged`]).
#[inline(never)]
fn balance6(ctx: *mut xdp_md) -> u32 {
    let Some(work) = maps::WORK6.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    match staged::parse_stage(ctx, work) {
        staged::GO_ON => staged::run(ctx, work),
        staged::PASS => xdp_action::XDP_PASS,
        reason => dropped(reason),
    }
}

/// A dropped packet's verdict, its reason counted.
#[inline(always)]
pub fn dropped(reason: DropReason) -> u32 {
    stats::count(reason);
    xdp_action::XDP_DROP
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

/// Balances a packet for a VIP (an established flow by the connection table alone, a new
/// one by its VIP), translates a reply back to its client, or leaves the packet alone.
/// Every translated TCP/UDP packet leaves through the one [`forward::deliver`];
/// translated ICMP errors go to the stack ([`icmp::translate`]).
/// (A TCP or UDP packet of either family: the code is compiled once per family.)
#[inline(always)]
fn balance<A: Family>(ctx: &XdpContext, pkt: &parse::Packet<A>) -> Result<u32, DropReason> {
    if pkt.ttl <= 1 {
        // Not to be forwarded: the stack answers with an ICMP time exceeded.
        stats::count(stat::PASS_TTL_EXPIRED);
        return Ok(xdp_action::XDP_PASS);
    }
    let settings = clock::settings()?;
    let now = clock::now(settings);
    match route(ctx, pkt, settings, now)? {
        Action::Send(send) => forward::deliver(ctx, pkt, &send, settings, now),
        Action::Verdict(verdict) => Ok(verdict),
    }
}

/// What becomes of a parsed packet ([`balance`]).
#[inline(always)]
fn route<A: Family>(
    ctx: &XdpContext,
    pkt: &parse::Packet<A>,
    settings: &Settings,
    now: u64,
) -> Result<Action<A>, DropReason> {
    match lookup(pkt, settings, now)? {
        Step::Act(action) => Ok(action),
        Step::NewFlow(vip, ended, stamp) => {
            schedule::admit(ctx, pkt, now)?;
            schedule::new_flow(ctx, pkt, &vip, ended.as_ref(), settings, stamp, now)
        }
    }
}

/// What a parsed packet needs after [`lookup`].
pub enum Step<A: Family> {
    /// It belongs to a flow (or to none): this.
    Act(Action<A>),
    /// It starts a flow of this VIP; the flow that ended on its tuple, if any, and the
    /// flow cache's stamp read before the lookups.
    NewFlow(VipMeta, Option<Conn<A>>, flow_cache::Stamp),
}

/// The lookups of a packet's way: for a VIP's address, an established flow (this CPU's
/// flow cache, else the connection table: no `VIPS` lookup either way), else the VIP
/// for a new flow; otherwise a reply of a flow, else nothing of ours.
#[inline(always)]
fn lookup<A: Family>(
    pkt: &parse::Packet<A>,
    settings: &Settings,
    now: u64,
) -> Result<Step<A>, DropReason> {
    if vip::maybe_vip(&pkt.key.dst_addr) {
        let stamp = flow_cache::stamp(settings);
        if let Some(send) = flow_cache::cached(pkt, settings, stamp, now) {
            return Ok(Step::Act(Action::Send(send)));
        }
        let ended = match conntrack::established(pkt, settings, stamp, now) {
            conntrack::Established::Live(send) => return Ok(Step::Act(Action::Send(send))),
            conntrack::Established::Ended(ended) => ended,
        };
        // SAFETY: the value is copied out at once; the agent replaces VIP entries whole.
        if let Some(vip) = unsafe { A::vips().get(&vip::vip_key(&pkt.key)) } {
            return Ok(Step::NewFlow(*vip, ended, stamp));
        }
    }
    Ok(Step::Act(match conntrack::to_client(pkt, settings, now)? {
        Some(send) => Action::Send(send),
        None => Action::Verdict(xdp_action::XDP_PASS),
    }))
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
