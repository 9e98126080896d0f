//! Live reload, as pure functions: the running configuration (the file with the CLI's
//! changes over it), the file read again, and the plan of differences the agent applies.
//!
//! Who wins: an object (a VIP, a pool's settings, a backend of a pool) that the file did
//! not change since it was last loaded keeps what the CLI made of it (added, changed or
//! deleted); an object the file changed takes the file's version, and when the CLI had
//! changed it too, that is logged. What cannot change while the agent runs (the `[agent]`
//! section, the SNAT source addresses) is refused, and so is a merged configuration that the
//! balancer would not accept: nothing is applied then.

use std::{fmt, net::SocketAddr};

use crate::{
    api::{Request, Source},
    config::{
        BackendConfig, Config, NatConfig, PoolConfig, Timeouts, TunnelConfig, VipConfig, VipMode,
    },
};

/// A pool's own settings: everything but its backends.
fn pool_settings(pool: &PoolConfig) -> PoolConfig {
    PoolConfig {
        backends: Vec::new(),
        ..pool.clone()
    }
}

fn find_pool<'a>(config: &'a Config, name: &str) -> Option<&'a PoolConfig> {
    config.pools.iter().find(|p| p.name == name)
}

fn find_vip<'a>(config: &'a Config, name: &str) -> Option<&'a VipConfig> {
    config.vips.iter().find(|v| v.name == name)
}

fn find_backend<'a>(config: &'a Config, pool: &str, addr: SocketAddr) -> Option<&'a BackendConfig> {
    find_pool(config, pool)?
        .backends
        .iter()
        .find(|b| b.socket_addr() == addr)
}

/// Names in `new`'s order, then those only in `current`, each once.
fn ordered<'a>(
    new: impl Iterator<Item = &'a str>,
    current: impl Iterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for name in new.chain(current) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The version of one object that runs after the reload: the CLI's (`current`) when the
/// file did not change it, else the file's; `describe` says what the CLI's change was when
/// the file replaces it, for the log.
fn pick<T: Clone + PartialEq>(
    old: Option<&T>,
    new: Option<&T>,
    current: Option<&T>,
    what: &str,
    describe: impl Fn(Option<&T>, Option<&T>) -> String,
    replaced: &mut Vec<String>,
) -> Option<T> {
    if old == new {
        return current.cloned();
    }
    if current != old && current != new {
        replaced.push(format!("{what}: {}", describe(current, new)));
    }
    new.cloned()
}

/// How a CLI change replaced by the file is logged, in general terms.
fn generic<T>(current: Option<&T>, new: Option<&T>) -> String {
    match (current, new) {
        (None, Some(_)) => "deleted by the CLI, put back by the file".to_owned(),
        (Some(_), None) => "changed by the CLI, removed by the file".to_owned(),
        _ => "changed by the CLI, replaced by the file's version".to_owned(),
    }
}

/// A backend's, naming the weight when only the weight differs.
fn describe_backend(current: Option<&BackendConfig>, new: Option<&BackendConfig>) -> String {
    match (current, new) {
        (Some(c), Some(n))
            if c.weight != n.weight
                && BackendConfig {
                    weight: n.weight,
                    ..c.clone()
                } == *n =>
        {
            format!(
                "weight {} set by the CLI replaced by the file's {}",
                c.weight, n.weight
            )
        }
        _ => generic(current, new),
    }
}

/// The configuration that runs after a reload from `old` (the file as last loaded) to
/// `new` (the file now), with `current` running: see the module's doc. Also returns the
/// CLI changes the file replaced, one log line each.
#[must_use]
pub fn merge(old: &Config, new: &Config, current: &Config) -> (Config, Vec<String>) {
    let mut replaced = Vec::new();
    let mut pools = Vec::new();
    let pool_names = ordered(
        new.pools.iter().map(|p| p.name.as_str()),
        current.pools.iter().map(|p| p.name.as_str()),
    );
    for name in pool_names {
        let settings = |c: &Config| find_pool(c, name).map(pool_settings);
        let Some(mut pool) = pick(
            settings(old).as_ref(),
            settings(new).as_ref(),
            settings(current).as_ref(),
            &format!("pool {name}"),
            generic,
            &mut replaced,
        ) else {
            continue;
        };
        let addrs = |c: &Config| -> Vec<SocketAddr> {
            find_pool(c, name)
                .map(|p| p.backends.iter().map(BackendConfig::socket_addr).collect())
                .unwrap_or_default()
        };
        let (new_addrs, current_addrs) = (addrs(new), addrs(current));
        let mut seen = Vec::new();
        for addr in new_addrs.iter().chain(&current_addrs) {
            if seen.contains(addr) {
                continue;
            }
            seen.push(*addr);
            let in_file = find_backend(new, name, *addr);
            let backend = pick(
                find_backend(old, name, *addr),
                in_file,
                find_backend(current, name, *addr),
                &format!("backend {addr} in pool {name}"),
                describe_backend,
                &mut replaced,
            );
            // A backend the CLI added has its pool's check, the pool's as it is now.
            let check = in_file.is_none().then(|| pool.check.clone());
            pool.backends.extend(backend.map(|b| BackendConfig {
                check: check.unwrap_or_else(|| b.check.clone()),
                ..b
            }));
        }
        pools.push(pool);
    }
    let mut vips = Vec::new();
    let vip_names = ordered(
        new.vips.iter().map(|v| v.name.as_str()),
        current.vips.iter().map(|v| v.name.as_str()),
    );
    for name in vip_names {
        vips.extend(pick(
            find_vip(old, name),
            find_vip(new, name),
            find_vip(current, name),
            &format!("vip {name}"),
            generic,
            &mut replaced,
        ));
    }
    let target = Config {
        pools,
        vips,
        ..new.clone()
    };
    (target, replaced)
}

/// Refuses a new file that changes what only a restart can change.
///
/// # Errors
/// What changed, and that it needs a restart.
pub fn check_live(old: &Config, new: &Config) -> Result<(), String> {
    let (a, b) = (&old.agent, &new.agent);
    let fixed = [
        (
            a.interfaces != b.interfaces,
            "interfaces: changing the attached interfaces",
        ),
        (
            a.xdp_mode != b.xdp_mode,
            "agent.xdp_mode: changing how XDP is attached",
        ),
        (
            a.control_socket != b.control_socket,
            "agent.control_socket: moving the control socket",
        ),
        (
            a.pin_dir != b.pin_dir,
            "agent.pin_dir: moving the pinned flow tables",
        ),
        (a.keep_attached != b.keep_attached, "agent.keep_attached"),
        (
            a.wait_for_interfaces != b.wait_for_interfaces,
            "agent.wait_for_interfaces",
        ),
        (
            old.nat.source_addresses != new.nat.source_addresses,
            "nat.source_address: changing the SNAT source of every backend",
        ),
        (
            old.telemetry != new.telemetry,
            "telemetry: changing the metrics listener",
        ),
        (old.sync != new.sync, "sync: changing the flow sync"),
    ];
    let refused: Vec<&str> = fixed
        .iter()
        .filter(|(changed, _)| *changed)
        .map(|(_, what)| *what)
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} needs a restart (the running configuration is unchanged)",
        refused.join("; ")
    ))
}

/// Refuses a merged configuration whose VIPs or rules name a pool it has not got (a VIP the
/// CLI added whose pool the file removes).
///
/// # Errors
/// The first such VIP.
pub fn check_pools(target: &Config, current: &Config) -> Result<(), String> {
    for vip in &target.vips {
        let pools = std::iter::once(&vip.pool).chain(vip.rules.iter().map(|r| &r.pool));
        for pool in pools {
            if find_pool(target, pool).is_none() {
                let by = if find_vip(current, &vip.name).is_some() {
                    "kept from the running configuration"
                } else {
                    "from the file"
                };
                return Err(format!(
                    "vip {} ({by}) uses pool {pool}, which the new file removes",
                    vip.name
                ));
            }
        }
    }
    Ok(())
}

/// One change of a plan ([`plan`] orders them: VIPs out first, pools before their backends, pools deleted last).
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Timeouts, the SNAT port range or the tunnels' outer headers.
    Settings {
        timeouts: Timeouts,
        nat: NatConfig,
        tunnel: TunnelConfig,
    },
    AddPool(PoolConfig),
    /// A pool's own settings (check of later backends, down policy, HTTP balancing).
    ChangePool(PoolConfig),
    /// An L4 VIP leaves the data plane (also before it comes back with another address,
    /// port, protocol or mode).
    DelVip(VipConfig),
    DelBackend {
        pool: String,
        addr: SocketAddr,
    },
    AddBackend {
        pool: String,
        backend: BackendConfig,
    },
    ChangeBackend {
        pool: String,
        backend: BackendConfig,
        weight: bool,
        check: bool,
    },
    /// An L4 VIP's settings, its key unchanged: it keeps its flows.
    ChangeVip(VipConfig),
    AddVip(VipConfig),
    DelPool(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Settings { .. } => write!(
                f,
                "setting the timeouts, the SNAT port range and the tunnels' outer headers"
            ),
            Step::AddPool(p) => write!(f, "adding pool {}", p.name),
            Step::ChangePool(p) => write!(f, "changing pool {}", p.name),
            Step::DelVip(v) => write!(f, "removing vip {}", v.name),
            Step::DelBackend { pool, addr } => {
                write!(f, "removing backend {addr} from pool {pool}")
            }
            Step::AddBackend { pool, backend } => {
                write!(f, "adding backend {} to pool {pool}", backend.socket_addr())
            }
            Step::ChangeBackend { pool, backend, .. } => {
                write!(
                    f,
                    "changing backend {} in pool {pool}",
                    backend.socket_addr()
                )
            }
            Step::ChangeVip(v) => write!(f, "changing vip {}", v.name),
            Step::AddVip(v) => write!(f, "adding vip {}", v.name),
            Step::DelPool(name) => write!(f, "removing pool {name}"),
        }
    }
}

/// What a reload does: the steps, and what else changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// HTTP VIPs, their rules, `[http]`, or a backend's `cookie`/`maxconn`: the proxy is
    /// reconfigured.
    pub http: bool,
    /// `[[vrrp]]` or `[[vrrp_sync_group]]`: the VRRP service is restarted.
    pub vrrp: bool,
    summary: Counts,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Counts {
    vips: [usize; 3],
    pools: [usize; 3],
    backends: [usize; 3],
    checks: usize,
    settings: bool,
    http_settings: bool,
    vrrp: bool,
}

impl Plan {
    /// Nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && !self.http && !self.vrrp
    }
}

/// The plan that takes the running configuration `current` to `target`.
#[must_use]
pub fn plan(current: &Config, target: &Config) -> Plan {
    let mut p = Plan::default();
    let c = &mut p.summary;
    if current.timeouts != target.timeouts
        || current.nat != target.nat
        || current.tunnel != target.tunnel
    {
        p.steps.push(Step::Settings {
            timeouts: target.timeouts.clone(),
            nat: target.nat.clone(),
            tunnel: target.tunnel.clone(),
        });
        c.settings = true;
    }
    c.http_settings = current.http != target.http;
    c.vrrp = current.vrrp != target.vrrp || current.vrrp_sync_groups != target.vrrp_sync_groups;
    p.vrrp = c.vrrp;
    p.http = c.http_settings;
    let mut later = Vec::new();
    // VIPs out of the data plane first: a VIP may take the address (or a pool the name)
    // of one removed.
    for vip in &current.vips {
        let next = find_vip(target, &vip.name);
        match next {
            None => c.vips[1] += 1,
            Some(n) if n != vip => c.vips[2] += 1,
            Some(_) => {}
        }
        p.http |= vip.mode == VipMode::Http && next != Some(vip);
        let stays_l4 = next.is_some_and(|n| {
            n.mode == VipMode::L4
                && (n.address, n.port, n.protocol) == (vip.address, vip.port, vip.protocol)
        });
        if vip.mode == VipMode::L4 && !stays_l4 {
            p.steps.push(Step::DelVip(vip.clone()));
        }
    }
    for pool in &target.pools {
        match find_pool(current, &pool.name) {
            None => {
                p.steps.push(Step::AddPool(pool_settings(pool)));
                c.pools[0] += 1;
            }
            Some(old) if pool_settings(old) != pool_settings(pool) => {
                p.steps.push(Step::ChangePool(pool_settings(pool)));
                c.pools[2] += 1;
                p.http |= old.balance != pool.balance;
            }
            Some(_) => {}
        }
    }
    for pool in &current.pools {
        let next = find_pool(target, &pool.name);
        for b in &pool.backends {
            if next
                .and_then(|n| {
                    n.backends
                        .iter()
                        .find(|x| x.socket_addr() == b.socket_addr())
                })
                .is_none()
            {
                p.steps.push(Step::DelBackend {
                    pool: pool.name.clone(),
                    addr: b.socket_addr(),
                });
                c.backends[1] += 1;
            }
        }
        if next.is_none() {
            later.push(Step::DelPool(pool.name.clone()));
            c.pools[1] += 1;
        }
    }
    for pool in &target.pools {
        for b in &pool.backends {
            let addr = b.socket_addr();
            match find_backend(current, &pool.name, addr) {
                None => {
                    p.steps.push(Step::AddBackend {
                        pool: pool.name.clone(),
                        backend: b.clone(),
                    });
                    c.backends[0] += 1;
                }
                Some(old) if old != b => {
                    let check = old.check != b.check;
                    p.steps.push(Step::ChangeBackend {
                        pool: pool.name.clone(),
                        backend: b.clone(),
                        weight: old.weight != b.weight,
                        check,
                    });
                    c.backends[2] += 1;
                    c.checks += usize::from(check && b.check.is_enabled());
                    p.http |= (&old.cookie, old.maxconn) != (&b.cookie, b.maxconn);
                }
                Some(_) => {}
            }
        }
    }
    for vip in &target.vips {
        let old = find_vip(current, &vip.name);
        if old.is_none() {
            c.vips[0] += 1;
        }
        p.http |= vip.mode == VipMode::Http && old != Some(vip);
        if vip.mode != VipMode::L4 || old == Some(vip) {
            continue;
        }
        let in_place = old.is_some_and(|o| {
            o.mode == VipMode::L4
                && (o.address, o.port, o.protocol) == (vip.address, vip.port, vip.protocol)
        });
        p.steps.push(if in_place {
            Step::ChangeVip(vip.clone())
        } else {
            Step::AddVip(vip.clone())
        });
    }
    p.steps.extend(later);
    p
}

impl fmt::Display for Plan {
    /// The one-line summary: "2 VIPs added, 1 removed, 3 backends changed, 1 check
    /// restarted", or "no change".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.summary;
        let mut parts = Vec::new();
        for (counts, one, many) in [
            (c.vips, "VIP", "VIPs"),
            (c.pools, "pool", "pools"),
            (c.backends, "backend", "backends"),
        ] {
            let mut first = true;
            for (n, verb) in counts.iter().zip(["added", "removed", "changed"]) {
                if *n == 0 {
                    continue;
                }
                if first {
                    let noun = if *n == 1 { one } else { many };
                    parts.push(format!("{n} {noun} {verb}"));
                    first = false;
                } else {
                    parts.push(format!("{n} {verb}"));
                }
            }
        }
        if c.checks > 0 {
            let s = if c.checks == 1 { "" } else { "s" };
            parts.push(format!("{} check{s} restarted", c.checks));
        }
        if c.settings {
            parts.push("timeouts/NAT settings changed".to_owned());
        }
        if c.http_settings {
            parts.push("[http] settings changed".to_owned());
        }
        if c.vrrp {
            parts.push("VRRP restarted".to_owned());
        }
        if parts.is_empty() {
            return f.write_str("no change");
        }
        f.write_str(&parts.join(", "))
    }
}

/// The backends of pool `name` of `config`.
fn backends_mut<'a>(config: &'a mut Config, name: &str) -> Option<&'a mut Vec<BackendConfig>> {
    config
        .pools
        .iter_mut()
        .find(|p| p.name == name)
        .map(|p| &mut p.backends)
}

/// `step` applied to the configuration `config` describes.
pub fn apply_to_config(config: &mut Config, step: &Step) {
    match step {
        Step::Settings {
            timeouts,
            nat,
            tunnel,
        } => {
            config.timeouts = timeouts.clone();
            config.nat = nat.clone();
            config.tunnel = tunnel.clone();
        }
        Step::AddPool(pool) => config.pools.push(pool.clone()),
        Step::ChangePool(pool) => {
            if let Some(p) = config.pools.iter_mut().find(|p| p.name == pool.name) {
                let backends = std::mem::take(&mut p.backends);
                *p = PoolConfig {
                    backends,
                    ..pool.clone()
                };
            }
        }
        Step::DelPool(name) => config.pools.retain(|p| p.name != *name),
        Step::DelVip(vip) => config.vips.retain(|v| v.name != vip.name),
        Step::AddVip(vip) | Step::ChangeVip(vip) => {
            config.vips.retain(|v| v.name != vip.name);
            config.vips.push(vip.clone());
        }
        Step::DelBackend { pool, addr } => {
            if let Some(backends) = backends_mut(config, pool) {
                backends.retain(|b| b.socket_addr() != *addr);
            }
        }
        Step::AddBackend { pool, backend } | Step::ChangeBackend { pool, backend, .. } => {
            if let Some(backends) = backends_mut(config, pool) {
                match backends
                    .iter_mut()
                    .find(|b| b.socket_addr() == backend.socket_addr())
                {
                    Some(b) => *b = backend.clone(),
                    None => backends.push(backend.clone()),
                }
            }
        }
    }
}

/// The pool a CLI target names in `config`: a pool, or the pool of a VIP of that name (as
/// the balancer resolves it).
fn target_pool(config: &Config, target: &str) -> Option<String> {
    if find_pool(config, target).is_some() {
        return Some(target.to_owned());
    }
    find_vip(config, target).map(|v| v.pool.clone())
}

/// Records in `config` a control request the balancer has just carried out.
pub fn record(config: &mut Config, request: &Request) {
    // A pool the CLI creates (`pool add`, or `vip add` naming a new pool), as the balancer
    // makes it: no check, the default policies.
    let new_pool = |name: &str| PoolConfig {
        name: name.to_owned(),
        backends: Vec::new(),
        check: crate::config::CheckConfig::default(),
        on_backend_down: crate::config::DownPolicy::default(),
        balance: crate::config::PoolBalance::default(),
        discovery: None,
    };
    match request {
        Request::VipAdd { vip } => {
            if find_pool(config, &vip.pool).is_none() {
                config.pools.push(new_pool(&vip.pool));
            }
            config.vips.push(vip.clone());
        }
        Request::PoolAdd { name } => config.pools.push(new_pool(name)),
        Request::PoolDel { name } => config.pools.retain(|p| p.name != *name),
        Request::VipDel { name } => config.vips.retain(|v| v.name != *name),
        Request::BackendAdd {
            target,
            address,
            weight,
        } => {
            let Some(pool) = target_pool(config, target) else {
                return;
            };
            if let Some(p) = config.pools.iter_mut().find(|p| p.name == pool) {
                p.backends.push(BackendConfig {
                    address: address.ip(),
                    port: address.port(),
                    weight: *weight,
                    check: p.check.clone(),
                    cookie: None,
                    maxconn: 0,
                });
            }
        }
        Request::BackendDel { target, address } => {
            if let Some(pool) = target_pool(config, target) {
                let step = Step::DelBackend {
                    pool,
                    addr: *address,
                };
                apply_to_config(config, &step);
            }
        }
        Request::BackendWeight {
            target,
            address,
            weight,
        } => {
            let pool = target_pool(config, target);
            if let Some(b) = pool.and_then(|pool| {
                config
                    .pools
                    .iter_mut()
                    .find(|p| p.name == pool)?
                    .backends
                    .iter_mut()
                    .find(|b| b.socket_addr() == *address)
            }) {
                b.weight = *weight;
            }
        }
        Request::Status | Request::Reload | Request::ConfigDump => {}
    }
}

/// Where each object of `running` comes from: the file when `file` has it as it runs.
#[must_use]
pub fn vip_source(file: &Config, running: &Config, name: &str) -> Source {
    source(find_vip(file, name), find_vip(running, name))
}

#[must_use]
pub fn pool_source(file: &Config, running: &Config, name: &str) -> Source {
    let settings = |c: &Config| find_pool(c, name).map(pool_settings);
    source(settings(file).as_ref(), settings(running).as_ref())
}

#[must_use]
pub fn backend_source(file: &Config, running: &Config, pool: &str, addr: SocketAddr) -> Source {
    source(
        find_backend(file, pool, addr),
        find_backend(running, pool, addr),
    )
}

fn source<T: PartialEq>(file: Option<&T>, running: Option<&T>) -> Source {
    if file.is_some() && file == running {
        Source::File
    } else {
        Source::Cli
    }
}

#[cfg(test)]
mod tests;
