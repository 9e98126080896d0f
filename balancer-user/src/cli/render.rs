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
mod tests {
    use super::*;
    use crate::{
        api::{BackendStatus, Counters, InterfaceStatus, PoolStatus, Source},
        config::DownPolicy,
        health::Health,
    };

    fn backend(port: u16, state: &str, health: Health) -> BackendStatus {
        BackendStatus {
            address: "10.0.2.11".parse().unwrap(),
            port,
            weight: 1,
            state: state.to_owned(),
            health,
            check: "tcp".to_owned(),
            last_check: None,
            since_change_secs: 3.0,
            change_reason: String::new(),
            transitions: 0,
            source: Source::File,
            counters: Counters {
                packets: 7,
                bytes: 700,
                new_flows: 2,
                reply_packets: 5,
                reply_bytes: 5000,
            },
            active_flows: (port == 80).then_some(ActiveFlows {
                total: 4,
                tcp_established: 3,
                tcp_other: 1,
                udp: 0,
            }),
            snat_ports_in_use: None,
        }
    }

    fn interface(name: &str, state: InterfaceState, error: Option<&str>) -> InterfaceStatus {
        InterfaceStatus {
            name: name.into(),
            state,
            ifindex: (state != InterfaceState::Waiting).then_some(12),
            mode: (state == InterfaceState::Attached).then(|| "driver".into()),
            since_change_secs: 75.0,
            error: error.map(Into::into),
        }
    }

    #[test]
    fn backends_show_each_direction_and_the_unchecked() {
        let status = Status {
            pools: vec![PoolStatus {
                name: "web".into(),
                on_backend_down: DownPolicy::Shutdown,
                source: Source::File,
                discovery: None,
                backends: vec![
                    backend(80, "active", Health::Up),
                    backend(81, "unchecked", Health::Down),
                ],
            }],
            ..Status::default()
        };
        let text = trim_lines(&render_backends(&status, None).unwrap());
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "POOL", "BACKEND", "WEIGHT", "STATE", "CHECK", "HEALTH", "SINCE", "LAST", "CHECK",
                "CLIENT", "PKTS", "REPLY", "PKTS", "NEW", "FLOWS", "ACTIVE", "FLOWS", "SOURCE"
            ]
        );
        // The JSON's `packets` (7) and `reply_packets` (5), not their sum.
        assert_eq!(
            lines[1],
            [
                "web",
                "10.0.2.11:80",
                "1",
                "active",
                "tcp",
                "up",
                "3s",
                "-",
                "7",
                "5",
                "2",
                "4",
                "file"
            ]
        );
        // Before the agent's first census of the flows: no count.
        assert_eq!(
            lines[2],
            [
                "web",
                "10.0.2.11:81",
                "1",
                "unchecked",
                "tcp",
                "-",
                "3s",
                "-",
                "7",
                "5",
                "2",
                "-",
                "file"
            ]
        );
    }

    #[test]
    fn ipv6_addresses_are_shown_in_brackets() {
        let mut status = crate::telemetry::metrics::tests::status(1, 1);
        status.vips[0].config.address = "fd00:100::1".parse().unwrap();
        status.pools[0].backends[0].address = "fd00:2::11".parse().unwrap();
        let vips = render_vips(&status);
        assert!(vips.contains("[fd00:100::1]:80/tcp"), "{vips}");
        let backends = render_backends(&status, None).unwrap();
        assert!(
            backends.contains(&format!(
                "[fd00:2::11]:{}",
                status.pools[0].backends[0].port
            )),
            "{backends}"
        );
    }

    #[test]
    fn vip_counters_show_the_active_flows_and_when_they_were_counted() {
        let mut status = crate::telemetry::metrics::tests::status(1, 2);
        let text = trim_lines(&render_status(&status, false));
        let counters = text
            .lines()
            .skip_while(|l| *l != "VIP counters")
            .take(4)
            .collect::<Vec<_>>();
        assert!(counters[1].ends_with("NEW FLOWS ACTIVE FLOWS"), "{text}");
        assert!(
            counters[2].starts_with("pool0 ") && counters[2].ends_with(" 10"),
            "{text}"
        );
        assert_eq!(
            counters[3], "active flows counted 2s ago (40 entries read in 12.5ms)",
            "{text}"
        );
        status.flow_census.as_mut().unwrap().last_error = Some("EPERM".into());
        let text = render_status(&status, false);
        assert!(
            text.contains("read in 12.5ms); counting the active flows failed: EPERM"),
            "{text}"
        );
    }

    #[test]
    fn interfaces_come_first_and_those_without_the_program_are_errors() {
        let status = Status {
            interfaces: vec![
                interface("lbc0", InterfaceState::Attached, None),
                interface(
                    "lbs0",
                    InterfaceState::Missing,
                    Some("the interface is gone"),
                ),
                interface("eth9", InterfaceState::Waiting, None),
            ],
            ..Status::default()
        };
        let text = render_status(&status, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Interfaces");
        for (line, parts) in [
            (2, &["lbc0", "attached", "driver", "12", "1m15s"][..]),
            (3, &["lbs0", "ERROR missing", "12", "the interface is gone"]),
            (4, &["eth9", "waiting", "not there yet"]),
        ] {
            for part in parts {
                assert!(lines[line].contains(part), "{part:?} in {:?}", lines[line]);
            }
        }
        assert!(!text.contains(RED), "no color unless asked");
        let colored = render_interfaces(&status, true);
        assert_eq!(colored.matches(RED).count(), 1, "{colored}");
        assert!(
            colored.contains(&format!("{RED}ERROR missing")),
            "{colored}"
        );
        // Without interfaces (an older agent), the section is left out.
        assert!(render_status(&Status::default(), false).starts_with("VIPs\n"));
    }
}
