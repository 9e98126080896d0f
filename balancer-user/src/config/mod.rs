//! The agent's configuration file: TOML format, validation, and the typed `Config` built from it.
//!
//! Parsing happens in two stages that are kept apart on purpose:
//!
//! 1. `serde` reads the text into the private `Raw*` structs (`raw`). They mirror the file
//!    one-to-one, reject unknown fields and wrap every value a later check may
//!    point at in [`toml::Spanned`], so errors can name the exact line.
//! 2. The private validator (`validate`) checks the raw structs and builds the public,
//!    validated structs ([`Config`], [`VipConfig`], ...) with all defaults applied.
//!
//! Adding a field means adding it to a `Raw*` struct, to its public counterpart,
//! and one conversion step in the validator.
//!
//! Every [`ConfigError`] (except failing to read the file, which has no line)
//! displays as `FILE:LINE:COLUMN: FIELD: MESSAGE` (no `FIELD: ` for a TOML
//! syntax error that has no key path), for example
//! `balancer.toml:23:13: vip[1] ("web").ring_size: 65536 is not prime (...)`; `position`
//! finds the line, column and key path.
//!
//! The words that name a choice (`Protocol`, `Scheduler`, ...) are in `words`. A pool's
//! health check is configured by the health checks' own types ([`CheckConfig`] and the
//! rest, from [`crate::health::config`]): this module imports `health`, never the reverse.
//! VRRP instances and sync groups likewise are [`crate::vrrp`]'s [`InstanceConfig`] and
//! [`SyncGroupConfig`]; a pool's HTTP balancing is [`crate::l7::balance`]'s [`PoolBalance`],
//! an HTTP-mode VIP's routing rules [`crate::l7::rules`]' [`Rule`]s.

mod addresses;
mod dump;
mod position;
mod raw;
mod validate;
mod words;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use balancer_common::MAX_RING_SIZE;

use position::{key_path_at, line_col};

use crate::l7::rules::Rule;
use crate::vrrp::{InstanceConfig, SyncGroupConfig};

pub use crate::discovery::{EtcdConfig, TlsFiles};
pub use crate::health::config::{
    CheckConfig, CheckKind, CheckType, HttpCheck, StatusRanges, StatusRangesError, UdpCheck,
};
pub use crate::l7::balance::{
    default_cookie_id, Algorithm, BalanceKind, CookiePersistence, HashKey, PoolBalance,
};
pub use crate::l7::headers::ForwardedStyle;
pub use crate::l7::proxy::ProxySettings;
/// Whether `n` is a prime number (Maglev ring sizes must be).
pub use crate::ring::is_prime;
pub use crate::sync::config::{KeySource, SyncConfig};
pub use crate::telemetry::config::{Credentials, TelemetryConfig};
pub use addresses::{
    check_backend_address, check_l4_backend, check_source_address, check_vip_address, family,
    not_a_host, port_range_overlap, sources_for, AddressError, BackendAddressError, Host,
};
pub use dump::dump;
pub use words::{
    AllDownPolicy, DownPolicy, Encapsulation, Forwarding, Protocol, Scheduler, VipMode, XdpMode,
};

/// Control socket path used when `[agent].control_socket` is absent.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/balancer/balancer.sock";
/// Where state is pinned (bpffs) when `[agent].pin_dir` is absent.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/balancer";
/// Maglev lookup table size used when a VIP gives no `ring_size`: the largest the data
/// plane holds (a prime, Maglev's default `M`).
pub const DEFAULT_RING_SIZE: u32 = MAX_RING_SIZE;
/// Lowest first port of `[nat].port_range`.
pub const MIN_NAT_PORT: u16 = 1024;
/// Default first NAT source port.
pub const DEFAULT_NAT_PORT_MIN: u16 = 20000;
/// Default last NAT source port.
pub const DEFAULT_NAT_PORT_MAX: u16 = 32767;
/// Default idle timeout of TCP flows.
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_mins(5);
/// Default idle timeout of UDP flows.
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default lifetime of a TCP flow after FIN/RST.
pub const DEFAULT_TCP_CLOSING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default rest of a closed flow's SNAT port: Linux's TIME-WAIT (`TCP_TIMEWAIT_LEN`).
pub const DEFAULT_SNAT_TIME_WAIT: Duration = Duration::from_mins(1);
/// A half-open TCP flow: long enough for a client's SYN retransmissions (1 s, then 3 s)
/// to keep it, short so that spoofed SYNs give their SNAT ports back soon (HAProxy's
/// customary `timeout connect`).
pub const DEFAULT_TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest allowed timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest allowed timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_hours(24);
/// Backend weight used when a backend gives none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest backend weight, in the file, on the command line and at run time (HAProxy caps
/// at 256; more is allowed: a VIP's ring has [`MAX_RING_SIZE`] slots).
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest pool or VIP name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest Linux interface name in bytes (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// A complete, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    pub nat: NatConfig,
    pub timeouts: Timeouts,
    /// `[http]`: the proxy's timeouts and limits, for every HTTP-mode VIP.
    pub http: ProxySettings,
    /// `[telemetry]`: the metrics and stats page listener; `None`: nothing listens.
    pub telemetry: Option<TelemetryConfig>,
    /// `[tunnel]`: how tunnel VIPs' packets are encapsulated.
    pub tunnel: TunnelConfig,
    /// `[sync]`: flow-table sync between VRRP peers; `None`: none.
    pub sync: Option<SyncConfig>,
    pub pools: Vec<PoolConfig>,
    pub vips: Vec<VipConfig>,
    /// `[[vrrp]]`: the VRRP instances, in the order written.
    pub vrrp: Vec<InstanceConfig>,
    /// `[[vrrp_sync_group]]`: the instances that fail over together.
    pub vrrp_sync_groups: Vec<SyncGroupConfig>,
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
    /// `FILE:LINE:COLUMN: agent.interfaces[i]` of each interface, for the errors only the
    /// host can reveal at start (an interface that does not exist).
    pub interface_locations: Vec<String>,
    /// Start without the interfaces that do not exist yet, and attach to each when it
    /// appears (else a missing interface is an error at start).
    pub wait_for_interfaces: bool,
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
    /// SNAT source addresses (`source_address` or `source_addresses`), each giving every
    /// backend the whole port range; empty: one, chosen per backend from the routing table.
    pub source_addresses: Vec<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            source_addresses: Vec::new(),
            port_min: DEFAULT_NAT_PORT_MIN,
            port_max: DEFAULT_NAT_PORT_MAX,
        }
    }
}

/// `[tunnel]`: the outer headers of tunnel VIPs' packets (`forwarding = "tunnel"`).
#[derive(Clone, Debug, PartialEq)]
pub struct TunnelConfig {
    /// Outer source: an address, or a prefix (address, length) in which each flow gets an
    /// address by hash, so that IPIP backends' NICs spread flows over their queues. `None`:
    /// not given (a tunnel VIP then cannot be configured).
    pub source: Option<(Ipv4Addr, u8)>,
    /// UDP destination port of GUE.
    pub gue_port: u16,
    /// Largest IPv4 packet that may leave encapsulated (the smallest MTU on the way to
    /// the backends); a larger packet is answered with an ICMP "fragmentation needed".
    pub mtu: u16,
}

/// `tunnel.mtu` when not given: Ethernet's.
pub const DEFAULT_TUNNEL_MTU: u16 = 1500;

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            source: None,
            gue_port: balancer_common::GUE_DEFAULT_PORT,
            mtu: DEFAULT_TUNNEL_MTU,
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
    /// Idle timeout of a half-open TCP flow, whose client has not completed the handshake
    /// (at most `tcp` applies: the shorter of the two).
    pub tcp_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp: DEFAULT_TCP_TIMEOUT,
            udp: DEFAULT_UDP_TIMEOUT,
            tcp_closing: DEFAULT_TCP_CLOSING_TIMEOUT,
            snat_time_wait: DEFAULT_SNAT_TIME_WAIT,
            tcp_handshake: DEFAULT_TCP_HANDSHAKE_TIMEOUT,
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
    /// `balance`, `hash_key` and `cookie`: how HTTP VIPs spread requests over the pool.
    /// Allowed on any pool; L4 VIPs ignore them (the data plane uses the VIP's `scheduler`).
    pub balance: PoolBalance,
    /// `discovery.etcd`: the pool's backends are the keys under an etcd prefix.
    pub discovery: Option<EtcdConfig>,
}

/// One entry of a pool's `backends`.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    pub address: IpAddr,
    pub port: u16,
    /// 0 means drained: no new flows.
    pub weight: u32,
    /// The effective health check: the pool's, with this backend's `check` fields over it.
    pub check: CheckConfig,
    /// `cookie`: the id HTTP cookie persistence gives it, if the file names one.
    pub cookie: Option<String>,
    /// `maxconn`: HTTP requests in progress on it at once (0: no limit; L4 VIPs ignore it).
    pub maxconn: u32,
}

impl BackendConfig {
    /// The backend's address and port.
    #[must_use]
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// The id its persistence cookie carries: `cookie` if given, else one derived from
    /// its address ([`default_cookie_id`]).
    #[must_use]
    pub fn cookie_id(&self) -> String {
        self.cookie
            .clone()
            .unwrap_or_else(|| default_cookie_id(self.socket_addr()))
    }
}

/// `[[vip]]`: a virtual service (also what a `vip add` request carries and `status` shows).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VipConfig {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub ring_size: u32,
    pub pool: String,
    /// What new flows get while no backend of the pool is up.
    pub on_all_down: AllDownPolicy,
    /// How an L4 VIP's packets reach a backend: `nat` (full NAT, the default), `dsr`
    /// (direct server return: only the destination MAC changes; the backend, on a link of
    /// the balancer, holds the VIP and answers the client itself) or `tunnel` (the packet
    /// goes encapsulated to the backend, which answers the client itself).
    #[serde(default)]
    pub forwarding: Forwarding,
    /// A tunnel VIP's encapsulation (unused by the others).
    #[serde(default)]
    pub encapsulation: Encapsulation,
    /// `l4` (the XDP program) or `http` (the agent's proxy; `pool` is then the default
    /// pool of requests no rule matches).
    #[serde(default)]
    pub mode: VipMode,
    /// `[[vip.rule]]`: an HTTP-mode VIP's routing rules, in order; empty for an L4 VIP.
    /// Only the file gives rules: the control protocol carries none (and `vip add` makes
    /// an L4 VIP).
    #[serde(skip)]
    pub rules: Vec<Rule>,
}

impl VipConfig {
    /// The VIP's address and port (printed `[2001:db8::1]:80` for IPv6).
    #[must_use]
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

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

/// Reads and validates the configuration file at `path`, with what only this host can
/// tell (its addresses, its ephemeral ports: see [`load_on`]); logs the warnings.
///
/// # Errors
///
/// [`ConfigError::Io`] if the file cannot be read, otherwise as [`parse`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_text(path).map(|(config, _)| config)
}

/// [`load`], also returning the text it read (for [`dump`]).
///
/// # Errors
///
/// As [`load`].
pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
    let host = Host::read()
        .inspect_err(|e| {
            log::warn!("cannot list this host's addresses ({e}): the configuration's are not checked against them");
        })
        .ok();
    let (config, text, warnings) = load_with_text_on(path, host.as_ref())?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    Ok((config, text))
}

/// [`load_on`], also returning the text it read.
///
/// # Errors
///
/// As [`load_on`].
pub fn load_with_text_on(
    path: &Path,
    host: Option<&Host>,
) -> Result<(Config, String, Vec<ConfigError>), ConfigError> {
    let text = read(path)?;
    let (config, warnings) = parse_on(&text, &path.display().to_string(), host)?;
    Ok((config, text, warnings))
}

/// Reads and validates the configuration file at `path` as [`parse_on`] does.
///
/// # Errors
///
/// [`ConfigError::Io`] if the file cannot be read, otherwise as [`parse`].
pub fn load_on(
    path: &Path,
    host: Option<&Host>,
) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    load_with_text_on(path, host).map(|(config, _, warnings)| (config, warnings))
}

/// The text of the file at `path`.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses and validates configuration `text`; `origin` names it in errors. What only the
/// host can tell is not checked (see [`parse_on`]).
///
/// # Errors
///
/// [`ConfigError::Toml`] if `text` is not TOML of the expected shape,
/// [`ConfigError::Invalid`] if a value fails validation. Only the first
/// problem found is reported.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    parse_on(text, origin, None).map(|(config, _)| config)
}

/// [`parse`], and with `host` what only the host can tell: no L4 VIP or L4 pool's backend
/// on one of its own addresses, `nat.source_address` one of them (or a VRRP instance's),
/// and, as a warning, `nat.port_range` clear of its ephemeral ports. Returns the warnings
/// with the configuration, in the errors' format.
///
/// # Errors
///
/// As [`parse`].
pub fn parse_on(
    text: &str,
    origin: &str,
    host: Option<&Host>,
) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
    validate::config(raw, text, origin, host)
}

/// Whether a ring of `ring_size` slots can hold the `backends` of pool `pool`: Maglev
/// gives every backend at least one slot.
///
/// # Errors
///
/// Why it cannot, with a size that can.
pub fn check_ring_size(ring_size: u32, backends: usize, pool: &str) -> Result<(), String> {
    let needed = u32::try_from(backends).unwrap_or(u32::MAX);
    if ring_size >= needed {
        return Ok(());
    }
    let prime = (needed..=MAX_RING_SIZE)
        .find(|&n| is_prime(n))
        .unwrap_or(MAX_RING_SIZE);
    Err(format!(
        "{ring_size} is smaller than the {backends} backends of pool {pool:?}: Maglev gives \
         every backend at least one slot (use a prime of at least {backends}, e.g. {prime})"
    ))
}

/// The [`ConfigError::Toml`] of `toml`'s error `e`: the line, column and key path it
/// points at.
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

/// Why `s` is not a valid pool or VIP name, if it is not.
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

/// Why `s` is not a valid interface name, if it is not.
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

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests;
