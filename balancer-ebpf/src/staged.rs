//! A family's way cut into stages, each a BPF function of its own that passes its result
//! to the next through this CPU's [`Work`] slot: IPv6's keys and addresses, four times
//! IPv4's, do not fit the verifier's 512-byte stack in one function (nor would the
//! results fit it, passed by value). The stages are the steps of the one-function way
//! (`balance`): the parse, the lookups, a new flow's admission, its start and finish, the
//! delivery.
use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use balancer_common::{stat, Conn, NatEntry, Settings, VipMeta, V6};

use crate::{
    clock, dropped,
    family::Family,
    flow_cache::Stamp,
    forward::{self, Action, Send},
    lookup,
    parse::{self, Packet},
    schedule, stats, Step,
};

/// What the stages of one packet's way hand on (a per-CPU map value).
pub struct Work<A: Family> {
    /// The packet, as `parse` described it.
    pub pkt: Packet<A>,
    /// What is to be done with it (the last stage does it): `send` when `verdict` is
    /// [`SEND`], else this verdict. (Two fields, not an `Action`: a whole enum written
    /// carries the bytes of the variant it does not hold, undefined, which the verifier
    /// refuses to store.)
    verdict: u32,
    send: Send<A>,
    /// For a new flow: its VIP, the flow that ended on its tuple, the flow cache's stamp;
    /// then the flow as `schedule::start` began it, and its hash.
    vip: VipMeta,
    ended: Option<Conn<A>>,
    stamp: Stamp,
    conn: Conn<A>,
    hash: u64,
    /// The new flow's reply entry (`snat::allocate_port` writes it).
    entry: NatEntry<A>,
}

/// [`Work::verdict`] of a packet that leaves as [`Work::send`] says.
const SEND: u32 = u32::MAX;

/// Keeps what is to be done with the packet in `work`.
#[inline(always)]
fn keep<A: Family>(work: &mut Work<A>, action: Action<A>) {
    match action {
        Action::Send(send) => {
            work.send = send;
            work.verdict = SEND;
        }
        Action::Verdict(verdict) => work.verdict = verdict,
    }
}

/// A stage's outcome: go on, or the packet is dropped for this reason.
pub const GO_ON: u32 = u32::MAX;
/// [`parse_stage`]'s outcome for a packet that is no flow's: it passes.
pub const PASS: u32 = u32::MAX - 2;

/// The parse ([`parse::parse6`]): [`GO_ON`] with the packet described in `work`.
#[inline(never)]
pub fn parse_stage(ctx: *mut xdp_md, work: *mut Work<V6>) -> u32 {
    // SAFETY: this CPU's slot; no other user while the program runs here.
    match parse::parse6(&XdpContext::new(ctx), unsafe { &mut (*work).pkt }) {
        Ok(true) => GO_ON,
        Ok(false) => PASS,
        Err(reason) => reason,
    }
}

/// The way of the packet in `work`: its verdict.
#[inline(always)]
pub fn run<A: Family>(ctx: *mut xdp_md, work: *mut Work<A>) -> u32 {
    // SAFETY: this CPU's slot; no other user while the program runs here.
    let ttl = unsafe { (*work).pkt.ttl };
    if ttl <= 1 {
        // Not to be forwarded: the stack answers with an ICMP time exceeded.
        stats::count(stat::PASS_TTL_EXPIRED);
        return xdp_action::XDP_PASS;
    }
    let settings = match clock::settings() {
        Ok(settings) => settings,
        Err(reason) => return dropped(reason),
    };
    let now = clock::now(settings);
    match lookup_stage(work, settings, now) {
        GO_ON => {}
        NEW_FLOW => {
            let mut outcome = admit_stage(ctx, work, now);
            if outcome == GO_ON {
                outcome = start_stage(work, now);
            }
            if outcome == NEW_FLOW {
                outcome = finish_stage(ctx, work, settings, now);
            }
            if outcome != GO_ON {
                return dropped(outcome);
            }
        }
        reason => return dropped(reason),
    }
    deliver_stage(ctx, work, settings, now)
}

/// [`lookup_stage`]'s outcome when the packet starts a flow.
const NEW_FLOW: u32 = u32::MAX - 1;

/// The lookups ([`lookup`]): the action, or [`NEW_FLOW`] with what a new flow needs.
#[inline(never)]
fn lookup_stage<A: Family>(work: *mut Work<A>, settings: &Settings, now: u64) -> u32 {
    // SAFETY: this CPU's slot; no other user while the program runs here.
    let work = unsafe { &mut *work };
    match lookup(&work.pkt, settings, now) {
        Ok(Step::Act(action)) => {
            keep(work, action);
            GO_ON
        }
        Ok(Step::NewFlow(vip, ended, stamp)) => {
            work.vip = vip;
            work.ended = ended;
            work.stamp = stamp;
            NEW_FLOW
        }
        Err(reason) => reason,
    }
}

/// Whether the packet may start a flow ([`schedule::admit`]).
#[inline(never)]
fn admit_stage<A: Family>(ctx: *mut xdp_md, work: *mut Work<A>, now: u64) -> u32 {
    // SAFETY: this CPU's slot; no other user while the program runs here.
    let pkt = unsafe { &(*work).pkt };
    match schedule::admit(&XdpContext::new(ctx), pkt, now) {
        Ok(()) => GO_ON,
        Err(reason) => reason,
    }
}

/// The first half of a new flow ([`schedule::start`]): [`NEW_FLOW`] to go on with
/// [`finish_stage`], or the VIP's action when it has no usable backend.
#[inline(never)]
fn start_stage<A: Family>(work: *mut Work<A>, now: u64) -> u32 {
    // SAFETY: this CPU's slot; no other user while the program runs here.
    let work = unsafe { &mut *work };
    match schedule::start(&work.pkt, &work.vip, &mut work.conn, now) {
        Ok(Some(hash)) => {
            work.hash = hash;
            NEW_FLOW
        }
        Ok(None) => match schedule::all_down(&work.vip) {
            Ok(verdict) => {
                work.verdict = verdict;
                GO_ON
            }
            Err(reason) => reason,
        },
        Err(reason) => reason,
    }
}

/// The second half of a new flow ([`schedule::finish`]): its action.
#[inline(never)]
fn finish_stage<A: Family>(
    ctx: *mut xdp_md,
    work: *mut Work<A>,
    settings: &Settings,
    now: u64,
) -> u32 {
    // SAFETY: this CPU's slot; no other user while the program runs here.
    let Work {
        pkt,
        vip,
        ended,
        stamp,
        conn,
        hash,
        entry,
        ..
    } = unsafe { &mut *work };
    let ctx = XdpContext::new(ctx);
    let flow = (conn, entry, *hash);
    let next = schedule::finish(&ctx, pkt, vip, ended.as_ref(), flow, settings, *stamp, now);
    match next {
        Ok(action) => {
            // SAFETY: as above; the borrows of its fields end with `finish`.
            keep(unsafe { &mut *work }, action);
            GO_ON
        }
        Err(reason) => reason,
    }
}

/// The delivery ([`forward::deliver`]) of the action: the verdict.
#[inline(never)]
fn deliver_stage<A: Family>(
    ctx: *mut xdp_md,
    work: *mut Work<A>,
    settings: &Settings,
    now: u64,
) -> u32 {
    // SAFETY: this CPU's slot; no other user while the program runs here.
    let work = unsafe { &*work };
    if work.verdict != SEND {
        return work.verdict;
    }
    forward::deliver(&XdpContext::new(ctx), &work.pkt, &work.send, settings, now)
        .unwrap_or_else(dropped)
}
