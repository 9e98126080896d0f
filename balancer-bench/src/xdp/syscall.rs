//! The bpf(2) syscall as the bench uses it: hand-assembled programs loaded with a raw
//! `BPF_PROG_LOAD`, the empty program (the floor), XDP links, and `BPF_PROG_TEST_RUN`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{bail, ensure, Context as _, Result};

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

pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly sized `#[repr(C)]` prefix of `union bpf_attr`;
    // every pointer inside it points to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut::<T>(attr),
            size_of::<T>() as libc::c_uint,
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
pub fn load_xdp(name: &[u8], insns: &[u64]) -> Result<OwnedFd> {
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
pub fn test_run_repeat(
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
pub fn xdp_ctx(len: usize, ingress: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    [0, len as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|v: &u32| v.to_ne_bytes())
        .collect()
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).expect("no NUL");
    // SAFETY: plain libc call with a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(i != 0, "interface {name} missing in the bench namespace");
    Ok(i)
}
