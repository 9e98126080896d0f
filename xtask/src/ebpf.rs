//! `cargo xtask build-ebpf`: build balancer-ebpf with nightly for bpfel-unknown-none.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::setup::EbpfToolchain;

const TARGET: &str = "bpfel-unknown-none";
/// The package: a workspace member outside `default-members`, built only here.
pub const PACKAGE: &str = "balancer-ebpf";
/// The `[[bin]]` name in balancer-ebpf/Cargo.toml.
const OBJECT_NAME: &str = "balancer-xdp";
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
    /// The root Cargo.toml's profile for it, which is also its directory under the target's.
    fn name(self) -> &'static str {
        match self {
            Profile::Release => "bpf-release",
            Profile::Dev => "bpf-dev",
        }
    }
}

/// Builds the XDP program and returns the path of its object file.
pub fn build(toolchain: &EbpfToolchain, profile: Profile) -> Result<PathBuf> {
    say!(
        "build-ebpf: building {PACKAGE} ({} profile)...",
        profile.name()
    );
    // The host crates' target directory (the nightly cargo does not inherit
    // CARGO_TARGET_DIR): one place for every build of the workspace.
    let target_dir = crate::target_dir();
    let mut cargo = toolchain.nightly.command("cargo");
    cargo
        .current_dir(crate::root())
        .args(["build", "--package", PACKAGE, "--profile", profile.name()])
        .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("PATH", toolchain.path_with_tools()?)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    cmd::run(&mut cargo).context("the eBPF program failed to build")?;

    let object = target_dir
        .join(TARGET)
        .join(profile.name())
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
