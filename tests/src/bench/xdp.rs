//! Per-packet cost of the XDP program through BPF_PROG_TEST_RUN, the floor of an empty XDP
//! program measured the same way, new flows per second with a full connection table, and
//! the kernel memory of the maps at large connection-table sizes.
//!
//! Per-packet cost is measured two ways. In bursts: `repeat` runs per test run behind a
//! [`Replay`] wrapper that restores the frame before each run (with `repeat > 1` this
//! kernel feeds run N the output of run N-1); a sample is the kernel's mean over the
//! runs. One at a time: a single run per test run with the original frame; a sample is
//! that run's `duration`. New flows are only measured one at a time.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{maps::Map, maps::MapData, programs::Xdp, Ebpf, EbpfLoader};
use balancer::{agent::EBPF_OBJECT, balancer::Balancer, config, maps::AyaMaps};
use balancer_common::{map_names, CONN_TABLE_SIZE, PROGRAM_NAME};
use balancer_tests::{
    agent::web_and_dns,
    frame::{self, Spec, L4},
    netns::Netns,
    util::TempDir,
    CLIENT_ADDR, HTTP_PORT, LB_BACKEND_ADDR, UDP_PORT, VIP,
};
use balancer_wire::{tcp::Flags, MacAddr};

use super::replay::Replay;
use super::stats::{summarize, Summary};
use super::{perf, Stop};

pub const XDP_PASS: u32 = 2;
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
}

// ---------------------------------------------------------------------------------------
// The bpf(2) syscall for the empty program and for every test run.
// ---------------------------------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (linux/bpf.h), up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `test` part of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly sized `#[repr(C)]` prefix of `union bpf_attr`;
    // every pointer inside it points to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads hand-assembled XDP instructions with a raw `BPF_PROG_LOAD`, for the same attach
/// type as the balancer (so that either may sit in a prog array the other uses).
pub(super) fn load_xdp(name: &[u8], insns: &[u64]) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name[..n]);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(first) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 1 << 16];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim_end();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            match again {
                Ok(fd) => fd,
                Err(_) => bail!(
                    "BPF_PROG_LOAD: {first}; verifier log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ),
            }
        }
    };
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The smallest XDP program: `r0 = XDP_PASS; exit`, loaded with a raw `BPF_PROG_LOAD`.
pub struct EmptyXdp {
    fd: OwnedFd,
}

impl EmptyXdp {
    pub fn load() -> Result<EmptyXdp> {
        // b7 00 00 00 02 00 00 00  (mov64 r0, 2)   95 00 00 00 00 00 00 00  (exit)
        let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
        let fd = load_xdp(b"bench_pass", &insns).context("loading the empty XDP program")?;
        Ok(EmptyXdp { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The `link_create` part of `union bpf_attr` (linux/bpf.h), for XDP.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// An XDP program attached (driver mode) to an interface through a BPF link; closing the
/// link detaches it.
pub struct XdpLink {
    _fd: OwnedFd,
}

/// Attaches `prog_fd` to `ifname` of the calling thread's network namespace.
pub fn attach_xdp(prog_fd: RawFd, ifname: &str) -> Result<XdpLink> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog_fd as u32,
        target_ifindex: ifindex(ifname)?,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..LinkCreateAttr::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)
        .with_context(|| format!("attaching an XDP program to {ifname} (BPF_LINK_CREATE)"))?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    Ok(XdpLink { _fd: fd })
}

/// What one test run returned.
#[derive(Clone, Copy, Debug)]
pub struct RunOut {
    pub retval: u32,
    pub duration_ns: u32,
    pub size_out: u32,
}

/// One `BPF_PROG_TEST_RUN` with `repeat = 1`.
pub fn test_run(prog_fd: RawFd, data: &[u8], out: &mut [u8], ctx: &[u8]) -> io::Result<RunOut> {
    test_run_repeat(prog_fd, data, out, ctx, 1)
}

/// One `BPF_PROG_TEST_RUN` of `repeat` runs; `duration_ns` is their mean.
pub(super) fn test_run_repeat(
    prog_fd: RawFd,
    data: &[u8],
    out: &mut [u8],
    ctx: &[u8],
    repeat: u32,
) -> io::Result<RunOut> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        data_size_out: out.len() as u32,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(RunOut {
        retval: attr.retval,
        duration_ns: attr.duration,
        size_out: attr.data_size_out,
    })
}

/// `struct xdp_md` for a frame of `len` bytes received on `ingress`.
pub(super) fn xdp_ctx(len: usize, ingress: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    [0, len as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|v: &u32| v.to_ne_bytes())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The namespace: routes and permanent neighbours so that every FIB lookup succeeds.
// ---------------------------------------------------------------------------------------

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 11 + i as u8)
}

fn backend_mac(i: usize) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0x02, 0x11 + i as u8])
}

fn mac_text(m: &MacAddr) -> String {
    m.to_string()
}

/// A namespace like the packet fixtures' one: the balancer's two interfaces with fixed
/// MACs, both subnets, forwarding on, and permanent neighbour entries for the client and
/// every backend.
pub fn bench_namespace() -> Result<Netns> {
    let ns = Netns::unique("bx").context("creating the XDP bench namespace")?;
    let tmp = TempDir::new("blt-bench-ip")?;
    let mut batch = vec![
        "link set lo up".to_string(),
        format!("link add {CLIENT_IF} type veth peer name {CLIENT_IF}-p"),
        format!("link add {BACKEND_IF} type veth peer name {BACKEND_IF}-p"),
        format!("link set {CLIENT_IF} address {}", mac_text(&LB_CLIENT_MAC)),
        format!(
            "link set {BACKEND_IF} address {}",
            mac_text(&LB_BACKEND_MAC)
        ),
        format!("addr add 10.0.1.1/24 dev {CLIENT_IF}"),
        format!("addr add {SNAT}/24 dev {BACKEND_IF}"),
    ];
    for dev in [CLIENT_IF, BACKEND_IF] {
        batch.push(format!("link set {dev} up"));
        batch.push(format!("link set {dev}-p up"));
    }
    batch.push(format!(
        "neigh replace {CLIENT} lladdr {} dev {CLIENT_IF} nud permanent",
        mac_text(&CLIENT_MAC)
    ));
    for i in 0..N_BACKENDS {
        batch.push(format!(
            "neigh replace {} lladdr {} dev {BACKEND_IF} nud permanent",
            backend_addr(i),
            mac_text(&backend_mac(i))
        ));
    }
    let file = tmp.path().join("setup.batch");
    std::fs::write(&file, batch.join("\n") + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    let file = file.to_string_lossy().into_owned();
    ns.ip(&["-batch", &file])
        .context("setting up the XDP bench namespace")?;
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ns.run(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
    Ok(ns)
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).expect("no NUL");
    // SAFETY: plain libc call with a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(i != 0, "interface {name} missing in the bench namespace");
    Ok(i)
}

/// The configuration of the bench: VIP "web" (TCP :80) and VIP "dns" (UDP :5300), Maglev,
/// each with the same 100 backends; SNAT from 10.0.2.1.
fn bench_config() -> Result<config::Config> {
    let backends: Vec<Ipv4Addr> = (0..N_BACKENDS).map(backend_addr).collect();
    let text = format!(
        "[agent]\ninterfaces = [\"{CLIENT_IF}\", \"{BACKEND_IF}\"]\n\n\
         [nat]\nsource_address = \"{SNAT}\"\n\n{}",
        web_and_dns(&backends, "maglev")
    );
    config::parse(&text, "bench.toml").context("the bench configuration does not parse")
}

/// Loads the embedded XDP object, with `conns` entries in CONNS and NAT when given.
pub fn load(conns: Option<u32>) -> Result<Ebpf> {
    ensure!(
        !EBPF_OBJECT.is_empty(),
        "this bench binary was built without the XDP program: build it with \
         `cargo xtask bench` (BALANCER_EBPF_OBJ)"
    );
    let mut loader = EbpfLoader::new();
    if let Some(n) = conns {
        loader
            .map_max_entries(map_names::CONNS, n)
            .map_max_entries(map_names::NAT, n);
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the XDP object (maps)")?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .context("the XDP object has no program `balancer`")?
        .try_into()
        .context("`balancer` is not an XDP program")?;
    program
        .load()
        .context("the kernel refused the XDP program")?;
    Ok(ebpf)
}

fn program_fd(ebpf: &Ebpf) -> Result<RawFd> {
    let program: &Xdp = ebpf
        .program(PROGRAM_NAME)
        .context("no program `balancer`")?
        .try_into()?;
    Ok(program.fd()?.as_fd().as_raw_fd())
}

fn program_facts(ebpf: &Ebpf) -> Result<ProgramFacts> {
    let program: &Xdp = ebpf
        .program(PROGRAM_NAME)
        .context("no program `balancer`")?
        .try_into()?;
    let info = program.info()?;
    Ok(ProgramFacts {
        xlated_insns: info.size_translated().map(|bytes| bytes / 8),
        jited_bytes: info.size_jitted(),
        verified_insns: info.verified_instruction_count(),
    })
}

/// The loaded program with its maps filled by the agent's own `Balancer`.
struct Loaded {
    ebpf: Ebpf,
    // Keeps the maps the balancer took out of `ebpf` open.
    _lb: Balancer<AyaMaps>,
}

impl Loaded {
    fn new(conns: Option<u32>) -> Result<Loaded> {
        let mut ebpf = load(conns)?;
        let maps = AyaMaps::new(&mut ebpf).context("taking the program's maps")?;
        let lb = Balancer::from_config(maps, &bench_config()?)
            .context("filling the maps from the bench configuration")?;
        Ok(Loaded { ebpf, _lb: lb })
    }
}

// ---------------------------------------------------------------------------------------
// Frames.
// ---------------------------------------------------------------------------------------

fn tcp(sport: u16, flags: Flags, payload: usize) -> Spec {
    Spec {
        src_mac: CLIENT_MAC,
        dst_mac: LB_CLIENT_MAC,
        src: CLIENT,
        dst: VIP,
        sport,
        dport: HTTP_PORT,
        l4: L4::Tcp {
            flags,
            seq: if flags.contains(Flags::SYN) {
                1000
            } else {
                1001
            },
            ack: if flags.contains(Flags::ACK) { 5001 } else { 0 },
        },
        payload: vec![b'x'; payload],
        ..Spec::default()
    }
}

/// A SYN of a flow nobody has seen: flow `i` of the tuple space starting at `base`.
fn fresh_syn(base: Ipv4Addr, i: u32) -> Vec<u8> {
    let src = Ipv4Addr::from(u32::from(base) + i / 50_000);
    let sport = 10_000 + (i % 50_000) as u16;
    frame::build(&Spec {
        src,
        ..tcp(sport, Flags::SYN, 0)
    })
}

/// Where the frames of a case come from.
enum Frames {
    /// The same frame every run.
    Fixed(Vec<u8>),
    /// A SYN of a new flow every run.
    Fresh { base: Ipv4Addr, next: u32 },
}

struct Case {
    name: &'static str,
    fd: RawFd,
    ingress: u32,
    expect: u32,
    frames: Frames,
    /// Runs per test run (more than 1 only through a [`Replay`] wrapper).
    repeat: u32,
    samples: Vec<f64>,
    round_medians: Vec<f64>,
    unexpected: usize,
}

impl Case {
    fn new(name: &'static str, fd: RawFd, ingress: u32, expect: u32, frames: Frames) -> Case {
        Case {
            name,
            fd,
            ingress,
            expect,
            frames,
            repeat: 1,
            samples: Vec::new(),
            round_medians: Vec::new(),
            unexpected: 0,
        }
    }

    /// This case's `frame` through `replay`, `repeat` runs per test run (each sample is
    /// their mean).
    fn replayed(&self, replay: &Replay, frame: &[u8], repeat: u32) -> Case {
        Case {
            repeat,
            ..Case::new(
                self.name,
                replay.raw_fd(),
                self.ingress,
                self.expect,
                Frames::Fixed(frame.to_vec()),
            )
        }
    }

    /// `runs` test runs; returns their durations in ns.
    fn run(&mut self, runs: usize) -> Result<Vec<f64>> {
        let frames: Vec<Vec<u8>> = match &mut self.frames {
            Frames::Fixed(frame) => vec![frame.clone()],
            Frames::Fresh { base, next } => {
                let first = *next;
                *next += runs as u32;
                (first..first + runs as u32)
                    .map(|i| fresh_syn(*base, i))
                    .collect()
            }
        };
        let len = frames[0].len();
        let ctx = xdp_ctx(len, self.ingress);
        let mut out = vec![0u8; len + 256];
        let mut durations = Vec::with_capacity(runs);
        for i in 0..runs {
            let frame = &frames[i % frames.len()];
            let r = test_run_repeat(self.fd, frame, &mut out, &ctx, self.repeat)
                .with_context(|| format!("BPF_PROG_TEST_RUN ({})", self.name))?;
            if r.retval != self.expect {
                self.unexpected += 1;
            }
            durations.push(f64::from(r.duration_ns));
        }
        Ok(durations)
    }

    fn round(&mut self, runs: usize) -> Result<()> {
        let d = self.run(runs)?;
        self.round_medians.push(summarize(&d).p50);
        self.samples.extend(d);
        Ok(())
    }

    fn result(&self) -> CaseResult {
        CaseResult {
            name: self.name,
            verdict: verdict_name(self.expect),
            summary: summarize(&self.samples),
            round_medians: self.round_medians.clone(),
            unexpected: self.unexpected,
        }
    }
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "?",
    }
}

/// Runs one frame once and checks the verdict; returns the output frame.
fn once(fd: RawFd, frame: &[u8], ingress: u32, expect: u32, what: &str) -> Result<Vec<u8>> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = test_run(fd, frame, &mut out, &xdp_ctx(frame.len(), ingress))
        .with_context(|| format!("BPF_PROG_TEST_RUN ({what})"))?;
    if r.retval != expect {
        bail!(
            "{what}: verdict {} ({}), expected {}: is the FIB lookup failing?",
            r.retval,
            verdict_name(r.retval),
            verdict_name(expect)
        );
    }
    out.truncate(r.size_out as usize);
    Ok(out)
}

/// The CPU the per-packet runs are pinned to (the last of the two this bench needs).
const MEASURE_CPU: usize = 1;

/// Interleaves the cases round by round (so slow drifts of a shared machine hit all alike).
fn measure_rounds(cases: &mut [Case], plan: Plan, stop: &Stop) -> Result<()> {
    for case in cases.iter_mut() {
        case.run(plan.runs / 10 + 1)?; // warm-up, not recorded
        case.unexpected = 0;
    }
    for _ in 0..plan.rounds {
        stop.check()?;
        for case in cases.iter_mut() {
            case.round(plan.runs)?;
        }
    }
    Ok(())
}

/// Section 1: the per-packet cost of each path through the program with 1 TCP VIP and
/// 1 UDP VIP of 100 Maglev backends each, and of the empty program.
pub fn per_packet(plan: Plan, stop: &Stop) -> Result<PerPacket> {
    let ns = bench_namespace()?;
    let result = ns.in_thread(|| per_packet_in_ns(plan, stop))?;
    drop(ns);
    result
}

fn per_packet_in_ns(plan: Plan, stop: &Stop) -> Result<PerPacket> {
    // One CPU for every run, as a flow's packets have with RSS: the per-CPU caches
    // (flows, next hops) are then the ones warmed, and no run pays a migration.
    super::pin(0, MEASURE_CPU)?;
    let (client_if, backend_if) = (ifindex(CLIENT_IF)?, ifindex(BACKEND_IF)?);
    let loaded = Loaded::new(None)?;
    let fd = program_fd(&loaded.ebpf)?;
    let empty = EmptyXdp::load()?;

    // An established TCP flow: its SYN first, then ACKs with data.
    let syn = frame::build(&tcp(40_000, Flags::SYN, 0));
    let forwarded = once(
        fd,
        &syn,
        client_if,
        XDP_REDIRECT,
        "SYN of the established flow",
    )?;
    let fwd = frame::parse(&forwarded).map_err(|e| anyhow::anyhow!("forwarded SYN: {e}"))?;
    let ack = frame::build(&tcp(40_000, Flags::ACK, 64));
    once(
        fd,
        &ack,
        client_if,
        XDP_REDIRECT,
        "ACK of the established flow",
    )?;
    let backend = (0..N_BACKENDS)
        .find(|&i| backend_addr(i) == fwd.dst)
        .with_context(|| format!("SYN forwarded to {}, not a backend", fwd.dst))?;

    // Its reply, from the backend to the SNAT address and port.
    let reply = frame::build(&Spec {
        src_mac: backend_mac(backend),
        dst_mac: LB_BACKEND_MAC,
        src: fwd.dst,
        dst: fwd.src,
        sport: fwd.dport,
        dport: fwd.sport,
        l4: L4::Tcp {
            flags: Flags::ACK,
            seq: 5001,
            ack: 1065,
        },
        payload: vec![b'y'; 64],
        ..Spec::default()
    });
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

    let mut cases = vec![
        Case::new(
            "empty XDP program (floor)",
            empty.raw_fd(),
            client_if,
            XDP_PASS,
            Frames::Fixed(ack.clone()),
        ),
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
            "not for a VIP (XDP_PASS)",
            fd,
            client_if,
            XDP_PASS,
            Frames::Fixed(other),
        ),
    ];
    // The same fixed frames (not the SYNs: a replayed SYN is an established flow from its
    // second run on), each through its own replay wrapper, the floor included.
    let mut wrappers = Vec::new();
    let mut replayed = Vec::new();
    for case in &cases {
        let Frames::Fixed(frame) = &case.frames else {
            continue;
        };
        let replay = Replay::new(frame, case.fd)
            .with_context(|| format!("a replay wrapper for {}", case.name))?;
        replayed.push(case.replayed(&replay, frame, REPEAT));
        wrappers.push(replay);
    }
    let replay_plan = Plan {
        rounds: plan.rounds,
        runs: (plan.runs / 50).max(4),
    };
    measure_rounds(&mut cases, plan, stop)?;
    measure_rounds(&mut replayed, replay_plan, stop)?;
    Ok(PerPacket {
        plan,
        single: Measured::from(&cases),
        replayed: Measured::from(&replayed),
        repeat: REPEAT,
        replay_plan,
        program: program_facts(&loaded.ebpf)?,
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
    let ns = bench_namespace()?;
    let tmp = TempDir::new("blt-bench-perf")?;
    let result = ns.in_thread(|| profile_in_ns(secs, tmp.path(), stop))?;
    drop(ns);
    result
}

fn profile_in_ns(secs: u64, dir: &std::path::Path, stop: &Stop) -> Result<Profile> {
    let client_if = ifindex(CLIENT_IF)?;
    let loaded = Loaded::new(None)?;
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
    let ns = bench_namespace()?;
    let result = ns.in_thread(|| full_table_in_ns(plan, stop))?;
    drop(ns);
    result
}

fn full_table_in_ns(plan: Plan, stop: &Stop) -> Result<FullTable> {
    let client_if = ifindex(CLIENT_IF)?;
    let entries = FULL_TABLE_ENTRIES;
    let loaded = Loaded::new(Some(entries))?;
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
        Case::new(
            "empty XDP program (floor)",
            empty.raw_fd(),
            client_if,
            XDP_PASS,
            Frames::Fixed(frame::build(&tcp(40_000, Flags::ACK, 64))),
        ),
        Case::new(
            "TCP SYN, new flow, full table (LRU eviction)",
            fd,
            client_if,
            XDP_REDIRECT,
            Frames::Fresh {
                base: Ipv4Addr::new(10, 64, 0, 0),
                next: 0,
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
