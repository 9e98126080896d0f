//! Replaying one frame many times in one `BPF_PROG_TEST_RUN`: a test-only XDP wrapper
//! writes the original frame back into the packet, then tail-calls the program under test.
//!
//! With `repeat > 1` this kernel runs each repeat on the previous repeat's output, so a
//! NAT rewrite would meet its own result. The wrapper puts the frame's bytes back first
//! (stores of immediates, no map), so every repeat sees the same input. The kernel then
//! times `repeat` runs back to back, as a driver runs XDP over a burst of packets, and
//! reports their mean: no syscall, copy or timer read between two runs. The same wrapper
//! in front of the empty program is the floor, so the wrapper's stores and tail call are
//! netted out.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, Result};

use crate::xdp::syscall::{bpf, load_xdp};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_FUNC_TAIL_CALL: i32 = 12;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_ABORTED: i32 = 0;

/// The `BPF_MAP_CREATE` part of `union bpf_attr`, up to `map_flags`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

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

// Instruction encoding (linux/bpf.h): opcode, dst/src registers, offset, immediate.
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const LDX_W: u8 = 0x61;
const STX_DW: u8 = 0x7b;
const ST_W: u8 = 0x62;
const ST_H: u8 = 0x6a;
const ST_B: u8 = 0x72;
const JGT_REG: u8 = 0x2d;
const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | src << 4) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `dst = imm` (64 bits; two instruction slots), or the map `fd` with `BPF_PSEUDO_MAP_FD`.
fn ld_imm64(dst: u8, src: u8, imm: u64) -> [u64; 2] {
    [
        insn(LD_IMM64, dst, src, 0, imm as u32 as i32),
        insn(0, 0, 0, 0, (imm >> 32) as u32 as i32),
    ]
}

/// The wrapper's instructions: restore `frame` at `data`, tail-call slot 0 of `prog_array`.
fn wrapper(frame: &[u8], prog_array: RawFd) -> Result<Vec<u64>> {
    let len = i32::try_from(frame.len()).context("frame too long")?;
    let (r0, r1, r2, r3, r4, r6) = (0, 1, 2, 3, 4, 6);
    let mut p = vec![
        insn(MOV64_REG, r6, r1, 0, 0),
        insn(LDX_W, r2, r1, 0, 0), // r2 = ctx->data
        insn(LDX_W, r3, r1, 4, 0), // r3 = ctx->data_end
        insn(MOV64_REG, r4, r2, 0, 0),
        insn(ADD64_IMM, r4, 0, 0, len),
    ];
    let bounds_check = p.len();
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
    // Reached when the frame does not fit or the tail call fails.
    let abort = p.len();
    p.push(insn(MOV64_IMM, r0, 0, 0, XDP_ABORTED));
    p.push(insn(EXIT, 0, 0, 0, 0));
    let jump = i16::try_from(abort - bounds_check - 1).context("frame too long")?;
    p[bounds_check] = insn(JGT_REG, r4, r3, jump, 0);
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
        let mut create = MapCreateAttr {
            map_type: BPF_MAP_TYPE_PROG_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..MapCreateAttr::default()
        };
        let fd = bpf(BPF_MAP_CREATE, &mut create).context("BPF_MAP_CREATE of a prog array")?;
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        let prog_array = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdp::syscall::{test_run_repeat, xdp_ctx, EmptyXdp};

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
        // 5 set-up, 1 check, 8 bytes (3 slots), 4 (1), 2 (1), 1 (1), 5 tail call, 2 abort.
        assert_eq!(p.len(), 5 + 1 + 3 + 1 + 1 + 1 + 5 + 2);
        let jgt = p[5];
        assert_eq!(jgt as u8, JGT_REG);
        let off = (jgt >> 16) as u16 as usize;
        assert_eq!(
            5 + 1 + off,
            p.len() - 2,
            "the check jumps to `r0 = XDP_ABORTED`"
        );
        let st_w = p[9];
        assert_eq!(st_w as u8, ST_W);
        assert_eq!(
            (st_w >> 32) as u32,
            0x0c0b_0a09,
            "bytes 9..=12, little-endian"
        );
    }
}
