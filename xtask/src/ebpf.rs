//! `cargo xtask build-ebpf`: build balancer-ebpf with nightly for bpfel-unknown-none.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::setup::EbpfToolchain;

const TARGET: &str = "bpfel-unknown-none";
/// The `[[bin]]` name in balancer-ebpf/Cargo.toml.
const OBJECT_NAME: &str = "balancer";
/// ELF machine number of eBPF objects.
const EM_BPF: u16 = 247;

/// Cargo profile for the eBPF build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    #[default]
    Release,
    Dev,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Dev => "debug",
        }
    }
}

/// Builds the XDP program and returns the path of its object file.
pub fn build(toolchain: &EbpfToolchain, profile: Profile) -> Result<PathBuf> {
    let crate_dir = crate::root().join("balancer-ebpf");
    say!(
        "build-ebpf: building {} ({} profile)...",
        crate_dir.display(),
        profile.dir()
    );
    let mut cargo = toolchain.nightly.command("cargo");
    cargo.current_dir(&crate_dir).arg("build");
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    cargo
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .env("PATH", toolchain.path_with_tools()?)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    cmd::run(&mut cargo).context("the eBPF program failed to build")?;

    let object = crate_dir
        .join("target")
        .join(TARGET)
        .join(profile.dir())
        .join(OBJECT_NAME);
    let bytes =
        fs::read(&object).with_context(|| format!("no eBPF object at {}", object.display()))?;
    let is_bpf_elf = bytes.len() >= 20
        && bytes.starts_with(b"\x7fELF")
        && u16::from_le_bytes([bytes[18], bytes[19]]) == EM_BPF;
    if !is_bpf_elf {
        bail!(
            "{} is not a little-endian eBPF ELF object",
            object.display()
        );
    }
    say!(
        "build-ebpf: object {} ({} bytes)",
        object.display(),
        bytes.len()
    );
    Ok(object)
}
