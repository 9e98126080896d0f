//! Developer tasks for balancer: `cargo xtask setup | build-ebpf | build | test | demo | bench | fuzz | soak | package`.

/// Prints a visible progress line: `[xtask] ...`.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[xtask] {}", format_args!($($arg)*))
    };
}

mod bench;
mod cmd;
mod ebpf;
mod package;
mod setup;
mod tasks;

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for balancer (run as `cargo xtask <command>`)")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: rust-src (nightly), bpf-linker, Debian packages, bpffs.
    Setup,
    /// Build the XDP program (balancer-ebpf) with nightly for bpfel-unknown-none.
    BuildEbpf {
        /// Cargo profile of the eBPF build.
        #[arg(long, value_enum, default_value_t = ebpf::Profile::Release)]
        profile: ebpf::Profile,
    },
    /// build-ebpf, then every binary of the workspace (stable).
    Build,
    /// As root: setup, build, then the workspace's tests one at a time.
    Test {
        /// Extra arguments for the test harness (after `--test-threads=1`), e.g. a name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// As root: setup, build, then run the demo.
    Demo {
        /// Arguments passed to the demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// As root: setup, release build, then the benchmark; writes results/bench.md and .png.
    Bench {
        /// Arguments passed to the bench (e.g. `--quick`, `--only xdp,maglev`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build the Debian package (release binary, systemd unit, example configuration, man
    /// pages, completions) into target/package/.
    Package,
    /// As root: setup, build, then the differential packet fuzzer's long run.
    Fuzz {
        /// Generated packets to check.
        #[arg(long, default_value_t = 10_000_000)]
        packets: u64,
        /// The generator's seed (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// As root: setup, build, then the soak: traffic through the VIPs while faults are
    /// injected; prints its report.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
    },
}

/// The workspace root (the parent of this crate).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
}

/// The host target directory (`target/` unless `CARGO_TARGET_DIR` says otherwise).
pub fn target_dir() -> PathBuf {
    let root = root();
    ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .iter()
        .find_map(|var| env::var_os(var).filter(|v| !v.is_empty()))
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// Whether the effective user is root, from the `Uid:` line of /proc/self/status.
pub fn is_root() -> Result<bool> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    Ok(euid == "0")
}

fn run(task: Task) -> Result<i32> {
    match task {
        Task::Setup => {
            setup::setup()?;
        }
        Task::BuildEbpf { profile } => {
            let toolchain = setup::ebpf_toolchain()?;
            ebpf::build(&toolchain, profile)?;
        }
        Task::Build => {
            let toolchain = setup::ebpf_toolchain()?;
            tasks::build(&toolchain)?;
        }
        Task::Test { args } => return tasks::test(&args),
        Task::Demo { args } => return tasks::demo(&args),
        Task::Bench { args } => return bench::bench(&args),
        Task::Fuzz { packets, seed } => return tasks::fuzz(packets, seed),
        Task::Soak { minutes } => return tasks::soak(minutes),
        Task::Package => {
            let toolchain = setup::ebpf_toolchain()?;
            package::package(&toolchain)?;
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)),
        Err(err) => {
            say!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
