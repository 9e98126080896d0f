//! The time from a CLI change to the maps: `balancer backend list/add/del` timed against a
//! running agent, the new backend looked up in its BACKENDS map, and the cost of one ring
//! slot written by syscall.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, Map, MapData};
use balancer_common::{map_names, Backend, BACKEND_F_PRESENT};
use balancer_tests::{balancer_path, Agent, Topology, HTTP_PORT};

use super::paths::agent_config;
use super::{CliTimes, Params, BACKENDS};
use crate::stats::summarize;
use crate::{xdp, Stop};

fn timed_cli(socket: &Path, args: &[&str]) -> Result<f64> {
    let started = Instant::now();
    let out = Command::new(balancer_path())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running the balancer CLI")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "`balancer {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

/// The agent's BACKENDS map, found through the program attached to the lb's `lbc0`.
fn agent_backends_map(topo: &Topology) -> Result<Array<MapData, Backend>> {
    let json = topo.lb().ip(&["-j", "link", "show", "dev", "lbc0"])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("ip -j link show")?;
    let prog_id = v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .context("no XDP program attached to lbc0")? as u32;
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .context("the attached program is not among the loaded ones")?;
    for id in info.map_ids()?.unwrap_or_default() {
        let map_info = aya::maps::MapInfo::from_id(id)?;
        if map_info.name_as_str() == Some(map_names::BACKENDS) {
            let data = MapData::from_id(id)?;
            return Ok(Array::try_from(Map::Array(data))?);
        }
    }
    bail!("the agent's program has no {} map", map_names::BACKENDS)
}

fn map_holds(map: &Array<MapData, Backend>, addr: SocketAddrV4) -> bool {
    let want = u32::from_ne_bytes(addr.ip().octets());
    let port = addr.port().to_be();
    map.iter()
        .filter_map(Result::ok)
        .any(|b| b.addr == want && b.port == port && b.flags & BACKEND_F_PRESENT != 0)
}

/// `BPF_F_MMAPABLE` (linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The cost of one ring element write by syscall (`Array::set`, one `BPF_MAP_UPDATE_ELEM`
/// each, two slots an element), and whether RING is memory-mapped (then the agent writes
/// slots with stores).
fn slot_write_us() -> Result<(f64, bool)> {
    let mut ebpf = xdp::load(None)?;
    let map = ebpf
        .take_map(map_names::RING)
        .context("the program has no RING map")?;
    let mmapable = match &map {
        Map::Array(data) => data.info()?.map_flags() & BPF_F_MMAPABLE != 0,
        _ => false,
    };
    let mut ring: Array<MapData, [u32; 2]> = Array::try_from(map)?;
    let mut per_batch = Vec::new();
    for batch in 0..10u32 {
        let started = Instant::now();
        for slot in 0..2000u32 {
            ring.set(batch * 2000 + slot, [slot, slot], 0)?;
        }
        per_batch.push(started.elapsed().as_secs_f64() * 1e6 / 2000.0);
    }
    Ok((summarize(&per_batch).p50, mmapable))
}

pub(super) fn cli_times(topo: &Topology, p: &Params, stop: &Stop) -> Result<CliTimes> {
    let slot_write = slot_write_us().ok();
    let agent = Agent::start(topo, &agent_config(topo)?)?;
    let socket = agent.socket().to_path_buf();
    let map = agent_backends_map(topo)?;
    let n = p.cli_repeats;
    let mut list = Vec::new();
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let mut in_map = 0;
    for _ in 0..n {
        stop.check()?;
        list.push(timed_cli(&socket, &["backend", "list", "web"])?);
    }
    let addrs: Vec<SocketAddrV4> = (0..n)
        .map(|k| SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 60 + k as u8), HTTP_PORT))
        .collect();
    for a in &addrs {
        stop.check()?;
        let text = a.to_string();
        add.push(timed_cli(&socket, &["backend", "add", "web", &text])?);
        if map_holds(&map, *a) {
            in_map += 1;
        }
    }
    for a in &addrs {
        stop.check()?;
        del.push(timed_cli(
            &socket,
            &["backend", "del", "web", &a.to_string()],
        )?);
    }
    drop(agent);
    Ok(CliTimes {
        list: summarize(&list),
        add: summarize(&add),
        del: summarize(&del),
        add_in_map: in_map,
        adds: n,
        pool_before: BACKENDS.min(topo.n_backends()),
        slot_write_us: slot_write.map(|s| s.0),
        ring_mmapable: slot_write.map(|s| s.1),
    })
}
