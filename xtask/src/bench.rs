//! `cargo xtask bench`: set up, build (release) and run the `bench` binary, which writes
//! `results/bench.md` and `results/bench.png`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::ebpf::{self, Profile};
use crate::setup;
use crate::target_dir;
use crate::tasks::cargo;

/// `cargo xtask bench` as a whole (set-up, build, run) stays under this.
const TOTAL_BUDGET: Duration = Duration::from_mins(18);
/// Kept back from the bench's own budget for its last step, tear-down and the report.
const MARGIN: Duration = Duration::from_secs(90);

/// The chart's font (`bench` registers it for plotters), and the package that ships it.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_PACKAGE: &str = "fonts-dejavu-core";

/// Installs the chart's font when it is missing (a file, not a command: not in `PACKAGES`).
fn font() -> Result<()> {
    if Path::new(FONT).is_file() {
        say!("font ({FONT_PACKAGE}): present, skipping");
        return Ok(());
    }
    say!("font ({FONT_PACKAGE}): missing, installing...");
    cmd::run(Command::new("apt-get").arg("update")).context("apt-get update failed")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", FONT_PACKAGE]),
    )
    .with_context(|| format!("could not install {FONT_PACKAGE}"))?;
    if !Path::new(FONT).is_file() {
        bail!("{FONT_PACKAGE} was installed but {FONT} is still missing");
    }
    Ok(())
}

fn built(path: PathBuf) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("the build succeeded but {} does not exist", path.display());
    }
    Ok(path)
}

/// `cargo xtask bench [-- bench arguments]`: returns the bench's exit code.
pub fn bench(bench_args: &[OsString]) -> Result<i32> {
    let begun = Instant::now();
    if !crate::is_root()? {
        bail!(
            "`cargo xtask bench` must run as root: it creates network namespaces, attaches XDP \
             programs and runs BPF_PROG_TEST_RUN"
        );
    }
    let toolchain = setup::setup()?;
    setup::packages(setup::BENCH_PACKAGES)?;
    font()?;
    let object = ebpf::build(&toolchain, Profile::Release)?;
    say!("bench: building balancer, testsrv and bench (release)...");
    cmd::run(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "balancer-user",
                "--bin",
                "balancer",
                "-p",
                "balancer-tests",
                "--bin",
                "testsrv",
                "-p",
                "balancer-bench",
                "--bin",
                "bench",
            ])
            .env("BALANCER_EBPF_OBJ", &object),
    )?;
    let release = target_dir().join("release");
    let balancer = built(release.join("balancer"))?;
    let testsrv = built(release.join("testsrv"))?;
    let bench = built(release.join("bench"))?;

    // The bench's own `--out DIR` (relative to the repository, where it runs) replaces
    // `results/`.
    let out = bench_args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| bench_args.get(i + 1));
    let results = if let Some(dir) = out {
        crate::root().join(dir)
    } else {
        let results = crate::root().join("results");
        std::fs::create_dir_all(&results)
            .with_context(|| format!("cannot create {}", results.display()))?;
        results
    };
    let own_out: &[OsString] = if out.is_some() {
        &[]
    } else {
        &[OsString::from("--out"), results.clone().into_os_string()]
    };
    // What is left of the 18 minutes after set-up and build is the bench's budget.
    let mut budget = Vec::new();
    if !bench_args.iter().any(|a| a == "--budget") {
        let left = TOTAL_BUDGET.saturating_sub(begun.elapsed() + MARGIN);
        if left < Duration::from_mins(2) {
            say!(
                "bench: set-up and build took {} s; only {} s are left for the bench",
                begun.elapsed().as_secs(),
                left.as_secs()
            );
        }
        budget = vec![
            OsString::from("--budget"),
            OsString::from(left.as_secs().max(60).to_string()),
        ];
    }
    let started = Instant::now();
    let status = cmd::status(
        Command::new(&bench)
            .args(own_out)
            .args(&budget)
            .args(bench_args)
            .current_dir(crate::root())
            .env("BALANCER_BIN", &balancer)
            .env("BALANCER_TESTSRV_BIN", &testsrv)
            .env("BALANCER_EBPF_OBJ", &object),
    )?;
    let code = cmd::exit_code(status);
    say!(
        "bench: exited with code {code} after {} s",
        started.elapsed().as_secs()
    );
    for file in ["bench.md", "bench.png"] {
        let path = results.join(file);
        if code == 0 && path.is_file() {
            say!("bench: results in {}", path.display());
        }
    }
    Ok(code)
}
