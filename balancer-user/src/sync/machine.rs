//! The flow-sync protocol as a sans-IO state machine: it turns the Master's records into
//! signed, numbered datagrams and lets them go under a rate bound, and it checks what
//! arrives (a configured peer, the HMAC, the format, the sequence) before anything reaches
//! the agent. No socket and no clock: the caller passes `now` and sends what
//! [`Machine::poll`] returns to every peer; the unit tests drive it with a fake clock.
//!
//! Every datagram carries the sender's boot id (its start time, so a restarted sender's is
//! larger) and a sequence number that counts its datagrams from 1. A receiver keeps, per
//! peer, the largest boot id and sequence seen and which of the 64 before it arrived
//! (`IPsec`'s anti-replay window): a datagram of an older boot, one seen before or one older
//! than the window is stale and refused; one that leaves a hole means datagrams were lost,
//! and the receiver asks for a full resync (at most one request per [`RESYNC_HOLD`]).
//! Reordered datagrams within the window are taken.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use balancer_wire::sync::{Kind, Packet, Record, Repr, FLAG_END, FLAG_FULL, MAX_RECORDS};
use ring::hmac;

/// Shortest time between two resync requests to one peer.
pub const RESYNC_HOLD: Duration = Duration::from_secs(2);
/// Most datagrams waiting for the rate bound: beyond, new ones are dropped (and counted);
/// the next full resync repairs what the peers missed.
pub const MAX_QUEUE: usize = 100_000;
/// Sequence numbers the anti-replay window remembers below the largest.
const WINDOW: u64 = 64;

/// What the machine asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Flow records from a peer (`full_end`: the last datagram of a full resync).
    Flows {
        peer: IpAddr,
        records: Vec<Record>,
        full_end: bool,
    },
    /// A peer asks for a full resync.
    ResyncAsked { peer: IpAddr },
}

/// Counters of one peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStats {
    pub datagrams_sent: u64,
    pub flows_sent: u64,
    pub datagrams_received: u64,
    pub flows_received: u64,
    /// When the peer was last heard from (an authentic, fresh datagram).
    pub last_heard: Option<Instant>,
    /// When the last full resync from it ended.
    pub last_full_resync: Option<Instant>,
    pub auth_failures: u64,
    pub malformed: u64,
    /// Datagrams of an older boot, seen before, or older than the window.
    pub stale: u64,
    /// Datagrams missing between two received ones.
    pub lost: u64,
    pub resync_requests_sent: u64,
    pub resync_requests_received: u64,
}

/// Where a peer's sequence stands.
#[derive(Debug, Clone, Copy)]
struct Window {
    boot_id: u64,
    highest: u64,
    /// Bit `i`: `highest - i` arrived.
    seen: u64,
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    window: Option<Window>,
    stats: PeerStats,
}

/// The flow-sync protocol of one node.
#[derive(Debug)]
pub struct Machine {
    key: hmac::Key,
    boot_id: u64,
    next_sequence: u64,
    resyncs: u32,
    peers: Vec<Peer>,
    /// When a resync was last asked for.
    last_request: Option<Instant>,
    queue: VecDeque<(Vec<u8>, u64)>,
    /// Datagrams per second.
    rate: u32,
    tokens: f64,
    refilled: Instant,
    /// Datagrams dropped because the queue was full.
    pub queue_drops: u64,
    /// Datagrams from addresses that are not peers.
    pub strangers: u64,
}

impl Machine {
    /// A node that signs with `key`, started at `boot_id`, sending to `peers` at most `rate`
    /// datagrams per second.
    pub fn new(key: &[u8], boot_id: u64, peers: &[SocketAddr], rate: u32, now: Instant) -> Self {
        Machine {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            boot_id,
            next_sequence: 1,
            resyncs: 0,
            peers: peers
                .iter()
                .map(|&addr| Peer {
                    addr,
                    window: None,
                    stats: PeerStats::default(),
                })
                .collect(),
            last_request: None,
            queue: VecDeque::new(),
            rate: rate.max(1),
            tokens: 1.0,
            refilled: now,
            queue_drops: 0,
            strangers: 0,
        }
    }

    /// The peers' addresses.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().map(|p| p.addr)
    }

    /// Each peer's counters.
    pub fn stats(&self) -> BTreeMap<SocketAddr, PeerStats> {
        self.peers
            .iter()
            .map(|p| (p.addr, p.stats.clone()))
            .collect()
    }

    /// Datagrams waiting for the rate bound.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues `records` for every peer: a full resync (every live flow, flagged so, its
    /// last datagram marked) or changes. An empty round still sends one datagram, so that
    /// peers hear the Master and notice lost datagrams at once.
    pub fn send_flows(&mut self, records: &[Record], full: bool) {
        let resync = if full {
            self.resyncs = self.resyncs.wrapping_add(1).max(1);
            self.resyncs
        } else {
            0
        };
        let chunks: Vec<&[Record]> = if records.is_empty() {
            vec![&[]]
        } else {
            records.chunks(MAX_RECORDS).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut flags = 0;
            if full {
                flags |= FLAG_FULL;
                if i == last {
                    flags |= FLAG_END;
                }
            }
            self.queue_datagram(Kind::Flows, flags, resync, chunk.to_vec());
        }
    }

    /// Asks every peer for a full resync (at start: this node wants the Master's flows;
    /// after lost datagrams), unless it asked less than [`RESYNC_HOLD`] ago. Requests go
    /// to every peer: any may be the Master, and the others ignore them.
    pub fn ask_resync(&mut self, now: Instant) {
        if self
            .last_request
            .is_some_and(|at| now.saturating_duration_since(at) < RESYNC_HOLD)
        {
            return;
        }
        self.last_request = Some(now);
        for p in &mut self.peers {
            p.stats.resync_requests_sent += 1;
        }
        self.queue_datagram(Kind::ResyncRequest, 0, 0, Vec::new());
    }

    fn queue_datagram(&mut self, kind: Kind, flags: u16, resync: u32, records: Vec<Record>) {
        if self.queue.len() >= MAX_QUEUE {
            self.queue_drops += 1;
            return;
        }
        let count = records.len() as u64;
        let repr = Repr {
            kind,
            flags,
            boot_id: self.boot_id,
            sequence: self.next_sequence,
            resync,
            records,
        };
        self.next_sequence += 1;
        let mut bytes = repr.to_bytes();
        let tag = hmac::sign(&self.key, Packet::new_unchecked(&bytes[..]).signed());
        let mac: [u8; 32] = tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes");
        Packet::new_unchecked(&mut bytes[..]).set_mac(&mac);
        self.queue.push_back((bytes, count));
    }

    /// The datagrams the rate bound lets go at `now`, each for every peer.
    pub fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        // A burst of at most a tenth of a second's worth.
        let burst = (f64::from(self.rate) / 10.0).max(1.0);
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(burst);
        let mut out = Vec::new();
        while self.tokens >= 1.0 {
            let Some((bytes, count)) = self.queue.pop_front() else {
                break;
            };
            self.tokens -= 1.0;
            for peer in &mut self.peers {
                peer.stats.datagrams_sent += 1;
                peer.stats.flows_sent += count;
            }
            out.push(bytes);
        }
        out
    }

    /// When [`Machine::poll`] will let the next queued datagram go (none queued: `None`).
    pub fn poll_at(&self, now: Instant) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        // (Never `now` itself: a token short by a rounding error would spin the caller.)
        let wait = Duration::from_secs_f64(missing / f64::from(self.rate));
        Some(now + wait.max(Duration::from_micros(100)))
    }

    /// A datagram from `from`: what the agent must do with it, if anything (refusals
    /// are counted).
    pub fn receive(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Option<Delivery> {
        let Some(i) = self.peers.iter().position(|p| p.addr.ip() == from.ip()) else {
            self.strangers += 1;
            return None;
        };
        let Ok(packet) = Packet::new_checked(bytes) else {
            self.peers[i].stats.malformed += 1;
            return None;
        };
        if hmac::verify(&self.key, packet.signed(), packet.mac()).is_err() {
            self.peers[i].stats.auth_failures += 1;
            return None;
        }
        let Ok(repr) = Repr::parse(&packet) else {
            self.peers[i].stats.malformed += 1;
            return None;
        };
        let Some(lost) = self.peers[i].accept(repr.boot_id, repr.sequence) else {
            self.peers[i].stats.stale += 1;
            return None;
        };
        let peer = &mut self.peers[i];
        peer.stats.lost += lost;
        peer.stats.last_heard = Some(now);
        let addr = peer.addr.ip();
        if lost > 0 {
            self.ask_resync(now);
        }
        let peer = &mut self.peers[i];
        match repr.kind {
            Kind::ResyncRequest => {
                peer.stats.resync_requests_received += 1;
                Some(Delivery::ResyncAsked { peer: addr })
            }
            Kind::Flows => {
                peer.stats.datagrams_received += 1;
                peer.stats.flows_received += repr.records.len() as u64;
                let full_end = repr.flags & (FLAG_FULL | FLAG_END) == FLAG_FULL | FLAG_END;
                if full_end {
                    peer.stats.last_full_resync = Some(now);
                }
                (full_end || !repr.records.is_empty()).then_some(Delivery::Flows {
                    peer: addr,
                    records: repr.records,
                    full_end,
                })
            }
        }
    }
}

impl Peer {
    /// Takes sequence `seq` of boot `boot_id` into the window: `None` when stale, else how
    /// many datagrams were skipped before it.
    fn accept(&mut self, boot_id: u64, seq: u64) -> Option<u64> {
        let w = match &mut self.window {
            Some(w) if boot_id == w.boot_id => w,
            Some(w) if boot_id < w.boot_id => return None,
            // The first datagram heard, or a restarted sender: its sequence starts anew.
            _ => {
                self.window = Some(Window {
                    boot_id,
                    highest: seq,
                    seen: 1,
                });
                return Some(0);
            }
        };
        if seq > w.highest {
            let shift = seq - w.highest;
            w.seen = if shift >= WINDOW {
                1
            } else {
                (w.seen << shift) | 1
            };
            w.highest = seq;
            return Some(shift - 1);
        }
        let back = w.highest - seq;
        if back >= WINDOW || w.seen & (1 << back) != 0 {
            return None;
        }
        w.seen |= 1 << back;
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use balancer_wire::sync::Op;

    use super::*;

    const KEY: &[u8] = b"a shared key of the pair";

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 2, last], 7471))
    }

    fn record(port: u16) -> Record {
        let a: Ipv6Addr = "::ffff:10.0.1.2".parse().unwrap();
        Record {
            op: Op::Upsert,
            client_addr: a,
            client_port: port,
            vip_addr: a,
            vip_port: 80,
            proto: 6,
            backend_addr: a,
            backend_port: 80,
            snat_addr: a,
            snat_port: 20000,
            state: 8,
            age_ms: 0,
            handshake_ack: 0,
        }
    }

    /// A Master (lb1, 10.0.2.11) and a Backup (lb2, 10.0.2.12), at `t0`.
    fn pair(t0: Instant) -> (Machine, Machine) {
        (
            Machine::new(KEY, 100, &[peer(12)], 1000, t0),
            Machine::new(KEY, 200, &[peer(11)], 1000, t0),
        )
    }

    /// Everything `from` may send at `now`.
    fn drain(from: &mut Machine, now: Instant) -> Vec<Vec<u8>> {
        from.poll(now + Duration::from_hours(1))
    }

    fn deliver(to: &mut Machine, datagrams: &[Vec<u8>], now: Instant) -> Vec<Delivery> {
        datagrams
            .iter()
            .filter_map(|d| to.receive(peer(11), d, now))
            .collect()
    }

    #[test]
    fn records_travel_in_signed_numbered_datagrams() {
        let t0 = Instant::now();
        let (mut master, mut backup) = pair(t0);
        let records: Vec<Record> = (0..40).map(record).collect();
        master.send_flows(&records, true);
        let sent = drain(&mut master, t0);
        assert_eq!(sent.len(), 3, "40 records in datagrams of {MAX_RECORDS}");
        let got = deliver(&mut backup, &sent, t0);
        let flows: Vec<Record> = got
            .iter()
            .flat_map(|d| match d {
                Delivery::Flows { records, .. } => records.clone(),
                Delivery::ResyncAsked { .. } => vec![],
            })
            .collect();
        assert_eq!(flows, records);
        let ends: Vec<bool> = got
            .iter()
            .map(|d| matches!(d, Delivery::Flows { full_end: true, .. }))
            .collect();
        assert_eq!(ends, [false, false, true], "the last one ends the resync");
        let stats = &backup.stats()[&peer(11)];
        assert_eq!((stats.datagrams_received, stats.flows_received), (3, 40));
        assert_eq!(stats.last_full_resync, Some(t0));
        assert_eq!(master.stats()[&peer(12)].flows_sent, 40);
        // An empty incremental round is one datagram: a heartbeat, nothing delivered.
        master.send_flows(&[], false);
        let heartbeat = drain(&mut master, t0);
        assert_eq!(heartbeat.len(), 1);
        assert!(deliver(&mut backup, &heartbeat, t0).is_empty());
        assert_eq!(backup.stats()[&peer(11)].datagrams_received, 4);
    }

    #[test]
    fn forged_replayed_and_stale_datagrams_are_refused_and_counted() {
        let t0 = Instant::now();
        let (mut master, mut backup) = pair(t0);
        master.send_flows(&[record(1)], false);
        let good = drain(&mut master, t0).remove(0);
        let mut forger = Machine::new(b"not the shared key!!", 100, &[peer(12)], 1000, t0);
        forger.send_flows(&[record(2)], false);
        let wrong_key = drain(&mut forger, t0).remove(0);
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        let cases: [(&str, &[u8], SocketAddr, bool); 6] = [
            ("a wrong key", &wrong_key, peer(11), false),
            ("a changed byte", &flipped, peer(11), false),
            ("cut short", &good[..good.len() - 1], peer(11), false),
            ("not a peer", &good, peer(99), false),
            ("authentic", &good, peer(11), true),
            ("replayed", &good, peer(11), false),
        ];
        for (what, bytes, from, taken) in cases {
            assert_eq!(backup.receive(from, bytes, t0).is_some(), taken, "{what}");
        }
        let stats = &backup.stats()[&peer(11)];
        assert_eq!(
            (
                stats.auth_failures,
                stats.malformed,
                stats.stale,
                stats.datagrams_received
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(backup.strangers, 1);
        // A datagram of the sender's previous run (a smaller boot id) is stale too.
        let mut old_run = Machine::new(KEY, 99, &[peer(12)], 1000, t0);
        old_run.send_flows(&[record(3)], false);
        let old = drain(&mut old_run, t0).remove(0);
        assert_eq!(backup.receive(peer(11), &old, t0), None);
        assert_eq!(backup.stats()[&peer(11)].stale, 2);
        // A restarted sender (a larger boot id) starts a new sequence.
        let mut restarted = Machine::new(KEY, 101, &[peer(12)], 1000, t0);
        restarted.send_flows(&[record(4)], false);
        let new = drain(&mut restarted, t0).remove(0);
        assert!(backup.receive(peer(11), &new, t0).is_some());
    }

    #[test]
    fn a_gap_asks_for_a_full_resync_and_reordered_datagrams_are_taken() {
        let t0 = Instant::now();
        let (mut master, mut backup) = pair(t0);
        for port in 1..=5 {
            master.send_flows(&[record(port)], false);
        }
        let sent = drain(&mut master, t0);
        // 1, then 3 (2 is late), then 2, then 5 (4 is lost).
        assert!(backup.receive(peer(11), &sent[0], t0).is_some());
        assert!(drain(&mut backup, t0).is_empty(), "no gap yet");
        assert!(backup.receive(peer(11), &sent[2], t0).is_some());
        let requests = drain(&mut backup, t0);
        assert_eq!(requests.len(), 1, "a hole: one resync request");
        assert!(
            backup.receive(peer(11), &sent[1], t0).is_some(),
            "reordered"
        );
        let at = t0 + Duration::from_millis(500);
        assert!(backup.receive(peer(11), &sent[4], at).is_some());
        assert!(
            drain(&mut backup, at).is_empty(),
            "a second request waits for the hold"
        );
        let stats = &backup.stats()[&peer(11)];
        assert_eq!((stats.lost, stats.resync_requests_sent), (2, 1));
        // The Master hears the request.
        let got: Vec<Delivery> = requests
            .iter()
            .filter_map(|d| master.receive(peer(12), d, t0))
            .collect();
        assert_eq!(
            got,
            [Delivery::ResyncAsked {
                peer: peer(12).ip()
            }]
        );
        // After the hold, a new gap asks again; and a start asks every peer.
        let later = t0 + RESYNC_HOLD;
        master.send_flows(&[record(6)], false);
        master.send_flows(&[record(7)], false);
        let more = drain(&mut master, later);
        assert!(backup.receive(peer(11), &more[1], later).is_some());
        assert_eq!(drain(&mut backup, later).len(), 1);
    }

    #[test]
    fn the_rate_bound_paces_datagrams() {
        let t0 = Instant::now();
        // 100 datagrams per second: bursts of at most 10.
        let mut m = Machine::new(KEY, 1, &[peer(12)], 100, t0);
        for port in 0..50 {
            m.send_flows(&[record(port)], false);
        }
        assert_eq!(m.poll(t0).len(), 1, "one token at start");
        assert_eq!(m.poll_at(t0), Some(t0 + Duration::from_millis(10)));
        assert_eq!(m.poll(t0 + Duration::from_millis(50)).len(), 5);
        assert_eq!(m.poll(t0 + Duration::from_secs(10)).len(), 10, "the burst");
        assert_eq!(m.queued(), 34);
        assert_eq!(m.poll(t0 + Duration::from_secs(11)).len(), 10);
        let mut sent = 0;
        let mut now = t0 + Duration::from_secs(11);
        while let Some(at) = m.poll_at(now) {
            now = at;
            sent += m.poll(now).len();
        }
        assert_eq!(sent, 24);
        assert_eq!(m.stats()[&peer(12)].datagrams_sent, 50);
    }
}
