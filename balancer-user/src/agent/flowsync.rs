//! The agent's side of flow sync ([`crate::sync`]): which role VRRP gives this node, the
//! Master's rounds (the census walk, which also compares the table with what was sent),
//! and the Backup's writes of what arrived, on a blocking thread, one at a time. The
//! socket task only sends events; the maps are written from here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use balancer_wire::sync::Record;

use super::events::{Agent, Event};
use crate::{
    api::{SyncPeerStatus, SyncRoundStatus, SyncStatus},
    dataplane::{Maps, MapsError},
    sync::{self, Applied, Delivery, FlowSync, Outbox, SyncConfig},
    vrrp::State,
};

/// Most received records waiting to be written: beyond, new ones are dropped (and
/// counted); the next full resync brings them again.
const MAX_PENDING: usize = 2_000_000;

/// A Master's rounds keep a CPU busy at most one `BUSY_SHARE`th of the time: when a walk
/// of the table and its comparison take longer than that share of the interval (a full
/// table), the next rounds wait. (The census alone takes a smaller
/// share; while Master, it is taken in these walks.)
const BUSY_SHARE: u32 = 4;

/// One round of the Master, back from the walk's thread.
#[derive(Debug)]
pub struct Round {
    pub outbox: Outbox,
    pub records: Vec<Record>,
    pub full: bool,
    pub took: Duration,
    /// The walk failed: nothing is sent.
    pub failed: bool,
}

/// What `status` shows of the newest round.
#[derive(Debug, Clone, Copy)]
struct RoundSummary {
    at: Instant,
    took: Duration,
    full: bool,
    records: u64,
}

/// Flow sync as the agent runs it.
#[derive(Debug)]
pub(super) struct SyncNode {
    service: FlowSync,
    instance: Option<String>,
    /// What the peers were told; `None` while a walk has it.
    outbox: Option<Outbox>,
    full_resync: Duration,
    /// A peer asked for a full resync while the walk had the outbox.
    full_asked: bool,
    /// Whether this node was Master at the last look.
    was_master: bool,
    /// Received records waiting to be written, per peer, in order.
    pending: Vec<(IpAddr, Vec<Record>)>,
    pending_len: usize,
    applying: bool,
    applied: BTreeMap<IpAddr, Applied>,
    ignored: u64,
    dropped: u64,
    last_round: Option<RoundSummary>,
    /// No round starts before this (see [`BUSY_SHARE`]).
    next_round: Option<Instant>,
    last_error: Option<String>,
}

impl SyncNode {
    /// Starts the service of `config`; what peers send comes on `deliveries`.
    pub(super) fn start(
        config: &SyncConfig,
        deliveries: tokio::sync::mpsc::Sender<Delivery>,
    ) -> anyhow::Result<SyncNode> {
        let service = FlowSync::start(config, deliveries)?;
        log::info!(
            "flow sync: with {} peer(s), every {:?}",
            config.peers.len(),
            config.interval
        );
        Ok(SyncNode {
            service,
            instance: config.instance.clone(),
            outbox: Some(Outbox::new(config.full_resync)),
            full_resync: config.full_resync,
            full_asked: false,
            was_master: false,
            pending: Vec::new(),
            pending_len: 0,
            applying: false,
            applied: BTreeMap::new(),
            ignored: 0,
            dropped: 0,
            last_round: None,
            next_round: None,
            last_error: None,
        })
    }
}

impl SyncNode {
    /// The outbox of a walk that did not start.
    pub(super) fn give_back(&mut self, outbox: Outbox) {
        self.outbox = Some(outbox);
    }
}

impl<M: Maps> Agent<M> {
    /// Whether this node sends: the Master of the sync's instance or group (of any
    /// instance without one).
    fn sync_master(&self) -> bool {
        let (Some(vrrp), Some(node)) = (&self.vrrp, &self.sync) else {
            return false;
        };
        vrrp.status().iter().any(|s| {
            s.state == State::Master
                && node
                    .instance
                    .as_ref()
                    .is_none_or(|i| s.name == *i || s.sync_group.as_ref() == Some(i))
        })
    }

    /// The sync interval passed: a Master starts a round (with the census, in one walk).
    pub(super) fn sync_tick(&mut self) {
        let master = self.sync_master();
        let walking = self.census_running;
        let Some(node) = &mut self.sync else {
            return;
        };
        if master != node.was_master {
            log::info!(
                "flow sync: {}",
                if master {
                    "Master: sending the flows, a full round first"
                } else {
                    "no longer Master: receiving"
                }
            );
            node.was_master = master;
            // Either way the peers' tables are no longer what this node sent.
            if let Some(outbox) = &mut node.outbox {
                outbox.reset();
            }
        }
        let paced = node.next_round.is_some_and(|at| Instant::now() < at);
        if !master || walking || paced {
            return;
        }
        // (Without one here and no walk running, the last walk's thread died with it.)
        let mut outbox = node
            .outbox
            .take()
            .unwrap_or_else(|| Outbox::new(node.full_resync));
        if std::mem::take(&mut node.full_asked) {
            outbox.ask_full();
        }
        self.start_walk(Some(outbox));
    }

    /// A round's walk ended: its records go to the peers (while still Master).
    pub(super) fn sync_round(&mut self, round: Round) {
        let master = self.sync_master();
        let Some(node) = &mut self.sync else {
            return;
        };
        let Round {
            mut outbox,
            records,
            full,
            took,
            failed,
        } = round;
        let sent = records.len() as u64;
        if failed || !master {
            outbox.reset();
        } else {
            node.service.send(records, full);
        }
        if std::mem::take(&mut node.full_asked) {
            outbox.ask_full();
        }
        let now = Instant::now();
        node.next_round = Some(now + took * (BUSY_SHARE - 1));
        node.last_round = Some(RoundSummary {
            at: now,
            took,
            full,
            records: sent,
        });
        node.outbox = Some(outbox);
    }

    /// What the socket task passed on.
    pub(super) fn sync_delivery(&mut self, delivery: Delivery) {
        let master = self.sync_master();
        let Some(node) = &mut self.sync else {
            return;
        };
        match delivery {
            Delivery::ResyncAsked { peer } => {
                log::debug!("flow sync: {peer} asks for a full resync");
                match &mut node.outbox {
                    Some(outbox) => outbox.ask_full(),
                    None => node.full_asked = true,
                }
            }
            Delivery::Flows { peer, records, .. } => {
                if master {
                    node.ignored += records.len() as u64;
                    return;
                }
                if node.pending_len + records.len() > MAX_PENDING {
                    node.dropped += records.len() as u64;
                    return;
                }
                node.pending_len += records.len();
                node.pending.push((peer, records));
                self.start_apply();
            }
        }
    }

    /// Writes the received records waiting, on a blocking thread, unless a write runs.
    fn start_apply(&mut self) {
        let Some(events) = self.events.clone() else {
            return;
        };
        let census = self.lb.census();
        let Some(node) = &mut self.sync else {
            return;
        };
        if node.applying || node.pending.is_empty() {
            return;
        }
        node.applying = true;
        let batches = std::mem::take(&mut node.pending);
        node.pending_len = 0;
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || sync::apply(&census, &batches))
                .await
                .unwrap_or_else(|e| {
                    Err(MapsError::Other {
                        map: balancer_common::map_names::CONNS,
                        message: format!("the flow sync thread failed: {e}"),
                    })
                });
            // (Closed: the agent is stopping.)
            let _ = events.send(Event::SyncApplied(result)).await;
        });
    }

    /// A write of received records ended.
    pub(super) fn sync_applied(&mut self, result: Result<BTreeMap<IpAddr, Applied>, MapsError>) {
        let Some(node) = &mut self.sync else {
            return;
        };
        node.applying = false;
        match result {
            Ok(outcome) => {
                for (peer, a) in outcome {
                    let total = node.applied.entry(peer).or_default();
                    total.written += a.written;
                    total.removed += a.removed;
                    total.unknown += a.unknown;
                }
                node.last_error = None;
            }
            Err(e) => {
                if node.last_error.is_none() {
                    log::warn!("flow sync: writing the flows a peer sent: {e}");
                }
                node.last_error = Some(e.to_string());
            }
        }
        self.start_apply();
    }

    /// Flow sync as `status` shows it.
    pub(super) fn sync_status(&self) -> Option<SyncStatus> {
        let node = self.sync.as_ref()?;
        let snapshot = node.service.status();
        let since = |at: Option<Instant>| at.map(|at| at.elapsed().as_secs_f64());
        let peers = snapshot
            .peers
            .iter()
            .map(|(addr, s)| {
                let applied = node.applied.get(&addr.ip()).copied().unwrap_or_default();
                SyncPeerStatus {
                    address: addr.to_string(),
                    flows_sent: s.flows_sent,
                    datagrams_sent: s.datagrams_sent,
                    flows_received: s.flows_received,
                    datagrams_received: s.datagrams_received,
                    lag_secs: since(s.last_heard),
                    last_full_resync_secs: since(s.last_full_resync),
                    flows_written: applied.written,
                    flows_removed: applied.removed,
                    unknown: applied.unknown,
                    auth_failures: s.auth_failures,
                    malformed: s.malformed,
                    stale: s.stale,
                    lost: s.lost,
                    resync_requests_sent: s.resync_requests_sent,
                    resync_requests_received: s.resync_requests_received,
                }
            })
            .collect();
        Some(SyncStatus {
            role: if self.sync_master() {
                "sending"
            } else {
                "receiving"
            }
            .to_owned(),
            local: snapshot.local.map(|a| a.to_string()),
            queued: snapshot.queued as u64,
            queue_drops: snapshot.queue_drops,
            strangers: snapshot.strangers,
            ignored_while_master: node.ignored,
            dropped: node.dropped,
            last_round: node.last_round.map(|r| SyncRoundStatus {
                age_secs: r.at.elapsed().as_secs_f64(),
                took_secs: r.took.as_secs_f64(),
                full: r.full,
                records: r.records,
                flows: node.outbox.as_ref().map_or(0, |o| o.len() as u64),
            }),
            last_error: node.last_error.clone(),
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::ops::ControlFlow;
    use std::sync::{Arc, PoisonError};

    use balancer_common::PROTO_TCP;
    use balancer_wire::sync::Op;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        dataplane::{FakeFlows, FakeMaps},
        health::Checker,
        sync::{
            apply::tests::{backend, flow, receiver},
            record::to_record,
            KeySource,
        },
    };

    /// An agent (no VRRP: never Master) with VIP "web" and flow sync on loopback; the loop's
    /// events come on the receiver.
    fn agent(flows: &Arc<FakeFlows>) -> (Agent<FakeMaps>, mpsc::Receiver<Event>) {
        let config = SyncConfig {
            peers: vec!["127.0.0.1:9".parse().unwrap()],
            source: Some(Ipv4Addr::LOCALHOST.into()),
            interface: None,
            port: 0,
            key: KeySource::Inline("0123456789abcdef".into()),
            instance: None,
            interval: Duration::from_secs(1),
            full_resync: Duration::from_mins(1),
            rate: 100,
        };
        let (deliveries, _) = mpsc::channel(1);
        let node = SyncNode::start(&config, deliveries).unwrap();
        let (events, rx) = mpsc::channel(8);
        let (health, _) = mpsc::channel(1);
        let agent = Agent::new(receiver(flows), Checker::new(health), None, None)
            .with_events(events)
            .with_sync(Some(node));
        (agent, rx)
    }

    #[tokio::test]
    async fn a_backup_writes_what_its_peer_sent_off_the_loop() {
        let flows = Arc::new(FakeFlows::default());
        let (mut agent, mut events) = agent(&flows);
        let (key, conn) = flow(1, 80, PROTO_TCP, backend(1, 80));
        let peer: IpAddr = Ipv4Addr::LOCALHOST.into();
        let delivery = Delivery::Flows {
            peer,
            records: vec![to_record(Op::Upsert, &key, &conn, 0)],
            full_end: true,
        };
        let handled = agent.handle(Event::Sync(delivery)).await;
        assert_eq!(handled, ControlFlow::Continue(()));
        let applied = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the write ends")
            .expect("an event");
        assert!(matches!(applied, Event::SyncApplied(Ok(_))), "{applied:?}");
        assert_eq!(agent.handle(applied).await, ControlFlow::Continue(()));
        let entries = flows
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, key);
        let status = agent.sync_status().expect("flow sync's status");
        assert_eq!(status.role, "receiving");
        assert_eq!(status.peers.len(), 1);
        assert_eq!(status.peers[0].flows_written, 1);
        // Without VRRP this node is never Master: a tick starts no round.
        assert_eq!(
            agent.handle(Event::SyncTick).await,
            ControlFlow::Continue(())
        );
        assert!(events.try_recv().is_err(), "no walk");
    }
}
