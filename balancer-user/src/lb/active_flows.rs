//! Active flows per VIP and per backend (HAProxy's `scur`, IPVS's `ActiveConn` and
//! `InActConn`), counted in the connection table itself: an entry is a flow while the data
//! plane would still forward on it, by its own rules (the idle timeout of the entry's state
//! by the data plane's clock, the generation of its VIP). A counter the program kept
//! would drift: LRU evictions and idle expiry end flows without a packet to see it.
//!
//! The agent takes a [`Census`] on its periodic tick: [`Balancer::census`] gathers what it
//! needs from the model on the loop, [`Census::take`] reads the whole table on a blocking
//! thread, and the loop keeps the newest with [`Balancer::record_census`] for `status`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use balancer_common::{
    Conn, FlowKey, Settings, FLOW_CLOSING, FLOW_ESTABLISHED, MAX_BACKENDS, MAX_VIPS, PROTO_TCP,
};

use super::Balancer;
use crate::{
    api::{ActiveFlows, FlowCensusStatus},
    dataplane::{family::v4_addr, FlowEntry, FlowTable, Maps, MapsError},
};

/// A census reads the table at most one `BUSY_SHARE`th of the time: reading a full table
/// keeps a CPU busy in the kernel for a while, so when a census takes longer than that
/// share of the agent's tick, the next ones skip ticks.
const BUSY_SHARE: u32 = 20;

/// Would the data plane still take `flow` for its flow at `now` (its clock, ns)? Not once
/// it has been idle longer than its state allows. (The program also ends a closing flow
/// when its client opens the tuple again: that needs the packet.)
pub fn is_live(flow: &FlowEntry, settings: &Settings, now: u64) -> bool {
    now.saturating_sub(flow.last_seen_ns) <= settings.idle_timeout_ns(flow.state, flow.proto())
}

/// Counts one live flow in `flows`: TCP ones established (handshake completed, no FIN or
/// RST yet) or not (half-open or closing), UDP ones apart.
fn add(flows: &mut ActiveFlows, state: u32, proto: u8) {
    flows.total += 1;
    if proto != PROTO_TCP {
        flows.udp += 1;
    } else if state & (FLOW_ESTABLISHED | FLOW_CLOSING) == FLOW_ESTABLISHED {
        flows.tcp_established += 1;
    } else {
        flows.tcp_other += 1;
    }
}

/// A VIP as the census knows it.
#[derive(Debug)]
struct CensusVip {
    name: String,
    id: u32,
    generation: u32,
    /// Its key's address, port (network byte order, as in a flow's destination) and
    /// protocol.
    dst: (IpAddr, u16, u8),
    /// Its pool, an index into [`Census::pools`].
    pool: Option<usize>,
}

/// A backend as the census knows it.
#[derive(Debug)]
struct CensusBackend {
    pool: usize,
    addr: SocketAddr,
    /// Its id, address and port as a flow holds them (the port in network byte order).
    id: u32,
    conn_addr: (IpAddr, u16),
}

/// What a census needs, gathered on the loop: the table, the settings its flows are judged
/// by, and the VIPs and backends to count them for.
pub struct Census {
    table: Arc<dyn FlowTable>,
    settings: Settings,
    pools: Vec<String>,
    vips: Vec<CensusVip>,
    backends: Vec<CensusBackend>,
    /// VIP id -> index into `vips`.
    vip_by_id: Vec<Option<usize>>,
    /// Generation -> index into `vips`, for a flow whose VIP has another id now.
    vip_by_generation: HashMap<u32, usize>,
    /// Backend id -> index into `backends`.
    backend_by_id: Vec<Option<usize>>,
    /// (pool, address, port as in a `Conn`) -> index into `backends`, for a flow whose
    /// backend has another id now.
    backend_by_addr: HashMap<(usize, IpAddr, u16), usize>,
}

/// The newest census: per VIP and per backend, its live flows.
#[derive(Clone, Debug)]
pub struct FlowCensus {
    pub at: SystemTime,
    pub taken: Instant,
    /// How long reading and counting the table took.
    pub took: Duration,
    /// Entries read, live or not.
    pub entries: u64,
    /// (VIP, generation) -> its flows.
    pub vips: HashMap<(String, u32), ActiveFlows>,
    /// (pool, backend) -> its flows (over the pool's VIPs).
    pub backends: HashMap<(String, SocketAddr), ActiveFlows>,
}

impl std::fmt::Debug for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Census")
            .field("vips", &self.vips)
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

impl Census {
    /// Reads the whole table (on a blocking thread: a full one takes a while) and counts
    /// each VIP's and each backend's live flows.
    ///
    /// # Errors
    /// When the table or the data plane's clock cannot be read.
    pub fn take(&self) -> Result<FlowCensus, MapsError> {
        self.take_with(&mut |_, _, _| {})
    }

    /// [`Census::take`], showing every entry read to `also` as well, with the data plane's
    /// clock of the walk: flow sync compares the table with what it sent in the same walk.
    ///
    /// # Errors
    /// As [`Census::take`].
    pub fn take_with(
        &self,
        also: &mut dyn FnMut(u64, &FlowKey, &Conn),
    ) -> Result<FlowCensus, MapsError> {
        let started = Instant::now();
        let now = self.table.now_ns(&self.settings)?;
        let mut vips = vec![ActiveFlows::default(); self.vips.len()];
        let mut backends = vec![ActiveFlows::default(); self.backends.len()];
        let entries = self.table.walk(&mut |flow| {
            if let Some((key, conn)) = &flow.v4 {
                also(now, key, conn);
            }
            if !is_live(flow, &self.settings, now) {
                return;
            }
            let Some(v) = self.vip_of(flow) else {
                return;
            };
            add(&mut vips[v], flow.state, flow.proto());
            if let Some(b) = self.backend_of(v, flow) {
                add(&mut backends[b], flow.state, flow.proto());
            }
        })?;
        Ok(FlowCensus {
            at: SystemTime::now(),
            taken: Instant::now(),
            took: started.elapsed(),
            entries: entries as u64,
            vips: self
                .vips
                .iter()
                .zip(vips)
                .map(|(v, flows)| ((v.name.clone(), v.generation), flows))
                .collect(),
            backends: self
                .backends
                .iter()
                .zip(backends)
                .map(|(b, flows)| ((self.pools[b.pool].clone(), b.addr), flows))
                .collect(),
        })
    }

    /// The connection table and the settings its flows are judged by.
    pub fn table(&self) -> (&Arc<dyn FlowTable>, &Settings) {
        (&self.table, &self.settings)
    }

    /// This balancer's ids for a flow to `dst` (a VIP's address, port and protocol as in a
    /// [`FlowKey`]) going to `backend` (address and port as in a [`Conn`]): (VIP id, its
    /// generation, backend id), or none when the VIP, or the backend in the VIP's pool, is
    /// unknown here. Flow sync maps a peer's flows onto this balancer's ids with it.
    pub fn ids_of(&self, dst: (u32, u16, u8), backend: (u32, u16)) -> Option<(u32, u32, u32)> {
        let dst = (IpAddr::V4(v4_addr(dst.0)), dst.1, dst.2);
        let vip = self.vips.iter().find(|v| v.dst == dst)?;
        let b =
            self.backend_by_addr
                .get(&(vip.pool?, IpAddr::V4(v4_addr(backend.0)), backend.1))?;
        Some((vip.id, vip.generation, self.backends[*b].id))
    }

    /// The VIP a flow is of: the one of its id with its generation, or (its VIP has
    /// another id now, as after an agent's restart) the one at its destination with its
    /// generation, as the data plane renumbers it. A deleted VIP's flows are nobody's.
    fn vip_of(&self, flow: &FlowEntry) -> Option<usize> {
        let by_id = self
            .vip_by_id
            .get(flow.vip_id as usize)
            .copied()
            .flatten()
            .filter(|&v| self.vips[v].generation == flow.vip_gen);
        by_id.or_else(|| {
            let v = *self.vip_by_generation.get(&flow.vip_gen)?;
            (self.vips[v].dst == flow.dst).then_some(v)
        })
    }

    /// The backend of VIP `v`'s pool a flow goes to (by address: an id may name another
    /// backend now); none when the backend left the pool (its flows carry on).
    fn backend_of(&self, v: usize, flow: &FlowEntry) -> Option<usize> {
        let pool = self.vips[v].pool?;
        let by_id = self
            .backend_by_id
            .get(flow.backend_id as usize)
            .copied()
            .flatten()
            .filter(|&b| {
                self.backends[b].pool == pool && self.backends[b].conn_addr == flow.backend
            });
        by_id.or_else(|| {
            self.backend_by_addr
                .get(&(pool, flow.backend.0, flow.backend.1))
                .copied()
        })
    }
}

impl<M: Maps> Balancer<M> {
    /// What a census of the connection table needs, taken from the model now.
    pub fn census(&self) -> Census {
        let pools: Vec<String> = self.pools.keys().cloned().collect();
        let pool_index: HashMap<&str, usize> = pools
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        let vips: Vec<CensusVip> = self
            .vips
            .iter()
            .map(|(name, vip)| {
                let key = vip.key();
                CensusVip {
                    name: name.clone(),
                    id: vip.id,
                    generation: vip.generation,
                    dst: (key.addr(), key.port(), key.proto()),
                    pool: pool_index.get(vip.config.pool.as_str()).copied(),
                }
            })
            .collect();
        let backends: Vec<CensusBackend> = self
            .pools
            .values()
            .enumerate()
            .flat_map(|(pool, p)| {
                p.backends.iter().map(move |b| CensusBackend {
                    pool,
                    addr: b.addr,
                    id: b.id,
                    conn_addr: (b.addr.ip(), b.addr.port().to_be()),
                })
            })
            .collect();
        let mut vip_by_id = vec![None; MAX_VIPS as usize];
        for (i, v) in vips.iter().enumerate() {
            if let Some(slot) = vip_by_id.get_mut(v.id as usize) {
                *slot = Some(i);
            }
        }
        let mut backend_by_id = vec![None; MAX_BACKENDS as usize];
        for (i, b) in backends.iter().enumerate() {
            if let Some(slot) = backend_by_id.get_mut(b.id as usize) {
                *slot = Some(i);
            }
        }
        Census {
            table: self.maps.flow_table(),
            settings: self.settings,
            vip_by_generation: vips
                .iter()
                .enumerate()
                .map(|(i, v)| (v.generation, i))
                .collect(),
            backend_by_addr: backends
                .iter()
                .enumerate()
                .map(|(i, b)| ((b.pool, b.conn_addr.0, b.conn_addr.1), i))
                .collect(),
            pools,
            vips,
            backends,
            vip_by_id,
            backend_by_id,
        }
    }

    /// Whether a census is due at `now`: when the last one took long, not before
    /// [`BUSY_SHARE`] times its duration has passed since.
    pub fn census_due(&self, now: Instant) -> bool {
        self.census
            .as_ref()
            .is_none_or(|last| now.saturating_duration_since(last.taken) >= last.took * BUSY_SHARE)
    }

    /// Keeps the outcome of a census: a new one replaces the last; a failed one keeps it
    /// (status shows its age) and is logged.
    pub fn record_census(&mut self, result: Result<FlowCensus, MapsError>) {
        match result {
            Ok(census) => {
                log::debug!(
                    "active flows: {} entries read and counted in {:?}",
                    census.entries,
                    census.took
                );
                self.census = Some(census);
                self.census_error = None;
            }
            Err(e) => {
                if self.census_error.is_none() {
                    log::warn!("cannot count the active flows: {e}");
                }
                self.census_error = Some(e.to_string());
            }
        }
    }

    /// VIP `name` of `generation`'s active flows at the last census (none before one, or
    /// when the VIP is newer).
    pub(super) fn vip_active_flows(&self, name: &str, generation: u32) -> Option<ActiveFlows> {
        self.census
            .as_ref()?
            .vips
            .get(&(name.to_owned(), generation))
            .copied()
    }

    /// Backend `addr` of `pool`'s active flows at the last census.
    pub(super) fn backend_active_flows(&self, pool: &str, addr: SocketAddr) -> Option<ActiveFlows> {
        self.census
            .as_ref()?
            .backends
            .get(&(pool.to_owned(), addr))
            .copied()
    }

    /// When the last census was taken and what it read.
    pub(super) fn census_status(&self) -> Option<FlowCensusStatus> {
        let census = self.census.as_ref();
        if census.is_none() && self.census_error.is_none() {
            return None;
        }
        Some(FlowCensusStatus {
            at: census
                .map(|c| humantime_serde::re::humantime::format_rfc3339_seconds(c.at).to_string()),
            age_secs: census.map(|c| c.taken.elapsed().as_secs_f64()),
            took_secs: census.map(|c| c.took.as_secs_f64()),
            entries: census.map(|c| c.entries),
            last_error: self.census_error.clone(),
        })
    }
}

#[cfg(test)]
#[path = "active_flows/tests.rs"]
mod tests;
