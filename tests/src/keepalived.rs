//! Drives Debian's keepalived (2.2.7) as a VRRP peer: writes a one-instance configuration, runs it in a namespace with its own pid files and log, reads its state from a notify script, stops it gracefully (priority 0) or kills it.

use crate::netns::Netns;
use crate::util::{output_with_timeout, wait_timeout, TempDir};
use anyhow::{bail, Context, Result};
use std::fmt::{self, Write as _};
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

/// Where Debian installs keepalived.
pub const KEEPALIVED: &str = "/usr/sbin/keepalived";

/// What keepalived 2.2.7 logs when it refuses a received advert or packet, as written in
/// its source (keepalived/vrrp/vrrp.c `vrrp_check_packet`, `vrrp_get_header`;
/// `vrrp_scheduler.c` `vrrp_read_dispatcher_thread`); matched case-insensitively. A peer
/// that interoperates makes it log none of them.
pub const LOG_COMPLAINTS: &[&str] = &[
    // Checksums; the second is keepalived switching a unicast peer to its pre-2.2 v3 checksum.
    "Invalid VRRPv2 checksum",
    "Invalid VRRPv3 checksum",
    "Setting unicast VRRPv3 checksum to old version",
    // TTL: "invalid TTL/HL. Received %d and expect %d", "TTL/HL %d not in range %d - %d".
    "TTL/HL",
    // Lengths: "vrrp packet too short/long, length %zu and expect %zu", "IPv4 VRRP packet
    // too short - %zu bytes", "... with AH too short", "ip_tot_len mismatch ...".
    "vrrp packet too",
    "VRRP packet with AH too short",
    "ip_tot_len mismatch",
    "message truncated",
    // Header fields.
    "wrong version",
    "Invalid packet type",
    "Invalid auth type",
    "auth, expecting",
    "received an invalid passwd",
    "AH header but auth type",
    "No AH header but auth type is AH",
    "advertisement interval mismatch",
    // Addresses.
    "unexpected ip number count",
    "VIPs but received",
    "not present in MASTER advert",
    "icast packet but received",
    "not a unicast peer",
    // Logged because the configuration sets `log_unknown_vrids`.
    "Unknown VRID",
];

/// The state a keepalived instance reports to its notify script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpState {
    Backup,
    Master,
    Fault,
    /// keepalived is shutting the instance down.
    Stop,
}

impl VrrpState {
    /// The word keepalived uses (configuration `state` and notify arguments).
    pub fn word(self) -> &'static str {
        match self {
            VrrpState::Backup => "BACKUP",
            VrrpState::Master => "MASTER",
            VrrpState::Fault => "FAULT",
            VrrpState::Stop => "STOP",
        }
    }
}

impl fmt::Display for VrrpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl FromStr for VrrpState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "BACKUP" => Ok(VrrpState::Backup),
            "MASTER" => Ok(VrrpState::Master),
            "FAULT" => Ok(VrrpState::Fault),
            "STOP" => Ok(VrrpState::Stop),
            other => Err(format!("not a VRRP state: {other:?}")),
        }
    }
}

/// An address of the instance (`virtual_ipaddress`): `addr/prefix_len dev DEV`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualAddress {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub dev: String,
}

impl VirtualAddress {
    pub fn new(addr: Ipv4Addr, prefix_len: u8, dev: &str) -> VirtualAddress {
        VirtualAddress {
            addr,
            prefix_len,
            dev: dev.to_string(),
        }
    }
}

/// One `vrrp_instance` and the `global_defs` it needs. Fields are keepalived's keywords;
/// build one with [`KeepalivedConfig::new`] and struct update syntax.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepalivedConfig {
    /// The instance's name (notify's second argument).
    pub instance: String,
    /// `state`: the initial state, [`VrrpState::Backup`] or [`VrrpState::Master`].
    pub state: VrrpState,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    /// `advert_int`; keepalived takes hundredths of a second for version 3, whole seconds
    /// for version 2.
    pub advert_int: Duration,
    /// `vrrp_version` (in `global_defs`): 2 or 3.
    pub version: u8,
    pub nopreempt: bool,
    pub preempt_delay: Option<Duration>,
    pub unicast_src_ip: Option<Ipv4Addr>,
    /// `unicast_peer { ... }`; empty for multicast.
    pub unicast_peers: Vec<Ipv4Addr>,
    pub virtual_ipaddress: Vec<VirtualAddress>,
    /// `garp_master_delay` (whole seconds): the second burst of gratuitous ARPs.
    pub garp_master_delay: Option<u32>,
    /// More lines for the instance block, as written.
    pub extra: Vec<String>,
}

impl KeepalivedConfig {
    /// A multicast VRRP version 2 instance `VI_1` starting as Backup on `interface`, advert every
    /// second, preempting, with `vip`/`prefix_len` on `interface`.
    pub fn new(
        interface: &str,
        virtual_router_id: u8,
        priority: u8,
        vip: Ipv4Addr,
        prefix_len: u8,
    ) -> KeepalivedConfig {
        KeepalivedConfig {
            instance: "VI_1".to_string(),
            state: VrrpState::Backup,
            interface: interface.to_string(),
            virtual_router_id,
            priority,
            advert_int: Duration::from_secs(1),
            version: 2,
            nopreempt: false,
            preempt_delay: None,
            unicast_src_ip: None,
            unicast_peers: Vec::new(),
            virtual_ipaddress: vec![VirtualAddress::new(vip, prefix_len, interface)],
            garp_master_delay: None,
            extra: Vec::new(),
        }
    }

    /// RFC 3768 / 9568's `Master_Down_Interval` a Backup of this configuration waits
    /// for: 3 adverts plus its skew time.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.priority, self.advert_int)
    }

    /// The configuration file, with `notify` running `notify_script`.
    pub fn render(&self, notify_script: &Path) -> String {
        let mut c = String::new();
        let _ = write!(
            c,
            "# Written by balancer-tests.\n\
             global_defs {{\n\
             \x20   vrrp_version {version}\n\
             \x20   script_user root\n\
             \x20   enable_script_security\n\
             \x20   log_unknown_vrids\n\
             }}\n\
             \n\
             vrrp_instance {instance} {{\n\
             \x20   state {state}\n\
             \x20   interface {interface}\n\
             \x20   virtual_router_id {vrid}\n\
             \x20   priority {priority}\n\
             \x20   advert_int {advert}\n",
            version = self.version,
            instance = self.instance,
            state = self.state,
            interface = self.interface,
            vrid = self.virtual_router_id,
            priority = self.priority,
            advert = seconds(self.advert_int),
        );
        if self.nopreempt {
            c.push_str("    nopreempt\n");
        }
        if let Some(delay) = self.preempt_delay {
            let _ = writeln!(c, "    preempt_delay {}", seconds(delay));
        }
        if let Some(src) = self.unicast_src_ip {
            let _ = writeln!(c, "    unicast_src_ip {src}");
        }
        if !self.unicast_peers.is_empty() {
            c.push_str("    unicast_peer {\n");
            for peer in &self.unicast_peers {
                let _ = writeln!(c, "        {peer}");
            }
            c.push_str("    }\n");
        }
        c.push_str("    virtual_ipaddress {\n");
        for a in &self.virtual_ipaddress {
            let _ = writeln!(c, "        {}/{} dev {}", a.addr, a.prefix_len, a.dev);
        }
        c.push_str("    }\n");
        if let Some(delay) = self.garp_master_delay {
            let _ = writeln!(c, "    garp_master_delay {delay}");
        }
        let _ = writeln!(c, "    notify {}", notify_script.display());
        for line in &self.extra {
            let _ = writeln!(c, "    {line}");
        }
        c.push_str("}\n");
        c
    }
}

/// `Master_Down_Interval = 3 × Advertisement_Interval + Skew_Time`, with `Skew_Time =
/// (256 − Priority) × Advertisement_Interval / 256` (RFC 9568 6.1; RFC 3768's whole-second
/// form is the same for v2's whole-second intervals).
pub fn master_down_interval(priority: u8, advert_int: Duration) -> Duration {
    advert_int * 3 + advert_int * (256 - u32::from(priority)) / 256
}

/// A duration as keepalived's seconds: `1`, `0.5`, `0.25`.
fn seconds(d: Duration) -> String {
    let text = format!("{:.2}", d.as_secs_f64());
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// How long keepalived may take to report its first state.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long keepalived gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A keepalived running inside a namespace (`keepalived -n -l -D -G -P` with its own pid
/// files), with its configuration, log and notify file in a directory of its own.
///
/// Dropping it SIGKILLs its process group; when the thread is panicking (a failed test) its
/// log is printed to stderr first.
pub struct Keepalived {
    ns_name: String,
    config: KeepalivedConfig,
    child: Option<Child>,
    dir: TempDir,
}

impl Keepalived {
    /// Writes `config`, checks it with `keepalived --config-test` and starts keepalived in
    /// `ns`; returns once the instance reported its first state (at most 5 s).
    pub fn start(ns: &Netns, config: &KeepalivedConfig) -> Result<Keepalived> {
        let dir = TempDir::new(&format!("{}-keepalived", ns.name()))?;
        let notify = dir.path().join("notify.sh");
        // keepalived calls `notify INSTANCE NAME STATE PRIORITY`; keep the state.
        std::fs::write(
            &notify,
            format!(
                "#!/bin/sh\necho \"$3\" >> '{}'\n",
                dir.path().join("states").display()
            ),
        )
        .with_context(|| format!("writing {}", notify.display()))?;
        std::fs::set_permissions(&notify, std::fs::Permissions::from_mode(0o755))?;
        let config_path = dir.path().join("keepalived.conf");
        std::fs::write(&config_path, config.render(&notify))
            .with_context(|| format!("writing {}", config_path.display()))?;

        let mut check = ns.command(KEEPALIVED);
        check.arg("--config-test").arg("-f").arg(&config_path);
        let out = output_with_timeout(&mut check, Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "keepalived refuses its configuration ({}):\n{}\n--- configuration ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                config.render(&notify)
            );
        }

        let mut keepalived = Keepalived {
            ns_name: ns.name().to_string(),
            config: config.clone(),
            child: None,
            dir,
        };
        keepalived.spawn()?;
        Ok(keepalived)
    }

    /// Starts keepalived again after [`Keepalived::stop`] or [`Keepalived::kill`], with the
    /// same configuration; the log and the states go on in the same files.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("keepalived in {} is still running", self.ns_name);
        }
        self.spawn()
    }

    fn spawn(&mut self) -> Result<()> {
        let states_before = self.states().len();
        for name in ["keepalived.pid", "vrrp.pid", "checkers.pid"] {
            let _ = std::fs::remove_file(self.dir.path().join(name));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let d = self.dir.path();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, KEEPALIVED])
            // No fork, log to the console (stdout) only, in detail, VRRP only.
            .args([
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--vrrp",
            ])
            .arg("--use-file")
            .arg(d.join("keepalived.conf"))
            .arg("--pid")
            .arg(d.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(d.join("vrrp.pid"))
            .arg("--checkers_pid")
            .arg(d.join("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: kill() reaches the VRRP child and notify scripts too,
            // and Ctrl-C reaches only the test.
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {KEEPALIVED} in namespace {}", self.ns_name))?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.states().len() > states_before {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "keepalived in {} exited during startup ({status}); its log:\n{}",
                        self.ns_name,
                        self.log()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "keepalived in {} reported no state within {START_TIMEOUT:?}; its log:\n{}",
                    self.ns_name,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The configuration it runs.
    pub fn config(&self) -> &KeepalivedConfig {
        &self.config
    }

    /// Its directory: `keepalived.conf`, `notify.sh`, `states`, `keepalived.log`, pid files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("keepalived.log")
    }

    /// Every state the instance reported to its notify script, oldest first (across
    /// restarts).
    pub fn states(&self) -> Vec<VrrpState> {
        std::fs::read_to_string(self.dir.path().join("states"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The state it reported last.
    pub fn state(&self) -> Option<VrrpState> {
        self.states().last().copied()
    }

    /// Waits (at most `timeout`) until the instance reports `want`; returns how long that
    /// took, or an error with the states and the log.
    pub fn wait_state(&self, want: VrrpState, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.state() == Some(want) {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "keepalived in {} did not become {want} within {timeout:?} (states so far: \
                     {:?}); its log:\n{}",
                    self.ns_name,
                    self.states(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path().display()))
    }

    /// The log lines that contain one of [`LOG_COMPLAINTS`].
    pub fn complaints(&self) -> Vec<String> {
        complaints_in(&self.log())
    }

    /// Panics, with the lines, if the log holds a complaint about a received packet.
    pub fn assert_no_complaints(&self) {
        let found = self.complaints();
        assert!(
            found.is_empty(),
            "keepalived in {} complained about packets it received:\n{}",
            self.ns_name,
            found.join("\n")
        );
    }

    /// Pid of the keepalived parent process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pid of its VRRP child process (from its pid file), if written.
    pub fn vrrp_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("vrrp.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the keepalived parent process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Graceful stop: SIGTERM (a Master sends an advert with priority 0 and removes its
    /// addresses), up to 5 s, then SIGKILL. Returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal_group(&child, libc::SIGTERM);
        if let Ok(Some(status)) = wait_timeout(&mut child, STOP_GRACE) {
            return Some(status);
        }
        signal_group(&child, libc::SIGKILL);
        child.wait().ok()
    }

    /// Crash: SIGKILL to the whole process group at once (no priority 0, the addresses stay
    /// where they are, the parent cannot respawn the VRRP child).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to the process group `child` leads (it was spawned with
/// `process_group(0)`), unless it has exited already.
fn signal_group(child: &Child, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the group is led by our own
        // unreaped child, so its id cannot have been reused.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "===== keepalived in {} (states {:?}) =====\n{}\n===== end of keepalived log =====",
                self.ns_name,
                self.states(),
                self.log().trim_end()
            );
        }
    }
}

/// The lines of `log` that contain one of [`LOG_COMPLAINTS`] (case-insensitively).
pub fn complaints_in(log: &str) -> Vec<String> {
    let needles: Vec<String> = LOG_COMPLAINTS.iter().map(|c| c.to_lowercase()).collect();
    log.lines()
        .filter(|line| {
            let line = line.to_lowercase();
            needles.iter().any(|n| line.contains(n))
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_has_every_keyword_set() {
        let config = KeepalivedConfig {
            version: 3,
            advert_int: Duration::from_millis(500),
            nopreempt: true,
            preempt_delay: Some(Duration::from_secs(2)),
            unicast_src_ip: Some(Ipv4Addr::new(10, 0, 1, 11)),
            unicast_peers: vec![Ipv4Addr::new(10, 0, 1, 12), Ipv4Addr::new(10, 0, 1, 13)],
            garp_master_delay: Some(1),
            extra: vec!["accept".to_string()],
            ..KeepalivedConfig::new("lbc0", 51, 150, Ipv4Addr::new(10, 0, 1, 100), 24)
        };
        let text = config.render(Path::new("/run/x/notify.sh"));
        for want in [
            "vrrp_version 3\n",
            "script_user root\n",
            "log_unknown_vrids\n",
            "vrrp_instance VI_1 {\n",
            "state BACKUP\n",
            "interface lbc0\n",
            "virtual_router_id 51\n",
            "priority 150\n",
            "advert_int 0.5\n",
            "nopreempt\n",
            "preempt_delay 2\n",
            "unicast_src_ip 10.0.1.11\n",
            "unicast_peer {\n        10.0.1.12\n        10.0.1.13\n    }\n",
            "virtual_ipaddress {\n        10.0.1.100/24 dev lbc0\n    }\n",
            "garp_master_delay 1\n",
            "notify /run/x/notify.sh\n",
            "    accept\n}\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(!text.contains("vrrp_strict"), "{text}");
        let plain = KeepalivedConfig::new("lbc0", 7, 100, Ipv4Addr::new(10, 0, 1, 100), 24)
            .render(Path::new("/n"));
        for absent in ["nopreempt", "preempt_delay", "unicast", "garp_master_delay"] {
            assert!(!plain.contains(absent), "{absent} in:\n{plain}");
        }
        assert!(plain.contains("advert_int 1\n") && plain.contains("vrrp_version 2\n"));
    }

    #[test]
    fn master_down_interval_is_three_adverts_and_the_skew() {
        let second = Duration::from_secs(1);
        assert_eq!(
            master_down_interval(100, second),
            Duration::from_secs(3) + second * 156 / 256
        );
        assert_eq!(
            master_down_interval(255, second),
            Duration::from_secs(3) + second / 256
        );
        assert_eq!(
            master_down_interval(150, Duration::from_millis(500)),
            Duration::from_millis(1500) + Duration::from_millis(500) * 106 / 256
        );
    }

    #[test]
    fn complaints_are_found_in_keepalived_s_own_words() {
        let log = "\
Mon Dec  7 07:07:03 2026: (VI_1) Entering MASTER STATE
Mon Dec  7 07:07:04 2026: (VI_1) Invalid VRRPv3 checksum
Mon Dec  7 07:07:05 2026: (VI_1) invalid TTL/HL. Received 64 and expect 255
Mon Dec  7 07:07:06 2026: (VI_1) vrrp packet too short, length 40 and expect 48
Mon Dec  7 07:07:06 2026: IPv4 VRRP packet too short - 20 bytes
Mon Dec  7 07:07:07 2026: Unknown VRID(52) received on interface(lbc0). ignoring...
Mon Dec  7 07:07:08 2026: (VI_1) Received advert from 10.0.1.12 with lower priority 100, ours 150, forcing new election
";
        let found = complaints_in(log);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found.iter().all(|l| !l.contains("MASTER STATE")));
    }

    #[test]
    fn states_parse_from_notify_words() {
        assert_eq!("MASTER".parse(), Ok(VrrpState::Master));
        assert_eq!("STOP".parse(), Ok(VrrpState::Stop));
        assert!("master".parse::<VrrpState>().is_err());
        for s in [
            VrrpState::Backup,
            VrrpState::Master,
            VrrpState::Fault,
            VrrpState::Stop,
        ] {
            assert_eq!(s.word().parse(), Ok(s));
        }
        assert_eq!(seconds(Duration::from_secs(1)), "1");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5");
    }
}
