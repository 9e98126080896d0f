//! What the CLI prints: the agent's status as tables.

mod flow_sync;

use std::fmt::Write as _;

use crate::api::{client::ClientError, ActiveFlows, InterfaceState, Status};
use crate::config;

/// Red, for errors on a terminal.
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// A VIP's or a backend's active flows as a column shows them: `-` before the agent's
/// first census.
fn active(flows: Option<ActiveFlows>) -> String {
    flows.map_or_else(|| "-".to_owned(), |f| f.total.to_string())
}

/// Drops the padding the last column of a table leaves at the end of each line.
pub(super) fn trim_lines(text: &str) -> String {
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn render_vips(status: &Status) -> String {
    let mut out = format!(
        "{:<16} {:<24} {:<12} {:<16} {:>8} {:<8} {:<6}\n",
        "VIP", "ADDRESS", "SCHEDULER", "POOL", "ACTIVE", "ALL DOWN", "SOURCE"
    );
    for status in &status.vips {
        let v = &status.config;
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<12} {:<16} {:>8} {:<8} {:<6}",
            v.name,
            format!("{}/{}", v.socket_addr(), v.protocol),
            // How packets leave, when it is not the usual NAT.
            match v.forwarding {
                config::Forwarding::Nat => v.scheduler.to_string(),
                config::Forwarding::Dsr => format!("{}, dsr", v.scheduler),
                config::Forwarding::Tunnel => format!("{}, {}", v.scheduler, v.encapsulation),
            },
            v.pool,
            status.active_backends,
            v.on_all_down.to_string(),
            status.source.as_str()
        );
    }
    // HTTP VIPs: the proxy's, with their default pool (the last rule line).
    for v in &status.http {
        let default_pool = v.rules.last().map_or("-", |r| r.pool.as_str());
        let active = status
            .pools
            .iter()
            .find(|p| p.name == default_pool)
            .map_or(0, |p| {
                p.backends.iter().filter(|b| b.state == "active").count()
            });
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<12} {:<16} {:>8} {:<8}",
            v.name,
            format!("{}/http", v.listen),
            format!("http, {} rules", v.rules.len().saturating_sub(1)),
            default_pool,
            active,
            "-"
        );
    }
    out.trim_end().to_string()
}

pub(super) fn render_backends(
    status: &Status,
    target: Option<&str>,
) -> Result<String, ClientError> {
    let pool = match target {
        None => None,
        Some(t) => {
            let name = if status.pools.iter().any(|p| p.name == t) {
                t.to_string()
            } else if let Some(v) = status.vips.iter().find(|v| v.config.name == t) {
                v.config.pool.clone()
            } else {
                return Err(ClientError::Refused(format!("no pool or VIP named {t:?}")));
            };
            Some(name)
        }
    };
    // Packets as the JSON counts them: from clients (`packets`) and from the backend
    // (`reply_packets`), each in a column of its own.
    let mut out = format!(
        "{:<12} {:<21} {:>6} {:<9} {:<5} {:<6} {:>9} {:<28} {:>11} {:>10} {:>9} {:>12} {:<6}\n",
        "POOL",
        "BACKEND",
        "WEIGHT",
        "STATE",
        "CHECK",
        "HEALTH",
        "SINCE",
        "LAST CHECK",
        "CLIENT PKTS",
        "REPLY PKTS",
        "NEW FLOWS",
        "ACTIVE FLOWS",
        "SOURCE"
    );
    for p in status
        .pools
        .iter()
        .filter(|p| pool.as_ref().is_none_or(|n| *n == p.name))
    {
        for b in &p.backends {
            let last = match &b.last_check {
                Some(c) => format!("{:.1}ms {}", c.latency_ms, c.reason),
                None => "-".to_string(),
            };
            // Not checked yet: no health to show (it takes no flows meanwhile).
            let health = if b.state == "unchecked" {
                "-"
            } else {
                b.health.as_str()
            };
            let _ = writeln!(
                out,
                "{:<12} {:<21} {:>6} {:<9} {:<5} {:<6} {:>9} {:<28} {:>11} {:>10} {:>9} {:>12} {:<6}",
                p.name,
                b.socket_addr().to_string(),
                b.weight,
                b.state,
                b.check,
                health,
                format_age(b.since_change_secs),
                last,
                b.counters.packets,
                b.counters.reply_packets,
                b.counters.new_flows,
                active(b.active_flows),
                b.source.as_str()
            );
        }
    }
    Ok(out.trim_end().to_string())
}

pub(super) fn render_vrrp(status: &Status) -> String {
    if status.vrrp.is_empty() {
        return "no VRRP instances".to_owned();
    }
    let mut out = format!(
        "{:<14} {:<10} {:>4} {:>3} {:<7} {:>8} {:<15} {:>9} {:>13} {:>6}  {}\n",
        "INSTANCE",
        "INTERFACE",
        "VRID",
        "VER",
        "STATE",
        "PRIORITY",
        "MASTER",
        "SINCE",
        "ADVERTS S/R",
        "ERRORS",
        "LAST CHANGE"
    );
    for v in &status.vrrp {
        let priority = if v.effective_priority == v.priority {
            v.priority.to_string()
        } else {
            format!("{}/{}", v.effective_priority, v.priority)
        };
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>4} {:>3} {:<7} {:>8} {:<15} {:>9} {:>13} {:>6}  {}",
            v.name,
            v.interface,
            v.vrid,
            v.version,
            v.state,
            priority,
            v.master.map_or_else(|| "-".to_owned(), |m| m.to_string()),
            format_age(v.since_change_secs),
            format!("{}/{}", v.adverts_sent, v.adverts_received),
            v.errors.values().sum::<u64>(),
            v.reason
        );
    }
    let errors: Vec<String> = status
        .vrrp
        .iter()
        .flat_map(|v| {
            v.errors
                .iter()
                .map(move |(reason, n)| format!("  {}: {n} {reason}", v.name))
        })
        .collect();
    if !errors.is_empty() {
        out += "adverts refused:\n";
        out += &errors.join("\n");
        out += "\n";
    }
    // Which v3 checksum the peers send: keepalived 2.2.7's (pseudo_header) or RFC 9568's.
    let checksums: Vec<String> = status
        .vrrp
        .iter()
        .filter(|v| !v.checksums.is_empty())
        .map(|v| {
            let counts: Vec<String> = v
                .checksums
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            format!("  {}: {}", v.name, counts.join(", "))
        })
        .collect();
    if !checksums.is_empty() {
        out += "v3 checksums received:\n";
        out += &checksums.join("\n");
    }
    out.trim_end().to_string()
}

/// The HTTP VIPs: requests and answers per VIP, then each rule's hits and each backend's
/// requests.
pub(super) fn render_http(status: &Status) -> String {
    let mut out = format!(
        "{:<12} {:<21} {:>9} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7} {:>7}  {}\n",
        "VIP",
        "LISTEN",
        "REQUESTS",
        "ACTIVE",
        "QUEUED",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "RETRIES",
        "ERRORS"
    );
    for v in &status.http {
        let class = |c: &str| v.responses.get(c).copied().unwrap_or(0);
        let errors: Vec<String> = v.errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(
            out,
            "{:<12} {:<21} {:>9} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7} {:>7}  {}",
            v.name,
            v.listen.to_string(),
            v.requests,
            v.active_requests,
            v.queued,
            class("2xx"),
            class("3xx"),
            class("4xx"),
            class("5xx"),
            v.retries,
            if errors.is_empty() {
                "-".to_owned()
            } else {
                errors.join(", ")
            }
        );
        for rule in &v.rules {
            let _ = writeln!(
                out,
                "  rule {:<20} -> {:<12} {:>9} hits",
                rule.name, rule.pool, rule.hits
            );
        }
        for b in &v.backends {
            let _ = writeln!(
                out,
                "  backend {:<21} {:>9} requests {:>6} errors {:>4} active",
                b.address.to_string(),
                b.requests,
                b.errors,
                b.active
            );
        }
    }
    out.trim_end().to_string()
}

/// Each pool's etcd discovery: its state, since when, the revision, and the last error.
fn render_discovery(status: &Status) -> String {
    let mut out = String::new();
    for pool in &status.pools {
        let Some(d) = &pool.discovery else { continue };
        let _ = write!(
            out,
            "  pool {} {} since {} etcd {} prefix {} revision {}",
            pool.name,
            d.state.as_str(),
            d.since,
            d.endpoints.join(","),
            d.prefix,
            d.revision
        );
        if let Some(e) = &d.last_error {
            let _ = write!(out, " last error: {e}");
        }
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// When the active flows were counted: "active flows counted 3s ago (12034 entries read in
/// 9.1ms)", or why that failed.
fn render_census(status: &Status) -> Option<String> {
    let census = status.flow_census.as_ref()?;
    let mut out = String::new();
    if let (Some(age), Some(took)) = (census.age_secs, census.took_secs) {
        let _ = write!(
            out,
            "active flows counted {} ago ({} entries read in {:.1}ms)",
            format_age(age),
            census.entries.unwrap_or(0),
            took * 1000.0
        );
    }
    if let Some(e) = &census.last_error {
        if !out.is_empty() {
            out += "; ";
        }
        let _ = write!(out, "counting the active flows failed: {e}");
    }
    Some(out)
}

/// The configuration file, its generation, the last reload and where each pool comes from.
fn render_config(status: &Status) -> Option<String> {
    let config = status.config.as_ref()?;
    let mut out = format!(
        "  file {} (generation {})\n",
        config.path, config.generation
    );
    match &config.last_reload {
        Some(r) => {
            let outcome = if r.ok { "ok" } else { "refused" };
            let _ = writeln!(out, "  last reload {} {outcome}: {}", r.at, r.message);
        }
        None => out += "  not reloaded since start\n",
    }
    let pools: Vec<String> = status
        .pools
        .iter()
        .map(|p| format!("{} ({})", p.name, p.source.as_str()))
        .collect();
    if !pools.is_empty() {
        let _ = writeln!(out, "  pools {}", pools.join(", "));
    }
    Some(out.trim_end().to_owned())
}

/// `pool list`: each pool's backends, those that take new flows, the VIPs that use it.
pub(super) fn render_pools(status: &Status) -> String {
    let mut out = format!(
        "{:<16} {:>8} {:>8} {:<24} {:<6}\n",
        "POOL", "BACKENDS", "ACTIVE", "VIPS", "SOURCE"
    );
    for p in &status.pools {
        let vips: Vec<&str> = status
            .vips
            .iter()
            .filter(|v| v.config.pool == p.name)
            .map(|v| v.config.name.as_str())
            .chain(
                status
                    .http
                    .iter()
                    .filter(|h| h.rules.iter().any(|r| r.pool == p.name))
                    .map(|h| h.name.as_str()),
            )
            .collect();
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>8} {:<24} {:<6}",
            p.name,
            p.backends.len(),
            p.backends.iter().filter(|b| b.state == "active").count(),
            if vips.is_empty() {
                "-".to_owned()
            } else {
                vips.join(",")
            },
            p.source.as_str()
        );
    }
    out.trim_end().to_string()
}

/// What `balancer reload` prints: the summary of what it applied.
pub(super) fn render_reload(status: &Status) -> String {
    let Some(config) = &status.config else {
        return "reload: done".to_owned();
    };
    let summary = config
        .last_reload
        .as_ref()
        .map_or("done", |r| r.message.as_str());
    format!(
        "reload: {summary} (configuration generation {})",
        config.generation
    )
}

/// "42s", "7m03s", "2h05m": time since a backend's last health change.
fn format_age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The configured interfaces and the program on each; one the program is not on any
/// more (missing) or could not be put on (failed) is an `ERROR`, in red with `color`.
/// (`status` still exits 0: it reports; monitoring reads `interfaces[].state` of
/// `status --json`, as it reads HAProxy's `show stat`.)
pub(super) fn render_interfaces(status: &Status, color: bool) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<10} {:>7} {:>9}  {}\n",
        "INTERFACE", "STATE", "MODE", "IFINDEX", "SINCE", "DETAIL"
    );
    for i in &status.interfaces {
        let state = if i.state.is_error() {
            format!("ERROR {}", i.state.as_str())
        } else {
            i.state.as_str().to_owned()
        };
        let mut state = format!("{state:<16}");
        if color && i.state.is_error() {
            state = format!("{RED}{state}{RESET}");
        }
        let detail = match (&i.error, i.state) {
            (Some(error), _) => error.as_str(),
            (None, InterfaceState::Waiting) => "not there yet: attached when it appears",
            (None, _) => "",
        };
        let _ = writeln!(
            out,
            "{:<16} {state} {:<10} {:>7} {:>9}  {detail}",
            i.name,
            i.mode.as_deref().unwrap_or("-"),
            i.ifindex.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            format_age(i.since_change_secs),
        );
    }
    out.trim_end().to_string()
}

pub(super) fn render_status(status: &Status, color: bool) -> String {
    let mut out = String::new();
    // First: an interface without the program is traffic not balanced.
    if !status.interfaces.is_empty() {
        out += "Interfaces\n";
        out += &render_interfaces(status, color);
        out += "\n\n";
    }
    out += "VIPs\n";
    out += &render_vips(status);
    out += "\n\nVIP counters\n";
    let _ = writeln!(
        out,
        "{:<16} {:>12} {:>14} {:>12} {:>14} {:>10} {:>12}",
        "VIP",
        "CLIENT PKTS",
        "CLIENT BYTES",
        "REPLY PKTS",
        "REPLY BYTES",
        "NEW FLOWS",
        "ACTIVE FLOWS"
    );
    for v in &status.vips {
        let c = &v.counters;
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>14} {:>12} {:>14} {:>10} {:>12}",
            v.config.name,
            c.packets,
            c.bytes,
            c.reply_packets,
            c.reply_bytes,
            c.new_flows,
            active(v.active_flows)
        );
    }
    if let Some(census) = render_census(status) {
        out += &census;
        out.push('\n');
    }
    out += "\nBackends\n";
    out += &render_backends(status, None).unwrap_or_default();
    if !status.http.is_empty() {
        out += "\n\nHTTP VIPs\n";
        out += &render_http(status);
    }
    if !status.vrrp.is_empty() {
        out += "\n\nVRRP\n";
        out += &render_vrrp(status);
    }
    if status.pools.iter().any(|p| p.discovery.is_some()) {
        out += "\n\nDiscovery\n";
        out += &render_discovery(status);
    }
    if let Some(sync) = flow_sync::render_sync(status) {
        out += "\n\nFlow sync\n";
        out += &sync;
    }
    if let Some(config) = render_config(status) {
        out += "\n\nConfiguration\n";
        out += &config;
    }
    out += "\n\nData plane\n";
    for (name, value) in status.global.iter().filter(|(_, v)| **v > 0) {
        let _ = writeln!(out, "  {name:<22} {value}");
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests;
