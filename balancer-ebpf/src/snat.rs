//! SNAT ports: which port of the configured range a new flow gets towards its backend
//! (probed from a hash, taken back from flows that are gone, resting while the backend
//! may hold the tuple in TIME-WAIT, taken from half-open flows when none is free), and
//! the `NAT` (reply) entries that say which flow holds a port: their keys, and how a flow
//! claims and keeps one.
use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use balancer_common::{
    flow_slot, stat, Backend, Conn, FlowKey, NatEntry, Settings, FLOW_BACKEND_CLOSED,
    MAX_SNAT_ADDRS, NO_PORT_HOLD_NS, NO_PORT_SLOTS,
};

use crate::{clock, family::Family, flow_cache, parse::Packet, stats, timeouts, DropReason};

/// Claims a free SNAT port towards `backend` for this flow and records the flow in both
/// tables (its reply entry written in `entry` first, a place the caller provides: IPv6's
/// way has no stack room for it here): a hash-chosen start in the configured range and among the backend's SNAT
/// addresses, then ports a hash-chosen stride apart, each on the next address,
/// `Family::SNAT_PROBES` tries in all (so several addresses multiply the ports a backend's flows can hold). A taken port is reclaimed when the flow holding it is
/// gone (its forward entry expired, replaced or evicted). The port of a flow the backend
/// closed rests until `Settings::snat_time_wait_ns` after the flow's last packet, as the
/// backend still holds the tuple in TIME-WAIT and may reject another client's SYN on it
/// (PAWS: that client's timestamps are unrelated); when no probed port is free, the one
/// that has rested longest is taken rather than dropping the flow, else the one of the
/// half-open flow idle longest: a flood of spoofed SYNs (which live backends answer, and
/// whose clients never complete the handshake) then takes ports from itself, not from
/// connecting clients. A client reusing its tuple towards the same backend first tries
/// the port it had.
///
/// A port in use is only looked at (two lookups). A port that looks usable is claimed
/// by [`claim`]: the forward (`CONNS`) entry is written before the reply (`NAT`) entry,
/// so a CPU that then finds this flow's reply entry also finds its holder alive, and
/// never takes the port in the moment between the two inserts (written the other way
/// round, it would see the holder as evicted, and two flows would share the tuple).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the state of one packet's new flow, handed on to a step that is always inlined"
)]
pub fn allocate_port<A: Family>(
    pkt: &Packet<A>,
    backend: &Backend<A>,
    conn: &mut Conn<A>,
    entry: &mut NatEntry<A>,
    ended: Option<&Conn<A>>,
    settings: &Settings,
    now: u64,
    hash: u64,
) -> Result<(), DropReason> {
    let min = u32::from(settings.snat_port_min);
    let max = u32::from(settings.snat_port_max);
    if max < min {
        return Err(stat::DROP_SNAT_EXHAUSTED);
    }
    // At most 65536 and never zero (the check above lets the compiler see it, too).
    let range = max - min + 1;
    let start = ((hash >> 32) % u64::from(range)) as u32;
    // Probes spread over the range by a hash-chosen odd stride: walking on from a taken
    // port to the next piles flows up in runs of taken ports, and a flow whose probes all
    // fall in one found no port at 60% occupancy. (For one or two ports it is the walk.)
    let stride = ((hash as u32 & 0xffff) | 1) % range;
    let first_addr = (hash >> 16) as u32;
    *entry = nat_entry(pkt, conn, now);
    let entry = &*entry;
    let mut fallback = Fallback::new();
    // A client reusing its tuple towards the same backend tries its old port first, so
    // the backend sees the client's own tuple sequence on it (see `holder_for`), even
    // when a port earlier in the probe order has come free meanwhile.
    if let Some(old) = ended {
        let port = u16::from_be(old.snat_port);
        if old.backend_addr == backend.addr
            && old.backend_port == backend.port
            && has_source(backend, &old.snat_addr)
            && port >= settings.snat_port_min
            && port <= settings.snat_port_max
            && probe(
                pkt,
                backend,
                Source {
                    addr: old.snat_addr,
                    port: old.snat_port,
                },
                conn,
                entry,
                &mut fallback,
                settings,
                now,
            )?
        {
            return Ok(());
        }
    }
    let mut i = 0;
    while i < A::SNAT_PROBES {
        let source = Source {
            addr: source_addr(backend, first_addr.wrapping_add(i)),
            port: ((min + (start + i * stride) % range) as u16).to_be(),
        };
        let claimed = probe(
            pkt,
            backend,
            source,
            conn,
            entry,
            &mut fallback,
            settings,
            now,
        )?;
        if i == 0 {
            stats::count_first_probe(conn.backend_id, !claimed);
        }
        if claimed {
            return Ok(());
        }
        i += 1;
    }
    // Every probed port is held or resting: better a tuple the backend may still hold in
    // TIME-WAIT (the client's SYN then passes or is retried), else one a half-open flow
    // holds (the backend may hold it in SYN-RECV: the same), than a drop.
    let pick = if fallback.resting.found {
        &fallback.resting
    } else {
        &fallback.half_open
    };
    if pick.found {
        let reply_key = reply_tuple(backend, pick.source, pkt.key.proto);
        match claim(pkt, &reply_key, conn, entry, settings, now)? {
            Some(Holder::Resting(_)) => {
                stats::count(stat::SNAT_PORT_REUSED_EARLY);
                return Ok(());
            }
            Some(Holder::HalfOpen(_)) => {
                stats::count(stat::SNAT_PORT_HALF_OPEN_TAKEN);
                return Ok(());
            }
            Some(_) => return Ok(()),
            None => {}
        }
    }
    // The caller removes the forward entry, which may name a port this flow does not hold.
    Err(stat::DROP_SNAT_EXHAUSTED)
}

/// Whether the flow of `key` found no free port less than `NO_PORT_HOLD_NS` ago on this
/// CPU (see [`remember_no_port`]): its packet is then dropped without probing again.
#[inline(always)]
pub fn no_port_lately<A: Family>(key: &FlowKey<A>, now: u64) -> bool {
    let Some(slot) = A::no_port().get_ptr(flow_slot(key) & (NO_PORT_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: this CPU's slot, read whole.
    let slot = unsafe { &*slot };
    A::same(&slot.key, key) && now < slot.until_ns
}

/// Remembers that the flow of `key` found no free port (see [`no_port_lately`]).
#[inline(always)]
pub fn remember_no_port<A: Family>(key: &FlowKey<A>, now: u64) {
    if let Some(slot) = A::no_port().get_ptr_mut(flow_slot(key) & (NO_PORT_SLOTS - 1)) {
        // SAFETY: this CPU's slot; no other writer while the program runs here.
        unsafe {
            (*slot).key = flow_cache::copy_key(key);
            (*slot).until_ns = now.wrapping_add(NO_PORT_HOLD_NS);
        }
    }
}

/// A SNAT address and port, network byte order.
#[derive(Clone, Copy)]
struct Source<A> {
    addr: A,
    port: u16,
}

/// SNAT address slot `index` (any number: masked) of `backend`.
#[inline(always)]
fn source_addr<A: Family>(backend: &Backend<A>, index: u32) -> A {
    backend.snat_addrs[index as usize & (MAX_SNAT_ADDRS - 1)]
}

/// Whether `addr` is one of the SNAT addresses of `backend`.
#[inline(always)]
fn has_source<A: Family>(backend: &Backend<A>, addr: &A) -> bool {
    let mut i = 0;
    while i < MAX_SNAT_ADDRS {
        if backend.snat_addrs[i] == *addr {
            return true;
        }
        i += 1;
    }
    false
}

/// The ports a new flow takes when no probed port is free: the one that has rested longest,
/// and the one of the half-open flow idle longest.
struct Fallback<A> {
    resting: Candidate<A>,
    half_open: Candidate<A>,
}

/// A port of [`Fallback`], if `found`, and how long it has waited. (Not an `Option`: a
/// `None` copied carries undefined bytes, which the verifier refuses to store.)
#[derive(Clone, Copy)]
struct Candidate<A> {
    source: Source<A>,
    idle: u64,
    found: bool,
}

impl<A: Family> Fallback<A> {
    #[inline(always)]
    fn new() -> Self {
        let none = Candidate {
            source: Source {
                addr: A::default(),
                port: 0,
            },
            idle: 0,
            found: false,
        };
        Fallback {
            resting: none,
            half_open: none,
        }
    }

    /// Keeps `source` in `slot` if it has waited (`idle`) longer than the one there.
    #[inline(always)]
    fn offer(slot: &mut Candidate<A>, source: Source<A>, idle: u64) {
        if !slot.found || idle > slot.idle {
            *slot = Candidate {
                source,
                idle,
                found: true,
            };
        }
    }
}

/// One candidate SNAT port: looks at its holder and claims the port when that flow is
/// gone; a resting or half-open holder's port is offered to `fallback`.
/// `Ok(true)`: the port is this flow's.
#[expect(
    clippy::too_many_arguments,
    reason = "the probe loop's state, handed as it is to a step that is always inlined"
)]
#[inline(always)]
fn probe<A: Family>(
    pkt: &Packet<A>,
    backend: &Backend<A>,
    source: Source<A>,
    conn: &mut Conn<A>,
    entry: &NatEntry<A>,
    fallback: &mut Fallback<A>,
    settings: &Settings,
    now: u64,
) -> Result<bool, DropReason> {
    let reply_key = reply_tuple(backend, source, pkt.key.proto);
    match holder_for(pkt, &reply_key, settings, now) {
        Holder::Alive => Ok(false),
        Holder::Resting(idle) => {
            Fallback::offer(&mut fallback.resting, source, idle);
            Ok(false)
        }
        Holder::HalfOpen(idle) => {
            Fallback::offer(&mut fallback.half_open, source, idle);
            Ok(false)
        }
        Holder::Gone | Holder::Evicted => {
            Ok(claim(pkt, &reply_key, conn, entry, settings, now)?.is_some())
        }
    }
}

/// The reply (`NAT`) entry of `conn`, the flow of client packet `pkt`.
#[inline(always)]
fn nat_entry<A: Family>(pkt: &Packet<A>, conn: &Conn<A>, now: u64) -> NatEntry<A> {
    NatEntry {
        client_addr: pkt.key.src_addr,
        vip_addr: pkt.key.dst_addr,
        client_port: pkt.key.src_port,
        vip_port: pkt.key.dst_port,
        backend_id: conn.backend_id,
        vip_id: conn.vip_id,
        // Not this tick: the first reply refreshes the entry, and marks it replied.
        touched: clock::reply_tick(now).wrapping_sub(1),
    }
}

/// Keeps an established flow's reply (`NAT`) entry, at the client side's periodic
/// touch ([`timeouts::touch_due`]): looking it up marks it used in the LRU, so a flow
/// its backend seldom answers keeps it; an entry the LRU evicted is written again. The
/// SNAT port of a flow without a reply entry looks free to new flows: `false` when one
/// took it meanwhile (the flow must then leave the port, or two clients would share a
/// tuple towards the backend).
#[inline(always)]
pub fn keep_reply_entry<A: Family>(pkt: &Packet<A>, conn: &Conn<A>, now: u64) -> bool {
    let reply_key = reply_key_of(conn, pkt.key.proto);
    // SAFETY: read-only looks at a map value.
    if let Some(entry) = unsafe { A::nat().get(&reply_key) } {
        return names(entry, &pkt.key);
    }
    let entry = nat_entry(pkt, conn, now);
    A::nat()
        .insert(&reply_key, &entry, u64::from(BPF_NOEXIST))
        .is_ok()
        || unsafe { A::nat().get(&reply_key) }.is_some_and(|e| names(e, &pkt.key))
}

/// Takes the SNAT port of `conn`, client packet `pkt`'s half-open flow, back from the flow
/// that took it (a new flow takes a half-open flow's port when it finds none free), if
/// that flow is not established either: `pkt` proves its client exists (it acknowledges
/// the backend's SYN-ACK), which the other's has not. The backend still knows `pkt`'s
/// connection on that tuple (its SYN cookie, or its request, which the other flow's SYN
/// did not replace). `false` when the port stays the other's.
#[inline(always)]
pub fn take_back<A: Family>(
    pkt: &Packet<A>,
    conn: &Conn<A>,
    settings: &Settings,
    now: u64,
) -> bool {
    let reply_key = reply_key_of(conn, pkt.key.proto);
    // SAFETY: read-only look at a map value.
    let Some(holder) = (unsafe { A::nat().get(&reply_key) }) else {
        return false;
    };
    let holder = holder_state(holder, &reply_key, settings, now);
    if holder == Holder::Alive || !take(&reply_key, &nat_entry(pkt, conn, now), holder) {
        return false;
    }
    stats::count(stat::SNAT_PORT_TAKEN_BACK);
    // SAFETY: read-only look at a map value.
    unsafe { A::nat().get(&reply_key) }.is_some_and(|e| names(e, &pkt.key))
}

/// Claims the SNAT port of `reply_key` for `pkt`'s new flow, which a look found usable:
/// writes the flow's forward entry naming the port, then inserts the reply entry, or,
/// when one is there, looks at its holder again (another CPU may have claimed the port
/// since the look) and overwrites it unless the holder is alive. Returns whom the port
/// was taken from (`Gone` for a port without a reply entry), or `None` when it went to
/// another flow.
///
/// Two CPUs whose new flows both find the same holder dead may both overwrite its reply
/// entry; each reads the entry back and gives the port up if it is not its own, but
/// without an atomic compare-and-swap on the entry a narrow window remains (both read
/// back before either overwrites), as it did before ports rested.
#[inline(always)]
fn claim<A: Family>(
    pkt: &Packet<A>,
    reply_key: &FlowKey<A>,
    conn: &mut Conn<A>,
    entry: &NatEntry<A>,
    settings: &Settings,
    now: u64,
) -> Result<Option<Holder>, DropReason> {
    conn.snat_addr = reply_key.dst_addr;
    conn.snat_port = reply_key.dst_port;
    A::conns()
        .insert(&pkt.key, &*conn, u64::from(BPF_ANY))
        .map_err(|_| stat::DROP_CONN_TABLE)?;
    if A::nat()
        .insert(reply_key, entry, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return Ok(Some(Holder::Gone));
    }
    let holder = holder_for(pkt, reply_key, settings, now);
    if holder == Holder::Alive || !take(reply_key, entry, holder) {
        return Ok(None);
    }
    // SAFETY: read-only look at a map value.
    let ours = unsafe { A::nat().get(reply_key) }.is_some_and(|e| names(e, &pkt.key));
    Ok(ours.then_some(holder))
}

/// What the flow holding the reply tuple `reply_key` means for `pkt`'s new flow, which
/// wants that SNAT port; `Gone` when no flow holds it.
#[inline(always)]
fn holder_for<A: Family>(
    pkt: &Packet<A>,
    reply_key: &FlowKey<A>,
    settings: &Settings,
    now: u64,
) -> Holder {
    // SAFETY: read-only look at a map value.
    match unsafe { A::nat().get(reply_key) } {
        // A flow replacing its own tuple (the client reused its port) takes back the same
        // SNAT port: the backend then sees the very tuple sequence the client makes, so
        // its TIME_WAIT/PAWS checks pass as they would without NAT.
        Some(holder) if names(holder, &pkt.key) => Holder::Gone,
        Some(holder) => holder_state(holder, reply_key, settings, now),
        None => Holder::Gone,
    }
}

/// Takes a SNAT port from a holder that no longer uses it (`Gone`, `Evicted` or
/// `Resting`) or has not proved it exists (`HalfOpen`; it finds out at its next packet,
/// `keep_reply_entry`): overwrites its reply entry with `entry`.
#[inline(always)]
fn take<A: Family>(reply_key: &FlowKey<A>, entry: &NatEntry<A>, holder: Holder) -> bool {
    if holder == Holder::Evicted {
        // The evicted flow may still be forwarded from a CPU's FLOW_CACHE, with this
        // port: no copy made before this point may be used.
        flow_cache::count_eviction();
    }
    A::nat()
        .insert(reply_key, entry, u64::from(BPF_ANY))
        .is_ok()
}

/// The tuple of a reply from `backend` to SNAT address and port `source`.
#[inline(always)]
fn reply_tuple<A: Family>(backend: &Backend<A>, source: Source<A>, proto: u8) -> FlowKey<A> {
    reply_key(backend.addr, source.addr, backend.port, source.port, proto)
}

/// The tuple of the replies of `conn`'s flow (protocol `proto`): its `NAT` key.
#[inline(always)]
pub fn reply_key_of<A: Family>(conn: &Conn<A>, proto: u8) -> FlowKey<A> {
    reply_key(
        conn.backend_addr,
        conn.snat_addr,
        conn.backend_port,
        conn.snat_port,
        proto,
    )
}

/// The tuple of a reply from `backend_addr:backend_port` to `snat_addr:snat_port`
/// (network byte order).
#[inline(always)]
fn reply_key<A: Family>(
    backend_addr: A,
    snat_addr: A,
    backend_port: u16,
    snat_port: u16,
    proto: u8,
) -> FlowKey<A> {
    FlowKey {
        src_addr: backend_addr,
        dst_addr: snat_addr,
        src_port: backend_port,
        dst_port: snat_port,
        proto,
        _pad0: 0,
        _pad1: 0,
    }
}

/// Whether the reply entry `entry` belongs to the client flow `key`.
#[inline(always)]
pub fn names<A: Family>(entry: &NatEntry<A>, key: &FlowKey<A>) -> bool {
    client_key(entry, key.proto) == *key
}

/// Whether `conn` is the flow on the reply tuple `reply_key` (its backend, SNAT address
/// and port; the client may have moved its tuple to another).
#[inline(always)]
pub fn holds<A: Family>(conn: &Conn<A>, reply_key: &FlowKey<A>) -> bool {
    conn.snat_port == reply_key.dst_port
        && conn.backend_addr == reply_key.src_addr
        && conn.snat_addr == reply_key.dst_addr
}

/// The client's tuple (the `CONNS` key) of the flow a reply entry belongs to.
#[inline(always)]
pub fn client_key<A: Family>(entry: &NatEntry<A>, proto: u8) -> FlowKey<A> {
    FlowKey {
        src_addr: entry.client_addr,
        dst_addr: entry.vip_addr,
        src_port: entry.client_port,
        dst_port: entry.vip_port,
        proto,
        _pad0: 0,
        _pad1: 0,
    }
}

/// Whether the client flow that owns a reply entry still uses it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Alive,
    /// Expired, but closed by the backend less than `Settings::snat_time_wait_ns` (ns
    /// given) after its last packet: the backend still holds the tuple in TIME-WAIT.
    /// (A `FLOW_CACHE` copy of it is never used: copies serve only flows touched within
    /// the last 250 ms, and this one has been idle for its closing timeout, >= 1 s.)
    Resting(u64),
    /// A live TCP flow whose client has not completed the handshake, idle for the ns
    /// given. (Never served from a `FLOW_CACHE` copy: `timeouts::cache_serves`.)
    HalfOpen(u64),
    /// Expired, or its tuple now has another flow.
    Gone,
    /// Its `CONNS` entry is gone (the LRU evicted it).
    Evicted,
}

/// Does the client flow that owns this reply entry still use it?
#[inline(always)]
fn holder_state<A: Family>(
    holder: &NatEntry<A>,
    reply_key: &FlowKey<A>,
    settings: &Settings,
    now: u64,
) -> Holder {
    let client_key = client_key(holder, reply_key.proto);
    // SAFETY: read-only look at a map value.
    match unsafe { A::conns().get(&client_key) } {
        Some(conn) if holds(conn, reply_key) => {
            let idle = now.saturating_sub(conn.last_seen_ns);
            if idle <= settings.idle_timeout_ns(conn.state, reply_key.proto) {
                if timeouts::half_open(conn.state, reply_key.proto) {
                    Holder::HalfOpen(idle)
                } else {
                    Holder::Alive
                }
            } else if conn.state & FLOW_BACKEND_CLOSED != 0 && idle <= settings.snat_time_wait_ns {
                Holder::Resting(idle)
            } else {
                Holder::Gone
            }
        }
        Some(_) => Holder::Gone,
        None => Holder::Evicted,
    }
}
