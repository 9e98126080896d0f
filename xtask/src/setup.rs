//! `cargo xtask setup`: install what the build, tests and demo need, skipping what is present.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// The bpf-linker release that links with the nightly's LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_FEATURE: &str = "llvm-22";
/// Prefix of the nightly's own libLLVM (`libLLVM.so.22.1-rust-1.97.0-nightly`).
const NIGHTLY_LIBLLVM_PREFIX: &str = "libLLVM.so.22";
const NIGHTLY_LIBLLVM_SUFFIX: &str = "-nightly";

/// A command some task runs, and the Debian package that provides it.
pub struct Package {
    pub command: &'static str,
    pub package: &'static str,
}

/// Every Debian package the tasks need, by the command they provide. Add rows here.
pub const PACKAGES: &[Package] = &[
    Package {
        command: "ip",
        package: "iproute2",
    },
    Package {
        command: "ethtool",
        package: "ethtool",
    },
    Package {
        command: "sysctl",
        package: "procps",
    },
    Package {
        command: "curl",
        package: "curl",
    },
    // Health-check tests make a backend drop packets silently.
    Package {
        command: "nft",
        package: "nftables",
    },
    // VRRP tests: keepalived is the peer a balancer must interoperate with, and tcpdump
    // captures the adverts on the shared bridge.
    Package {
        command: "keepalived",
        package: "keepalived",
    },
    Package {
        command: "tcpdump",
        package: "tcpdump",
    },
    // etcd discovery: the `etcd-client` crate's build generates its protobuf code with
    // `protoc` (apt also installs its recommended libprotobuf-dev, whose well-known
    // `.proto` files that build imports), and the tests run a real etcd and etcdctl.
    Package {
        command: "protoc",
        package: "protobuf-compiler",
    },
    Package {
        command: "etcd",
        package: "etcd-server",
    },
    Package {
        command: "etcdctl",
        package: "etcd-client",
    },
    // ... and one over TLS, with certificates the test makes.
    Package {
        command: "openssl",
        package: "openssl",
    },
    // The stats page is tested in a real browser (headless, inside a test namespace).
    Package {
        command: "chromium",
        package: "chromium",
    },
    // The package's systemd unit is checked with `systemd-analyze verify`.
    Package {
        command: "systemd-analyze",
        package: "systemd",
    },
];

/// What only `cargo xtask bench` needs: the load generator, the backends and peers it
/// compares with, and perf (where the time goes).
pub const BENCH_PACKAGES: &[Package] = &[
    Package {
        command: "wrk",
        package: "wrk",
    },
    Package {
        command: "haproxy",
        package: "haproxy",
    },
    Package {
        command: "nginx",
        package: "nginx-light",
    },
    Package {
        command: "perf",
        package: "linux-perf",
    },
];

/// Variables the outer (stable) cargo sets that would break a nested nightly cargo.
const REMOVED_VARS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO",
    "CARGO_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
];
const REMOVED_PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_CFG_", "__CARGO"];

/// The nightly toolchain (only for balancer-ebpf and bpf-linker).
pub struct Nightly {
    pub sysroot: PathBuf,
}

impl Nightly {
    /// Finds the nightly toolchain; it cannot be installed here, so its absence is an error.
    pub fn find() -> Result<Self> {
        let list = cmd::capture(Command::new("rustup").args(["toolchain", "list"]))
            .context("rustup is needed to find the nightly toolchain")?;
        let present = list.lines().any(|line| {
            let name = line.split_whitespace().next().unwrap_or("");
            name == "nightly" || name.starts_with("nightly-")
        });
        if !present {
            bail!(
                "the Rust nightly toolchain is not installed (`rustup toolchain list` shows none); \
                 it is needed for balancer-ebpf and cannot be installed by xtask on this machine"
            );
        }
        let sysroot = cmd::capture(nightly_command("rustc").args(["--print", "sysroot"]))?;
        Ok(Self {
            sysroot: PathBuf::from(sysroot.trim()),
        })
    }

    /// The nightly's library directory: holds its libLLVM, which bpf-linker needs at run time.
    pub fn lib_dir(&self) -> PathBuf {
        self.sysroot.join("lib")
    }

    /// `rustup run nightly <program>` with a clean environment and the nightly's libraries.
    pub fn command(&self, program: &str) -> Command {
        let mut command = nightly_command(program);
        command.env("LD_LIBRARY_PATH", self.lib_dir());
        command
    }

    fn libllvm(&self) -> Result<PathBuf> {
        let dir = self.lib_dir();
        let mut found: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(std::result::Result::ok)
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with(NIGHTLY_LIBLLVM_PREFIX) && name.ends_with(NIGHTLY_LIBLLVM_SUFFIX)
            })
            .map(|entry| entry.path())
            .collect();
        found.sort();
        match found.pop() {
            Some(path) => Ok(path),
            None => bail!(
                "no {NIGHTLY_LIBLLVM_PREFIX}*{NIGHTLY_LIBLLVM_SUFFIX} in {}: the nightly toolchain \
                 does not ship the LLVM 22 that bpf-linker {BPF_LINKER_VERSION} needs",
                dir.display()
            ),
        }
    }
}

/// `rustup run nightly <program>` without the variables the outer stable cargo sets.
fn nightly_command(program: &str) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", program]);
    for (key, _) in env::vars_os() {
        let name = key.to_string_lossy();
        if REMOVED_VARS.contains(&name.as_ref())
            || REMOVED_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            command.env_remove(&key);
        }
    }
    command
}

/// What building balancer-ebpf needs: the nightly toolchain and bpf-linker.
pub struct EbpfToolchain {
    pub nightly: Nightly,
    /// Install root of bpf-linker: `bin/bpf-linker` and `llvm/lib/libLLVM.so`.
    pub tools_dir: PathBuf,
}

impl EbpfToolchain {
    /// `PATH` with bpf-linker's directory first.
    pub fn path_with_tools(&self) -> Result<OsString> {
        let mut dirs = vec![self.tools_dir.join("bin")];
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path));
        }
        env::join_paths(dirs).context("cannot build PATH with the bpf-linker directory")
    }
}

/// Setup steps 1-2: rust-src for nightly and bpf-linker.
pub fn ebpf_toolchain() -> Result<EbpfToolchain> {
    let nightly = Nightly::find()?;
    rust_src()?;
    let tools_dir = tools_dir()?;
    bpf_linker(&nightly, &tools_dir)?;
    Ok(EbpfToolchain { nightly, tools_dir })
}

/// All of `cargo xtask setup`.
pub fn setup() -> Result<EbpfToolchain> {
    let toolchain = ebpf_toolchain()?;
    packages(PACKAGES)?;
    bpffs()?;
    say!("setup: done");
    Ok(toolchain)
}

fn rust_src() -> Result<()> {
    let installed = cmd::capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    let present = installed
        .lines()
        .any(|line| line.trim() == "rust-src" || line.trim().starts_with("rust-src-"));
    if present {
        say!("rust-src: present, skipping");
        return Ok(());
    }
    say!("rust-src: installing for the nightly toolchain...");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("could not install rust-src for nightly (needed by -Z build-std=core)")
}

/// `$BALANCER_TOOLS_DIR`, else `$HOME/.cache/balancer/bpf-linker` (shared by every clone).
pub fn tools_dir() -> Result<PathBuf> {
    let dir = if let Some(dir) = env::var_os("BALANCER_TOOLS_DIR").filter(|v| !v.is_empty()) {
        PathBuf::from(dir)
    } else {
        let home = env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .context("neither BALANCER_TOOLS_DIR nor HOME is set: nowhere to put bpf-linker")?;
        Path::new(&home).join(".cache/balancer/bpf-linker")
    };
    std::path::absolute(&dir).with_context(|| format!("bad tools directory {}", dir.display()))
}

/// The installed bpf-linker's `--version` line, if it runs with the nightly's libLLVM.
fn bpf_linker_version(nightly: &Nightly, tools_dir: &Path) -> Option<String> {
    let bin = tools_dir.join("bin/bpf-linker");
    if !bin.is_file() {
        return None;
    }
    let mut probe = Command::new(&bin);
    probe
        .arg("--version")
        .env("LD_LIBRARY_PATH", nightly.lib_dir());
    cmd::capture(&mut probe)
        .ok()
        .map(|out| out.trim().to_owned())
}

fn bpf_linker(nightly: &Nightly, tools_dir: &Path) -> Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    match bpf_linker_version(nightly, tools_dir) {
        Some(version) if version == wanted => {
            say!(
                "bpf-linker: present ({version} in {}), skipping",
                tools_dir.display()
            );
            return Ok(());
        }
        Some(version) => say!("bpf-linker: found `{version}`, want {BPF_LINKER_VERSION}"),
        None => {}
    }

    // bpf-linker links against the nightly's own libLLVM: expose it as llvm/lib/libLLVM.so.
    let lib_dir = tools_dir.join("llvm/lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    let target = nightly.libllvm()?;
    let link = lib_dir.join("libLLVM.so");
    if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))?;
    }
    say!("bpf-linker: {} -> {}", link.display(), target.display());

    say!("bpf-linker: building {BPF_LINKER_VERSION} (about 90 s)...");
    let started = Instant::now();
    let mut install = nightly_command("cargo");
    install
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            BPF_LINKER_FEATURE,
            "--force",
            "--root",
        ])
        .arg(tools_dir)
        .env("LLVM_PREFIX", tools_dir.join("llvm"));
    cmd::run(&mut install).context("could not build bpf-linker")?;

    match bpf_linker_version(nightly, tools_dir) {
        Some(version) if version == wanted => {
            say!(
                "bpf-linker: installed {version} in {} ({} s)",
                tools_dir.display(),
                started.elapsed().as_secs()
            );
            Ok(())
        }
        other => bail!(
            "bpf-linker was built but `{} --version` (LD_LIBRARY_PATH={}) gives {:?}, not `{wanted}`",
            tools_dir.join("bin/bpf-linker").display(),
            nightly.lib_dir().display(),
            other
        ),
    }
}

/// Whether `name` is an executable in PATH or a standard system directory.
fn have_command(name: &str) -> bool {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .map(PathBuf::from),
    );
    dirs.iter().any(|dir| {
        fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Installs the Debian packages of every missing command in `wanted`.
pub fn packages(wanted: &[Package]) -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for p in wanted {
        if have_command(p.command) {
            say!("{} ({}): present, skipping", p.command, p.package);
        } else {
            say!("{} ({}): missing", p.command, p.package);
            if !missing.contains(&p.package) {
                missing.push(p.package);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root()? {
        bail!(
            "Debian packages missing: {}; installing them needs root (run as root, or \
             `apt-get install {}`)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    say!("apt: installing {}...", missing.join(" "));
    cmd::run(Command::new("apt-get").arg("update")).context("apt-get update failed")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )
    .with_context(|| format!("could not install {}", missing.join(" ")))?;
    for p in wanted {
        if !have_command(p.command) {
            bail!(
                "package {} was installed but command `{}` is still missing",
                p.package,
                p.command
            );
        }
    }
    say!("apt: installed {}", missing.join(" "));
    Ok(())
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"/sys/fs/bpf") && fields.get(2) == Some(&"bpf")
    }))
}

fn bpffs() -> Result<()> {
    if bpffs_mounted()? {
        say!("bpffs: mounted on /sys/fs/bpf, skipping");
        return Ok(());
    }
    if !crate::is_root()? {
        bail!("bpffs is not mounted on /sys/fs/bpf and mounting it needs root");
    }
    say!("bpffs: mounting on /sys/fs/bpf...");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("could not mount bpffs on /sys/fs/bpf")?;
    if !bpffs_mounted()? {
        bail!("mount succeeded but /proc/mounts shows no bpf filesystem on /sys/fs/bpf");
    }
    Ok(())
}
