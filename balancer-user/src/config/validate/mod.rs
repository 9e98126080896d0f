//! The validator: the raw structs of `raw` in, a [`Config`] with every default applied out,
//! or the first problem as a [`ConfigError`] that names its line, column and key.
//!
//! One method per section of the file (`agent`, `nat`, `timeouts`, `pools` with `backend`,
//! `vips`), and small helpers for the kinds of values they share (durations, words,
//! addresses, ports, names). A pool's or backend's `check` table is checked in `check`, a
//! VIP's `mode` and HTTP rules in `l7`, the VRRP instances and sync groups in `vrrp`.

mod addresses;
mod balance;
mod check;
mod discovery;
mod forwarding;
mod http;
mod l7;
mod sync;
mod telemetry;
mod tunnel;
mod vips;
mod vrrp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use balancer_common::{MAX_BACKENDS, MAX_SNAT_ADDRS};
use humantime_serde::re::humantime;
use toml::Spanned;

use self::addresses::Places;
use self::balance::CookieIds;
use self::check::CheckLayer;
use super::position::line_col;
use super::raw::{Int, RawAgent, RawBackend, RawCheck, RawConfig, RawNat, RawPool, RawTimeouts};
use super::{
    check_backend_address, interface_name_problem, name_problem, AgentConfig, BackendAddressError,
    BackendConfig, CheckConfig, Config, ConfigError, DownPolicy, Host, NatConfig, PoolConfig,
    ProxySettings, Timeouts, TunnelConfig, XdpMode, DEFAULT_CONTROL_SOCKET, DEFAULT_PIN_DIR,
    DEFAULT_WEIGHT, MAX_TIMEOUT, MAX_WEIGHT, MIN_NAT_PORT, MIN_TIMEOUT,
};
use crate::spelling::ParseValueError;

/// Checks `raw`, read from `text` (called `origin` in errors), and builds the [`Config`];
/// with `host`, also what only the host can tell (its own addresses, its ephemeral
/// ports). Returns the warnings too (in the errors' format): what may be intended.
pub(super) fn config(
    raw: RawConfig,
    text: &str,
    origin: &str,
    host: Option<&Host>,
) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    let validator = Validator {
        text,
        origin,
        host,
        places: RefCell::default(),
    };
    let config = validator.config(raw)?;
    let warnings = validator.addresses(&config)?;
    Ok((config, warnings))
}

struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
    host: Option<&'a Host>,
    /// Where the values that [`Validator::addresses`] checks against each other were
    /// written, noted as the sections are checked.
    places: RefCell<Places>,
}

type Checked<T> = Result<T, ConfigError>;

/// The names given so far to the tables of one kind (`[[pool]]` or `[[vip]]`): name ->
/// (index, line of the name).
type Names = HashMap<String, (usize, usize)>;

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
        let http = match raw.http {
            Some(h) => self.http(h)?,
            None => ProxySettings::default(),
        };
        let telemetry = raw.telemetry.map(|t| self.telemetry(t)).transpose()?;
        let tunnel = match raw.tunnel {
            Some(t) => self.tunnel(&t)?,
            None => TunnelConfig::default(),
        };
        let pools = self.pools(raw.pool)?;
        let vips = self.vips(raw.vip, &pools, &tunnel)?;
        let vrrp = self.vrrp_instances(&raw.vrrp, &vips)?;
        let vrrp_sync_groups = self.vrrp_sync_groups(&raw.vrrp_sync_group, &vrrp)?;
        let sync = raw
            .sync
            .map(|s| self.sync(&s, &vrrp, &vrrp_sync_groups))
            .transpose()?;
        Ok(Config {
            agent,
            nat,
            timeouts,
            http,
            telemetry,
            tunnel,
            sync,
            pools,
            vips,
            vrrp,
            vrrp_sync_groups,
        })
    }

    // -- [agent] --------------------------------------------------------------

    fn agent(&self, raw: RawAgent) -> Checked<AgentConfig> {
        let interface_locations = raw.interfaces.get_ref().iter().enumerate();
        let interface_locations = interface_locations
            .map(|(i, name)| self.location(name.span(), format_args!("agent.interfaces[{i}]")))
            .collect();
        let interfaces = self.interfaces(raw.interfaces)?;
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
        let pin_dir = self.pin_dir(raw.pin_dir)?;
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
            interface_locations,
            wait_for_interfaces: raw.wait_for_interfaces.unwrap_or(false),
            xdp_mode,
            control_socket,
            pin_dir,
            keep_attached,
        })
    }

    /// `agent.interfaces`: at least one, each a valid name, none twice.
    fn interfaces(&self, raw: Spanned<Vec<Spanned<String>>>) -> Checked<Vec<String>> {
        let list_span = raw.span();
        let list = raw.into_inner();
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
            let value = self.text_field(name, &field, "interface name", interface_name_problem)?;
            if let Some(first) = interfaces.iter().position(|n| *n == value) {
                return Err(self.error(
                    name.span(),
                    field,
                    format!("duplicate interface {value:?} (already listed as agent.interfaces[{first}])"),
                ));
            }
            interfaces.push(value);
        }
        Ok(interfaces)
    }

    /// `agent.pin_dir`: an absolute path, or `""` for none.
    fn pin_dir(&self, raw: Option<Spanned<String>>) -> Checked<Option<PathBuf>> {
        match raw {
            Some(s) if s.get_ref().is_empty() => Ok(None),
            Some(s) if !Path::new(s.get_ref()).is_absolute() => Err(self.error(
                s.span(),
                "agent.pin_dir",
                format!(
                    "{:?} is not an absolute path (a directory on a bpf filesystem, e.g. {DEFAULT_PIN_DIR:?}; \"\" pins nothing)",
                    s.get_ref()
                ),
            )),
            Some(s) => Ok(Some(PathBuf::from(s.into_inner()))),
            None => Ok(Some(PathBuf::from(DEFAULT_PIN_DIR))),
        }
    }

    // -- [nat] and [timeouts] -------------------------------------------------

    fn nat(&self, raw: RawNat) -> Checked<NatConfig> {
        let mut nat = NatConfig::default();
        match (raw.source_address, raw.source_addresses) {
            (Some(_), Some(list)) => {
                return Err(self.error(
                    list.span(),
                    "nat.source_addresses",
                    "give either nat.source_address or nat.source_addresses, not both",
                ));
            }
            (Some(addr), None) => {
                nat.source_addresses = vec![self.ip(&addr, "nat.source_address")?];
                self.places
                    .borrow_mut()
                    .source_addresses
                    .push(("nat.source_address".to_owned(), addr.span()));
            }
            (None, Some(list)) => {
                let span = list.span();
                let list = list.into_inner();
                if list.is_empty() || list.len() > MAX_SNAT_ADDRS {
                    return Err(self.error(
                        span,
                        "nat.source_addresses",
                        format!("give 1 to {MAX_SNAT_ADDRS} addresses (got {})", list.len()),
                    ));
                }
                for (i, raw_addr) in list.iter().enumerate() {
                    let field = format!("nat.source_addresses[{i}]");
                    let addr = self.ip(raw_addr, &field)?;
                    if nat.source_addresses.contains(&addr) {
                        return Err(self.error(
                            raw_addr.span(),
                            &field,
                            format!("{addr} is listed twice"),
                        ));
                    }
                    nat.source_addresses.push(addr);
                    self.places
                        .borrow_mut()
                        .source_addresses
                        .push((field, raw_addr.span()));
                }
            }
            (None, None) => {}
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
            self.places.borrow_mut().port_range = Some(range.span());
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
            tcp_handshake: self.timeout(
                raw.tcp_handshake,
                "timeouts.tcp_handshake",
                defaults.tcp_handshake,
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

    // -- [[pool]] -------------------------------------------------------------

    fn pools(&self, raw: Vec<Spanned<RawPool>>) -> Checked<Vec<PoolConfig>> {
        let mut backends = BackendCount {
            total: raw.iter().map(|p| p.get_ref().backends.len()).sum(),
            seen: 0,
        };
        let mut names = Names::new();
        let mut pools = Vec::with_capacity(raw.len());
        for (pi, pool) in raw.into_iter().enumerate() {
            let pool = pool.into_inner();
            let field = format!("pool[{pi}] ({:?})", pool.name.get_ref());
            let name = self.new_name(&mut names, ("pool", "pool"), pi, &pool.name, &field)?;
            self.places.borrow_mut().backends.push(Vec::new());
            pools.push(self.pool(pool, name, &field, &mut backends)?);
        }
        Ok(pools)
    }

    /// One `[[pool]]` called `name`, at key path `field`.
    fn pool(
        &self,
        pool: RawPool,
        name: String,
        field: &str,
        count: &mut BackendCount,
    ) -> Checked<PoolConfig> {
        let on_backend_down = match &pool.on_backend_down {
            None => DownPolicy::default(),
            Some(p) => self.word(p, format_args!("{field}.on_backend_down"))?,
        };
        let empty = RawCheck::default();
        let pool_check = CheckLayer {
            raw: pool.check.as_ref().unwrap_or(&empty),
            field: format!("{field}.check"),
        };
        let check = self.check(std::slice::from_ref(&pool_check))?;
        let balance = self.pool_balance(&pool, field)?;
        let discovery = match &pool.discovery {
            Some(d) => Some(self.discovery(d, &pool.backends, field)?),
            None => None,
        };

        let mut endpoints = Endpoints::new();
        let mut cookie_ids = CookieIds::default();
        let mut backends = Vec::with_capacity(pool.backends.len());
        for (bi, backend) in pool.backends.into_iter().enumerate() {
            let bfield = format!("{field}.backends[{bi}]");
            count.add(self, &backend.span(), &bfield)?;
            let span = backend
                .get_ref()
                .cookie
                .as_ref()
                .map_or(backend.span(), Spanned::span);
            let backend = self.backend(
                backend,
                (bi, &bfield),
                (&pool_check, &check),
                &mut endpoints,
            )?;
            cookie_ids.add(self, (&backend, bi, span), &bfield, pool.cookie.is_some())?;
            backends.push(backend);
        }
        Ok(PoolConfig {
            name,
            backends,
            check,
            on_backend_down,
            balance,
            discovery,
        })
    }

    /// Entry `index` of a pool's `backends`, at key path `field`. `pool` is the pool's check
    /// (its table and its result); `endpoints` holds the pool's backends so far.
    fn backend(
        &self,
        raw: Spanned<RawBackend>,
        (index, field): (usize, &str),
        pool: (&CheckLayer<'_>, &CheckConfig),
        endpoints: &mut Endpoints,
    ) -> Checked<BackendConfig> {
        let span = raw.span();
        let raw = raw.into_inner();
        let address = self.ip(&raw.address, format_args!("{field}.address"))?;
        let port = self.port(&raw.port, format_args!("{field}.port"))?;
        check_backend_address(SocketAddr::new(address, port)).map_err(|e| match e {
            BackendAddressError::NotAHost { .. } => self.error(
                raw.address.span(),
                format_args!("{field}.address"),
                e.to_string(),
            ),
            BackendAddressError::PortZero => {
                self.error(raw.port.span(), format_args!("{field}.port"), e.to_string())
            }
        })?;
        if let Some(pool) = self.places.borrow_mut().backends.last_mut() {
            pool.push(raw.address.span());
        }
        let weight = match &raw.weight {
            None => DEFAULT_WEIGHT,
            Some(w) => {
                let v = w.get_ref().0;
                u32::try_from(v)
                    .ok()
                    .filter(|w| *w <= MAX_WEIGHT)
                    .ok_or_else(|| {
                        self.error(
                            w.span(),
                            format_args!("{field}.weight"),
                            format!("weight {v} is out of range 0..={MAX_WEIGHT} (0 = drained)"),
                        )
                    })?
            }
        };
        if let Some(first) = endpoints.insert((address, port), index) {
            return Err(self.error(
                span,
                field,
                format!(
                    "duplicate backend {} (already listed as backends[{first}])",
                    SocketAddr::new(address, port)
                ),
            ));
        }
        let (pool_check, pool_config) = pool;
        let check = match &raw.check {
            None => pool_config.clone(),
            Some(own) => {
                let layers = [
                    CheckLayer {
                        raw: pool_check.raw,
                        field: pool_check.field.clone(),
                    },
                    CheckLayer {
                        raw: own,
                        field: format!("{field}.check"),
                    },
                ];
                self.check(&layers)?
            }
        };
        let cookie = self.backend_cookie(raw.cookie.as_ref(), field)?;
        let maxconn = match &raw.maxconn {
            Some(m) => {
                let v = self.bounded(
                    m,
                    format_args!("{field}.maxconn"),
                    "maxconn",
                    0..=1_000_000,
                    " (0: no limit)",
                )?;
                u32::try_from(v).expect("bounded")
            }
            None => 0,
        };
        Ok(BackendConfig {
            address,
            port,
            weight,
            check,
            cookie,
            maxconn,
        })
    }

    // -- Values ---------------------------------------------------------------

    /// A duration such as `"30s"` within `range` (`bounds` spells it for the message).
    fn duration(
        &self,
        raw: &Spanned<String>,
        field: impl fmt::Display,
        range: RangeInclusive<Duration>,
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

    /// One of the words of an enumeration ([`Protocol`], [`Scheduler`], [`XdpMode`], ...).
    fn word<T>(&self, raw: &Spanned<String>, field: impl fmt::Display) -> Checked<T>
    where
        T: FromStr<Err = ParseValueError>,
    {
        raw.get_ref()
            .parse()
            .map_err(|e: ParseValueError| self.error(raw.span(), field, e.to_string()))
    }

    /// An IPv4 or IPv6 address, written without brackets.
    fn ip(&self, raw: &Spanned<String>, field: impl fmt::Display) -> Checked<IpAddr> {
        let text = raw.get_ref();
        text.parse().map_err(|_| {
            self.error(
                raw.span(),
                field,
                format!(
                    "invalid IP address {text:?} (expected IPv4 or IPv6, e.g. \"10.0.0.1\" \
                     or \"2001:db8::1\")"
                ),
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

    /// The `name` of table `index` of a kind (`what` in messages, `table` in key paths),
    /// at key path `field`: a valid name not given to another table of the kind.
    fn new_name(
        &self,
        names: &mut Names,
        (what, table): (&str, &str),
        index: usize,
        raw: &Spanned<String>,
        field: &str,
    ) -> Checked<String> {
        let name = self.text_field(raw, format_args!("{field}.name"), "name", name_problem)?;
        if let Some((first, line)) = names.get(&name) {
            return Err(self.error(
                raw.span(),
                format_args!("{field}.name"),
                format!("duplicate {what} name {name:?} (first defined as {table}[{first}] on line {line})"),
            ));
        }
        names.insert(name.clone(), (index, self.line(&raw.span())));
        Ok(name)
    }
}

/// What a name may refer to, for an "unknown NAME" message: `defined pools: "a", "b"`, or
/// `no [[pool]] is defined` (`what`: "pools", `table`: "pool").
fn defined<'a>(what: &str, table: &str, names: impl Iterator<Item = &'a str>) -> String {
    let list: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if list.is_empty() {
        format!("no [[{table}]] is defined")
    } else {
        format!("defined {what}: {}", list.join(", "))
    }
}

/// The backends of one pool so far: (address, port) -> index in the pool.
type Endpoints = HashMap<(IpAddr, u16), usize>;

/// Backends over all pools, against the data plane's [`MAX_BACKENDS`].
struct BackendCount {
    /// Listed in the file.
    total: usize,
    /// Checked so far.
    seen: usize,
}

impl BackendCount {
    /// Counts the backend at `span` (key path `field`); an error once there are too many.
    fn add(&mut self, v: &Validator<'_>, span: &Range<usize>, field: &str) -> Checked<()> {
        self.seen += 1;
        let (total, max) = (self.total, MAX_BACKENDS as usize);
        if self.seen > max {
            return Err(v.error(
                span.clone(),
                field,
                format!("too many backends: {total} in total over all pools, at most {max} are supported"),
            ));
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests;
