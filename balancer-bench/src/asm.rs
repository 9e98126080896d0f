//! Hand-assembled BPF for the bench's own small programs (the replay wrapper, the sink that
//! counts and drops forwarded frames): instruction encoding, and map creation.

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, Result};

use crate::xdp::syscall::bpf;

pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
pub const BPF_FUNC_TAIL_CALL: i32 = 12;
pub const BPF_FUNC_XDP_ADJUST_HEAD: i32 = 44;
pub const BPF_PSEUDO_MAP_FD: u8 = 1;

// Instruction encoding (linux/bpf.h): opcode, dst/src registers, offset, immediate.
pub const MOV64_REG: u8 = 0xbf;
pub const MOV64_IMM: u8 = 0xb7;
pub const ADD64_IMM: u8 = 0x07;
pub const SUB64_REG: u8 = 0x1f;
pub const LDX_W: u8 = 0x61;
pub const LDX_DW: u8 = 0x79;
pub const STX_W: u8 = 0x63;
pub const STX_DW: u8 = 0x7b;
pub const ST_W: u8 = 0x62;
pub const ST_H: u8 = 0x6a;
pub const ST_B: u8 = 0x72;
pub const JGT_REG: u8 = 0x2d;
pub const JEQ_IMM: u8 = 0x15;
pub const JNE_IMM: u8 = 0x55;
pub const LD_IMM64: u8 = 0x18;
pub const CALL: u8 = 0x85;
pub const EXIT: u8 = 0x95;

pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | src << 4) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `dst = imm` (64 bits; two instruction slots), or the map `fd` with `BPF_PSEUDO_MAP_FD`.
pub fn ld_imm64(dst: u8, src: u8, imm: u64) -> [u64; 2] {
    [
        insn(LD_IMM64, dst, src, 0, imm as u32 as i32),
        insn(0, 0, 0, 0, (imm >> 32) as u32 as i32),
    ]
}

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

/// A new map of `map_type` with 4-byte keys.
pub fn create_map(map_type: u32, value_size: u32, max_entries: u32) -> Result<OwnedFd> {
    let mut create = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        ..MapCreateAttr::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut create).context("BPF_MAP_CREATE")?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A per-CPU array of 5 `u64` verdict counters, as `replay::VerdictCounters` reads them.
pub fn verdict_counter_map() -> Result<OwnedFd> {
    create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 5).context("creating verdict counters")
}

/// The end of a program that counts its verdict like the balancer: adds one to
/// `counters[r7]` (a per-CPU array of `u64`, `r7` a `balancer_common::stat` index) and
/// returns `r8` (the verdict).
pub fn count_and_return(counters: RawFd) -> Vec<u64> {
    let (r0, r1, r2, r7, r8, r10) = (0, 1, 2, 7, 8, 10);
    let mut p = vec![insn(STX_W, r10, r7, -4, 0)];
    p.extend(ld_imm64(r1, BPF_PSEUDO_MAP_FD, counters as u64));
    p.extend([
        insn(MOV64_REG, r2, r10, 0, 0),
        insn(ADD64_IMM, r2, 0, 0, -4),
        insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, r0, 0, 3, 0), // no counter: return
        insn(LDX_DW, r1, r0, 0, 0),
        insn(ADD64_IMM, r1, 0, 0, 1),
        insn(STX_DW, r0, r1, 0, 0),
        insn(MOV64_REG, r0, r8, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    p
}
