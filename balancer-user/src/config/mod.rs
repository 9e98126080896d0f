//! The agent's configuration file: TOML format, validation, and the typed `Config` built from it.
//!
//! Parsing happens in two stages that are kept apart on purpose:
//!
//! 1. `serde` reads the text into the private `Raw*` structs. They mirror the file
//!    one-to-one, reject unknown fields and wrap every value a later check may
//!    point at in [`toml::Spanned`], so errors can name the exact line.
//! 2. The private `Validator` checks the raw structs and builds the public, validated
//!    structs ([`Config`], [`VipConfig`], ...) with all defaults applied.
//!
//! Adding a field means adding it to a `Raw*` struct, to its public counterpart,
//! and one conversion step in the validator.
//!
//! Every [`ConfigError`] (except failing to read the file, which has no line)
//! displays as `FILE:LINE:COLUMN: FIELD: MESSAGE` (no `FIELD: ` for a TOML
//! syntax error that has no key path), for example
//! `balancer.toml:23:13: vip[1] ("web").ring_size: 65536 is not prime (...)`.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use humantime_serde::re::humantime;
use serde::Deserialize;
use toml::Spanned;

use crate::health::Health;

/// Control socket path used when `[agent].control_socket` is absent.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/balancer/balancer.sock";
/// Where state is pinned (bpffs) when `[agent].pin_dir` is absent.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/balancer";
/// Maglev lookup table size used when a VIP gives no `ring_size`.
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Largest allowed `ring_size` (the data plane's table has this many slots).
pub const MAX_RING_SIZE: u32 = 65537;
/// Most VIPs one agent serves.
pub const MAX_VIPS: usize = 32;
/// Most backends over all pools together.
pub const MAX_BACKENDS: usize = 4096;
/// Lowest first port of `[nat].port_range`.
pub const MIN_NAT_PORT: u16 = 1024;
/// Default first NAT source port.
pub const DEFAULT_NAT_PORT_MIN: u16 = 20000;
/// Default last NAT source port.
pub const DEFAULT_NAT_PORT_MAX: u16 = 32767;
/// Default idle timeout of TCP flows.
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(300);
/// Default idle timeout of UDP flows.
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default lifetime of a TCP flow after FIN/RST.
pub const DEFAULT_TCP_CLOSING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default rest of a closed flow's SNAT port: Linux's TIME-WAIT (`TCP_TIMEWAIT_LEN`).
pub const DEFAULT_SNAT_TIME_WAIT: Duration = Duration::from_secs(60);
/// A TCP flow its backend never answered: Linux conntrack's and IPVS's SYN_RECV timeout.
pub const DEFAULT_TCP_UNREPLIED_TIMEOUT: Duration = Duration::from_secs(60);
/// Shortest allowed timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest allowed timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Backend weight used when a backend gives none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest pool or VIP name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest Linux interface name in bytes (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Health check interval used when `[pool.check]` gives no `interval` (HAProxy's `inter`).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Consecutive successes that bring a down backend up, by default (HAProxy's `rise`).
pub const DEFAULT_RISE: u32 = 2;
/// Consecutive failures that take an up backend down, by default (HAProxy's `fall`).
pub const DEFAULT_FALL: u32 = 3;
/// Largest `rise` and `fall`.
pub const MAX_RISE_FALL: u32 = 100;
/// Shortest allowed health check interval or timeout.
pub const MIN_CHECK_DURATION: Duration = Duration::from_millis(10);
/// Longest allowed health check interval or timeout.
pub const MAX_CHECK_DURATION: Duration = Duration::from_secs(60 * 60);
/// HTTP check method used when none is given.
pub const DEFAULT_HTTP_METHOD: &str = "GET";
/// HTTP check path used when none is given.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// HTTP statuses a check accepts when `expect_status` is absent.
pub const DEFAULT_EXPECT_STATUS: &str = "200-399";
/// Longest `method` of an HTTP check.
pub const MAX_HTTP_METHOD_LEN: usize = 32;
/// Longest `path` or `host` of an HTTP check, in bytes.
pub const MAX_HTTP_FIELD_LEN: usize = 2048;
/// Longest `expect_body` (HTTP) or `expect` (UDP) substring, in bytes.
pub const MAX_EXPECT_LEN: usize = 4096;
/// Longest UDP check `payload` in bytes (the largest UDP payload over IPv4).
pub const MAX_UDP_PAYLOAD: usize = 65507;

// ---------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------

/// A value given as text that is not one of the accepted words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseValueError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl ParseValueError {
    /// `value` is not a valid `what`; `expected` lists the accepted words.
    pub(crate) fn new(what: &'static str, value: &str, expected: &'static str) -> Self {
        ParseValueError {
            what,
            value: value.to_owned(),
            expected,
        }
    }
}

/// Transport protocol of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How a VIP spreads new flows over its pool's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    Maglev,
    RoundRobin,
}

/// How the XDP program is attached to the interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native (driver) mode only.
    Driver,
    /// Generic (SKB) mode only.
    Skb,
    /// Try driver mode, fall back to SKB mode.
    Auto,
}

/// What a pool does with established flows of a backend that health checks took down.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DownPolicy {
    /// Flows pinned to the backend are rescheduled to a backend that is up
    /// (HAProxy's `on-marked-down shutdown-sessions`, IPVS's `expire_nodest_conn`).
    #[default]
    Shutdown,
    /// Flows stay on the backend until they end.
    Keep,
}

/// What new flows of a VIP get while none of its backends is up.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AllDownPolicy {
    /// They are dropped.
    #[default]
    Drop,
    /// They are passed to the host's stack (`XDP_PASS`), e.g. for a local sorry server.
    Pass,
}

/// The `type` of a health check.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CheckType {
    /// No checks: the backend is always up (HAProxy without `check`).
    #[default]
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP request; the status (and optionally the body) decide.
    Http,
    /// A UDP datagram that must be answered.
    Udp,
}

/// Implements `as_str`, `Display` and case-insensitive `FromStr` for an enum of
/// configuration words, so each variant's spelling (and its accepted aliases) is written once.
macro_rules! config_words {
    ($ty:ident, $what:literal, $expected:literal, { $($variant:ident => $word:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl $ty {
            /// The configuration spelling.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_lowercase().as_str() {
                    $($word $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err(ParseValueError::new($what, s, $expected)),
                }
            }
        }
    };
}

config_words!(Protocol, "protocol", "\"tcp\" or \"udp\"", { Tcp => "tcp", Udp => "udp" });
config_words!(Scheduler, "scheduler", "\"maglev\" or \"round-robin\" (or \"rr\")", { Maglev => "maglev", RoundRobin => "round-robin" | "rr" });
config_words!(XdpMode, "XDP mode", "\"driver\", \"skb\" or \"auto\"", { Driver => "driver", Skb => "skb", Auto => "auto" });
config_words!(DownPolicy, "on_backend_down policy", "\"shutdown\" or \"keep\"", { Shutdown => "shutdown", Keep => "keep" });
config_words!(AllDownPolicy, "on_all_down policy", "\"drop\" or \"pass\"", { Drop => "drop", Pass => "pass" });
config_words!(CheckType, "check type", "\"tcp\", \"http\", \"udp\" or \"none\"", { None => "none", Tcp => "tcp", Http => "http", Udp => "udp" });

// ---------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------

/// A complete, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    pub nat: NatConfig,
    pub timeouts: Timeouts,
    pub pools: Vec<PoolConfig>,
    pub vips: Vec<VipConfig>,
}

impl Config {
    /// The pool called `name`, if any.
    #[must_use]
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// `[agent]`: where and how the agent attaches.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub control_socket: PathBuf,
    /// Directory on a bpf filesystem where the flow tables (and, with `keep_attached`, the
    /// XDP links) are pinned, so that a restarted agent takes them over and established
    /// flows carry on. `None` (`pin_dir = ""`): nothing is pinned; a restart forgets every
    /// flow.
    pub pin_dir: Option<PathBuf>,
    /// Leave the data plane attached when the agent exits: it keeps forwarding with the
    /// last configuration (without health checks) until the next agent swaps its program
    /// in, with no moment without XDP. Needs `pin_dir`.
    pub keep_attached: bool,
}

/// `[nat]`: source NAT towards the backends.
#[derive(Clone, Debug, PartialEq)]
pub struct NatConfig {
    /// `None`: chosen per backend from the routing table.
    pub source_address: Option<Ipv4Addr>,
    pub port_min: u16,
    pub port_max: u16,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            source_address: None,
            port_min: DEFAULT_NAT_PORT_MIN,
            port_max: DEFAULT_NAT_PORT_MAX,
        }
    }
}

/// `[timeouts]`: flow lifetimes.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeouts {
    pub tcp: Duration,
    pub udp: Duration,
    pub tcp_closing: Duration,
    /// After the backend closed a flow, the flow's SNAT port rests until this long after
    /// its last packet before another client gets it (unless no other port is free):
    /// the backends' TIME-WAIT.
    pub snat_time_wait: Duration,
    /// Idle timeout of a TCP flow whose backend has not answered yet (at most `tcp`
    /// applies: the shorter of the two).
    pub tcp_unreplied: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp: DEFAULT_TCP_TIMEOUT,
            udp: DEFAULT_UDP_TIMEOUT,
            tcp_closing: DEFAULT_TCP_CLOSING_TIMEOUT,
            snat_time_wait: DEFAULT_SNAT_TIME_WAIT,
            tcp_unreplied: DEFAULT_TCP_UNREPLIED_TIMEOUT,
        }
    }
}

/// `[[pool]]`: a named set of backends.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<BackendConfig>,
    /// `[pool.check]` as written for the pool (each backend holds its effective one).
    pub check: CheckConfig,
    /// What happens to flows of a backend that went down.
    pub on_backend_down: DownPolicy,
}

/// One entry of a pool's `backends`.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub port: u16,
    /// 0 means drained: no new flows.
    pub weight: u32,
    /// The effective health check: the pool's, with this backend's `check` fields over it.
    pub check: CheckConfig,
}

impl BackendConfig {
    /// The backend's address and port.
    #[must_use]
    pub fn socket_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }
}

/// A health check (`[pool.check]`, or a backend's `check` merged over it), defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// The check's `type`, with the fields that only that type has.
    pub kind: CheckKind,
    /// Time between checks while the backend is steadily up (HAProxy `inter`).
    pub interval: Duration,
    /// Longest a single check may take: connect, request and response (`timeout check`).
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Time between checks while a transition is pending (HAProxy `fastinter`).
    pub fastinter: Duration,
    /// Time between checks while the backend is down (HAProxy `downinter`).
    pub downinter: Duration,
    /// State before the first checks complete (HAProxy `init-state`).
    pub initial_state: Health,
    /// Port to check instead of the backend's.
    pub port: Option<u16>,
    /// Address to check instead of the backend's.
    pub address: Option<Ipv4Addr>,
}

impl Default for CheckConfig {
    /// Type `none` (the backend is always up) with the default timings.
    fn default() -> Self {
        CheckConfig {
            kind: CheckKind::None,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_INTERVAL,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            fastinter: DEFAULT_CHECK_INTERVAL,
            downinter: DEFAULT_CHECK_INTERVAL,
            initial_state: Health::Up,
            port: None,
            address: None,
        }
    }
}

impl CheckConfig {
    /// The check's `type`.
    #[must_use]
    pub fn check_type(&self) -> CheckType {
        self.kind.check_type()
    }

    /// Whether the backend is checked at all (type is not `none`).
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.check_type() != CheckType::None
    }

    /// Where checks of `backend` go: its address and port unless `address` or
    /// `port` override them.
    #[must_use]
    pub fn target(&self, backend: SocketAddrV4) -> SocketAddrV4 {
        SocketAddrV4::new(
            self.address.unwrap_or(*backend.ip()),
            self.port.unwrap_or(backend.port()),
        )
    }
}

/// A check's type and the fields that only that type has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckKind {
    #[default]
    None,
    Tcp,
    Http(HttpCheck),
    Udp(UdpCheck),
}

impl CheckKind {
    /// The `type` word of this kind.
    #[must_use]
    pub fn check_type(&self) -> CheckType {
        match self {
            CheckKind::None => CheckType::None,
            CheckKind::Tcp => CheckType::Tcp,
            CheckKind::Http(_) => CheckType::Http,
            CheckKind::Udp(_) => CheckType::Udp,
        }
    }
}

/// The fields of an HTTP check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request method, an uppercase token.
    pub method: String,
    /// Request target, starting with `/`.
    pub path: String,
    /// `Host` header; `None`: the checked address (and port, if not 80).
    pub host: Option<String>,
    /// Statuses that count as success.
    pub expect_status: StatusRanges,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        HttpCheck {
            method: DEFAULT_HTTP_METHOD.to_owned(),
            path: DEFAULT_HTTP_PATH.to_owned(),
            host: None,
            expect_status: StatusRanges::default(),
            expect_body: None,
        }
    }
}

/// The fields of a UDP check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpCheck {
    /// The datagram sent (may be empty).
    pub payload: String,
    /// A substring the reply must contain; `None`: any reply counts.
    pub expect: Option<String>,
}

/// A list of HTTP status codes and inclusive ranges, e.g. `200,204,301-302`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// Whether `status` is listed.
    #[must_use]
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// The listed `(first, last)` ranges; a single code is `(code, code)`.
    #[must_use]
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl Default for StatusRanges {
    /// `200-399`.
    fn default() -> Self {
        StatusRanges(vec![(200, 399)])
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Why an `expect_status` list is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusRangesError {
    #[error("must list at least one status code or range")]
    Empty,
    #[error("{0:?} is not a status code")]
    NotACode(String),
    #[error("code {0} is out of range 100..=599")]
    OutOfRange(u32),
    #[error("range {0}-{1} is not ordered ({0} > {1})")]
    Unordered(u16, u16),
}

impl FromStr for StatusRanges {
    type Err = StatusRangesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fn code(text: &str) -> Result<u16, StatusRangesError> {
            let text = text.trim();
            if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(StatusRangesError::NotACode(text.to_owned()));
            }
            let n: u32 = text
                .parse()
                .map_err(|_| StatusRangesError::NotACode(text.to_owned()))?;
            u16::try_from(n)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or(StatusRangesError::OutOfRange(n))
        }
        if s.trim().is_empty() {
            return Err(StatusRangesError::Empty);
        }
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let (lo, hi) = match item.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(item)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(StatusRangesError::Unordered(lo, hi));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusRanges(ranges))
    }
}

/// `[[vip]]`: a virtual service (also what a `vip add` request carries and `status` shows).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VipConfig {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub ring_size: u32,
    pub pool: String,
    /// What new flows get while no backend of the pool is up.
    pub on_all_down: AllDownPolicy,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML, or does not fit the schema (unknown field,
    /// wrong type, missing field). `message` is the TOML parser's.
    #[error("{origin}:{line}:{column}: {}{message}", field_prefix(field.as_deref()))]
    Toml {
        origin: String,
        line: usize,
        column: usize,
        /// Key path of the offending value, when it could be worked out.
        field: Option<String>,
        message: String,
    },
    /// The TOML is well-formed but a value is not acceptable.
    #[error("{origin}:{line}:{column}: {field}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points at (`None` for I/O errors).
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Toml { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }
}

fn field_prefix(field: Option<&str>) -> String {
    field.map(|f| format!("{f}: ")).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Entry points and public helpers
// ---------------------------------------------------------------------------

/// Reads and validates the configuration file at `path`.
///
/// # Errors
///
/// [`ConfigError::Io`] if the file cannot be read, otherwise as [`parse`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates configuration `text`; `origin` names it in errors.
///
/// # Errors
///
/// [`ConfigError::Toml`] if `text` is not TOML of the expected shape,
/// [`ConfigError::Invalid`] if a value fails validation. Only the first
/// problem found is reported.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
    Validator { text, origin }.config(raw)
}

/// Why `addr` cannot be a backend's (unicast host) address, if it cannot.
#[must_use]
pub fn not_a_host(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_broadcast() {
        Some("the broadcast address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// Whether `s` is a valid pool or VIP name: 1 to 64 characters of
/// `A-Z a-z 0-9 _ . -`.
#[must_use]
pub fn is_valid_name(s: &str) -> bool {
    name_problem(s).is_none()
}

/// Whether `s` is a name Linux accepts for a network interface.
#[must_use]
pub fn is_valid_interface_name(s: &str) -> bool {
    interface_name_problem(s).is_none()
}

/// Whether `n` is a prime number (Maglev ring sizes must be).
pub use crate::ring::is_prime;

fn name_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    let len = s.chars().count();
    if len > MAX_NAME_LEN {
        return Some(format!(
            "is {len} characters long, at most {MAX_NAME_LEN} are allowed"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!(
            "contains {c:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    None
}

fn interface_name_problem(s: &str) -> Option<String> {
    // The rules of the kernel's dev_valid_name().
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if s.len() > MAX_IFNAME_LEN {
        return Some(format!(
            "is {} bytes long, Linux allows at most {MAX_IFNAME_LEN}",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Some("\".\" and \"..\" are not interface names".to_owned());
    }
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
    {
        return Some(format!("must not contain {c:?}"));
    }
    None
}

// ---------------------------------------------------------------------------
// Raw (serde) structs: the file as written
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    agent: RawAgent,
    #[serde(default)]
    nat: Option<RawNat>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pool: Vec<Spanned<RawPool>>,
    #[serde(default)]
    vip: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawAgent {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    xdp_mode: Option<Spanned<String>>,
    #[serde(default)]
    control_socket: Option<Spanned<String>>,
    #[serde(default)]
    pin_dir: Option<Spanned<String>>,
    #[serde(default)]
    keep_attached: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawNat {
    #[serde(default)]
    source_address: Option<Spanned<String>>,
    #[serde(default)]
    port_range: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTimeouts {
    #[serde(default)]
    tcp: Option<Spanned<String>>,
    #[serde(default)]
    udp: Option<Spanned<String>>,
    #[serde(default)]
    tcp_closing: Option<Spanned<String>>,
    #[serde(default)]
    snat_time_wait: Option<Spanned<String>>,
    #[serde(default)]
    tcp_unreplied: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawPool {
    name: Spanned<String>,
    #[serde(default)]
    on_backend_down: Option<Spanned<String>>,
    #[serde(default)]
    check: Option<RawCheck>,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawBackend {
    address: Spanned<String>,
    port: Spanned<Int>,
    #[serde(default)]
    weight: Option<Spanned<Int>>,
    #[serde(default)]
    check: Option<RawCheck>,
}

/// `[pool.check]`, or a backend's `check`: every field optional, so a
/// backend's table can be merged over its pool's field by field.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawCheck {
    #[serde(default, rename = "type")]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    rise: Option<Spanned<Int>>,
    #[serde(default)]
    fall: Option<Spanned<Int>>,
    #[serde(default)]
    fastinter: Option<Spanned<String>>,
    #[serde(default)]
    downinter: Option<Spanned<String>>,
    #[serde(default)]
    initial_state: Option<Spanned<String>>,
    #[serde(default)]
    port: Option<Spanned<Int>>,
    #[serde(default)]
    address: Option<Spanned<String>>,
    // http
    #[serde(default)]
    method: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    expect_status: Option<Spanned<String>>,
    #[serde(default)]
    expect_body: Option<Spanned<String>>,
    // udp
    #[serde(default)]
    payload: Option<Spanned<String>>,
    #[serde(default)]
    expect: Option<Spanned<String>>,
}

/// One table of a merged check and the key path it was written at
/// (`pool[0] ("web").check`, `pool[0] ("web").backends[1].check`).
struct CheckLayer<'r> {
    raw: &'r RawCheck,
    field: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawVip {
    name: Spanned<String>,
    address: Spanned<String>,
    port: Spanned<Int>,
    protocol: Spanned<String>,
    #[serde(default)]
    scheduler: Option<Spanned<String>>,
    #[serde(default)]
    ring_size: Option<Spanned<Int>>,
    pool: Spanned<String>,
    #[serde(default)]
    on_all_down: Option<Spanned<String>>,
}

/// A TOML integer; range checks happen in the validator so their messages can
/// name the field. (Also makes type errors read "expected an integer".)
#[derive(Clone, Copy, Debug)]
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl serde::de::Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}

// ---------------------------------------------------------------------------
// Validation: raw structs -> Config
// ---------------------------------------------------------------------------

struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
}

type Checked<T> = Result<T, ConfigError>;

impl Validator<'_> {
    fn error(
        &self,
        span: Range<usize>,
        field: impl fmt::Display,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn config(&self, raw: RawConfig) -> Checked<Config> {
        let agent = self.agent(raw.agent)?;
        let nat = match raw.nat {
            Some(nat) => self.nat(nat)?,
            None => NatConfig::default(),
        };
        let timeouts = match raw.timeouts {
            Some(t) => self.timeouts(t)?,
            None => Timeouts::default(),
        };
        let pools = self.pools(raw.pool)?;
        let vips = self.vips(raw.vip, &pools)?;
        Ok(Config {
            agent,
            nat,
            timeouts,
            pools,
            vips,
        })
    }

    fn agent(&self, raw: RawAgent) -> Checked<AgentConfig> {
        let list_span = raw.interfaces.span();
        let list = raw.interfaces.into_inner();
        if list.is_empty() {
            return Err(self.error(
                list_span,
                "agent.interfaces",
                "at least one interface is required",
            ));
        }
        let mut interfaces: Vec<String> = Vec::with_capacity(list.len());
        for (i, name) in list.iter().enumerate() {
            let field = format!("agent.interfaces[{i}]");
            let value = name.get_ref();
            if let Some(why) = interface_name_problem(value) {
                return Err(self.error(
                    name.span(),
                    field,
                    format!("invalid interface name {value:?}: {why}"),
                ));
            }
            if let Some(first) = interfaces.iter().position(|n| n == value) {
                return Err(self.error(
                    name.span(),
                    field,
                    format!("duplicate interface {value:?} (already listed as agent.interfaces[{first}])"),
                ));
            }
            interfaces.push(value.clone());
        }

        let xdp_mode = match &raw.xdp_mode {
            Some(m) => self.word(m, "agent.xdp_mode")?,
            None => XdpMode::Auto,
        };

        let control_socket = match raw.control_socket {
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.error(s.span(), "agent.control_socket", "must not be empty"));
            }
            Some(s) => PathBuf::from(s.into_inner()),
            None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
        };

        let pin_dir = match raw.pin_dir {
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) if !Path::new(s.get_ref()).is_absolute() => {
                return Err(self.error(
                    s.span(),
                    "agent.pin_dir",
                    format!(
                        "{:?} is not an absolute path (a directory on a bpf filesystem, e.g. {DEFAULT_PIN_DIR:?}; \"\" pins nothing)",
                        s.get_ref()
                    ),
                ));
            }
            Some(s) => Some(PathBuf::from(s.into_inner())),
            None => Some(PathBuf::from(DEFAULT_PIN_DIR)),
        };
        let keep_attached = match raw.keep_attached {
            Some(k) if *k.get_ref() && pin_dir.is_none() => {
                return Err(self.error(
                    k.span(),
                    "agent.keep_attached",
                    "needs agent.pin_dir: the XDP links are pinned there for the next agent",
                ));
            }
            Some(k) => k.into_inner(),
            None => false,
        };

        Ok(AgentConfig {
            interfaces,
            xdp_mode,
            control_socket,
            pin_dir,
            keep_attached,
        })
    }

    fn nat(&self, raw: RawNat) -> Checked<NatConfig> {
        let mut nat = NatConfig::default();
        if let Some(addr) = raw.source_address {
            nat.source_address = Some(self.ipv4(&addr, "nat.source_address")?);
        }
        if let Some(range) = raw.port_range {
            let (min, max) = parse_port_range(range.get_ref()).map_err(|why| {
                self.error(
                    range.span(),
                    "nat.port_range",
                    format!("invalid port range {:?}: {why}", range.get_ref()),
                )
            })?;
            nat.port_min = min;
            nat.port_max = max;
        }
        Ok(nat)
    }

    fn timeouts(&self, raw: RawTimeouts) -> Checked<Timeouts> {
        let defaults = Timeouts::default();
        Ok(Timeouts {
            tcp: self.timeout(raw.tcp, "timeouts.tcp", defaults.tcp)?,
            udp: self.timeout(raw.udp, "timeouts.udp", defaults.udp)?,
            tcp_closing: self.timeout(
                raw.tcp_closing,
                "timeouts.tcp_closing",
                defaults.tcp_closing,
            )?,
            snat_time_wait: self.timeout(
                raw.snat_time_wait,
                "timeouts.snat_time_wait",
                defaults.snat_time_wait,
            )?,
            tcp_unreplied: self.timeout(
                raw.tcp_unreplied,
                "timeouts.tcp_unreplied",
                defaults.tcp_unreplied,
            )?,
        })
    }

    fn timeout(
        &self,
        raw: Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Checked<Duration> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        // MIN_TIMEOUT and MAX_TIMEOUT.
        self.duration(&raw, field, MIN_TIMEOUT..=MAX_TIMEOUT, "1s and 24h")
    }

    /// A duration such as `"30s"` within `range` (`bounds` spells it for the message).
    fn duration(
        &self,
        raw: &Spanned<String>,
        field: impl fmt::Display,
        range: std::ops::RangeInclusive<Duration>,
        bounds: &str,
    ) -> Checked<Duration> {
        let text = raw.get_ref();
        let d = humantime::parse_duration(text).map_err(|e| {
            self.error(
                raw.span(),
                &field,
                format!("invalid duration {text:?}: {e} (write e.g. \"30s\", \"5m\" or \"1h\")"),
            )
        })?;
        if !range.contains(&d) {
            return Err(self.error(
                raw.span(),
                field,
                format!("{text:?} is out of range: must be between {bounds}"),
            ));
        }
        Ok(d)
    }

    /// One of the words of an enumeration ([`Protocol`], [`Scheduler`], [`XdpMode`]).
    fn word<T>(&self, raw: &Spanned<String>, field: impl fmt::Display) -> Checked<T>
    where
        T: FromStr<Err = ParseValueError>,
    {
        raw.get_ref()
            .parse()
            .map_err(|e: ParseValueError| self.error(raw.span(), field, e.to_string()))
    }

    fn ipv4(&self, raw: &Spanned<String>, field: impl fmt::Display) -> Checked<Ipv4Addr> {
        let text = raw.get_ref();
        text.parse().map_err(|_| {
            self.error(
                raw.span(),
                field,
                format!("invalid IPv4 address {text:?} (expected dotted quad, e.g. \"10.0.0.1\")"),
            )
        })
    }

    fn port(&self, raw: &Spanned<Int>, field: impl fmt::Display) -> Checked<u16> {
        let v = raw.get_ref().0;
        match u16::try_from(v) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.error(
                raw.span(),
                field,
                format!("port {v} is out of range 1..=65535"),
            )),
        }
    }

    fn name(&self, raw: &Spanned<String>, field: impl fmt::Display) -> Checked<String> {
        let value = raw.get_ref();
        match name_problem(value) {
            None => Ok(value.clone()),
            Some(why) => {
                Err(self.error(raw.span(), field, format!("invalid name {value:?}: {why}")))
            }
        }
    }

    fn pools(&self, raw: Vec<Spanned<RawPool>>) -> Checked<Vec<PoolConfig>> {
        let total: usize = raw.iter().map(|p| p.get_ref().backends.len()).sum();
        let mut seen_backends = 0usize;
        // name -> (index, line of its name)
        let mut names: HashMap<String, (usize, usize)> = HashMap::new();
        let mut pools = Vec::with_capacity(raw.len());

        for (pi, pool) in raw.into_iter().enumerate() {
            let pool = pool.into_inner();
            let field = format!("pool[{pi}] ({:?})", pool.name.get_ref());
            let name = self.name(&pool.name, format_args!("{field}.name"))?;
            if let Some((first, line)) = names.get(&name) {
                return Err(self.error(
                    pool.name.span(),
                    format_args!("{field}.name"),
                    format!("duplicate pool name {name:?} (first defined as pool[{first}] on line {line})"),
                ));
            }
            names.insert(name.clone(), (pi, self.line(&pool.name.span())));

            let on_backend_down = match &pool.on_backend_down {
                None => DownPolicy::default(),
                Some(p) => self.word(p, format_args!("{field}.on_backend_down"))?,
            };
            let empty = RawCheck::default();
            let pool_layer = CheckLayer {
                raw: pool.check.as_ref().unwrap_or(&empty),
                field: format!("{field}.check"),
            };
            let check = self.check(std::slice::from_ref(&pool_layer))?;

            // (address, port) -> index in this pool
            let mut endpoints: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
            let mut backends = Vec::with_capacity(pool.backends.len());
            for (bi, backend) in pool.backends.into_iter().enumerate() {
                let span = backend.span();
                let backend = backend.into_inner();
                let bfield = format!("{field}.backends[{bi}]");
                seen_backends += 1;
                if seen_backends > MAX_BACKENDS {
                    return Err(self.error(
                        span,
                        bfield,
                        format!("too many backends: {total} in total over all pools, at most {MAX_BACKENDS} are supported"),
                    ));
                }
                let address = self.ipv4(&backend.address, format_args!("{bfield}.address"))?;
                if let Some(why) = not_a_host(address) {
                    return Err(self.error(
                        backend.address.span(),
                        format_args!("{bfield}.address"),
                        format!("{address} is {why}, not a backend's address"),
                    ));
                }
                let port = self.port(&backend.port, format_args!("{bfield}.port"))?;
                let weight = match &backend.weight {
                    None => DEFAULT_WEIGHT,
                    Some(w) => {
                        let v = w.get_ref().0;
                        u32::try_from(v)
                            .ok()
                            .filter(|w| *w <= MAX_WEIGHT)
                            .ok_or_else(|| {
                                self.error(
                                    w.span(),
                                    format_args!("{bfield}.weight"),
                                    format!(
                                        "weight {v} is out of range 0..={MAX_WEIGHT} (0 = drained)"
                                    ),
                                )
                            })?
                    }
                };
                if let Some(first) = endpoints.insert((address, port), bi) {
                    return Err(self.error(
                        span,
                        bfield,
                        format!("duplicate backend {address}:{port} (already listed as backends[{first}])"),
                    ));
                }
                let check = match &backend.check {
                    None => check.clone(),
                    Some(raw) => {
                        let layers = [
                            CheckLayer {
                                raw: pool_layer.raw,
                                field: pool_layer.field.clone(),
                            },
                            CheckLayer {
                                raw,
                                field: format!("{bfield}.check"),
                            },
                        ];
                        self.check(&layers)?
                    }
                };
                backends.push(BackendConfig {
                    address,
                    port,
                    weight,
                    check,
                });
            }
            pools.push(PoolConfig {
                name,
                backends,
                check,
                on_backend_down,
            });
        }
        Ok(pools)
    }

    fn vips(&self, raw: Vec<Spanned<RawVip>>, pools: &[PoolConfig]) -> Checked<Vec<VipConfig>> {
        let total = raw.len();
        // name -> (index, line of its name)
        let mut names: HashMap<String, (usize, usize)> = HashMap::new();
        // listener -> (index, name, line of the vip)
        let mut listeners: HashMap<(Ipv4Addr, u16, Protocol), (usize, String, usize)> =
            HashMap::new();
        let mut vips = Vec::with_capacity(total.min(MAX_VIPS));

        for (vi, vip) in raw.into_iter().enumerate() {
            let span = vip.span();
            let vip = vip.into_inner();
            let field = format!("vip[{vi}] ({:?})", vip.name.get_ref());
            if vi >= MAX_VIPS {
                return Err(self.error(
                    span,
                    field,
                    format!("too many VIPs: {total} defined, at most {MAX_VIPS} are supported"),
                ));
            }
            let name = self.name(&vip.name, format_args!("{field}.name"))?;
            if let Some((first, line)) = names.get(&name) {
                return Err(self.error(
                    vip.name.span(),
                    format_args!("{field}.name"),
                    format!("duplicate VIP name {name:?} (first defined as vip[{first}] on line {line})"),
                ));
            }
            names.insert(name.clone(), (vi, self.line(&vip.name.span())));

            let address = self.ipv4(&vip.address, format_args!("{field}.address"))?;
            let port = self.port(&vip.port, format_args!("{field}.port"))?;
            let protocol: Protocol = self.word(&vip.protocol, format_args!("{field}.protocol"))?;
            let scheduler = match &vip.scheduler {
                None => Scheduler::Maglev,
                Some(s) => self.word(s, format_args!("{field}.scheduler"))?,
            };
            let ring_size = match &vip.ring_size {
                None => DEFAULT_RING_SIZE,
                Some(r) => {
                    let v = r.get_ref().0;
                    let rfield = format!("{field}.ring_size");
                    match u32::try_from(v) {
                        Ok(n) if n <= MAX_RING_SIZE && is_prime(n) => n,
                        Ok(n) if n <= MAX_RING_SIZE => {
                            return Err(self.error(
                                r.span(),
                                rfield,
                                format!("{n} is not prime (Maglev needs a prime ring size, e.g. {DEFAULT_RING_SIZE})"),
                            ));
                        }
                        _ => {
                            return Err(self.error(
                                r.span(),
                                rfield,
                                format!("{v} is out of range: must be a prime no larger than {MAX_RING_SIZE}"),
                            ));
                        }
                    }
                }
            };

            let pool_name = vip.pool.get_ref();
            if !pools.iter().any(|p| &p.name == pool_name) {
                let known = if pools.is_empty() {
                    "no [[pool]] is defined".to_owned()
                } else {
                    let list: Vec<String> = pools.iter().map(|p| format!("{:?}", p.name)).collect();
                    format!("defined pools: {}", list.join(", "))
                };
                return Err(self.error(
                    vip.pool.span(),
                    format_args!("{field}.pool"),
                    format!("unknown pool {pool_name:?} ({known})"),
                ));
            }

            if name != *pool_name && pools.iter().any(|p| p.name == name) {
                return Err(self.error(
                    vip.name.span(),
                    format_args!("{field}.name"),
                    format!(
                        "{name:?} is also the name of a pool, and this VIP uses pool {pool_name:?}: \
                         `backend` commands naming {name:?} would be ambiguous (a VIP may share \
                         its name only with its own pool)"
                    ),
                ));
            }

            let key = (address, port, protocol);
            if let Some((first, first_name, line)) = listeners.get(&key) {
                return Err(self.error(
                    span,
                    field,
                    format!("{address}:{port}/{protocol} is already used by vip[{first}] ({first_name:?}) on line {line}"),
                ));
            }
            listeners.insert(key, (vi, name.clone(), self.line(&span)));

            let on_all_down = match &vip.on_all_down {
                None => AllDownPolicy::default(),
                Some(p) => self.word(p, format_args!("{field}.on_all_down"))?,
            };

            vips.push(VipConfig {
                name,
                address,
                port,
                protocol,
                scheduler,
                ring_size,
                pool: pool_name.clone(),
                on_all_down,
            });
        }
        Ok(vips)
    }

    /// A health check from `layers`, the pool's table first and a backend's
    /// over it: each field comes from the last layer that sets it, and
    /// defaults are applied after merging (so `timeout` follows the merged
    /// `interval`). Fields of one check type (`path`, `payload`, ...) are
    /// inherited only while the type stays the same; set in a layer whose
    /// type (as merged so far) is another one, they are an error.
    fn check(&self, layers: &[CheckLayer<'_>]) -> Checked<CheckConfig> {
        // The merged type after each layer.
        let mut types = Vec::with_capacity(layers.len());
        let mut ty = CheckType::None;
        for layer in layers {
            if let Some(t) = &layer.raw.kind {
                ty = self.word(t, format_args!("{}.type", layer.field))?;
            }
            types.push(ty);
        }

        // The last layer that sets a field, with the field's key path.
        fn pick<'r, T>(
            layers: &[CheckLayer<'r>],
            name: &str,
            get: impl Fn(&'r RawCheck) -> Option<&'r T>,
        ) -> Option<(&'r T, String)> {
            layers
                .iter()
                .rev()
                .find_map(|l| get(l.raw).map(|v| (v, format!("{}.{name}", l.field))))
        }
        // Like `pick` for a field of check type `owner`.
        let pick_typed = |name: &str,
                          owner: CheckType,
                          get: &dyn Fn(&RawCheck) -> Option<&Spanned<String>>|
         -> Checked<Option<(&Spanned<String>, String)>> {
            let mut found = None;
            for (layer, &layer_ty) in layers.iter().zip(&types).rev() {
                let Some(value) = get(layer.raw) else {
                    continue;
                };
                let field = format!("{}.{name}", layer.field);
                if layer_ty != owner {
                    return Err(self.error(
                        value.span(),
                        field,
                        format!("only allowed with type = \"{owner}\" (this check's type is \"{layer_ty}\")"),
                    ));
                }
                if layer_ty == ty && found.is_none() {
                    found = Some((value, field));
                }
            }
            Ok(found)
        };

        let bounds = MIN_CHECK_DURATION..=MAX_CHECK_DURATION;
        // MIN_CHECK_DURATION and MAX_CHECK_DURATION.
        let spelled = "10ms and 1h";
        let duration = |name: &str, get: fn(&RawCheck) -> Option<&Spanned<String>>| {
            pick(layers, name, get)
                .map(|(raw, field)| self.duration(raw, field, bounds.clone(), spelled))
                .transpose()
        };
        let count = |name: &str, get: fn(&RawCheck) -> Option<&Spanned<Int>>, default: u32| {
            let Some((raw, field)) = pick(layers, name, get) else {
                return Ok(default);
            };
            let v = raw.get_ref().0;
            u32::try_from(v)
                .ok()
                .filter(|n| (1..=MAX_RISE_FALL).contains(n))
                .ok_or_else(|| {
                    self.error(
                        raw.span(),
                        field,
                        format!("{name} {v} is out of range 1..={MAX_RISE_FALL}"),
                    )
                })
        };

        let interval =
            duration("interval", |r| r.interval.as_ref())?.unwrap_or(DEFAULT_CHECK_INTERVAL);
        let timeout = duration("timeout", |r| r.timeout.as_ref())?.unwrap_or(interval);
        let fastinter = duration("fastinter", |r| r.fastinter.as_ref())?.unwrap_or(interval);
        let downinter = duration("downinter", |r| r.downinter.as_ref())?.unwrap_or(interval);
        let rise = count("rise", |r| r.rise.as_ref(), DEFAULT_RISE)?;
        let fall = count("fall", |r| r.fall.as_ref(), DEFAULT_FALL)?;
        let initial_state = match pick(layers, "initial_state", |r| r.initial_state.as_ref()) {
            None => Health::Up,
            Some((raw, field)) => self.word(raw, field)?,
        };
        let port = pick(layers, "port", |r| r.port.as_ref())
            .map(|(raw, field)| self.port(raw, field))
            .transpose()?;
        let address = pick(layers, "address", |r| r.address.as_ref())
            .map(|(raw, field)| self.ipv4(raw, field))
            .transpose()?;

        let method = pick_typed("method", CheckType::Http, &|r| r.method.as_ref())?;
        let path = pick_typed("path", CheckType::Http, &|r| r.path.as_ref())?;
        let host = pick_typed("host", CheckType::Http, &|r| r.host.as_ref())?;
        let expect_status = pick_typed("expect_status", CheckType::Http, &|r| {
            r.expect_status.as_ref()
        })?;
        let expect_body = pick_typed("expect_body", CheckType::Http, &|r| r.expect_body.as_ref())?;
        let payload = pick_typed("payload", CheckType::Udp, &|r| r.payload.as_ref())?;
        let expect = pick_typed("expect", CheckType::Udp, &|r| r.expect.as_ref())?;

        let kind = match ty {
            CheckType::None => CheckKind::None,
            CheckType::Tcp => CheckKind::Tcp,
            CheckType::Http => {
                let mut http = HttpCheck::default();
                if let Some((raw, field)) = method {
                    http.method = self.text_field(raw, field, "method", method_problem)?;
                }
                if let Some((raw, field)) = path {
                    http.path = self.text_field(raw, field, "path", path_problem)?;
                }
                if let Some((raw, field)) = host {
                    http.host = Some(self.text_field(raw, field, "host", host_problem)?);
                }
                if let Some((raw, field)) = expect_status {
                    let text = raw.get_ref();
                    http.expect_status = text.parse().map_err(|e: StatusRangesError| {
                        self.error(
                            raw.span(),
                            field,
                            format!("invalid status list {text:?}: {e} (write e.g. \"200\", \"200-299\" or \"200,204,301-302\")"),
                        )
                    })?;
                }
                if let Some((raw, field)) = expect_body {
                    http.expect_body =
                        Some(self.text_field(raw, field, "expect_body", expect_problem)?);
                }
                CheckKind::Http(http)
            }
            CheckType::Udp => {
                let mut udp = UdpCheck::default();
                if let Some((raw, field)) = payload {
                    udp.payload = self.text_field(raw, field, "payload", payload_problem)?;
                }
                if let Some((raw, field)) = expect {
                    udp.expect = Some(self.text_field(raw, field, "expect", expect_problem)?);
                }
                CheckKind::Udp(udp)
            }
        };

        Ok(CheckConfig {
            kind,
            interval,
            timeout,
            rise,
            fall,
            fastinter,
            downinter,
            initial_state,
            port,
            address,
        })
    }

    /// A string field that `problem` accepts (it returns why not).
    fn text_field(
        &self,
        raw: &Spanned<String>,
        field: impl fmt::Display,
        what: &str,
        problem: fn(&str) -> Option<String>,
    ) -> Checked<String> {
        let value = raw.get_ref();
        match problem(value) {
            None => Ok(value.clone()),
            Some(why) => Err(self.error(
                raw.span(),
                field,
                format!("invalid {what} {value:?}: {why}"),
            )),
        }
    }
}

fn method_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if s.len() > MAX_HTTP_METHOD_LEN {
        return Some(format!("is longer than {MAX_HTTP_METHOD_LEN} bytes"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Some("must be an uppercase token such as \"GET\" or \"HEAD\"".to_owned());
    }
    None
}

/// Bytes allowed in a request target or a `Host` value: visible ASCII.
fn visible_ascii_problem(s: &str) -> Option<String> {
    if s.len() > MAX_HTTP_FIELD_LEN {
        return Some(format!("is longer than {MAX_HTTP_FIELD_LEN} bytes"));
    }
    s.bytes()
        .any(|b| !b.is_ascii_graphic())
        .then(|| "must be visible ASCII without spaces (percent-encode other bytes)".to_owned())
}

fn path_problem(s: &str) -> Option<String> {
    if !s.starts_with('/') {
        return Some("must start with '/'".to_owned());
    }
    visible_ascii_problem(s)
}

fn host_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    visible_ascii_problem(s)
}

fn expect_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty (leave the field out to accept anything)".to_owned());
    }
    (s.len() > MAX_EXPECT_LEN).then(|| format!("is longer than {MAX_EXPECT_LEN} bytes"))
}

fn payload_problem(s: &str) -> Option<String> {
    (s.len() > MAX_UDP_PAYLOAD)
        .then(|| format!("is longer than {MAX_UDP_PAYLOAD} bytes (the largest UDP payload)"))
}

/// Parses `"MIN-MAX"` with `MIN_NAT_PORT <= MIN <= MAX <= 65535`.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (min, max) = s
        .split_once('-')
        .ok_or_else(|| "expected \"MIN-MAX\", e.g. \"20000-32767\"".to_owned())?;
    let port = |what: &str, text: &str| -> Result<u16, String> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{what} {text:?} is not a port number"));
        }
        text.parse::<u16>()
            .map_err(|_| format!("{what} {text} is larger than 65535"))
    };
    let min = port("MIN", min)?;
    let max = port("MAX", max)?;
    if min < MIN_NAT_PORT {
        return Err(format!("MIN {min} is below {MIN_NAT_PORT}"));
    }
    if min > max {
        return Err(format!("MIN {min} is greater than MAX {max}"));
    }
    Ok((min, max))
}

// ---------------------------------------------------------------------------
// TOML error positions
// ---------------------------------------------------------------------------

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or("").chars().count() + 1;
    (line, column)
}

fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let offset = span.as_ref().map_or(0, |s| s.start);
    let (line, column) = line_col(text, offset);
    // An empty span (e.g. a missing top-level table) points at no key.
    let field = span
        .filter(|s| s.start < s.end)
        .and_then(|s| key_path_at(text, s.start));
    let message = e.message().trim().replace('\n', "; ");
    ConfigError::Toml {
        origin: origin.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// One step of a key path: a key, or an index into an array.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Best-effort key path (`vip[1] ("web").port`) of the innermost key or value
/// covering byte `target`. `toml`'s error carries no key path, so the text is
/// scanned again here; the scanner gives up (returning what it has) on
/// anything it does not understand and never panics.
fn key_path_at(text: &str, target: usize) -> Option<String> {
    let mut finder = PathFinder {
        b: text.as_bytes(),
        // Skip a byte order mark.
        pos: if text.starts_with('\u{feff}') { 3 } else { 0 },
        target,
        best: None,
        tables: HashMap::new(),
        names: HashMap::new(),
    };
    // A scan that stops early still leaves whatever it found.
    let _ = finder.document();
    let (_, path) = finder.best.as_ref()?;
    if path.is_empty() {
        return None;
    }
    Some(finder.render(path))
}

struct PathFinder<'a> {
    b: &'a [u8],
    pos: usize,
    target: usize,
    /// Length of the narrowest range covering `target`, and its path.
    best: Option<(usize, Vec<Seg>)>,
    /// Number of elements of each `[[array.of.tables]]` seen so far.
    tables: HashMap<Vec<Seg>, usize>,
    /// `name = "..."` of array elements, keyed by the element's path.
    names: HashMap<Vec<Seg>, String>,
}

impl PathFinder<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn at(&self, s: &[u8]) -> bool {
        self.b
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(s))
    }

    fn consider(&mut self, range: Range<usize>, path: &[Seg]) {
        if !range.contains(&self.target) {
            return;
        }
        let len = range.end - range.start;
        if self.best.as_ref().is_none_or(|(best, _)| len < *best) {
            self.best = Some((len, path.to_vec()));
        }
    }

    /// Spaces and tabs.
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Whitespace, newlines and comments.
    fn skip_trivia(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'#') => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    fn document(&mut self) -> Option<()> {
        let mut table: Vec<Seg> = Vec::new();
        loop {
            self.skip_trivia();
            let start = self.pos;
            match self.peek() {
                None => return Some(()),
                Some(b'[') => {
                    let array = self.at(b"[[");
                    self.pos += if array { 2 } else { 1 };
                    let keys = self.keys()?;
                    self.skip_ws();
                    self.expect(b']')?;
                    if array {
                        self.expect(b']')?;
                    }
                    table = self.resolve(keys, array);
                    self.consider(start..self.pos, &table);
                }
                Some(_) => {
                    let mut path = table.clone();
                    path.extend(self.keys()?.into_iter().map(Seg::Key));
                    self.skip_ws();
                    self.expect(b'=')?;
                    self.skip_ws();
                    self.value(&path)?;
                    self.consider(start..self.pos, &path);
                }
            }
        }
    }

    /// Path of a table header; `[[x]]` headers append a new element to `x`.
    fn resolve(&mut self, keys: Vec<String>, array: bool) -> Vec<Seg> {
        let count = keys.len();
        let mut path = Vec::with_capacity(count * 2);
        for (i, key) in keys.into_iter().enumerate() {
            path.push(Seg::Key(key));
            if array && i + 1 == count {
                let n = self.tables.entry(path.clone()).or_insert(0);
                path.push(Seg::Index(*n));
                *n += 1;
            } else if let Some(n) = self.tables.get(&path) {
                path.push(Seg::Index(n.saturating_sub(1)));
            }
        }
        path
    }

    /// A dotted key such as `a."b c".d`.
    fn keys(&mut self) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        loop {
            self.skip_ws();
            let key = match self.peek()? {
                b'"' | b'\'' => self.string()?,
                _ => {
                    let start = self.pos;
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                    {
                        self.pos += 1;
                    }
                    if self.pos == start {
                        return None;
                    }
                    String::from_utf8_lossy(self.b.get(start..self.pos)?).into_owned()
                }
            };
            keys.push(key);
            self.skip_ws();
            if self.peek() == Some(b'.') {
                self.pos += 1;
            } else {
                return Some(keys);
            }
        }
    }

    /// Any of the four string forms; returns the raw (unescaped) content.
    fn string(&mut self) -> Option<String> {
        let q = self.peek()?;
        let triple = [q, q, q];
        let (start, end) = if self.at(&triple) {
            self.pos += 3;
            let start = self.pos;
            loop {
                let c = self.peek()?;
                if q == b'"' && c == b'\\' {
                    self.pos += 2;
                } else if self.at(&triple) {
                    // Up to two more quotes still belong to the content.
                    let mut end = self.pos;
                    while end - self.pos < 2 && self.b.get(end + 3) == Some(&q) {
                        end += 1;
                    }
                    self.pos = end + 3;
                    break (start, end);
                } else {
                    self.pos += 1;
                }
            }
        } else {
            self.pos += 1;
            let start = self.pos;
            loop {
                match self.peek()? {
                    b'\\' if q == b'"' => self.pos += 2,
                    b'\n' => return None,
                    c if c == q => {
                        self.pos += 1;
                        break (start, self.pos - 1);
                    }
                    _ => self.pos += 1,
                }
            }
        };
        Some(String::from_utf8_lossy(self.b.get(start..end)?).into_owned())
    }

    fn value(&mut self, path: &[Seg]) -> Option<()> {
        let start = self.pos;
        match self.peek()? {
            b'"' | b'\'' => {
                let s = self.string()?;
                if let [parent @ .., Seg::Index(_), Seg::Key(key)] = path {
                    if key == "name" {
                        let mut element = parent.to_vec();
                        element.push(path[path.len() - 2].clone());
                        self.names.insert(element, s);
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut i = 0;
                loop {
                    self.skip_trivia();
                    if self.peek()? == b']' {
                        self.pos += 1;
                        break;
                    }
                    let mut element = path.to_vec();
                    element.push(Seg::Index(i));
                    self.value(&element)?;
                    i += 1;
                    self.skip_trivia();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b']' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.pos += 1;
                loop {
                    self.skip_trivia();
                    if self.peek()? == b'}' {
                        self.pos += 1;
                        break;
                    }
                    let key_start = self.pos;
                    let mut inner = path.to_vec();
                    inner.extend(self.keys()?.into_iter().map(Seg::Key));
                    self.skip_ws();
                    self.expect(b'=')?;
                    self.skip_ws();
                    self.value(&inner)?;
                    self.consider(key_start..self.pos, &inner);
                    self.skip_trivia();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            _ => {
                // Number, boolean or date-time: up to the next delimiter.
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b']' | b'}' | b'#' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
                while self.pos > start && matches!(self.b.get(self.pos - 1), Some(b' ' | b'\t')) {
                    self.pos -= 1;
                }
                if self.pos == start {
                    return None;
                }
            }
        }
        self.consider(start..self.pos, path);
        Some(())
    }

    fn render(&self, path: &[Seg]) -> String {
        let mut out = String::new();
        for (i, seg) in path.iter().enumerate() {
            match seg {
                Seg::Key(key) => {
                    if i > 0 {
                        out.push('.');
                    }
                    let bare = !key.is_empty()
                        && key
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
                    if bare {
                        out.push_str(key);
                    } else {
                        let _ = write!(out, "{key:?}");
                    }
                }
                Seg::Index(n) => {
                    let _ = write!(out, "[{n}]");
                    if let Some(name) = path.get(..=i).and_then(|p| self.names.get(p)) {
                        let _ = write!(out, " ({name:?})");
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "balancer.toml";

    /// A complete configuration; line numbers are in the comments of the tests.
    const FULL: &str = r#"# balancer test config
[agent]
interfaces = ["lbc0", "lbs0"]
xdp_mode = "driver"
control_socket = "/tmp/lb.sock"
pin_dir = "/sys/fs/bpf/lb"
keep_attached = true

[nat]
source_address = "10.0.2.1"
port_range = "30000-40000"

[timeouts]
tcp = "10m"
udp = "45s"
tcp_closing = "5s"
snat_time_wait = "2m"
tcp_unreplied = "20s"

[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80, weight = 1 },
  { address = "10.0.2.12", port = 80 },
  { address = "10.0.2.13", port = 8080, weight = 0 },
]

[[pool]]
name = "dns"
backends = []

[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
ring_size = 65537
pool = "web"

[[vip]]
name = "dns"
address = "10.0.100.1"
port = 53
protocol = "UDP"
scheduler = "rr"
ring_size = 251
pool = "dns"
"#;

    /// One pool and one VIP; tests swap single lines, keeping line numbers.
    const ONE_VIP: &str = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
ring_size = 65537
pool = "web"
"#;

    const TIMEOUTS: &str = r#"[agent]
interfaces = ["lbc0"]

[timeouts]
tcp = "5m"
udp = "30s"
tcp_closing = "10s"
snat_time_wait = "60s"
tcp_unreplied = "60s"
"#;

    const NAT: &str = r#"[agent]
interfaces = ["lbc0"]
[nat]
source_address = "10.0.2.1"
port_range = "20000-32767"
"#;

    /// `base` with the first `from` replaced by `to` (which must be present).
    fn with(base: &str, from: &str, to: &str) -> String {
        assert!(base.contains(from), "{from:?} not in test input");
        base.replacen(from, to, 1)
    }

    /// The error message for `text`, which must fail to parse.
    fn error_of(text: &str) -> String {
        match parse(text, ORIGIN) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts `text` fails with a message that starts with `prefix`
    /// (`FILE:LINE:COL: FIELD: `) and contains `fragment`.
    fn assert_error(text: &str, prefix: &str, fragment: &str) {
        let message = error_of(text);
        assert!(
            message.starts_with(prefix),
            "message {message:?} does not start with {prefix:?}"
        );
        assert!(
            message.contains(fragment),
            "message {message:?} does not contain {fragment:?}"
        );
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\n# balancer.toml")
            .expect("the README has its balancer.toml example");
        let body = &readme[start + "```toml\n".len()..];
        let example = &body[..body.find("```").expect("the example block ends")];
        let config = parse(example, "README.md").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.agent.pin_dir, Some(PathBuf::from(DEFAULT_PIN_DIR)));
        assert_eq!(config.vips.len(), 1);
    }

    #[test]
    fn full_example_parses() {
        let config = parse(FULL, ORIGIN).unwrap();
        let expected = Config {
            agent: AgentConfig {
                interfaces: vec!["lbc0".into(), "lbs0".into()],
                xdp_mode: XdpMode::Driver,
                control_socket: PathBuf::from("/tmp/lb.sock"),
                pin_dir: Some(PathBuf::from("/sys/fs/bpf/lb")),
                keep_attached: true,
            },
            nat: NatConfig {
                source_address: Some(ip("10.0.2.1")),
                port_min: 30000,
                port_max: 40000,
            },
            timeouts: Timeouts {
                tcp: Duration::from_secs(600),
                udp: Duration::from_secs(45),
                tcp_closing: Duration::from_secs(5),
                snat_time_wait: Duration::from_secs(120),
                tcp_unreplied: Duration::from_secs(20),
            },
            pools: vec![
                PoolConfig {
                    name: "web".into(),
                    backends: vec![
                        BackendConfig {
                            address: ip("10.0.2.11"),
                            port: 80,
                            weight: 1,
                            check: CheckConfig::default(),
                        },
                        BackendConfig {
                            address: ip("10.0.2.12"),
                            port: 80,
                            weight: 1,
                            check: CheckConfig::default(),
                        },
                        BackendConfig {
                            address: ip("10.0.2.13"),
                            port: 8080,
                            weight: 0,
                            check: CheckConfig::default(),
                        },
                    ],
                    check: CheckConfig::default(),
                    on_backend_down: DownPolicy::Shutdown,
                },
                PoolConfig {
                    name: "dns".into(),
                    backends: vec![],
                    check: CheckConfig::default(),
                    on_backend_down: DownPolicy::Shutdown,
                },
            ],
            vips: vec![
                VipConfig {
                    name: "web".into(),
                    address: ip("10.0.100.1"),
                    port: 80,
                    protocol: Protocol::Tcp,
                    scheduler: Scheduler::Maglev,
                    ring_size: 65537,
                    pool: "web".into(),
                    on_all_down: AllDownPolicy::Drop,
                },
                VipConfig {
                    name: "dns".into(),
                    address: ip("10.0.100.1"),
                    port: 53,
                    protocol: Protocol::Udp,
                    scheduler: Scheduler::RoundRobin,
                    ring_size: 251,
                    pool: "dns".into(),
                    on_all_down: AllDownPolicy::Drop,
                },
            ],
        };
        assert_eq!(config, expected);
        assert_eq!(config.pool("dns"), Some(&expected.pools[1]));
        assert_eq!(config.pool("nope"), None);
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let config = parse("[agent]\ninterfaces = [\"eth0\"]\n", ORIGIN).unwrap();
        assert_eq!(
            config,
            Config {
                agent: AgentConfig {
                    interfaces: vec!["eth0".into()],
                    xdp_mode: XdpMode::Auto,
                    control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
                    pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
                    keep_attached: false,
                },
                nat: NatConfig {
                    source_address: None,
                    port_min: 20000,
                    port_max: 32767,
                },
                timeouts: Timeouts {
                    tcp: Duration::from_secs(300),
                    udp: Duration::from_secs(30),
                    tcp_closing: Duration::from_secs(10),
                    snat_time_wait: Duration::from_secs(60),
                    tcp_unreplied: Duration::from_secs(60),
                },
                pools: vec![],
                vips: vec![],
            }
        );
        assert_eq!(config.nat, NatConfig::default());
        assert_eq!(config.timeouts, Timeouts::default());
    }

    #[test]
    fn empty_tables_and_omitted_fields_use_defaults() {
        let text = "[agent]\ninterfaces = [\"eth0\"]\n[nat]\n[timeouts]\nudp = \"1m\"\n\
                    [[pool]]\nname = \"p\"\n[[vip]]\nname = \"v\"\naddress = \"1.2.3.4\"\n\
                    port = 443\nprotocol = \"tcp\"\npool = \"p\"\n";
        let config = parse(text, ORIGIN).unwrap();
        assert_eq!(config.nat, NatConfig::default());
        assert_eq!(config.timeouts.udp, Duration::from_secs(60));
        assert_eq!(config.timeouts.tcp, DEFAULT_TCP_TIMEOUT);
        assert!(config.pools[0].backends.is_empty());
        assert_eq!(config.vips[0].scheduler, Scheduler::Maglev);
        assert_eq!(config.vips[0].ring_size, DEFAULT_RING_SIZE);
    }

    #[test]
    fn one_vip_base_is_valid() {
        let config = parse(ONE_VIP, ORIGIN).unwrap();
        assert_eq!(config.vips.len(), 1);
        parse(TIMEOUTS, ORIGIN).unwrap();
        parse(NAT, ORIGIN).unwrap();
    }

    #[test]
    fn duplicate_vip_name() {
        let text = format!(
            "{ONE_VIP}[[vip]]\nname = \"web\"\naddress = \"10.0.100.2\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n"
        );
        // The second vip's name is on line 13.
        assert_error(
            &text,
            "balancer.toml:13:8: vip[1] (\"web\").name: ",
            "duplicate VIP name \"web\" (first defined as vip[0] on line 6)",
        );
    }

    #[test]
    fn duplicate_vip_listener() {
        let text = format!(
            "{ONE_VIP}[[vip]]\nname = \"web2\"\naddress = \"10.0.100.1\"\nport = 80\nprotocol = \"TCP\"\npool = \"web\"\n"
        );
        // The second [[vip]] starts on line 12.
        assert_error(
            &text,
            "balancer.toml:12:1: vip[1] (\"web2\"): ",
            "10.0.100.1:80/tcp is already used by vip[0] (\"web\") on line 5",
        );
    }

    #[test]
    fn same_listener_with_other_protocol_is_allowed() {
        let text = format!(
            "{ONE_VIP}[[vip]]\nname = \"web-udp\"\naddress = \"10.0.100.1\"\nport = 80\nprotocol = \"udp\"\npool = \"web\"\n"
        );
        let config = parse(&text, ORIGIN).unwrap();
        assert_eq!(config.vips[1].protocol, Protocol::Udp);
    }

    #[test]
    fn unknown_pool() {
        let text = with(ONE_VIP, "pool = \"web\"", "pool = \"wbe\"");
        assert_error(
            &text,
            "balancer.toml:11:8: vip[0] (\"web\").pool: ",
            "unknown pool \"wbe\" (defined pools: \"web\")",
        );
    }

    #[test]
    fn unknown_pool_when_none_defined() {
        let text = with(ONE_VIP, "[[pool]]\nname = \"web\"\n", "\n\n");
        assert_error(
            &text,
            "balancer.toml:11:8: vip[0] (\"web\").pool: ",
            "unknown pool \"web\" (no [[pool]] is defined)",
        );
    }

    #[test]
    fn vip_named_like_another_pool() {
        // VIP "web" may use pool "web"; with pool "api" it would make `backend add web`
        // ambiguous.
        let text = with(ONE_VIP, "[[vip]]", "[[pool]]\nname = \"api\"\n[[vip]]");
        let text = with(&text, "pool = \"web\"", "pool = \"api\"");
        assert_error(
            &text,
            "balancer.toml:8:8: vip[0] (\"web\").name: ",
            "\"web\" is also the name of a pool, and this VIP uses pool \"api\"",
        );
    }

    #[test]
    fn backend_address_must_be_a_host() {
        for (address, why) in [
            ("0.0.0.0", "the unspecified address"),
            ("255.255.255.255", "the broadcast address"),
            ("239.1.2.3", "a multicast address"),
        ] {
            let text = with(
                ONE_VIP,
                "name = \"web\"\n[[vip]]",
                &format!("name = \"web\"\n[[pool.backends]]\naddress = \"{address}\"\nport = 80\n[[vip]]"),
            );
            assert_error(
                &text,
                "balancer.toml:6:11: pool[0] (\"web\").backends[0].address: ",
                &format!("{address} is {why}, not a backend's address"),
            );
        }
    }

    #[test]
    fn duplicate_pool_name() {
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"web\"\n\n[[pool]]\nname = \"web\"\n";
        assert_error(
            text,
            "balancer.toml:7:8: pool[1] (\"web\").name: ",
            "duplicate pool name \"web\" (first defined as pool[0] on line 4)",
        );
    }

    #[test]
    fn duplicate_backend() {
        let text = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80 },
  { address = "10.0.2.12", port = 80 },
  { address = "10.0.2.11", port = 80, weight = 5 },
]
"#;
        assert_error(
            text,
            "balancer.toml:8:3: pool[0] (\"web\").backends[2]: ",
            "duplicate backend 10.0.2.11:80 (already listed as backends[0])",
        );
    }

    #[test]
    fn same_backend_in_two_pools_is_allowed() {
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n\
                    [[pool]]\nname = \"a\"\nbackends = [{ address = \"10.0.2.11\", port = 80 }]\n\
                    [[pool]]\nname = \"b\"\nbackends = [{ address = \"10.0.2.11\", port = 80 }]\n";
        assert_eq!(parse(text, ORIGIN).unwrap().pools.len(), 2);
    }

    /// A config with one pool "p" and `n` VIPs `v0..`; VIP i starts on line 5 + 6 * i.
    fn many_vips(n: usize) -> String {
        let mut text = String::from("[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n");
        for i in 0..n {
            text.push_str(&format!(
                "[[vip]]\nname = \"v{i}\"\naddress = \"10.0.100.{i}\"\nport = 80\nprotocol = \"tcp\"\npool = \"p\"\n"
            ));
        }
        text
    }

    #[test]
    fn too_many_vips() {
        assert_eq!(parse(&many_vips(MAX_VIPS), ORIGIN).unwrap().vips.len(), 32);
        assert_error(
            &many_vips(MAX_VIPS + 1),
            "balancer.toml:197:1: vip[32] (\"v32\"): ",
            "too many VIPs: 33 defined, at most 32 are supported",
        );
    }

    /// Two pools "a" and "b" with `a` and `b` backends, one per line: backend
    /// j of "a" is on line 6 + j, backend k of "b" on line 10 + a + k.
    fn many_backends(a: usize, b: usize) -> String {
        let mut text = String::from("[agent]\ninterfaces = [\"lbc0\"]\n");
        let mut n = 0usize;
        for (name, count) in [("a", a), ("b", b)] {
            text.push_str(&format!("[[pool]]\nname = \"{name}\"\nbackends = [\n"));
            for _ in 0..count {
                text.push_str(&format!(
                    "  {{ address = \"10.1.{}.{}\", port = 80 }},\n",
                    n / 256,
                    n % 256
                ));
                n += 1;
            }
            text.push_str("]\n");
        }
        text
    }

    #[test]
    fn too_many_backends() {
        let ok = parse(&many_backends(2000, 2096), ORIGIN).unwrap();
        assert_eq!(
            ok.pools.iter().map(|p| p.backends.len()).sum::<usize>(),
            4096
        );
        // The 4097th backend is backends[2096] of pool "b", on line 10 + 2000 + 2096.
        assert_error(
            &many_backends(2000, 2097),
            "balancer.toml:4106:3: pool[1] (\"b\").backends[2096]: ",
            "too many backends: 4097 in total over all pools, at most 4096 are supported",
        );
    }

    #[test]
    fn bad_port_range() {
        let cases = [
            ("\"1000-2000\"", "MIN 1000 is below 1024"),
            ("\"30000-20000\"", "MIN 30000 is greater than MAX 20000"),
            ("\"20000\"", "expected \"MIN-MAX\""),
            ("\"20000-70000\"", "MAX 70000 is larger than 65535"),
            ("\"a-b\"", "MIN \"a\" is not a port number"),
            ("\"-5-6\"", "MIN \"\" is not a port number"),
        ];
        for (value, why) in cases {
            let text = with(NAT, "\"20000-32767\"", value);
            assert_error(
                &text,
                "balancer.toml:5:14: nat.port_range: invalid port range ",
                why,
            );
        }
        let text = with(NAT, "\"20000-32767\"", "\"1024 - 65535\"");
        let nat = parse(&text, ORIGIN).unwrap().nat;
        assert_eq!((nat.port_min, nat.port_max), (1024, 65535));
    }

    #[test]
    fn bad_nat_source_address() {
        let text = with(NAT, "\"10.0.2.1\"", "\"10.0.2\"");
        assert_error(
            &text,
            "balancer.toml:4:18: nat.source_address: ",
            "invalid IPv4 address \"10.0.2\"",
        );
    }

    #[test]
    fn ring_size_not_prime() {
        let text = with(ONE_VIP, "ring_size = 65537", "ring_size = 65536");
        assert_error(
            &text,
            "balancer.toml:10:13: vip[0] (\"web\").ring_size: ",
            "65536 is not prime (Maglev needs a prime ring size, e.g. 65537)",
        );
        let text = with(ONE_VIP, "ring_size = 65537", "ring_size = 0");
        assert_error(
            &text,
            "balancer.toml:10:13: vip[0] (\"web\").ring_size: ",
            "0 is not prime",
        );
    }

    #[test]
    fn ring_size_too_large() {
        for value in ["65539", "131071", "-7", "9999999999"] {
            let text = with(
                ONE_VIP,
                "ring_size = 65537",
                &format!("ring_size = {value}"),
            );
            assert_error(
                &text,
                "balancer.toml:10:13: vip[0] (\"web\").ring_size: ",
                &format!("{value} is out of range: must be a prime no larger than 65537"),
            );
        }
    }

    #[test]
    fn bad_vip_name() {
        let text = with(
            ONE_VIP,
            "name = \"web\"\naddress",
            "name = \"web site\"\naddress",
        );
        assert_error(
            &text,
            "balancer.toml:6:8: vip[0] (\"web site\").name: ",
            "invalid name \"web site\": contains ' '",
        );
        let long = "x".repeat(65);
        let text = with(
            ONE_VIP,
            "name = \"web\"\naddress",
            &format!("name = \"{long}\"\naddress"),
        );
        assert_error(
            &text,
            "balancer.toml:6:8: vip[0] (",
            "is 65 characters long, at most 64",
        );
    }

    #[test]
    fn bad_pool_name() {
        let text = with(ONE_VIP, "name = \"web\"\n[[vip]]", "name = \"\"\n[[vip]]");
        assert_error(
            &text,
            "balancer.toml:4:8: pool[0] (\"\").name: ",
            "invalid name \"\": must not be empty",
        );
    }

    #[test]
    fn bad_interface_name() {
        let cases = [
            ("\"bad/name\"", "must not contain '/'"),
            ("\"eth 0\"", "must not contain ' '"),
            ("\"eth0:1\"", "must not contain ':'"),
            ("\"\"", "must not be empty"),
            (
                "\"sixteen-chars-xx\"",
                "is 16 bytes long, Linux allows at most 15",
            ),
            ("\"..\"", "are not interface names"),
        ];
        for (value, why) in cases {
            let text = format!("[agent]\ninterfaces = [\"lbc0\", {value}]\n");
            assert_error(
                &text,
                "balancer.toml:2:23: agent.interfaces[1]: invalid interface name ",
                why,
            );
        }
    }

    #[test]
    fn duplicate_interface() {
        let text = "[agent]\ninterfaces = [\n  \"lbc0\",\n  \"lbs0\",\n  \"lbc0\",\n]\n";
        assert_error(
            text,
            "balancer.toml:5:3: agent.interfaces[2]: ",
            "duplicate interface \"lbc0\" (already listed as agent.interfaces[0])",
        );
    }

    #[test]
    fn empty_interfaces() {
        assert_error(
            "\n[agent]\ninterfaces = []\n",
            "balancer.toml:3:14: agent.interfaces: ",
            "at least one interface is required",
        );
    }

    #[test]
    fn duration_out_of_range() {
        let cases = [
            (
                "timeouts.tcp",
                5,
                "tcp = \"5m\"",
                "tcp = \"500ms\"",
                "\"500ms\"",
            ),
            (
                "timeouts.udp",
                6,
                "udp = \"30s\"",
                "udp = \"25h\"",
                "\"25h\"",
            ),
            (
                "timeouts.tcp_closing",
                7,
                "tcp_closing = \"10s\"",
                "tcp_closing = \"0s\"",
                "\"0s\"",
            ),
            (
                "timeouts.snat_time_wait",
                8,
                "snat_time_wait = \"60s\"",
                "snat_time_wait = \"0s\"",
                "\"0s\"",
            ),
            (
                "timeouts.tcp_unreplied",
                9,
                "tcp_unreplied = \"60s\"",
                "tcp_unreplied = \"0s\"",
                "\"0s\"",
            ),
        ];
        for (field, line, from, to, value) in cases {
            let text = with(TIMEOUTS, from, to);
            let column = to.find('"').unwrap() + 1;
            assert_error(
                &text,
                &format!("balancer.toml:{line}:{column}: {field}: "),
                &format!("{value} is out of range: must be between 1s and 24h"),
            );
        }
        // The bounds themselves are accepted.
        let text = with(TIMEOUTS, "tcp = \"5m\"", "tcp = \"24h\"");
        let text = with(&text, "udp = \"30s\"", "udp = \"1s\"");
        let timeouts = parse(&text, ORIGIN).unwrap().timeouts;
        assert_eq!(timeouts.tcp, MAX_TIMEOUT);
        assert_eq!(timeouts.udp, MIN_TIMEOUT);
    }

    #[test]
    fn bad_duration() {
        let text = with(TIMEOUTS, "udp = \"30s\"", "udp = \"30 parsecs\"");
        assert_error(
            &text,
            "balancer.toml:6:7: timeouts.udp: ",
            "invalid duration \"30 parsecs\": unknown time unit \"parsecs\"",
        );
        let text = with(TIMEOUTS, "udp = \"30s\"", "udp = 30");
        assert_error(
            &text,
            "balancer.toml:6:7: timeouts.udp: ",
            "invalid type: integer `30`, expected a string",
        );
    }

    #[test]
    fn toml_syntax_error() {
        let text = with(ONE_VIP, "port = 80\n", "port = 80 80\n");
        assert_error(&text, "balancer.toml:8:11: ", "expected newline");
        let text = with(ONE_VIP, "name = \"web\"\naddress", "name = \"web\naddress");
        assert_error(&text, "balancer.toml:6:", "");
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n[agent]\n";
        assert_error(text, "balancer.toml:3:1: ", "duplicate key");
    }

    #[test]
    fn unknown_field() {
        let text = with(ONE_VIP, "ring_size = 65537", "shceduler = \"maglev\"");
        assert_error(
            &text,
            "balancer.toml:10:1: vip[0] (\"web\").shceduler: ",
            "unknown field `shceduler`, expected one of",
        );
        let text = "[agent]\ninterfaces = [\"lbc0\"]\nxdp-mode = \"skb\"\n";
        assert_error(
            text,
            "balancer.toml:3:1: agent.xdp-mode: ",
            "unknown field `xdp-mode`",
        );
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n[health]\n";
        assert_error(
            text,
            "balancer.toml:3:2: health: ",
            "unknown field `health`",
        );
    }

    #[test]
    fn unknown_field_in_inline_backend() {
        let text = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80 },
  { address = "10.0.2.12", port = 80, wieght = 2 },
]
"#;
        assert_error(
            text,
            "balancer.toml:7:39: pool[0] (\"web\").backends[1].wieght: ",
            "unknown field `wieght`, expected one of `address`, `port`, `weight`",
        );
    }

    #[test]
    fn wrong_type() {
        let text = with(ONE_VIP, "port = 80\n", "port = \"eighty\"\n");
        assert_error(
            &text,
            "balancer.toml:8:8: vip[0] (\"web\").port: ",
            "invalid type: string \"eighty\", expected an integer",
        );
        let text = "[agent]\ninterfaces = \"lbc0\"\n";
        assert_error(
            text,
            "balancer.toml:2:14: agent.interfaces: ",
            "invalid type: string \"lbc0\", expected a sequence",
        );
        assert_error(
            "agent = 1\n",
            "balancer.toml:1:9: agent: ",
            "invalid type: integer `1`, expected a table",
        );
    }

    #[test]
    fn port_out_of_range() {
        let text = with(ONE_VIP, "port = 80\n", "port = 0\n");
        assert_error(
            &text,
            "balancer.toml:8:8: vip[0] (\"web\").port: ",
            "port 0 is out of range 1..=65535",
        );
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                    backends = [{ address = \"10.0.2.1\", port = 65536 }]\n";
        assert_error(
            text,
            "balancer.toml:5:44: pool[0] (\"p\").backends[0].port: ",
            "port 65536 is out of range 1..=65535",
        );
    }

    #[test]
    fn weight_out_of_range() {
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                    backends = [{ address = \"10.0.2.1\", port = 80, weight = 10001 }]\n";
        assert_error(
            text,
            "balancer.toml:5:57: pool[0] (\"p\").backends[0].weight: ",
            "weight 10001 is out of range 0..=10000 (0 = drained)",
        );
    }

    #[test]
    fn bad_ipv4_address() {
        let text = with(ONE_VIP, "\"10.0.100.1\"", "\"10.0.100.300\"");
        assert_error(
            &text,
            "balancer.toml:7:11: vip[0] (\"web\").address: ",
            "invalid IPv4 address \"10.0.100.300\"",
        );
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                    backends = [{ address = \"fe80::1\", port = 80 }]\n";
        assert_error(
            text,
            "balancer.toml:5:25: pool[0] (\"p\").backends[0].address: ",
            "invalid IPv4 address \"fe80::1\"",
        );
    }

    #[test]
    fn bad_protocol() {
        let text = with(ONE_VIP, "\"tcp\"", "\"icmp\"");
        assert_error(
            &text,
            "balancer.toml:9:12: vip[0] (\"web\").protocol: ",
            "invalid protocol \"icmp\": expected \"tcp\" or \"udp\"",
        );
    }

    #[test]
    fn bad_scheduler_and_xdp_mode() {
        let text = with(ONE_VIP, "ring_size = 65537", "scheduler = \"random\"");
        assert_error(
            &text,
            "balancer.toml:10:13: vip[0] (\"web\").scheduler: ",
            "invalid scheduler \"random\": expected \"maglev\" or \"round-robin\"",
        );
        let text = "[agent]\ninterfaces = [\"lbc0\"]\nxdp_mode = \"native\"\n";
        assert_error(
            text,
            "balancer.toml:3:12: agent.xdp_mode: ",
            "invalid XDP mode \"native\": expected \"driver\", \"skb\" or \"auto\"",
        );
    }

    #[test]
    fn pin_dir_and_keep_attached() {
        let agent = |extra: &str| format!("[agent]\ninterfaces = [\"lbc0\"]\n{extra}");
        let config = parse(&agent("pin_dir = \"\"\n"), ORIGIN).unwrap();
        assert_eq!(
            (config.agent.pin_dir, config.agent.keep_attached),
            (None, false),
            "an empty pin_dir pins nothing"
        );
        assert_error(
            &agent("pin_dir = \"bpf/lb\"\n"),
            "balancer.toml:3:11: agent.pin_dir: ",
            "\"bpf/lb\" is not an absolute path",
        );
        assert_error(
            &agent("pin_dir = \"\"\nkeep_attached = true\n"),
            "balancer.toml:4:17: agent.keep_attached: ",
            "needs agent.pin_dir",
        );
        assert_error(
            &agent("keep_attached = \"yes\"\n"),
            "balancer.toml:3:17: agent.keep_attached: ",
            "invalid type: string \"yes\", expected a boolean",
        );
    }

    #[test]
    fn empty_control_socket() {
        let text = "[agent]\ninterfaces = [\"lbc0\"]\ncontrol_socket = \"\"\n";
        assert_error(
            text,
            "balancer.toml:3:18: agent.control_socket: ",
            "must not be empty",
        );
    }

    #[test]
    fn missing_required_fields() {
        let text = with(ONE_VIP, "pool = \"web\"\n", "\n");
        assert_error(
            &text,
            "balancer.toml:5:1: vip[0] (\"web\"): ",
            "missing field `pool`",
        );
        assert_error("", "balancer.toml:1:1: ", "missing field `agent`");
        assert_error(
            "[agent]\n",
            "balancer.toml:1:1: agent: ",
            "missing field `interfaces`",
        );
    }

    #[test]
    fn missing_file() {
        let path = Path::new("/nonexistent-dir/balancer.toml");
        let err = load(path).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert_eq!(err.line(), None);
        let message = err.to_string();
        assert!(
            message.starts_with("/nonexistent-dir/balancer.toml: cannot read config file: "),
            "{message}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let path = std::env::temp_dir().join(format!("config-rs-test-{}.toml", std::process::id()));
        std::fs::write(&path, with(ONE_VIP, "port = 80\n", "port = 80000\n")).unwrap();
        let err = load(&path).unwrap_err();
        std::fs::write(&path, ONE_VIP).unwrap();
        let ok = load(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(err.line(), Some(8));
        assert_eq!(
            err.to_string(),
            format!(
                "{}:8:8: vip[0] (\"web\").port: port 80000 is out of range 1..=65535",
                path.display()
            )
        );
        assert_eq!(ok.unwrap().vips[0].port, 80);
    }

    #[test]
    fn enums_display_and_parse() {
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
        }
        for s in [Scheduler::Maglev, Scheduler::RoundRobin] {
            assert_eq!(s.to_string().parse::<Scheduler>(), Ok(s));
        }
        for m in [XdpMode::Driver, XdpMode::Skb, XdpMode::Auto] {
            assert_eq!(m.to_string().parse::<XdpMode>(), Ok(m));
        }
        assert_eq!(Scheduler::RoundRobin.to_string(), "round-robin");
        assert_eq!("RR".parse::<Scheduler>(), Ok(Scheduler::RoundRobin));
        assert_eq!("Udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("SKB".parse::<XdpMode>(), Ok(XdpMode::Skb));
        assert_eq!(
            "sctp".parse::<Protocol>().unwrap_err().to_string(),
            "invalid protocol \"sctp\": expected \"tcp\" or \"udp\""
        );
    }

    #[test]
    fn is_prime_works() {
        let primes: Vec<u32> = (0..30).filter(|n| is_prime(*n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(!is_prime(65535));
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn name_rules() {
        assert!(is_valid_name("web-1.prod_A"));
        assert!(is_valid_name(&"a".repeat(64)));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("wéb"));
        assert!(is_valid_interface_name("lbc0"));
        assert!(is_valid_interface_name("fifteen-chars-x"));
        assert!(!is_valid_interface_name("sixteen-chars-xx"));
        assert!(!is_valid_interface_name("a/b"));
        assert!(!is_valid_interface_name("a\tb"));
        assert!(!is_valid_interface_name("."));
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\r\nné = 1\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (2, 1));
        // 'é' is two bytes but one column; offset 7 is the space after it.
        assert_eq!(line_col(text, 7), (2, 3));
        // Inside a multi-byte character, and past the end: no panic.
        assert_eq!(line_col(text, 6), (2, 2));
        assert_eq!(line_col(text, 1000), (3, 1));
    }

    #[test]
    fn key_paths_of_offsets() {
        let text = r#"top = 1
"quoted key" = { a.b = [1, { c = 'x' }] }
[[pool]]
name = "p"
[[pool]]
name = 'q'
[[pool.backends]]
port = """multi
line"""
[x . "y z"]
w = 2024-01-01 10:00:00
"#;
        let at = |needle: &str| key_path_at(text, text.find(needle).unwrap());
        assert_eq!(at("top").as_deref(), Some("top"));
        assert_eq!(at("a.b").as_deref(), Some("\"quoted key\".a.b"));
        assert_eq!(at("1,").as_deref(), Some("\"quoted key\".a.b[0]"));
        assert_eq!(at("c =").as_deref(), Some("\"quoted key\".a.b[1].c"));
        assert_eq!(
            at("[[pool]]\nname = 'q'").as_deref(),
            Some("pool[1] (\"q\")")
        );
        assert_eq!(
            at("\"\"\"multi").as_deref(),
            Some("pool[1] (\"q\").backends[0].port")
        );
        assert_eq!(at("w =").as_deref(), Some("x.\"y z\".w"));
        assert_eq!(at("10:00").as_deref(), Some("x.\"y z\".w"));
        assert_eq!(key_path_at(text, 10_000), None);
        let bom = "\u{feff}[agent]\nx = 1\n";
        assert_eq!(
            key_path_at(bom, bom.find('x').unwrap()).as_deref(),
            Some("agent.x")
        );
    }

    /// Health checks: a pool check, per-backend overrides and both policies; line
    /// numbers are used by the tests below.
    const CHECKS: &str = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
on_backend_down = "keep"
backends = [
  { address = "10.0.2.11", port = 80, check = { port = 8081 } },
  { address = "10.0.2.12", port = 80 },
  { address = "10.0.2.13", port = 80, check = { type = "tcp", interval = "10s" } },
]
[pool.check]
type = "http"
interval = "2s"
timeout = "1s"
rise = 4
fall = 5
fastinter = "500ms"
downinter = "5s"
initial_state = "down"
path = "/health"
host = "example.org"
expect_status = "200,204,301-302"
expect_body = "ok"
method = "HEAD"
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"
on_all_down = "pass"
"#;

    /// Asserts that replacing `from` by `to` in [`CHECKS`] fails at the first `at` on
    /// `line` (which `to` puts there), naming `field` and saying `fragment`.
    fn assert_check_error(
        from: &str,
        to: &str,
        line: usize,
        at: &str,
        field: &str,
        fragment: &str,
    ) {
        let text = with(CHECKS, from, to);
        let line_text = text.lines().nth(line - 1).unwrap();
        let column = line_text
            .find(at)
            .unwrap_or_else(|| panic!("{at:?} not on line {line}: {line_text:?}"))
            + 1;
        assert_error(
            &text,
            &format!("balancer.toml:{line}:{column}: {field}: "),
            fragment,
        );
    }

    #[test]
    fn checks_parse() {
        let config = parse(CHECKS, ORIGIN).unwrap();
        let pool = &config.pools[0];
        assert_eq!(pool.on_backend_down, DownPolicy::Keep);
        assert_eq!(config.vips[0].on_all_down, AllDownPolicy::Pass);
        let http = HttpCheck {
            method: "HEAD".into(),
            path: "/health".into(),
            host: Some("example.org".into()),
            expect_status: "200,204,301-302".parse().unwrap(),
            expect_body: Some("ok".into()),
        };
        let expected = CheckConfig {
            kind: CheckKind::Http(http),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 4,
            fall: 5,
            fastinter: Duration::from_millis(500),
            downinter: Duration::from_secs(5),
            initial_state: Health::Down,
            port: None,
            address: None,
        };
        assert_eq!(pool.check, expected);
        // The override of backends[0] changes the port only.
        assert_eq!(
            pool.backends[0].check,
            CheckConfig {
                port: Some(8081),
                ..expected.clone()
            }
        );
        assert_eq!(
            pool.backends[0]
                .check
                .target(pool.backends[0].socket_addr()),
            "10.0.2.11:8081".parse().unwrap()
        );
        // backends[1] has no override.
        assert_eq!(pool.backends[1].check, expected);
        // backends[2] changes the type: the HTTP fields are not inherited, the rest is.
        assert_eq!(
            pool.backends[2].check,
            CheckConfig {
                kind: CheckKind::Tcp,
                interval: Duration::from_secs(10),
                ..expected.clone()
            }
        );
        assert!(pool.check.is_enabled());
        assert_eq!(pool.check.check_type(), CheckType::Http);
    }

    #[test]
    fn check_defaults() {
        // No [pool.check]: type none, default timings, both policies at their defaults.
        let config = parse(ONE_VIP, ORIGIN).unwrap();
        assert_eq!(config.pools[0].check, CheckConfig::default());
        assert!(!config.pools[0].check.is_enabled());
        assert_eq!(config.pools[0].on_backend_down, DownPolicy::Shutdown);
        assert_eq!(config.vips[0].on_all_down, AllDownPolicy::Drop);

        let pool = |check: &str| {
            let text = format!(
                "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                 backends = [{{ address = \"10.0.2.1\", port = 53, check = {{ interval = \"4s\" }} }}]\n\
                 [pool.check]\n{check}\n"
            );
            parse(&text, ORIGIN).unwrap().pools.remove(0)
        };
        let tcp = pool("type = \"tcp\"");
        assert_eq!(
            tcp.check,
            CheckConfig {
                kind: CheckKind::Tcp,
                ..CheckConfig::default()
            }
        );
        assert_eq!(tcp.check.interval, Duration::from_secs(2));
        assert_eq!(tcp.check.timeout, Duration::from_secs(2));
        assert_eq!((tcp.check.rise, tcp.check.fall), (2, 3));
        assert_eq!(tcp.check.initial_state, Health::Up);
        // Timings that default to the interval follow the backend's merged interval.
        let b = &tcp.backends[0].check;
        let four = Duration::from_secs(4);
        assert_eq!(
            (b.interval, b.timeout, b.fastinter, b.downinter),
            (four, four, four, four)
        );

        let http = pool("type = \"HTTP\"\ninterval = \"300ms\"");
        assert_eq!(http.check.kind, CheckKind::Http(HttpCheck::default()));
        assert_eq!(http.check.timeout, Duration::from_millis(300));
        let CheckKind::Http(h) = &http.check.kind else {
            unreachable!()
        };
        assert_eq!((h.method.as_str(), h.path.as_str()), ("GET", "/"));
        assert_eq!(h.expect_status.to_string(), "200-399");

        let udp = pool("type = \"udp\"\npayload = \"ping\"");
        assert_eq!(
            udp.check.kind,
            CheckKind::Udp(UdpCheck {
                payload: "ping".into(),
                expect: None,
            })
        );
        assert_eq!(
            pool("type = \"udp\"").check.kind,
            CheckKind::Udp(UdpCheck::default())
        );
        // The bounds are accepted.
        let edge =
            pool("type = \"tcp\"\ninterval = \"1h\"\ntimeout = \"10ms\"\nrise = 1\nfall = 100");
        assert_eq!(edge.check.interval, MAX_CHECK_DURATION);
        assert_eq!(edge.check.timeout, MIN_CHECK_DURATION);
        assert_eq!((edge.check.rise, edge.check.fall), (1, 100));
    }

    #[test]
    fn backend_check_override_merges_field_by_field() {
        let text = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80, check = { port = 8081 } },
  { address = "10.0.2.12", port = 80, check = { path = "/ready", fall = 1 } },
  { address = "10.0.2.13", port = 80, check = { address = "10.0.3.13", type = "http" } },
]
[pool.check]
type = "http"
path = "/health"
expect_status = "200"
"#;
        let pool = parse(text, ORIGIN).unwrap().pools.remove(0);
        let http = |path: &str| {
            CheckKind::Http(HttpCheck {
                path: path.into(),
                expect_status: "200".parse().unwrap(),
                ..HttpCheck::default()
            })
        };
        let b = &pool.backends;
        assert_eq!(b[0].check.kind, http("/health"));
        assert_eq!(b[0].check.port, Some(8081));
        assert_eq!(b[1].check.kind, http("/ready"));
        assert_eq!(
            (b[1].check.rise, b[1].check.fall, b[1].check.port),
            (2, 1, None)
        );
        // Repeating the same type keeps the pool's HTTP fields.
        assert_eq!(b[2].check.kind, http("/health"));
        assert_eq!(
            b[2].check.target(b[2].socket_addr()),
            "10.0.3.13:80".parse().unwrap()
        );
        // The pool's own check has no override.
        assert_eq!(pool.check.port, None);
    }

    #[test]
    fn check_errors_name_line_and_field() {
        let pc = "pool[0] (\"web\").check";
        let cases: &[(&str, &str, usize, &str, String, &str)] = &[
            (
                "interval = \"2s\"",
                "interval = \"5ms\"",
                13,
                "\"5ms\"",
                format!("{pc}.interval"),
                "\"5ms\" is out of range: must be between 10ms and 1h",
            ),
            (
                "timeout = \"1s\"",
                "timeout = \"61m\"",
                14,
                "\"61m\"",
                format!("{pc}.timeout"),
                "\"61m\" is out of range: must be between 10ms and 1h",
            ),
            (
                "fastinter = \"500ms\"",
                "fastinter = \"fast\"",
                17,
                "\"fast\"",
                format!("{pc}.fastinter"),
                "invalid duration \"fast\"",
            ),
            (
                "downinter = \"5s\"",
                "downinter = \"0s\"",
                18,
                "\"0s\"",
                format!("{pc}.downinter"),
                "is out of range",
            ),
            (
                "rise = 4",
                "rise = 0",
                15,
                "0",
                format!("{pc}.rise"),
                "rise 0 is out of range 1..=100",
            ),
            (
                "fall = 5",
                "fall = 101",
                16,
                "101",
                format!("{pc}.fall"),
                "fall 101 is out of range 1..=100",
            ),
            (
                "type = \"http\"",
                "type = \"icmp\"",
                12,
                "\"icmp\"",
                format!("{pc}.type"),
                "invalid check type \"icmp\": expected \"tcp\", \"http\", \"udp\" or \"none\"",
            ),
            (
                "initial_state = \"down\"",
                "initial_state = \"maybe\"",
                19,
                "\"maybe\"",
                format!("{pc}.initial_state"),
                "invalid initial state \"maybe\": expected \"up\" or \"down\"",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"200,99\"",
                22,
                "\"200",
                format!("{pc}.expect_status"),
                "invalid status list \"200,99\": code 99 is out of range 100..=599",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"302-301\"",
                22,
                "\"302",
                format!("{pc}.expect_status"),
                "range 302-301 is not ordered (302 > 301)",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"2xx\"",
                22,
                "\"2xx",
                format!("{pc}.expect_status"),
                "\"2xx\" is not a status code",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \" \"",
                22,
                "\" \"",
                format!("{pc}.expect_status"),
                "must list at least one status code",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"600\"",
                22,
                "\"600",
                format!("{pc}.expect_status"),
                "code 600 is out of range 100..=599",
            ),
            (
                "method = \"HEAD\"",
                "method = \"get\"",
                24,
                "\"get\"",
                format!("{pc}.method"),
                "invalid method \"get\": must be an uppercase token",
            ),
            (
                "method = \"HEAD\"",
                "method = \"GET /x\"",
                24,
                "\"GET",
                format!("{pc}.method"),
                "must be an uppercase token",
            ),
            (
                "path = \"/health\"",
                "path = \"health\"",
                20,
                "\"health\"",
                format!("{pc}.path"),
                "invalid path \"health\": must start with '/'",
            ),
            (
                "path = \"/health\"",
                "path = \"/a b\"",
                20,
                "\"/a b\"",
                format!("{pc}.path"),
                "must be visible ASCII without spaces",
            ),
            (
                "host = \"example.org\"",
                "host = \"\"",
                21,
                "\"\"",
                format!("{pc}.host"),
                "must not be empty",
            ),
            (
                "expect_body = \"ok\"",
                "expect_body = \"\"",
                23,
                "\"\"",
                format!("{pc}.expect_body"),
                "must not be empty",
            ),
            // Fields of another check type.
            (
                "method = \"HEAD\"",
                "payload = \"ping\"",
                24,
                "\"ping\"",
                format!("{pc}.payload"),
                "only allowed with type = \"udp\" (this check's type is \"http\")",
            ),
            (
                "method = \"HEAD\"",
                "expect = \"pong\"",
                24,
                "\"pong\"",
                format!("{pc}.expect"),
                "only allowed with type = \"udp\" (this check's type is \"http\")",
            ),
            (
                "type = \"http\"",
                "type = \"tcp\"",
                24,
                "\"HEAD\"",
                format!("{pc}.method"),
                "only allowed with type = \"http\" (this check's type is \"tcp\")",
            ),
            (
                "type = \"http\"\n",
                "\n",
                24,
                "\"HEAD\"",
                format!("{pc}.method"),
                "only allowed with type = \"http\" (this check's type is \"none\")",
            ),
            (
                "port = 8081",
                "port = 0",
                7,
                "0 }",
                "pool[0] (\"web\").backends[0].check.port".into(),
                "port 0 is out of range 1..=65535",
            ),
            (
                "port = 8081",
                "address = \"10.0.2\"",
                7,
                "\"10.0.2\"",
                "pool[0] (\"web\").backends[0].check.address".into(),
                "invalid IPv4 address \"10.0.2\"",
            ),
            (
                "port = 8081",
                "rise = 200",
                7,
                "200",
                "pool[0] (\"web\").backends[0].check.rise".into(),
                "rise 200 is out of range 1..=100",
            ),
            (
                "interval = \"10s\"",
                "path = \"/x\"",
                9,
                "\"/x\"",
                "pool[0] (\"web\").backends[2].check.path".into(),
                "only allowed with type = \"http\" (this check's type is \"tcp\")",
            ),
            (
                "interval = \"10s\"",
                "timeout = \"2ms\"",
                9,
                "\"2ms\"",
                "pool[0] (\"web\").backends[2].check.timeout".into(),
                "must be between 10ms and 1h",
            ),
            (
                "on_backend_down = \"keep\"",
                "on_backend_down = \"drain\"",
                5,
                "\"drain\"",
                "pool[0] (\"web\").on_backend_down".into(),
                "invalid on_backend_down policy \"drain\": expected \"shutdown\" or \"keep\"",
            ),
            (
                "on_all_down = \"pass\"",
                "on_all_down = \"reject\"",
                31,
                "\"reject\"",
                "vip[0] (\"web\").on_all_down".into(),
                "invalid on_all_down policy \"reject\": expected \"drop\" or \"pass\"",
            ),
        ];
        for (from, to, line, at, field, fragment) in cases {
            assert_check_error(from, to, *line, at, field, fragment);
        }
    }

    #[test]
    fn check_schema_errors_name_line_and_field() {
        assert_check_error(
            "path = \"/health\"",
            "pathh = \"/health\"",
            20,
            "pathh",
            "pool[0] (\"web\").check.pathh",
            "unknown field `pathh`",
        );
        assert_check_error(
            "check = { port = 8081 }",
            "check = { prot = 8081 }",
            7,
            "prot",
            "pool[0] (\"web\").backends[0].check.prot",
            "unknown field `prot`",
        );
        assert_check_error(
            "rise = 4",
            "rise = \"4\"",
            15,
            "\"4\"",
            "pool[0] (\"web\").check.rise",
            "invalid type: string \"4\", expected an integer",
        );
    }

    #[test]
    fn status_ranges() {
        let r: StatusRanges = " 200 , 204,301-302 ".parse().unwrap();
        assert_eq!(r.ranges(), &[(200, 200), (204, 204), (301, 302)]);
        assert_eq!(r.to_string(), "200,204,301-302");
        for (code, listed) in [
            (200, true),
            (201, false),
            (204, true),
            (301, true),
            (302, true),
            (303, false),
        ] {
            assert_eq!(r.contains(code), listed, "{code}");
        }
        assert!(StatusRanges::default().contains(399));
        assert!(!StatusRanges::default().contains(400));
        assert_eq!(
            "200,".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode(String::new()))
        );
        assert_eq!(
            "99999999999".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode("99999999999".into()))
        );
        assert_eq!(
            "-".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode(String::new()))
        );
        assert_eq!(
            "200-300-400".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode("300-400".into()))
        );
    }

    #[test]
    fn policy_and_check_type_words() {
        for p in [DownPolicy::Shutdown, DownPolicy::Keep] {
            assert_eq!(p.to_string().parse::<DownPolicy>(), Ok(p));
        }
        for p in [AllDownPolicy::Drop, AllDownPolicy::Pass] {
            assert_eq!(p.to_string().parse::<AllDownPolicy>(), Ok(p));
        }
        for t in [
            CheckType::None,
            CheckType::Tcp,
            CheckType::Http,
            CheckType::Udp,
        ] {
            assert_eq!(t.to_string().parse::<CheckType>(), Ok(t));
        }
        assert_eq!(DownPolicy::default(), DownPolicy::Shutdown);
        assert_eq!(AllDownPolicy::default(), AllDownPolicy::Drop);
        assert_eq!(
            serde_json::to_string(&AllDownPolicy::Pass).unwrap(),
            "\"pass\""
        );
    }

    #[test]
    fn mangled_check_tables_never_panic() {
        for end in (0..=CHECKS.len()).filter(|i| CHECKS.is_char_boundary(*i)) {
            if let Err(e) = parse(&CHECKS[..end], ORIGIN) {
                assert!(e.line().is_some());
            }
        }
        for i in 0..CHECKS.len() {
            for c in ["\"", "{", "}", "=", "\n", "-", "0", "é"] {
                let mut text = CHECKS.to_owned();
                text.replace_range(i..=i, c);
                if let Err(e) = parse(&text, ORIGIN) {
                    assert!(e.to_string().starts_with("balancer.toml:"));
                }
            }
        }
    }

    #[test]
    fn mangled_input_never_panics() {
        // Every truncation and a handful of substitutions at every offset
        // must give Ok or an error with a line number, never a panic.
        let base = with(
            ONE_VIP,
            "name = \"web\"\n[[vip]]",
            "name = 'web' # pool\nbackends = [{ address = \"10.0.2.1\", port = 80 }]\n[[vip]]",
        );
        for end in (0..=base.len()).filter(|i| base.is_char_boundary(*i)) {
            if let Err(e) = parse(&base[..end], ORIGIN) {
                assert!(e.line().is_some());
            }
        }
        for i in 0..base.len() {
            for c in ["\"", "'", "[", "]", "{", "=", "\n", "#", "é", "\\", "'''"] {
                let mut text = base.clone();
                text.replace_range(i..=i, c);
                if let Err(e) = parse(&text, ORIGIN) {
                    assert!(e.to_string().starts_with("balancer.toml:"));
                }
            }
        }
    }
}
