//! What the Master sends: the difference between its connection table now and what it last
//! told its peers. The data plane is not changed for sync: its table is walked (the walk
//! the flow census makes anyway, see `lb::Census::take_with`) and each live flow compared
//! with what was sent of it. A flow is sent when it is new, when its backend, SNAT port,
//! state or handshake changed, and, while packets keep it alive, again once a third of its
//! idle timeout has passed since it was last sent (a refresh: the peers judge its liveness
//! by the age it carries, so a long-lived flow must not look idle to them). A flow gone from
//! the table (or expired in it) is sent as removed, once. A full round sends every live
//! flow: the first after start or after becoming Master, one every `full_resync`, and one
//! when a peer asks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use balancer_common::{Conn, FlowKey, Settings};
use balancer_wire::sync::{Op, Record};

use super::record::to_record;

/// Shortest time between two refreshes of one flow.
const MIN_REFRESH_NS: u64 = 1_000_000_000;

/// The outbox's hash of a flow key: its two words (`FlowKey::words`) folded and mixed
/// with one multiplication (the keys are the data plane's, not chosen against this
/// table: `SipHash`'s protection from crafted keys is not needed, and it costs a round at
/// a million flows a good part of its time).
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(29) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A flow key as [`KeyHasher`] hashes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key(FlowKey);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b] = self.0.words();
        state.write_u64(a);
        state.write_u64(b);
    }
}

/// What was last sent of a flow.
#[derive(Clone, Copy, Debug)]
struct Sent {
    /// The fields whose change is sent at once.
    what: (u32, u16, u32, u16, u32, u32),
    last_seen_ns: u64,
    /// When it was sent, by the data plane's clock.
    at_ns: u64,
    /// The round that last saw it in the table.
    round: u64,
}

fn what(conn: &Conn) -> (u32, u16, u32, u16, u32, u32) {
    (
        conn.backend_addr,
        conn.backend_port,
        conn.snat_addr,
        conn.snat_port,
        conn.state,
        conn.handshake_ack,
    )
}

/// The Master's record of what its peers were told.
#[derive(Debug)]
pub struct Outbox {
    sent: HashMap<Key, Sent, BuildHasherDefault<KeyHasher>>,
    round: u64,
    full_every: Duration,
    last_full: Option<Instant>,
    full_asked: bool,
}

/// One walk's comparison, fed entry by entry.
#[derive(Debug)]
pub struct Round<'a> {
    outbox: &'a mut Outbox,
    settings: Settings,
    full: bool,
    records: Vec<Record>,
}

impl Outbox {
    pub fn new(full_every: Duration) -> Outbox {
        Outbox {
            sent: HashMap::default(),
            round: 0,
            full_every,
            last_full: None,
            full_asked: false,
        }
    }

    /// Forgets what was sent: the next round is full (after this node was not Master,
    /// its peers' tables are not what it sent).
    pub fn reset(&mut self) {
        self.sent.clear();
        self.last_full = None;
    }

    /// A peer asked for every flow: the next round is full.
    pub fn ask_full(&mut self) {
        self.full_asked = true;
    }

    /// Whether the round starting at `now` must be full.
    pub fn full_due(&self, now: Instant) -> bool {
        self.full_asked
            || self
                .last_full
                .is_none_or(|last| now.saturating_duration_since(last) >= self.full_every)
    }

    /// Flows the peers were told of and not told gone since.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Starts a round at `now` (full when [`Outbox::full_due`]): feed it every entry of the
    /// table, then [`Round::finish`].
    pub fn round(&mut self, settings: Settings, now: Instant) -> Round<'_> {
        let full = self.full_due(now);
        if full {
            self.full_asked = false;
            self.last_full = Some(now);
        }
        self.round += 1;
        Round {
            outbox: self,
            settings,
            full,
            records: Vec::new(),
        }
    }
}

impl Round<'_> {
    /// Whether this round sends every live flow.
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// One entry of the table, read at `now` (the data plane's clock).
    pub fn visit(&mut self, now: u64, key: &FlowKey, conn: &Conn) {
        let idle = now.saturating_sub(conn.last_seen_ns);
        if idle > self.settings.idle_timeout_ns(conn.state, key.proto) {
            return;
        }
        let round = self.outbox.round;
        let refresh =
            (self.settings.idle_timeout_ns(conn.state, key.proto) / 3).max(MIN_REFRESH_NS);
        let send = match self.outbox.sent.get(&Key(*key)) {
            None => true,
            Some(sent) => {
                self.full
                    || sent.what != what(conn)
                    || (sent.last_seen_ns != conn.last_seen_ns
                        && now.saturating_sub(sent.at_ns) >= refresh)
            }
        };
        if send {
            let age_ms = now.saturating_sub(conn.last_seen_ns) / 1_000_000;
            let age_ms = u32::try_from(age_ms).unwrap_or(u32::MAX);
            self.records.push(to_record(Op::Upsert, key, conn, age_ms));
            self.outbox.sent.insert(
                Key(*key),
                Sent {
                    what: what(conn),
                    last_seen_ns: conn.last_seen_ns,
                    at_ns: now,
                    round,
                },
            );
        } else if let Some(sent) = self.outbox.sent.get_mut(&Key(*key)) {
            sent.round = round;
        }
    }

    /// The records to send: the changes seen, and the flows no longer seen as removed.
    pub fn finish(mut self) -> Vec<Record> {
        let round = self.outbox.round;
        let records = &mut self.records;
        self.outbox.sent.retain(|key, sent| {
            if sent.round == round {
                return true;
            }
            let (backend_addr, backend_port, snat_addr, snat_port, state, handshake_ack) =
                sent.what;
            let conn = Conn {
                backend_addr,
                backend_port,
                snat_addr,
                snat_port,
                state,
                handshake_ack,
                ..Conn::default()
            };
            records.push(to_record(Op::Remove, &key.0, &conn, 0));
            false
        });
        self.records
    }
}

#[cfg(test)]
mod tests {
    use balancer_common::{FLOW_CLOSING, FLOW_ESTABLISHED, PROTO_TCP, PROTO_UDP};

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn settings() -> Settings {
        Settings {
            tcp_timeout_ns: 300 * SECOND,
            tcp_handshake_timeout_ns: 5 * SECOND,
            udp_timeout_ns: 30 * SECOND,
            closing_timeout_ns: 10 * SECOND,
            ..Settings::default()
        }
    }

    fn key(port: u16, proto: u8) -> FlowKey {
        FlowKey {
            src_addr: u32::from_ne_bytes([10, 0, 1, 2]),
            dst_addr: u32::from_ne_bytes([10, 0, 1, 100]),
            src_port: port.to_be(),
            dst_port: 80u16.to_be(),
            proto,
            ..FlowKey::default()
        }
    }

    fn conn(last_seen_ns: u64, state: u32) -> Conn {
        Conn {
            backend_addr: u32::from_ne_bytes([10, 0, 2, 101]),
            snat_addr: u32::from_ne_bytes([10, 0, 2, 1]),
            backend_port: 80u16.to_be(),
            snat_port: 20001u16.to_be(),
            state,
            last_seen_ns,
            ..Conn::default()
        }
    }

    /// One round over `table` at `now` (ns; the wall clock as many seconds after `t0`):
    /// (client port, op, age in ms) of each record, sorted, and whether it was full.
    fn round(
        outbox: &mut Outbox,
        t0: Instant,
        now: u64,
        table: &[(FlowKey, Conn)],
    ) -> (bool, Vec<(u16, Op, u32)>) {
        let mut round = outbox.round(settings(), t0 + Duration::from_nanos(now));
        for (k, c) in table {
            round.visit(now, k, c);
        }
        let full = round.is_full();
        let mut sent: Vec<_> = round
            .finish()
            .iter()
            .map(|r| (r.client_port, r.op, r.age_ms))
            .collect();
        sent.sort_by_key(|s| s.0);
        (full, sent)
    }

    #[test]
    fn the_diff_of_two_walks() {
        let t0 = Instant::now();
        let mut outbox = Outbox::new(Duration::from_secs(150));
        let est = FLOW_ESTABLISHED;
        let (a, b, c, d) = (
            key(1, PROTO_TCP),
            key(2, PROTO_TCP),
            key(3, PROTO_UDP),
            key(4, PROTO_TCP),
        );
        let mut table = vec![
            (a, conn(100 * SECOND, est)),
            (b, conn(100 * SECOND, est)),
            (c, conn(99 * SECOND, 0)),
            // Idle past its handshake timeout: not live, never sent.
            (d, conn(90 * SECOND, 0)),
        ];
        // The first round is full.
        assert_eq!(
            round(&mut outbox, t0, 100 * SECOND, &table),
            (
                true,
                vec![
                    (1, Op::Upsert, 0),
                    (2, Op::Upsert, 0),
                    (3, Op::Upsert, 1000)
                ]
            )
        );
        assert_eq!(outbox.len(), 3);
        // Nothing changed: nothing sent.
        assert_eq!(
            round(&mut outbox, t0, 101 * SECOND, &table),
            (false, vec![])
        );
        // `a` closes (a change: sent at once); `b`'s packets keep it alive but a third of
        // its idle timeout has not passed; `c` leaves the table.
        table[0].1 = conn(101 * SECOND, est | FLOW_CLOSING);
        table[1].1.last_seen_ns = 101 * SECOND;
        table.remove(2);
        assert_eq!(
            round(&mut outbox, t0, 102 * SECOND, &table),
            (false, vec![(1, Op::Upsert, 1000), (3, Op::Remove, 0)])
        );
        // 100 s after it was sent (a third of 300 s), `b` is refreshed with its age; `a`
        // has expired (closing timeout): removed once.
        table[1].1.last_seen_ns = 199 * SECOND;
        assert_eq!(
            round(&mut outbox, t0, 200 * SECOND, &table),
            (false, vec![(1, Op::Remove, 0), (2, Op::Upsert, 1000)])
        );
        assert_eq!(
            round(&mut outbox, t0, 201 * SECOND, &table),
            (false, vec![])
        );
        // A peer asks: everything live again.
        outbox.ask_full();
        assert_eq!(
            round(&mut outbox, t0, 202 * SECOND, &table),
            (true, vec![(2, Op::Upsert, 3000)])
        );
        // And after `full_resync` (150 s after the last full round).
        assert_eq!(
            round(&mut outbox, t0, 351 * SECOND, &table),
            (false, vec![])
        );
        assert_eq!(
            round(&mut outbox, t0, 352 * SECOND, &table),
            (true, vec![(2, Op::Upsert, 153_000)])
        );
        // After a reset (no longer Master), the next round is full.
        outbox.reset();
        assert!(outbox.is_empty());
        assert_eq!(
            round(&mut outbox, t0, 353 * SECOND, &table),
            (true, vec![(2, Op::Upsert, 154_000)])
        );
    }

    /// The cost of a round over 100k and 1M flows: the kernel's batch read of a table of
    /// `CONNS`' layout, and the comparison with what was sent, for the first (full) round
    /// and for one where nothing changed. As root: `cargo test --release -p balancer-user
    /// --lib -- --ignored round_cost --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn round_cost() {
        use crate::dataplane::batch::{self, lru_hash};

        for n in [100_000u32, 1_000_000] {
            let map = lru_hash::<FlowKey, Conn>(balancer_common::CONN_TABLE_SIZE);
            for i in 0..n {
                let mut k = key((i % 60_000) as u16, PROTO_TCP);
                k.src_addr = (i / 60_000).to_be();
                map.update(&k, &conn(100 * SECOND, FLOW_ESTABLISHED))
                    .unwrap();
            }
            let t0 = Instant::now();
            let read = batch::walk(&map, batch::CHUNK, |_: &FlowKey, _: &Conn| {}).unwrap();
            eprintln!(
                "{n} flows: {read} read alone (the census's walk) in {:?}",
                t0.elapsed()
            );
            let mut outbox = Outbox::new(Duration::from_hours(1));
            for (what, now) in [("first (full)", 100 * SECOND), ("unchanged", 101 * SECOND)] {
                let started = Instant::now();
                let mut round = outbox.round(settings(), t0 + Duration::from_nanos(now));
                let read = batch::walk(&map, batch::CHUNK, |k: &FlowKey, c: &Conn| {
                    round.visit(now, k, c);
                })
                .unwrap();
                let walked = started.elapsed();
                let records = round.finish();
                eprintln!(
                    "{n} flows, {what} round: {:?} ({read} entries read and compared in \
                     {walked:?}), {} records",
                    started.elapsed(),
                    records.len()
                );
            }
        }
    }
}
