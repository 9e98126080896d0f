//! Per-packet cost of the XDP program through `BPF_PROG_TEST_RUN`, the floor of an empty XDP
//! program measured the same way, new flows per second with a full connection table, and
//! the kernel memory of the maps at large connection-table sizes.
//!
//! Per-packet cost is measured two ways. In bursts: `repeat` runs per test run behind a
//! [`Replay`] wrapper that restores the frame before each run (with `repeat > 1` this
//! kernel feeds run N the output of run N-1); a sample is the kernel's mean over the
//! runs. One at a time: a single run per test run with the original frame; a sample is
//! that run's `duration`. New flows are only measured one at a time.

mod case;
mod flows;
mod memory;
mod setup;
pub mod syscall;

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use balancer_tests::{
    frame::{self, Spec, L4},
    util::TempDir,
    CLIENT_ADDR, HTTP_PORT, LB_BACKEND_ADDR, UDP_PORT,
};
use balancer_wire::{tcp::Flags, MacAddr};

pub use case::verdict_name;
use case::{measure_rounds, once, tcp, Case, Frames};
pub use flows::{MANY_FLOWS, PORT_RANGE as MANY_FLOWS_PORT_RANGE};
pub use memory::{default_entries, map_memory, MapMemory};
pub use setup::{backend_addr, backend_neighbours, ip_batch, load};
use setup::{
    backend_mac, in_bench_namespace, program_facts, program_fd, Loaded, DSR_PORT, GUE_PORT,
    IPIP_PORT,
};
pub use syscall::{attach_xdp, EmptyXdp, XdpLink};
use syscall::{ifindex, test_run, xdp_ctx};

use crate::replay::Replay;
use crate::stats::{summarize, Summary};
use crate::{perf, Stop};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = CLIENT_ADDR;
const SNAT: Ipv4Addr = LB_BACKEND_ADDR;
/// Backends of both VIPs: 10.0.2.11 ..= 10.0.2.110.
pub const N_BACKENDS: usize = 100;
const LB_CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x01]);
const LB_BACKEND_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x02, 0x01]);
const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x02]);
/// Interfaces of the bench namespace (client side, backend side).
const CLIENT_IF: &str = "bxc";
const BACKEND_IF: &str = "bxb";
/// Connection-table size for the "new flows with a full table" measurement.
pub const FULL_TABLE_ENTRIES: u32 = 65_536;
/// The CPU the per-packet runs are pinned to (the last of the two this bench needs).
pub const MEASURE_CPU: usize = 1;

/// How many runs, in how many interleaved rounds.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rounds: usize,
    pub runs: usize,
}

/// One measured case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: &'static str,
    pub verdict: &'static str,
    /// All samples of all rounds, in ns.
    pub summary: Summary,
    /// The median of each round, in ns.
    pub round_medians: Vec<f64>,
    /// Runs whose verdict was not the expected one.
    pub unexpected: usize,
}

/// What the kernel says about the loaded program.
#[derive(Clone, Debug, Default)]
pub struct ProgramFacts {
    pub xlated_insns: Option<u32>,
    pub jited_bytes: u32,
    pub verified_insns: Option<u32>,
}

/// Cases measured one way, with the floor measured the same way.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The empty program (`r0 = XDP_PASS; exit`).
    pub floor: CaseResult,
    pub cases: Vec<CaseResult>,
}

impl Measured {
    /// From measured cases, the floor first.
    fn from(cases: &[Case]) -> Measured {
        let mut results: Vec<CaseResult> = cases.iter().map(Case::result).collect();
        let floor = results.remove(0);
        Measured {
            floor,
            cases: results,
        }
    }

    /// The first case whose name starts with `prefix`.
    pub fn case(&self, prefix: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name.starts_with(prefix))
    }

    /// `case`'s cost net of the floor, per round: its median in the round minus the
    /// floor's median in the same round (measured moments apart).
    pub fn round_nets(&self, case: &CaseResult) -> Vec<f64> {
        case.round_medians
            .iter()
            .zip(&self.floor.round_medians)
            .map(|(c, f)| c - f)
            .collect()
    }

    /// `case`'s cost net of the floor: the median of [`Measured::round_nets`]. Pairing
    /// the case with the floor of its own round takes out the drifts of a shared machine,
    /// which move both alike within a round but differ between rounds (the difference of
    /// the all-samples medians mixes them in). Without rounds, the medians' difference.
    pub fn net(&self, case: &CaseResult) -> f64 {
        let nets = self.round_nets(case);
        if nets.is_empty() {
            case.summary.p50 - self.floor.summary.p50
        } else {
            summarize(&nets).p50
        }
    }
}

/// Results of [`per_packet`].
#[derive(Clone, Debug)]
pub struct PerPacket {
    pub plan: Plan,
    /// One run per test run, each with the frame as the syscall passes it.
    pub single: Measured,
    /// `repeat` runs per test run through a [`Replay`] wrapper (no new-flow case).
    pub replayed: Measured,
    pub repeat: u32,
    pub replay_plan: Plan,
    /// One run per test run, established UDP flows cycled in a random order over the
    /// working sets of [`MANY_FLOWS`] (and one flow), in a program of its own.
    pub many: Measured,
    pub program: ProgramFacts,
}

/// Results of [`full_table`].
#[derive(Clone, Debug)]
pub struct FullTable {
    pub entries: u32,
    /// SYNs with fresh tuples sent to fill the table first.
    pub filled_with: usize,
    pub fill_time: Duration,
    pub syn: CaseResult,
    pub floor: CaseResult,
}

impl FullTable {
    /// The SYN's cost net of the floor (medians of all samples).
    pub fn net(&self) -> f64 {
        self.syn.summary.p50 - self.floor.summary.p50
    }
}

/// Section 1: the per-packet cost of each path through the program with 1 TCP VIP and
/// 1 UDP VIP of 100 Maglev backends each, and of the empty program.
pub fn per_packet(plan: Plan, stop: &Stop) -> Result<PerPacket> {
    in_bench_namespace(|| per_packet_in_ns(plan, stop))
}

/// Establishes a flow through the direct-server-return VIP, the IPIP VIP and the GUE VIP
/// (each by its client's SYN and ACK, as the handshake's ACK establishes an untranslated
/// flow) and returns the ACK of each, to replay.
fn untranslated_flows(fd: RawFd, client_if: u32) -> Result<[Vec<u8>; 3]> {
    let mut acks = Vec::new();
    for (port, what) in [(DSR_PORT, "DSR"), (IPIP_PORT, "IPIP"), (GUE_PORT, "GUE")] {
        let segment = |flags, payload| {
            frame::build(&Spec {
                dport: port,
                ..tcp(40_003, flags, payload)
            })
        };
        let (syn, ack) = (segment(Flags::SYN, 0), segment(Flags::ACK, 64));
        once(
            fd,
            &syn,
            client_if,
            XDP_REDIRECT,
            &format!("SYN of the {what} flow"),
        )?;
        once(
            fd,
            &ack,
            client_if,
            XDP_REDIRECT,
            &format!("ACK of the {what} flow"),
        )?;
        acks.push(ack);
    }
    Ok(acks.try_into().expect("three flows"))
}

fn per_packet_in_ns(plan: Plan, stop: &Stop) -> Result<PerPacket> {
    // One CPU for every run, as a flow's packets have with RSS: the per-CPU caches
    // (flows, next hops) are then the ones warmed, and no run pays a migration.
    crate::pin(0, MEASURE_CPU)?;
    let (client_if, backend_if) = (ifindex(CLIENT_IF)?, ifindex(BACKEND_IF)?);
    let loaded = Loaded::new(None, None)?;
    let fd = program_fd(&loaded.ebpf)?;
    let empty = EmptyXdp::load()?;

    let (ack, fwd) = established_tcp(fd, client_if)?;
    // Its reply, from the backend to the SNAT address and port.
    let reply = from_backend(&fwd, Flags::ACK, (5001, 1065), 64)?;
    once(
        fd,
        &reply,
        backend_if,
        XDP_REDIRECT,
        "reply of the established flow",
    )?;

    // An established UDP flow.
    let udp = frame::build(&Spec {
        dport: UDP_PORT,
        l4: L4::Udp { checksum: true },
        payload: vec![b'q'; 18],
        ..tcp(40_001, Flags::default(), 0)
    });
    once(fd, &udp, client_if, XDP_REDIRECT, "first UDP datagram")?;

    // Not for a VIP: client to a backend address directly.
    let other = frame::build(&Spec {
        dst: backend_addr(0),
        ..tcp(40_002, Flags::ACK, 64)
    });
    once(fd, &other, client_if, XDP_PASS, "non-VIP packet")?;

    let [direct_ack, ipip_ack, gue_ack] = untranslated_flows(fd, client_if)?;

    let mut cases = vec![
        Case::floor(&empty, client_if, ack.clone()),
        Case::new(
            "TCP established (conn-table hit)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fixed(ack),
        ),
        Case::new(
            "TCP SYN, new flow (Maglev, SNAT port)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fresh {
                base: Ipv4Addr::new(10, 16, 0, 0),
                next: 0,
                dport: HTTP_PORT,
            },
        ),
        Case::new(
            "UDP established (conn-table hit)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fixed(udp),
        ),
        Case::new(
            "NAT reply (backend to client)",
            fd,
            backend_if,
            XDP_REDIRECT,
            Frames::Fixed(reply),
        ),
        Case::new(
            "DSR: TCP established (only MACs change)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fixed(direct_ack),
        ),
        Case::new(
            "DSR: TCP SYN, new flow (Maglev, no SNAT)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fresh {
                base: Ipv4Addr::new(10, 48, 0, 0),
                next: 0,
                dport: DSR_PORT,
            },
        ),
        Case::new(
            "IPIP tunnel: TCP established (encapsulated)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fixed(ipip_ack),
        ),
        Case::new(
            "GUE tunnel: TCP established (encapsulated)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fixed(gue_ack),
        ),
        Case::new(
            "IPIP tunnel: TCP SYN, new flow (Maglev, no SNAT)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fresh {
                base: Ipv4Addr::new(10, 96, 0, 0),
                next: 0,
                dport: IPIP_PORT,
            },
        ),
        Case::new(
            "not for a VIP (XDP_PASS)",
            fd,
            client_if,
            XDP_PASS,
            Frames::Fixed(other),
        ),
    ];
    for case in &mut cases[1..] {
        case.verdicts = Some(Rc::clone(&loaded.verdicts));
    }
    // The same fixed frames (not the SYNs: a replayed SYN is an established flow from its
    // second run on), each through its own replay wrapper, the floor included.
    let mut wrappers = Vec::new();
    let mut replayed = Vec::new();
    for case in &cases {
        let Frames::Fixed(frame) = &case.frames else {
            continue;
        };
        let wrapper = Replay::new(frame, case.fd)
            .with_context(|| format!("a replay wrapper for {}", case.name))?;
        replayed.push(case.replayed(&wrapper, frame, REPEAT));
        wrappers.push(wrapper);
    }
    let replay_plan = Plan {
        rounds: plan.rounds,
        runs: (plan.runs / 50).max(4),
    };
    measure_rounds(&mut cases, plan, stop)?;
    measure_rounds(&mut replayed, replay_plan, stop)?;
    let many = flows::many_flows(client_if, plan, stop)?;
    Ok(PerPacket {
        plan,
        single: Measured::from(&cases),
        replayed: Measured::from(&replayed),
        repeat: REPEAT,
        replay_plan,
        many,
        program: program_facts(&loaded.ebpf)?,
    })
}

/// A segment from the backend that `fwd` (a client's packet as forwarded) went to, back to
/// its SNAT address and port: `flags`, (sequence, acknowledgement) and `payload` bytes.
fn from_backend(
    fwd: &frame::Parsed,
    flags: Flags,
    (seq, ack): (u32, u32),
    payload: usize,
) -> Result<Vec<u8>> {
    let backend = (0..N_BACKENDS)
        .find(|&i| backend_addr(i) == fwd.dst)
        .with_context(|| format!("SYN forwarded to {}, not a backend", fwd.dst))?;
    Ok(frame::build(&Spec {
        src_mac: backend_mac(backend),
        dst_mac: LB_BACKEND_MAC,
        src: fwd.dst,
        dst: fwd.src,
        sport: fwd.dport,
        dport: fwd.sport,
        l4: L4::Tcp { flags, seq, ack },
        payload: vec![b'y'; payload],
        ..Spec::default()
    }))
}

/// An established TCP flow: its SYN first, then an ACK with data. Returns the ACK (what
/// the flow's packets look like) and the SYN as forwarded.
fn established_tcp(fd: RawFd, client_if: u32) -> Result<(Vec<u8>, frame::Parsed)> {
    let syn = frame::build(&tcp(40_000, Flags::SYN, 0));
    let forwarded = once(
        fd,
        &syn,
        client_if,
        XDP_REDIRECT,
        "SYN of the established flow",
    )?;
    let fwd = frame::parse(&forwarded).map_err(|e| anyhow::anyhow!("forwarded SYN: {e}"))?;
    // The backend's SYN-ACK (ISN 5000), which the client's ACK (5001) acknowledges: only
    // that handshake establishes the flow (a half-open one takes the slow path).
    let syn_ack = from_backend(&fwd, Flags::SYN | Flags::ACK, (5000, 1001), 0)?;
    let backend_if = ifindex(BACKEND_IF)?;
    once(
        fd,
        &syn_ack,
        backend_if,
        XDP_REDIRECT,
        "SYN-ACK of the established flow",
    )?;
    let ack = frame::build(&tcp(40_000, Flags::ACK, 64));
    once(
        fd,
        &ack,
        client_if,
        XDP_REDIRECT,
        "ACK of the established flow",
    )?;
    Ok((ack, fwd))
}

/// The per-packet cost of an established TCP flow's packet, in rounds that alternate
/// between `busy` off and on (so slow drifts of a shared machine hit both alike): whoever
/// watches `busy` loads the machine while it is set. Returns (quiet, busy) durations in ns.
pub fn established_tcp_while(
    plan: Plan,
    busy: &AtomicBool,
    stop: &Stop,
) -> Result<(Summary, Summary)> {
    in_bench_namespace(|| {
        crate::pin(0, MEASURE_CPU)?;
        let loaded = Loaded::new(None, None)?;
        let fd = program_fd(&loaded.ebpf)?;
        let client_if = ifindex(CLIENT_IF)?;
        let (ack, _) = established_tcp(fd, client_if)?;
        let mut case = Case::new(
            "TCP established (conn-table hit)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fixed(ack),
        );
        case.run(plan.runs / 10 + 1)?; // warm-up
        let (mut quiet, mut loaded_runs) = (Vec::new(), Vec::new());
        for round in 0..plan.rounds * 2 {
            stop.check()?;
            let on = round % 2 == 1;
            busy.store(on, Ordering::Relaxed);
            // Let the load start (or stop) before the round.
            std::thread::sleep(Duration::from_millis(50));
            let durations = case.run(plan.runs);
            busy.store(false, Ordering::Relaxed);
            if on { &mut loaded_runs } else { &mut quiet }.extend(durations?);
        }
        ensure!(
            case.unexpected == 0,
            "{} runs of the established flow's packet got another verdict",
            case.unexpected
        );
        Ok((summarize(&quiet), summarize(&loaded_runs)))
    })
}

/// Runs per test run through a replay wrapper. With `repeat > 1` this kernel swaps the
/// program into its XDP dispatcher (code patching) before the runs and out after: a cost
/// outside the timed loop that still slows the first runs after it. Measured per run,
/// it added about 40 ns at 100 repeats, 5 at 1000 and under 2 at 10000.
const REPEAT: u32 = 10_000;

/// A `perf` profile of the established-TCP case: where the time of a test run goes.
#[derive(Clone, Debug)]
pub struct Profile {
    pub runs: u64,
    /// Wall time per `BPF_PROG_TEST_RUN` syscall (user space to user space), in ns.
    pub wall_ns_per_run: f64,
    /// Median of the kernel-measured durations during the profile, in ns.
    pub duration_median: f64,
    /// Self time by symbol, largest first.
    pub top: Vec<perf::Sample>,
}

/// Profiles the established-TCP case with `perf record -p <this process>` for `secs`.
pub fn profile(secs: u64, stop: &Stop) -> Result<Profile> {
    ensure!(perf::available(), "perf is not installed");
    let tmp = TempDir::new("blt-bench-perf")?;
    in_bench_namespace(|| profile_in_ns(secs, tmp.path(), stop))
}

fn profile_in_ns(secs: u64, dir: &std::path::Path, stop: &Stop) -> Result<Profile> {
    let client_if = ifindex(CLIENT_IF)?;
    let loaded = Loaded::new(None, None)?;
    let fd = program_fd(&loaded.ebpf)?;
    let syn = frame::build(&tcp(40_000, Flags::SYN, 0));
    once(
        fd,
        &syn,
        client_if,
        XDP_REDIRECT,
        "SYN of the profiled flow",
    )?;
    let ack = frame::build(&tcp(40_000, Flags::ACK, 64));
    let mut rec = perf::record(perf::Scope::Pid(std::process::id()), secs, dir, "xdp")?;
    // perf needs a moment to attach; runs before that are simply not sampled.
    std::thread::sleep(Duration::from_millis(300));
    let ctx = xdp_ctx(ack.len(), client_if);
    let mut out = vec![0u8; ack.len() + 256];
    let mut durations = Vec::new();
    let started = Instant::now();
    let mut runs = 0u64;
    while !rec.done()? {
        for _ in 0..1000 {
            let r = test_run(fd, &ack, &mut out, &ctx)?;
            durations.push(f64::from(r.duration_ns));
        }
        runs += 1000;
        stop.check()?;
    }
    let wall = started.elapsed();
    Ok(Profile {
        runs,
        wall_ns_per_run: wall.as_nanos() as f64 / runs as f64,
        duration_median: summarize(&durations).p50,
        top: rec.finish(25, false)?,
    })
}

/// Section 3: SYNs of new flows while CONNS and NAT (65536 entries each) are full, so
/// that every new flow evicts the least recently used ones.
pub fn full_table(plan: Plan, stop: &Stop) -> Result<FullTable> {
    in_bench_namespace(|| full_table_in_ns(plan, stop))
}

fn full_table_in_ns(plan: Plan, stop: &Stop) -> Result<FullTable> {
    let client_if = ifindex(CLIENT_IF)?;
    let entries = FULL_TABLE_ENTRIES;
    let loaded = Loaded::new(Some(entries), None)?;
    let fd = program_fd(&loaded.ebpf)?;
    let empty = EmptyXdp::load()?;

    // Fill: more fresh flows than the table holds.
    let fill = entries as usize + entries as usize / 4;
    let started = Instant::now();
    let mut filler = Case::new(
        "fill",
        fd,
        client_if,
        XDP_REDIRECT,
        Frames::Fresh {
            base: Ipv4Addr::new(10, 32, 0, 0),
            next: 0,
            dport: HTTP_PORT,
        },
    );
    for _ in 0..fill.div_ceil(10_000) {
        stop.check()?;
        filler.run(10_000)?;
    }
    let fill_time = started.elapsed();
    ensure!(
        filler.unexpected == 0,
        "{} of {fill} SYNs filling the table were not redirected",
        filler.unexpected
    );

    let mut cases = vec![
        Case::floor(
            &empty,
            client_if,
            frame::build(&tcp(40_000, Flags::ACK, 64)),
        ),
        Case::new(
            "TCP SYN, new flow, full table (LRU eviction)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fresh {
                base: Ipv4Addr::new(10, 64, 0, 0),
                next: 0,
                dport: HTTP_PORT,
            },
        ),
    ];
    measure_rounds(&mut cases, plan, stop)?;
    Ok(FullTable {
        entries,
        filled_with: fill,
        fill_time,
        floor: cases[0].result(),
        syn: cases[1].result(),
    })
}
