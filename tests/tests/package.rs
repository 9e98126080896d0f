//! The Debian package (`cargo xtask package`; `cargo xtask test` assembles it around the
//! debug binary and names it in `BALANCER_DEB`): installed into an empty root with
//! `dpkg-deb -x`, its binary runs, its systemd unit passes `systemd-analyze verify`, its
//! example configuration is valid, and its completions parse.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use balancer_tests::util::TempDir;

/// The package under test.
fn deb() -> PathBuf {
    let path = std::env::var_os("BALANCER_DEB").map(PathBuf::from).expect(
        "BALANCER_DEB is not set: run `cargo xtask test`, or point it at the .deb `cargo xtask \
         package` wrote under target/package/",
    );
    assert!(
        path.is_file(),
        "BALANCER_DEB={}: no such file",
        path.display()
    );
    path
}

fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e} (is it installed?)"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args, &[]);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The package extracted into a fresh directory, as `dpkg -i` would lay it out.
fn installed() -> (TempDir, PathBuf) {
    let dir = TempDir::new("balancer-deb").unwrap();
    let root = dir.path().join("root");
    ok(
        "dpkg-deb",
        &["-x", deb().to_str().unwrap(), root.to_str().unwrap()],
    );
    (dir, root)
}

#[test]
fn the_package_installs_and_its_binary_runs() {
    let deb = deb();
    let deb = deb.to_str().unwrap();
    let fields = ok("dpkg-deb", &["-f", deb, "Package", "Version", "Depends"]);
    assert!(
        fields.contains("Package: balancer") && fields.contains("Version: 0.1.0"),
        "{fields}"
    );
    assert_eq!(
        ok("dpkg-deb", &["-I", deb, "conffiles"]).trim(),
        "/etc/balancer/balancer.toml"
    );
    let (_dir, root) = installed();
    let binary = root.join("usr/sbin/balancer");
    let version = ok(binary.to_str().unwrap(), &["--version"]);
    assert_eq!(
        version.trim(),
        format!("balancer {}", env!("CARGO_PKG_VERSION"))
    );
    for file in [
        "lib/systemd/system/balancer.service",
        "etc/balancer/balancer.toml",
        "usr/share/man/man8/balancer.8.gz",
        "usr/share/man/man8/balancer-run.8.gz",
        "usr/share/bash-completion/completions/balancer",
        "usr/share/zsh/vendor-completions/_balancer",
    ] {
        assert!(root.join(file).is_file(), "{file} is not in the package");
    }
    // The example configuration is one the agent accepts (its interfaces aside, which are
    // the host's).
    let example = std::fs::read_to_string(root.join("etc/balancer/balancer.toml")).unwrap();
    let config = balancer::config::parse(&example, "/etc/balancer/balancer.toml")
        .unwrap_or_else(|e| panic!("the example configuration: {e}"));
    assert!(config.telemetry.is_some() && !config.vips.is_empty());
}

/// `systemd-analyze verify` on the unit as installed: its commands must exist, so the
/// unit's /usr/sbin and /etc paths point into the extracted root, and `man balancer(8)`
/// (its Documentation=) is looked up in the package's own man pages.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let (dir, root) = installed();
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/balancer.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/usr/sbin/balancer reload",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in the unit");
    }
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    assert!(!caps.contains("CAP_SYS_ADMIN"), "{caps}");
    let root_text = root.to_str().unwrap();
    let rooted = unit
        .replace("/usr/sbin/", &format!("{root_text}/usr/sbin/"))
        .replace("/etc/balancer/", &format!("{root_text}/etc/balancer/"));
    let path = dir.path().join("balancer.service");
    std::fs::write(&path, rooted).unwrap();
    let out = run(
        "systemd-analyze",
        &["verify", path.to_str().unwrap()],
        &[("MANPATH", &root.join("usr/share/man"))],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("balancer.service"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn bash_completion_parses_and_names_the_subcommands() {
    let (_dir, root) = installed();
    let installed = root.join("usr/share/bash-completion/completions/balancer");
    let printed = ok(
        root.join("usr/sbin/balancer").to_str().unwrap(),
        &["completions", "bash"],
    );
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap().trim_end(),
        printed.trim_end(),
        "the package installs what `balancer completions bash` prints"
    );
    ok("bash", &["-n", installed.to_str().unwrap()]);
    // What bash offers after `balancer ` and after `balancer backend d`.
    let complete = |words: &str, cword: usize, cur: &str, prev: &str| -> Vec<String> {
        let script = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _balancer balancer '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            installed.display()
        );
        ok("bash", &["-c", &script])
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let first = complete("balancer ''", 1, "", "balancer");
    for sub in [
        "run",
        "check-config",
        "vip",
        "backend",
        "pool",
        "vrrp",
        "status",
        "reload",
        "config",
        "completions",
    ] {
        assert!(
            first.iter().any(|w| w == sub),
            "`balancer <TAB>` does not offer {sub}: {first:?}"
        );
    }
    assert!(
        !first.iter().any(|w| w == "man"),
        "`balancer <TAB>` offers the hidden man: {first:?}"
    );
    let help = complete("balancer help ''", 2, "", "help");
    assert!(
        help.iter().any(|w| w == "backend") && !help.iter().any(|w| w == "man"),
        "`balancer help <TAB>`: {help:?}"
    );
    assert_eq!(
        complete("balancer backend d", 2, "d", "backend"),
        ["del", "drain"]
    );
    let zsh = ok(
        root.join("usr/sbin/balancer").to_str().unwrap(),
        &["completions", "zsh"],
    );
    assert!(zsh.starts_with("#compdef balancer"), "{zsh}");
    assert!(
        zsh.contains("'backend:") && !zsh.contains("'man:") && !zsh.contains("(man)"),
        "zsh offers the hidden man, or not backend: {zsh}"
    );
}
