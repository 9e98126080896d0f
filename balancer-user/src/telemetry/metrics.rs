//! `/metrics`: a [`Status`] as the Prometheus text format (version 0.0.4, which every
//! Prometheus and OpenMetrics scraper reads).
//!
//! Written by hand rather than with `prometheus-client`: every scrape renders one snapshot
//! the agent's loop answered, so there is no registry of live metrics to keep (whose label
//! sets would outlive deleted backends), and the text is a loop over the snapshot.
//!
//! Active L4 flows (`balancer_vip_active_flows`, `balancer_backend_active_flows`) are the
//! agent's last census of the connection table, which it takes every few seconds off its
//! loop (`lb::Census`); a scrape only reads them, and `balancer_flow_census_age_seconds`
//! says how old they are.

mod flow_sync;

use std::fmt::{Display, Write as _};

use crate::api::{ActiveFlows, BackendStatus, HttpVipStatus, PoolStatus, Status, VrrpStatus};

/// The Content-Type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The four states a VRRP instance reports, each a label value of `balancer_vrrp_state`.
const VRRP_STATES: [&str; 4] = ["INIT", "BACKUP", "MASTER", "FAULT"];

/// A backend's states in [`BackendStatus::state`].
const BACKEND_STATES: [&str; 4] = ["active", "drained", "down", "unchecked"];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The text being written; families are opened one at a time, each with its HELP and TYPE.
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_into(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// One family with one sample per item of `items`.
    fn each<T>(
        &mut self,
        (name, kind, help): (&str, Kind, &str),
        items: impl IntoIterator<Item = T>,
        mut sample: impl FnMut(&mut Self, &str, T),
    ) {
        self.family(name, kind, help);
        for item in items {
            sample(self, name, item);
        }
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Seconds from milliseconds, as the format's base unit wants.
fn seconds(ms: f64) -> f64 {
    ms / 1000.0
}

/// `status` as the exposition text.
#[must_use]
pub fn render(status: &Status) -> String {
    let mut w = Writer {
        out: String::with_capacity(256 + 2048 * status.pools.len()),
    };
    agent(&mut w, status);
    vips(&mut w, status);
    backends(&mut w, &status.pools);
    census(&mut w, status);
    data_plane(&mut w, status);
    http(&mut w, &status.http);
    vrrp(&mut w, &status.vrrp);
    flow_sync::flow_sync(&mut w, status);
    w.out
}

fn agent(w: &mut Writer, status: &Status) {
    w.family(
        "balancer_build_info",
        Kind::Gauge,
        "The agent's version (always 1).",
    );
    w.sample(
        "balancer_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    if let Some(config) = &status.config {
        w.family(
            "balancer_config_generation",
            Kind::Gauge,
            "1 at start, one more for each reload that changed something.",
        );
        w.sample("balancer_config_generation", &[], config.generation);
        w.family(
            "balancer_config_last_reload_success",
            Kind::Gauge,
            "Whether the last reload was applied (1) or refused (0); absent before any.",
        );
        if let Some(reload) = &config.last_reload {
            w.sample(
                "balancer_config_last_reload_success",
                &[],
                u8::from(reload.ok),
            );
        }
    }
    w.each(
        (
            "balancer_interface_attached",
            Kind::Gauge,
            "Whether the XDP program is attached to a configured interface (1) or not \
             (0: missing, waiting or failed, in the state label).",
        ),
        &status.interfaces,
        |w, name, i| {
            let attached = u8::from(i.state == crate::api::InterfaceState::Attached);
            w.sample(
                name,
                &[("interface", &i.name), ("state", i.state.as_str())],
                attached,
            );
        },
    );
}

fn vips(w: &mut Writer, status: &Status) {
    let l4 = || {
        status
            .vips
            .iter()
            .filter(|v| v.config.mode == crate::config::VipMode::L4)
    };
    w.each(
        (
            "balancer_vip_info",
            Kind::Gauge,
            "A VIP's address, port, protocol and mode (always 1).",
        ),
        &status.vips,
        |w, name, v| {
            let port = v.config.port.to_string();
            let address = v.config.address.to_string();
            w.sample(
                name,
                &[
                    ("vip", &v.config.name),
                    ("pool", &v.config.pool),
                    ("address", &address),
                    ("port", &port),
                    ("protocol", v.config.protocol.as_str()),
                    ("mode", v.config.mode.as_str()),
                ],
                1,
            );
        },
    );
    w.each(
        (
            "balancer_vip_active_backends",
            Kind::Gauge,
            "Backends of the VIP's pool that take new flows (up, weight above 0).",
        ),
        l4(),
        |w, name, v| {
            let labels = [("vip", v.config.name.as_str()), ("pool", &v.config.pool)];
            w.sample(name, &labels, v.active_backends);
        },
    );
    for (family, help, client, reply) in DIRECTIONAL {
        w.each((family, Kind::Counter, help), l4(), |w, name, v| {
            let labels = |d| [("vip", v.config.name.as_str()), ("pool", &v.config.pool), d];
            w.sample(name, &labels(("direction", "client")), client(&v.counters));
            w.sample(name, &labels(("direction", "reply")), reply(&v.counters));
        });
    }
    w.each(
        (
            "balancer_vip_flows_total",
            Kind::Counter,
            "New flows the data plane scheduled to a backend of the VIP.",
        ),
        l4(),
        |w, name, v| {
            let labels = [("vip", v.config.name.as_str()), ("pool", &v.config.pool)];
            w.sample(name, &labels, v.counters.new_flows);
        },
    );
    w.each(
        ("balancer_vip_active_flows", Kind::Gauge, ACTIVE_FLOWS_HELP),
        l4().filter_map(|v| Some((v, v.active_flows?))),
        |w, name, (v, flows)| {
            let labels = [("vip", v.config.name.as_str()), ("pool", &v.config.pool)];
            w.sample(name, &labels, flows.total);
        },
    );
}

const ACTIVE_FLOWS_HELP: &str = "Live flows in the connection table at the agent's last census \
     (TCP established, half-open or closing, and UDP; see balancer_flow_census_age_seconds).";

/// When the active flows were counted, and what that cost.
fn census(w: &mut Writer, status: &Status) {
    let census = status.flow_census.as_ref();
    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
    let entries = census.and_then(|c| c.entries.map(|n| n as f64));
    let plain: [(&str, &str, Option<f64>); 3] = [
        (
            "balancer_flow_census_age_seconds",
            "Time since the agent last counted the active flows in the connection table.",
            census.and_then(|c| c.age_secs),
        ),
        (
            "balancer_flow_census_duration_seconds",
            "How long the last count of the active flows took (reading the whole table).",
            census.and_then(|c| c.took_secs),
        ),
        (
            "balancer_flow_table_entries",
            "Entries in the connection table at the last count, live or expired.",
            entries,
        ),
    ];
    for (family, help, value) in plain {
        w.each((family, Kind::Gauge, help), value, |w, name, v| {
            w.sample(name, &[], v);
        });
    }
}

type Pick = fn(&crate::api::Counters) -> u64;

/// A family (name, type, help) whose one sample per item `value` gives.
type Plain<T> = (&'static str, Kind, &'static str, fn(&T) -> u64);

/// The per-direction counter families of VIPs (for backends, `vip` becomes `backend`).
const DIRECTIONAL: [(&str, &str, Pick, Pick); 2] = [
    (
        "balancer_vip_packets_total",
        "Packets forwarded for the VIP, from clients (direction=client) and from its \
         backends (direction=reply), summed over CPUs.",
        |c| c.packets,
        |c| c.reply_packets,
    ),
    (
        "balancer_vip_bytes_total",
        "Bytes forwarded for the VIP, by direction as balancer_vip_packets_total.",
        |c| c.bytes,
        |c| c.reply_bytes,
    ),
];

/// A backend's labels.
fn labels<'a>((pool, backend, _): &'a (&str, String, &BackendStatus)) -> [(&'a str, &'a str); 2] {
    [("pool", pool), ("backend", backend.as_str())]
}

fn backends(w: &mut Writer, pools: &[PoolStatus]) {
    // (pool, "ADDRESS:PORT", backend), the label values made once.
    let all: Vec<(&str, String, &BackendStatus)> = pools
        .iter()
        .flat_map(|p| {
            p.backends
                .iter()
                .map(|b| (p.name.as_str(), b.socket_addr().to_string(), b))
        })
        .collect();
    let gauge = |w: &mut Writer, name: &str, help: &str, value: fn(&BackendStatus) -> f64| {
        w.each((name, Kind::Gauge, help), &all, |w, name, item| {
            w.sample(name, &labels(item), value(item.2));
        });
    };
    gauge(
        w,
        "balancer_backend_weight",
        "The backend's weight (0: drained).",
        |b| f64::from(b.weight),
    );
    let estimated: Vec<_> = all
        .iter()
        .filter(|item| item.2.snat_ports_in_use.is_some())
        .cloned()
        .collect();
    w.each(
        (
            "balancer_backend_snat_ports_taken_ratio",
            Kind::Gauge,
            "The share of the backend's SNAT ports in use, estimated from new flows' first \
             probes over the agent's last window with enough of them (absent before).",
        ),
        &estimated,
        |w, name, item| {
            w.sample(
                name,
                &labels(item),
                item.2.snat_ports_in_use.unwrap_or_default(),
            );
        },
    );
    gauge(
        w,
        "balancer_backend_up",
        "Whether the backend's health is up (1) or down (0).",
        |b| f64::from(u8::from(b.health == crate::health::Health::Up)),
    );
    w.each(
        (
            "balancer_backend_state",
            Kind::Gauge,
            "1 for the backend's state (active, drained, down or unchecked), 0 for the others.",
        ),
        &all,
        |w, name, item| {
            for state in BACKEND_STATES {
                let [pool, backend] = labels(item);
                let value = u8::from(item.2.state == state);
                w.sample(name, &[pool, backend, ("state", state)], value);
            }
        },
    );
    gauge(
        w,
        "balancer_backend_state_age_seconds",
        "Time since the backend's health last changed (or since it was added).",
        |b| b.since_change_secs,
    );
    w.each(
        (
            "balancer_backend_health_transitions_total",
            Kind::Counter,
            "Health changes (up to down or back) since the backend was added.",
        ),
        &all,
        |w, name, item| w.sample(name, &labels(item), item.2.transitions),
    );
    w.each(
        (
            "balancer_backend_check_success",
            Kind::Gauge,
            "Whether the newest health check passed (1) or failed (0); absent before any.",
        ),
        &all,
        |w, name, item| {
            if let Some(check) = &item.2.last_check {
                w.sample(name, &labels(item), u8::from(check.ok));
            }
        },
    );
    w.each(
        (
            "balancer_backend_check_latency_seconds",
            Kind::Gauge,
            "How long the newest health check took.",
        ),
        &all,
        |w, name, item| {
            if let Some(check) = &item.2.last_check {
                w.sample(name, &labels(item), seconds(check.latency_ms));
            }
        },
    );
    for (family, help, client, reply) in DIRECTIONAL {
        let family = family.replace("_vip_", "_backend_");
        let help = help.replace("VIP", "backend");
        w.each((&family, Kind::Counter, &help), &all, |w, name, item| {
            let [pool, backend] = labels(item);
            let c = &item.2.counters;
            w.sample(name, &[pool, backend, ("direction", "client")], client(c));
            w.sample(name, &[pool, backend, ("direction", "reply")], reply(c));
        });
    }
    w.each(
        (
            "balancer_backend_flows_total",
            Kind::Counter,
            "New flows the data plane scheduled to the backend.",
        ),
        &all,
        |w, name, item| w.sample(name, &labels(item), item.2.counters.new_flows),
    );
    w.each(
        (
            "balancer_backend_active_flows",
            Kind::Gauge,
            ACTIVE_FLOWS_HELP,
        ),
        all.iter()
            .filter_map(|item| Some((item, item.2.active_flows?))),
        |w, name, (item, flows): (_, ActiveFlows)| w.sample(name, &labels(item), flows.total),
    );
}

/// `GLOBAL_STATS` in four families: verdicts, drops and passes by reason, other events.
fn data_plane(w: &mut Writer, status: &Status) {
    let families = [
        (
            "xdp_",
            "balancer_xdp_verdicts_total",
            "verdict",
            "Packets by the XDP program's verdict.",
        ),
        (
            "drop_",
            "balancer_dataplane_drops_total",
            "reason",
            "Packets the data plane dropped, by reason.",
        ),
        (
            "pass_",
            "balancer_dataplane_passes_total",
            "reason",
            "Packets the data plane passed to the kernel instead of forwarding them, by reason.",
        ),
    ];
    for (prefix, family, label, help) in families {
        let matching = status
            .global
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v)));
        w.each(
            (family, Kind::Counter, help),
            matching,
            |w, name, (k, v)| {
                w.sample(name, &[(label, k)], v);
            },
        );
    }
    let others = status
        .global
        .iter()
        .filter(|(k, _)| !families.iter().any(|(prefix, ..)| k.starts_with(prefix)));
    w.each(
        (
            "balancer_dataplane_events_total",
            Kind::Counter,
            "Other data-plane events (replies translated, flows expired or rescheduled, \
             SNAT ports reused, ICMP errors translated or sent for tunnels), by event.",
        ),
        others,
        |w, name, (k, v)| w.sample(name, &[("event", k)], v),
    );
}

fn http(w: &mut Writer, vips: &[HttpVipStatus]) {
    let plain: [Plain<HttpVipStatus>; 6] = [
        (
            "balancer_http_connections_total",
            Kind::Counter,
            "Client connections the proxy accepted.",
            |v| v.connections,
        ),
        (
            "balancer_http_active_connections",
            Kind::Gauge,
            "Client connections open now.",
            |v| v.active_connections,
        ),
        (
            "balancer_http_requests_total",
            Kind::Counter,
            "Requests the proxy received.",
            |v| v.requests,
        ),
        (
            "balancer_http_active_requests",
            Kind::Gauge,
            "Requests being served now.",
            |v| v.active_requests,
        ),
        (
            "balancer_http_queued_requests",
            Kind::Gauge,
            "Requests waiting for a connection slot (maxconn).",
            |v| v.queued,
        ),
        (
            "balancer_http_retries_total",
            Kind::Counter,
            "Requests sent again to another backend after a connect failure.",
            |v| v.retries,
        ),
    ];
    for (family, kind, help, value) in plain {
        w.each((family, kind, help), vips, |w, name, v| {
            w.sample(name, &[("vip", &v.name)], value(v));
        });
    }
    w.each(
        (
            "balancer_http_bytes_total",
            Kind::Counter,
            "Body bytes from clients (direction=client) and to them (direction=reply).",
        ),
        vips,
        |w, name, v| {
            w.sample(
                name,
                &[("vip", &v.name), ("direction", "client")],
                v.bytes_in,
            );
            w.sample(
                name,
                &[("vip", &v.name), ("direction", "reply")],
                v.bytes_out,
            );
        },
    );
    w.each(
        (
            "balancer_http_responses_total",
            Kind::Counter,
            "Responses sent, by status class (1xx .. 5xx).",
        ),
        vips,
        |w, name, v| {
            for (class, n) in &v.responses {
                w.sample(name, &[("vip", &v.name), ("class", class)], n);
            }
        },
    );
    w.each(
        (
            "balancer_http_errors_total",
            Kind::Counter,
            "Requests that got no backend's answer, by reason.",
        ),
        vips,
        |w, name, v| {
            for (reason, n) in &v.errors {
                w.sample(name, &[("vip", &v.name), ("reason", reason)], n);
            }
        },
    );
    w.each(
        (
            "balancer_http_response_duration_seconds",
            Kind::Histogram,
            "Time from a request to its response's head.",
        ),
        vips,
        |w, name, v| {
            let bucket = format!("{name}_bucket");
            let mut cumulative = 0;
            for (le, n) in &v.latency_ms {
                cumulative += n;
                // ("+Inf" parses as a float too: it is kept as written.)
                let le = match le.parse::<f64>() {
                    Ok(ms) if ms.is_finite() => seconds(ms).to_string(),
                    _ => "+Inf".to_owned(),
                };
                w.sample(&bucket, &[("vip", &v.name), ("le", &le)], cumulative);
            }
            let vip = [("vip", v.name.as_str())];
            w.sample(&format!("{name}_sum"), &vip, v.latency_sum_secs);
            w.sample(&format!("{name}_count"), &vip, cumulative);
        },
    );
    let backend_families: [Plain<crate::api::HttpBackendStatus>; 3] = [
        (
            "balancer_http_backend_requests_total",
            Kind::Counter,
            "Requests the proxy sent to the backend.",
            |b| b.requests,
        ),
        (
            "balancer_http_backend_errors_total",
            Kind::Counter,
            "Connect failures and broken answers of the backend.",
            |b| b.errors,
        ),
        (
            "balancer_http_backend_active_requests",
            Kind::Gauge,
            "Requests the backend is serving now.",
            |b| b.active,
        ),
    ];
    for (family, kind, help, value) in backend_families {
        w.each((family, kind, help), vips, |w, name, v| {
            for b in &v.backends {
                let backend = b.address.to_string();
                w.sample(name, &[("vip", &v.name), ("backend", &backend)], value(b));
            }
        });
    }
}

fn vrrp(w: &mut Writer, instances: &[VrrpStatus]) {
    w.each(
        (
            "balancer_vrrp_state",
            Kind::Gauge,
            "1 for the instance's state (INIT, BACKUP, MASTER or FAULT), 0 for the others.",
        ),
        instances,
        |w, name, i| {
            for state in VRRP_STATES {
                let labels = [("instance", i.name.as_str()), ("state", state)];
                w.sample(name, &labels, u8::from(i.state == state));
            }
        },
    );
    let plain: [Plain<VrrpStatus>; 5] = [
        (
            "balancer_vrrp_priority",
            Kind::Gauge,
            "The instance's configured priority.",
            |i| u64::from(i.priority),
        ),
        (
            "balancer_vrrp_effective_priority",
            Kind::Gauge,
            "The priority advertised: the configured one adjusted by weighted tracks.",
            |i| u64::from(i.effective_priority),
        ),
        (
            "balancer_vrrp_adverts_sent_total",
            Kind::Counter,
            "Adverts the instance sent.",
            |i| i.adverts_sent,
        ),
        (
            "balancer_vrrp_adverts_received_total",
            Kind::Counter,
            "Adverts the instance accepted.",
            |i| i.adverts_received,
        ),
        (
            "balancer_vrrp_became_master_total",
            Kind::Counter,
            "Times the instance became Master.",
            |i| i.became_master,
        ),
    ];
    for (family, kind, help, value) in plain {
        w.each((family, kind, help), instances, |w, name, i| {
            w.sample(name, &[("instance", &i.name)], value(i));
        });
    }
    w.each(
        (
            "balancer_vrrp_advert_errors_total",
            Kind::Counter,
            "Adverts the instance refused, by reason.",
        ),
        instances,
        |w, name, i| {
            for (reason, n) in &i.errors {
                w.sample(name, &[("instance", &i.name), ("reason", reason)], n);
            }
        },
    );
}

#[cfg(test)]
#[path = "metrics/tests.rs"]
pub(crate) mod tests;
