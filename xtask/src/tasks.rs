//! `cargo xtask build | test | demo | fuzz | soak`: the host workspace on top of the eBPF object.

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd;
use crate::ebpf::{self, Profile};
use crate::setup::{self, EbpfToolchain};

/// What `build` produces.
pub struct Artifacts {
    /// The XDP object (embedded by balancer-user's build.rs).
    pub object: PathBuf,
    /// The `balancer` agent binary.
    pub balancer: PathBuf,
    /// The host target directory (`target/` unless `CARGO_TARGET_DIR` says otherwise).
    pub target_dir: PathBuf,
}

/// The stable cargo that runs xtask.
pub(crate) fn cargo() -> Command {
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    cargo.current_dir(crate::root());
    cargo
}

fn require_root(task: &str) -> Result<()> {
    if !crate::is_root()? {
        bail!(
            "`cargo xtask {task}` must run as root: it creates network namespaces and attaches \
             XDP programs"
        );
    }
    Ok(())
}

/// build-ebpf (release), then every binary of the host workspace, the bench (`balancer-bench`)
/// included (so a change that breaks it fails `cargo xtask test`, not only `cargo xtask bench`).
pub fn build(toolchain: &EbpfToolchain) -> Result<Artifacts> {
    let object = ebpf::build(toolchain, Profile::Release)?;
    say!("build: host workspace...");
    cmd::run(
        cargo()
            .args(["build", "--workspace", "--exclude", ebpf::PACKAGE, "--bins"])
            .env("BALANCER_EBPF_OBJ", &object),
    )?;
    let target_dir = crate::target_dir();
    let balancer = target_dir.join("debug/balancer");
    if !balancer.is_file() {
        bail!(
            "the build succeeded but {} does not exist (no `balancer` binary in the workspace?)",
            balancer.display()
        );
    }
    say!("build: {}", balancer.display());
    Ok(Artifacts {
        object,
        balancer,
        target_dir,
    })
}

/// `cargo xtask test`: returns cargo test's exit code.
pub fn test(harness_args: &[OsString]) -> Result<i32> {
    require_root("test")?;
    let toolchain = setup::setup()?;
    let built = build(&toolchain)?;
    // The package around the debug binary, for the tests that install it.
    let deb = crate::package::assemble(&built.balancer, &built.target_dir.join("debug/package"))?;
    say!("test: one test at a time (end-to-end tests each build network namespaces)");
    let status = cmd::status(
        cargo()
            .args([
                "test",
                // balancer-bench's unit tests included (the replay wrapper is loaded for real).
                "--workspace",
                "--exclude",
                ebpf::PACKAGE,
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .args(harness_args)
            .env("BALANCER_BIN", &built.balancer)
            .env("BALANCER_EBPF_OBJ", &built.object)
            .env("BALANCER_DEB", &deb),
    )?;
    let code = cmd::exit_code(status);
    say!("test: cargo test exited with code {code}");
    Ok(code)
}

/// `cargo xtask demo`: returns the demo's exit code.
pub fn demo(demo_args: &[OsString]) -> Result<i32> {
    run_bin("demo", demo_args)
}

/// `cargo xtask fuzz`: returns the fuzzer's exit code (non-zero on a finding).
pub fn fuzz(packets: u64, seed: Option<u64>) -> Result<i32> {
    let mut args: Vec<OsString> = vec!["--packets".into(), packets.to_string().into()];
    if let Some(seed) = seed {
        args.extend(["--seed".into(), seed.to_string().into()]);
    }
    run_bin("fuzz", &args)
}

/// `cargo xtask soak`: returns the soak's exit code (non-zero when a target is missed).
pub fn soak(minutes: u64) -> Result<i32> {
    run_bin("soak", &["--minutes".into(), minutes.to_string().into()])
}

/// As root: setup, build, then the tests crate's binary `name` with `args`, from the
/// workspace root, told where the agent and the eBPF object are; returns its exit code.
fn run_bin(name: &str, args: &[OsString]) -> Result<i32> {
    require_root(name)?;
    let toolchain = setup::setup()?;
    let built = build(&toolchain)?;
    let bin = built.target_dir.join("debug").join(name);
    if !bin.is_file() {
        bail!(
            "no {name} binary at {} (it is the `{name}` bin of the tests crate)",
            bin.display()
        );
    }
    let status = cmd::status(
        Command::new(&bin)
            .args(args)
            .current_dir(crate::root())
            .env("BALANCER_BIN", &built.balancer)
            .env("BALANCER_EBPF_OBJ", &built.object),
    )?;
    let code = cmd::exit_code(status);
    say!("{name}: exited with code {code}");
    Ok(code)
}
