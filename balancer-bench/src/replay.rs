//! Replaying one frame many times in one `BPF_PROG_TEST_RUN`: a test-only XDP wrapper
//! puts the packet back where and as it was, then tail-calls the program under test.
//!
//! With `repeat > 1` this kernel runs each repeat on the previous repeat's output, so a
//! NAT rewrite would meet its own result, and a program that grows the head (an
//! encapsulation) would start each repeat further into the headroom until
//! `bpf_xdp_adjust_head` fails. The wrapper first moves the start of the packet back to
//! where the frame began (one `bpf_xdp_adjust_head`, only when the head moved), then
//! writes the frame's bytes back (stores of immediates, no map), so every repeat sees the
//! same input. The kernel then times `repeat` runs back to back, as a driver runs XDP over
//! a burst of packets, and reports their mean: no syscall, copy or timer read between two
//! runs. The same wrapper in front of the empty program is the floor, so the wrapper's
//! stores and tail call are netted out.
//!
//! The kernel returns only the last run's verdict; [`VerdictCounters`] (the measured
//! program's own per-verdict counters) check that every run got the expected one.

use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use balancer_common::stat;

use crate::asm::{
    create_map, insn, ld_imm64, ADD64_IMM, BPF_FUNC_TAIL_CALL, BPF_FUNC_XDP_ADJUST_HEAD,
    BPF_MAP_TYPE_PROG_ARRAY, BPF_PSEUDO_MAP_FD, CALL, EXIT, JEQ_IMM, JGT_REG, JNE_IMM, LDX_W,
    MOV64_IMM, MOV64_REG, STX_DW, ST_B, ST_H, ST_W, SUB64_REG,
};
use crate::xdp::syscall::{bpf, load_xdp, test_run_repeat, RunOut};
use crate::xdp::{verdict_name, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const XDP_ABORTED: i32 = 0;

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The wrapper's instructions: move the packet's start back to where `frame` began,
/// restore `frame` there, tail-call slot 0 of `prog_array`.
///
/// Where the frame began is where `data_end` says, `frame.len()` bytes before it: the
/// measured program may move the head (`bpf_xdp_adjust_head`), not the tail. One that moves
/// the tail would see its head shifted run after run until a run fails, which the verdict
/// check ([`VerdictCounters`]) reports.
fn wrapper(frame: &[u8], prog_array: RawFd) -> Result<Vec<u64>> {
    let len = i32::try_from(frame.len()).context("frame too long")?;
    let (r0, r1, r2, r3, r4, r6) = (0, 1, 2, 3, 4, 6);
    let mut p = vec![
        insn(MOV64_REG, r6, r1, 0, 0),
        insn(LDX_W, r2, r1, 0, 0), // r2 = ctx->data
        insn(LDX_W, r3, r1, 4, 0), // r3 = ctx->data_end
        // r3 = (data_end - data) - len: how far the last run moved the head (a pointer
        // difference, which the verifier allows a privileged loader).
        insn(SUB64_REG, r3, r2, 0, 0),
        insn(ADD64_IMM, r3, 0, 0, -len),
        insn(JEQ_IMM, r3, 0, 4, 0), // unmoved: no helper call
        insn(MOV64_REG, r1, r6, 0, 0),
        insn(MOV64_REG, r2, r3, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_XDP_ADJUST_HEAD),
    ];
    let mut to_abort = vec![p.len()];
    p.push(0); // if r0 != 0 goto abort (patched below)
    p.extend([
        insn(LDX_W, r2, r6, 0, 0), // the helper invalidated the packet pointers
        insn(LDX_W, r3, r6, 4, 0),
        insn(MOV64_REG, r4, r2, 0, 0),
        insn(ADD64_IMM, r4, 0, 0, len),
    ]);
    to_abort.push(p.len());
    p.push(0); // if r4 > r3 goto abort (patched below)
    let mut off = 0usize;
    while off < frame.len() {
        let at = i16::try_from(off).context("frame too long")?;
        let rest = &frame[off..];
        if rest.len() >= 8 {
            let word = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            p.extend(ld_imm64(r4, 0, word));
            p.push(insn(STX_DW, r2, r4, at, 0));
            off += 8;
        } else if rest.len() >= 4 {
            let word = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            p.push(insn(ST_W, r2, 0, at, word as i32));
            off += 4;
        } else if rest.len() >= 2 {
            let half = u16::from_le_bytes(rest[..2].try_into().expect("2 bytes"));
            p.push(insn(ST_H, r2, 0, at, i32::from(half)));
            off += 2;
        } else {
            p.push(insn(ST_B, r2, 0, at, i32::from(rest[0])));
            off += 1;
        }
    }
    p.push(insn(MOV64_REG, r1, r6, 0, 0));
    p.extend(ld_imm64(r2, BPF_PSEUDO_MAP_FD, prog_array as u64));
    p.push(insn(MOV64_IMM, r3, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, BPF_FUNC_TAIL_CALL));
    // Reached when the head cannot move back, the frame does not fit or the tail call fails.
    let abort = p.len();
    p.push(insn(MOV64_IMM, r0, 0, 0, XDP_ABORTED));
    p.push(insn(EXIT, 0, 0, 0, 0));
    let jump = |from: usize| i16::try_from(abort - from - 1).context("frame too long");
    p[to_abort[0]] = insn(JNE_IMM, r0, 0, jump(to_abort[0])?, 0);
    p[to_abort[1]] = insn(JGT_REG, r4, r3, jump(to_abort[1])?, 0);
    Ok(p)
}

/// A loaded wrapper that replays one frame into one program.
pub struct Replay {
    prog: OwnedFd,
    // Must stay open: when the last user reference to a prog array closes, the kernel
    // empties it, and every tail call would then fail (XDP_ABORTED).
    _prog_array: OwnedFd,
}

impl Replay {
    /// Loads a wrapper that restores `frame` and tail-calls `target` (an XDP program).
    pub fn new(frame: &[u8], target: RawFd) -> Result<Replay> {
        let prog_array = create_map(BPF_MAP_TYPE_PROG_ARRAY, 4, 1).context("a prog array")?;
        // Loaded first: the first program to use a prog array sets what may be put in it.
        let insns = wrapper(frame, prog_array.as_raw_fd())?;
        let prog = load_xdp(b"bench_replay", &insns).context("loading the replay wrapper")?;
        let (key, value) = (0u32, target as u32);
        let mut update = MapElemAttr {
            map_fd: prog_array.as_raw_fd() as u32,
            key: &raw const key as u64,
            value: &raw const value as u64,
            ..MapElemAttr::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut update)
            .context("putting the measured program into the replay wrapper's prog array")?;
        Ok(Replay {
            prog,
            _prog_array: prog_array,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.prog.as_raw_fd()
    }
}

/// The measured program's own verdict counters: a per-CPU array of `u64` indexed like
/// `balancer_common::stat` (`XDP_PASS`, `XDP_TX`, `XDP_REDIRECT`, `XDP_DROP`, then
/// `XDP_ABORTED` for anything else), as the balancer's `GLOBAL_STATS` begins. Read before
/// and after a burst, they tell whether every run of it got the expected verdict, where
/// the kernel returns only the last run's.
pub struct VerdictCounters {
    map: PerCpuArray<MapData, u64>,
}

impl VerdictCounters {
    /// Counters in the map `fd` refers to.
    pub fn from_fd(fd: OwnedFd) -> Result<VerdictCounters> {
        let data = MapData::from_fd(fd).context("opening the verdict counters")?;
        let map = PerCpuArray::try_from(Map::from_map_data(data)?)
            .context("the verdict counters are not a per-CPU array of u64")?;
        Ok(VerdictCounters { map })
    }

    /// Runs so far whose verdict was `verdict` (an XDP action), over all CPUs.
    pub fn count(&self, verdict: u32) -> Result<u64> {
        let index = match verdict {
            XDP_PASS => stat::XDP_PASS,
            XDP_TX => stat::XDP_TX,
            XDP_REDIRECT => stat::XDP_REDIRECT,
            XDP_DROP => stat::XDP_DROP,
            _ => stat::XDP_ABORTED,
        };
        let per_cpu = self
            .map
            .get(&index, 0)
            .context("reading the verdict counters")?;
        Ok(per_cpu.iter().sum())
    }

    /// One test run of `repeat` runs of `prog_fd` (a wrapper in front of the program that
    /// counts here), failing unless every run's verdict was `expect`.
    pub fn checked_run(
        &self,
        prog_fd: RawFd,
        (data, out, ctx): (&[u8], &mut [u8], &[u8]),
        repeat: u32,
        expect: u32,
    ) -> Result<RunOut> {
        let before = self.count(expect)?;
        let r = test_run_repeat(prog_fd, data, out, ctx, repeat).context("BPF_PROG_TEST_RUN")?;
        let got = self.count(expect)? - before;
        ensure!(
            got == u64::from(repeat) && r.retval == expect,
            "{} of {repeat} runs got verdict {} (the last one {}): the measured program \
             behaves differently from one run to the next",
            u64::from(repeat).saturating_sub(got),
            verdict_name(expect),
            verdict_name(r.retval)
        );
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::{count_and_return, verdict_counter_map};
    use crate::xdp::syscall::{xdp_ctx, EmptyXdp};

    /// Loads the wrapper in front of the empty program (needs root, as `cargo xtask test`
    /// runs): from a zeroed packet, three runs leave the frame and `XDP_PASS`.
    #[test]
    fn wrapper_restores_the_frame_and_tail_calls() {
        let frame: Vec<u8> = (0..77u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let empty = EmptyXdp::load().expect("loading the empty program (root?)");
        let replay = Replay::new(&frame, empty.raw_fd()).expect("loading the wrapper");
        let zeros = vec![0u8; frame.len()];
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = xdp_ctx(frame.len(), 0);
        let r = test_run_repeat(replay.raw_fd(), &zeros, &mut out, &ctx, 3).expect("test run");
        assert_eq!(
            r.retval, 2,
            "the empty program's XDP_PASS through the tail call"
        );
        assert_eq!(
            &out[..r.size_out as usize],
            &frame[..],
            "the restored frame"
        );
    }

    #[test]
    fn wrapper_stores_every_byte_and_jumps_to_the_abort() {
        let frame: Vec<u8> = (1..=15).collect();
        let p = wrapper(&frame, 7).unwrap();
        // 9 head reset, 1 check, 4 reload, 1 check, 8 bytes (3 slots), 4 (1), 2 (1), 1 (1),
        // 5 tail call, 2 abort.
        assert_eq!(p.len(), 9 + 1 + 4 + 1 + 3 + 1 + 1 + 1 + 5 + 2);
        let abort = p.len() - 2;
        for (at, code) in [(9, JNE_IMM), (14, JGT_REG)] {
            assert_eq!(p[at] as u8, code, "instruction {at}");
            let off = (p[at] >> 16) as u16 as usize;
            assert_eq!(
                at + 1 + off,
                abort,
                "instruction {at} jumps to `r0 = XDP_ABORTED`"
            );
        }
        let skip = p[5];
        assert_eq!(skip as u8, JEQ_IMM);
        assert_eq!(
            5 + 1 + (skip >> 16) as u16 as usize,
            10,
            "an unmoved head skips the helper call to the reload"
        );
        assert_eq!(
            (p[4] >> 32) as u32 as i32,
            -15,
            "the head moved by (data_end - data) - len"
        );
        let st_w = p[18];
        assert_eq!(st_w as u8, ST_W);
        assert_eq!(
            (st_w >> 32) as u32,
            0x0c0b_0a09,
            "bytes 9..=12, little-endian"
        );
    }

    const GROWTH: i32 = 28;
    const MARKER: u32 = 0x1e1e_1e1e;

    /// An encapsulation in miniature: grows the head by [`GROWTH`] bytes and writes
    /// [`MARKER`] there (`XDP_TX`), or `XDP_DROP` when the headroom is gone; counts its
    /// verdict in `counters` like the balancer.
    fn head_grower(counters: RawFd) -> OwnedFd {
        let (r0, r2, r3, r4, r6, r7, r8) = (0, 2, 3, 4, 6, 7, 8);
        let mut p = vec![
            insn(MOV64_REG, r6, 1, 0, 0),
            insn(MOV64_IMM, r2, 0, 0, -GROWTH),
            insn(CALL, 0, 0, 0, BPF_FUNC_XDP_ADJUST_HEAD),
            insn(MOV64_IMM, r7, 0, 0, stat::XDP_DROP as i32),
            insn(MOV64_IMM, r8, 0, 0, XDP_DROP as i32),
            insn(JNE_IMM, r0, 0, 8, 0), // to the count
            insn(LDX_W, r2, r6, 0, 0),
            insn(LDX_W, r3, r6, 4, 0),
            insn(MOV64_REG, r4, r2, 0, 0),
            insn(ADD64_IMM, r4, 0, 0, 4),
            insn(JGT_REG, r4, r3, 3, 0), // to the count
            insn(ST_W, r2, 0, 0, MARKER as i32),
            insn(MOV64_IMM, r7, 0, 0, stat::XDP_TX as i32),
            insn(MOV64_IMM, r8, 0, 0, XDP_TX as i32),
        ];
        p.extend(count_and_return(counters));
        load_xdp(b"bench_grow", &p).expect("loading the head-growing program")
    }

    fn grower_and_counters() -> (OwnedFd, VerdictCounters) {
        let map = verdict_counter_map().expect("the counters (root?)");
        let prog = head_grower(map.as_raw_fd());
        let counters = VerdictCounters::from_fd(map).expect("the counters");
        (prog, counters)
    }

    const RUNS: u32 = 1000;

    /// The control: run alone, the head-growing program runs out of headroom within a
    /// burst, and the check says so though the kernel's answer is one verdict.
    #[test]
    fn a_head_growing_program_alone_loses_its_verdict_and_the_check_says_so() {
        let (prog, counters) = grower_and_counters();
        let frame = vec![0xabu8; 64];
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = xdp_ctx(frame.len(), 0);
        let err = counters
            .checked_run(prog.as_raw_fd(), (&frame, &mut out, &ctx), RUNS, XDP_TX)
            .expect_err("the headroom runs out within the burst");
        assert!(
            format!("{err:#}").contains(&format!("of {RUNS} runs got verdict XDP_TX")),
            "{err:#}"
        );
        let drops = counters.count(XDP_DROP).unwrap();
        assert!(
            drops > 900,
            "{drops} drops: only the first few runs find headroom"
        );
    }

    /// Behind the wrapper, every run of a burst starts where the frame began: the
    /// head-growing program keeps its verdict and output over all of them.
    #[test]
    fn the_wrapper_resets_the_head_so_every_run_keeps_its_verdict() {
        let (prog, counters) = grower_and_counters();
        let frame: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(29) ^ 0x33).collect();
        let replay = Replay::new(&frame, prog.as_raw_fd()).expect("loading the wrapper");
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = xdp_ctx(frame.len(), 0);
        let r = counters
            .checked_run(replay.raw_fd(), (&frame, &mut out, &ctx), RUNS, XDP_TX)
            .expect("every run XDP_TX");
        assert_eq!(counters.count(XDP_TX).unwrap(), u64::from(RUNS));
        assert_eq!(counters.count(XDP_DROP).unwrap(), 0);
        let growth = GROWTH as usize;
        assert_eq!(
            r.size_out as usize,
            frame.len() + growth,
            "one growth, not {RUNS}"
        );
        assert_eq!(out[..4], MARKER.to_ne_bytes(), "the marker in the new head");
        assert_eq!(
            &out[growth..growth + frame.len()],
            &frame[..],
            "then the frame"
        );
    }
}
