//! The kernel memory of the maps at large connection-table sizes (`memlock:` of each map's
//! fdinfo).

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{Map, MapData};
use balancer_common::{map_names, CONN_TABLE_SIZE};

use super::setup::load;

/// Memory of the maps with a given connection-table size.
#[derive(Clone, Debug)]
pub struct MapMemory {
    pub entries: u32,
    /// `memlock:` of each map's fdinfo, in bytes, by map name.
    pub by_map: BTreeMap<String, u64>,
    /// How long creating the maps and loading the program took.
    pub load_time: Duration,
}

impl MapMemory {
    pub fn total(&self) -> u64 {
        self.by_map.values().sum()
    }

    pub fn get(&self, name: &str) -> u64 {
        self.by_map.get(name).copied().unwrap_or(0)
    }

    /// Bytes of the two flow tables, CONNS and NAT.
    pub fn flow_tables(&self) -> u64 {
        self.get(map_names::CONNS) + self.get(map_names::NAT)
    }

    /// Bytes of CONNS and NAT per entry.
    pub fn bytes_per_flow(&self) -> f64 {
        self.flow_tables() as f64 / f64::from(self.entries)
    }
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d)
        | Map::PerfEventArray(d)
        | Map::Unsupported(d) => Some(d),
        _ => None,
    }
}

/// The `memlock:` line of `/proc/self/fdinfo/<fd>`, in bytes.
fn memlock(fd: RawFd) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock line in {path}"))
}

/// Section 3: the maps' kernel memory with `entries` in CONNS and in NAT.
pub fn map_memory(entries: u32) -> Result<MapMemory> {
    let started = Instant::now();
    let ebpf = load(Some(entries))
        .with_context(|| format!("loading the program with {entries} connection entries"))?;
    let load_time = started.elapsed();
    let mut by_map = BTreeMap::new();
    for (name, map) in ebpf.maps() {
        // Maps of other kinds than the balancer's own are not counted.
        if let Some(data) = map_data(map) {
            by_map.insert(name.to_string(), memlock(data.fd().as_fd().as_raw_fd())?);
        }
    }
    ensure!(
        by_map.contains_key(map_names::CONNS) && by_map.contains_key(map_names::NAT),
        "the program has no CONNS or NAT map"
    );
    Ok(MapMemory {
        entries,
        by_map,
        load_time,
    })
}

/// The connection-table size the agent uses.
pub fn default_entries() -> u32 {
    CONN_TABLE_SIZE
}
