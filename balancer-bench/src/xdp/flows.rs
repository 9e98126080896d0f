//! Many flows per packet: established UDP flows replayed in a random order over working sets
//! far beyond this CPU's flow cache and the CPU caches, so that the connection-table lookup
//! misses the caches as it does in real traffic (a single hot flow always hits them).

use std::rc::Rc;

use anyhow::{ensure, Result};

use super::case::{measure_rounds, udp_flow, Case, Frames};
use super::setup::Loaded;
use super::{program_fd, syscall::EmptyXdp, Measured, Plan, XDP_REDIRECT};
use crate::Stop;

/// The working sets measured, in flows.
pub const MANY_FLOWS: [u32; 2] = [65_536, 1_000_000];
/// CONNS and NAT entries of the many-flow program: room for every flow, so that the figures
/// are lookups, not LRU evictions.
const TABLE: u32 = 1 << 21;
/// `nat.port_range` of the many-flow program: wide, so that the largest working set takes
/// a sixth of each backend's ports and every flow finds one at its first probes.
pub const PORT_RANGE: &str = "1024-65535";

/// The case names, by working set (static: a case's name is).
fn name(flows: u32) -> &'static str {
    match flows {
        1 => "UDP established, 1 flow",
        65_536 => "UDP established, 64k flows (random order)",
        1_000_000 => "UDP established, 1M flows (random order)",
        _ => "UDP established, many flows (random order)",
    }
}

/// The many-flow cases, one run per test run (each run another flow), with the floor and
/// the one-flow case of the same program for comparison. Establishes every flow first, one
/// datagram each.
pub(super) fn many_flows(client_if: u32, plan: Plan, stop: &Stop) -> Result<Measured> {
    let loaded = Loaded::new(Some(TABLE), Some(PORT_RANGE))?;
    let fd = program_fd(&loaded.ebpf)?;
    let empty = EmptyXdp::load()?;
    let largest = MANY_FLOWS.iter().copied().max().unwrap_or(1);
    let mut establish = Case::new(
        "establishing the flows",
        fd,
        client_if,
        XDP_REDIRECT,
        Frames::Cycle {
            order: (0..largest).collect(),
            next: 0,
            frame: udp_flow,
        },
    );
    let mut left = largest as usize;
    while left > 0 {
        stop.check()?;
        let n = left.min(10_000);
        establish.run(n)?;
        left -= n;
    }
    ensure!(
        establish.unexpected == 0,
        "{} of the {largest} first datagrams of the many-flow cases were not redirected",
        establish.unexpected
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let mut cases = vec![
        Case::floor(&empty, client_if, udp_flow(0)),
        Case::new(
            name(1),
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fixed(udp_flow(0)),
        ),
    ];
    for flows in MANY_FLOWS {
        cases.push(Case::new(
            name(flows),
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Cycle {
                order: shuffled(flows, &mut seed),
                next: 0,
                frame: udp_flow,
            },
        ));
    }
    for case in &mut cases[1..] {
        case.verdicts = Some(Rc::clone(&loaded.verdicts));
    }
    measure_rounds(&mut cases, plan, stop)?;
    Ok(Measured::from(&cases))
}

/// `0..n` in a random order (Fisher-Yates over xorshift64*, seeded by `seed`).
fn shuffled(n: u32, seed: &mut u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    for i in (1..v.len()).rev() {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffled_is_a_permutation_in_another_order() {
        let mut seed = 1;
        let v = shuffled(1000, &mut seed);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        let in_place = v
            .iter()
            .enumerate()
            .filter(|&(i, &x)| i as u32 == x)
            .count();
        assert!(in_place < 20, "{in_place} of 1000 left in place");
    }
}
