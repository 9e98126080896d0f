//! `cargo xtask package`: a Debian package of the release `balancer` binary with its systemd
//! unit, an example configuration (a conffile), man pages and shell completions, built
//! with `dpkg-deb --build` (no cargo-deb, no network). `cargo xtask test` assembles the
//! same package around the debug binary for the tests that install it.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;
use crate::ebpf::{self, Profile};
use crate::setup::EbpfToolchain;
use crate::tasks::cargo;

const NAME: &str = "balancer";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The example configuration, installed as a conffile.
const CONFFILE: &str = "/etc/balancer/balancer.toml";

/// `cargo xtask package`: builds the release binary, then the package; returns its path.
pub fn package(toolchain: &EbpfToolchain) -> Result<PathBuf> {
    let object = ebpf::build(toolchain, Profile::Release)?;
    say!("package: release build of balancer...");
    cmd::run(
        cargo()
            .args(["build", "--release", "-p", "balancer-user", "--bin", NAME])
            .env("BALANCER_EBPF_OBJ", &object),
    )?;
    let target = crate::target_dir();
    let deb = assemble(&target.join("release").join(NAME), &target.join("package"))?;
    say!("package: {}", deb.display());
    Ok(deb)
}

/// Lays the package's tree out under `out/root` around `binary` and builds
/// `out/balancer_VERSION_ARCH.deb`; returns its path.
pub fn assemble(binary: &Path, out: &Path) -> Result<PathBuf> {
    let root = out.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    let contrib = crate::root().join("contrib");
    let sbin = root.join("usr/sbin").join(NAME);
    copy(binary, &sbin, 0o755)?;
    // Debug info is most of the binary; a package ships without it.
    cmd::run(Command::new("strip").arg("--strip-debug").arg(&sbin))?;
    copy(
        &contrib.join("systemd/balancer.service"),
        &root.join("lib/systemd/system/balancer.service"),
        0o644,
    )?;
    copy(
        &contrib.join("balancer.toml"),
        &root.join(CONFFILE.trim_start_matches('/')),
        0o644,
    )?;
    // Man pages and completions come from the binary's own clap definitions.
    let man = root.join("usr/share/man/man8");
    mkdir(&man)?;
    cmd::capture(Command::new(&sbin).arg("man").arg(&man))?;
    let pages = fs::read_dir(&man)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    cmd::capture(Command::new("gzip").arg("-9n").args(&pages))?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/balancer"),
        ("zsh", "usr/share/zsh/vendor-completions/_balancer"),
    ] {
        let script = cmd::capture(Command::new(&sbin).args(["completions", shell]))?;
        write(&root.join(path), &script, 0o644)?;
    }
    write(
        &root.join("usr/share/doc/balancer/copyright"),
        "balancer: an XDP load balancer.\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    control(&root)?;
    let deb = out.join(format!("{NAME}_{VERSION}_{}.deb", architecture()?));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// DEBIAN/: control, conffiles, and the maintainer scripts (systemd is told of the unit;
/// the service is not started: its configuration needs editing first).
fn control(root: &Path) -> Result<()> {
    let debian = root.join("DEBIAN");
    let installed_kib = cmd::capture(Command::new("du").args(["-sk"]).arg(root))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_owned();
    write(
        &debian.join("control"),
        &format!(
            "Package: {NAME}\nVersion: {VERSION}\nArchitecture: {}\nMaintainer: balancer \
             developers <balancer@localhost>\nInstalled-Size: {installed_kib}\nDepends: libc6\n\
             Section: net\nPriority: optional\nDescription: XDP layer-4 load balancer: agent \
             and CLI\n Forwards a VIP's TCP and UDP flows to backends from an XDP program,\n \
             with health checks, VRRP, an HTTP proxy mode, Prometheus metrics and a stats \
             page.\n",
            architecture()?
        ),
        0o644,
    )?;
    write(&debian.join("conffiles"), &format!("{CONFFILE}\n"), 0o644)?;
    let systemd = "if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    write(
        &debian.join("postinst"),
        &format!("#!/bin/sh\nset -e\n{systemd}"),
        0o755,
    )?;
    write(
        &debian.join("prerm"),
        "#!/bin/sh\nset -e\nif [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n    \
         systemctl stop balancer.service || true\nfi\n",
        0o755,
    )?;
    write(
        &debian.join("postrm"),
        &format!("#!/bin/sh\nset -e\n{systemd}"),
        0o755,
    )
}

fn architecture() -> Result<String> {
    Ok(
        cmd::capture(Command::new("dpkg").arg("--print-architecture"))?
            .trim()
            .to_owned(),
    )
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    mkdir(to.parent().expect("a file in a directory"))?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    mkdir(to.parent().expect("a file in a directory"))?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}
