#![expect(clippy::float_cmp, reason = "values written exactly and parsed back")]

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use super::render;
use crate::api::{
    ActiveFlows, BackendStatus, ConfigStatus, Counters, FlowCensusStatus, HttpVipStatus,
    InterfaceState, InterfaceStatus, LastCheck, PoolStatus, Source, Status, VipStatus, VrrpStatus,
};
use crate::config::{parse, VipConfig};
use crate::health::Health;

/// A small checker of the text format, with promtool's rules: every sample belongs to a
/// family declared before it with HELP and TYPE (once each), names follow the conventions
/// (counters and only counters end in `_total`, base units), label values are quoted and
/// escaped, values are numbers, no series appears twice, and every histogram series has
/// cumulative buckets ending at `+Inf`, a `_sum` and a `_count` equal to the `+Inf` bucket.
/// Returns family -> (type, samples as (name, labels, value)).
pub(crate) fn check(text: &str) -> BTreeMap<String, (String, Vec<Sample>)> {
    let mut families: BTreeMap<String, (String, Vec<Sample>)> = BTreeMap::new();
    let mut helps = HashSet::new();
    let mut series = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP NAME TEXT");
            assert!(!help.trim().is_empty(), "{name}: empty help");
            assert!(helps.insert(name.to_owned()), "{name}: HELP twice");
            assert_valid_name(name);
            assert!(name.starts_with("balancer_"), "{name}: no balancer_ prefix");
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE NAME KIND");
            assert_eq!(
                current.as_deref(),
                Some(name),
                "TYPE {name} not after its HELP"
            );
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: counter iff _total"
            );
            assert_base_units(name);
            assert!(
                families
                    .insert(name.to_owned(), (kind.to_owned(), Vec::new()))
                    .is_none(),
                "{name}: TYPE twice"
            );
        } else {
            assert!(!line.starts_with('#'), "stray comment {line:?}");
            let sample = parse_sample(line);
            let family = current.as_ref().expect("a sample before any family");
            let kind = &families[family].0;
            let allowed: &[&str] = if kind == "histogram" {
                &["_bucket", "_count", "_sum"]
            } else {
                &[""]
            };
            assert!(
                allowed.iter().any(|s| sample.0 == format!("{family}{s}")),
                "sample {} outside its family {family}",
                sample.0
            );
            assert!(
                series.insert((sample.0.clone(), sample.1.clone())),
                "series twice: {line}"
            );
            families.get_mut(family).unwrap().1.push(sample);
        }
    }
    for (name, (kind, samples)) in &families {
        if kind == "histogram" {
            check_histogram(name, samples);
        }
    }
    families
}

/// Times in seconds, sizes in bytes, no scaled units; a unit comes last (before `_total`).
fn assert_base_units(name: &str) {
    let scaled = [
        "_ms",
        "milliseconds",
        "_us",
        "micro",
        "nano",
        "_kb",
        "_mb",
        "_kib",
        "_mib",
    ];
    assert!(
        !scaled.iter().any(|s| name.contains(s)),
        "{name}: not in base units"
    );
    let stem = name.strip_suffix("_total").unwrap_or(name);
    for (word, unit) in [
        ("latency", "_seconds"),
        ("duration", "_seconds"),
        ("age", "_seconds"),
        ("bytes", "_bytes"),
    ] {
        if stem.split('_').any(|w| w == word) {
            assert!(stem.ends_with(unit), "{name}: a {word} must end in {unit}");
        }
    }
}

/// Each label set of a histogram: buckets cumulative up to `+Inf`, `_count` equal to it,
/// and a `_sum`.
fn check_histogram(name: &str, samples: &[Sample]) {
    // Label set (without `le`) -> (buckets as (le, count), _sum, _count).
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut sets: BTreeMap<BTreeMap<String, String>, Series> = BTreeMap::new();
    for (sample, labels, value) in samples {
        let mut key = labels.clone();
        let le = key.remove("le");
        let set = sets.entry(key).or_default();
        match sample.strip_prefix(name) {
            Some("_bucket") => {
                let le = parse_value(&le.unwrap_or_else(|| panic!("{sample}: no le")));
                set.0.push((le, *value));
            }
            Some("_sum") => set.1 = Some(*value),
            Some("_count") => set.2 = Some(*value),
            _ => unreachable!("checked by family"),
        }
    }
    for (labels, (buckets, sum, count)) in sets {
        assert!(sum.is_some(), "{name} {labels:?}: no _sum");
        let count = count.unwrap_or_else(|| panic!("{name} {labels:?}: no _count"));
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name} {labels:?}: buckets not cumulative in order: {buckets:?}"
        );
        assert_eq!(
            buckets.last().copied(),
            Some((f64::INFINITY, count)),
            "{name} {labels:?}: the +Inf bucket must equal _count"
        );
    }
}

pub(crate) type Sample = (String, BTreeMap<String, String>, f64);

fn assert_valid_name(name: &str) {
    let mut chars = name.chars();
    let first = chars.next().expect("a name");
    assert!(first.is_ascii_alphabetic() || first == '_', "{name}");
    assert!(
        chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{name}"
    );
}

fn parse_sample(line: &str) -> Sample {
    let Some((name, rest)) = line.split_once('{') else {
        let (name, value) = line.split_once(' ').expect("NAME VALUE");
        return (name.to_owned(), BTreeMap::new(), parse_value(value));
    };
    assert_valid_name(name);
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_valid_name(&key);
        assert_eq!(chars.next(), Some('"'), "{line}: label value not quoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("an unterminated label value") {
                '\\' => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("{line}: bad escape {other:?}"),
                },
                '"' => break,
                '\n' => panic!("raw newline"),
                c => value.push(c),
            }
        }
        assert!(labels.insert(key, value).is_none(), "{line}: label twice");
        match chars.next() {
            Some(',') => {}
            Some('}') => break,
            other => panic!("{line}: {other:?} after a label"),
        }
    }
    assert_eq!(chars.next(), Some(' '), "{line}");
    let value: String = chars.collect();
    (name.to_owned(), labels, parse_value(&value))
}

fn parse_value(value: &str) -> f64 {
    match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("{v:?} is not a number")),
    }
}

fn vip_config(name: &str, n: u8) -> VipConfig {
    let text = format!(
        "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"{name}\"\n[[vip]]\nname = \"{name}\"\n\
         address = \"10.0.100.{n}\"\nport = 80\nprotocol = \"tcp\"\npool = \"{name}\"\n"
    );
    parse(&text, "t.toml").unwrap().vips.remove(0)
}

fn backend(i: u32) -> BackendStatus {
    BackendStatus {
        address: Ipv4Addr::from(0x0a00_0000 + i).into(),
        port: 80,
        weight: [2, 0, 2][(i % 3) as usize],
        state: ["active", "drained", "down"][(i % 3) as usize].to_owned(),
        health: if i % 3 == 2 { Health::Down } else { Health::Up },
        check: "tcp".into(),
        last_check: Some(LastCheck {
            ok: i % 3 != 2,
            latency_ms: 1.5,
            reason: "connected".into(),
        }),
        since_change_secs: 12.0,
        change_reason: "rise".into(),
        transitions: u64::from(i),
        counters: Counters {
            packets: u64::from(i) * 10,
            bytes: 1000,
            new_flows: 3,
            reply_packets: 9,
            reply_bytes: 900,
        },
        active_flows: Some(flows(u64::from(i) + 1)),
        source: Source::File,
        snat_ports_in_use: None,
    }
}

/// `n` live TCP flows, one of them closing.
fn flows(n: u64) -> ActiveFlows {
    ActiveFlows {
        total: n,
        tcp_established: n - 1,
        tcp_other: 1,
        udp: 0,
    }
}

/// `vips` VIPs over as many pools, `backends` backends spread over them.
pub(crate) fn status(vips: u32, backends: u32) -> Status {
    let mut pools: Vec<PoolStatus> = (0..vips)
        .map(|p| PoolStatus {
            name: format!("pool{p}"),
            on_backend_down: crate::config::DownPolicy::default(),
            backends: Vec::new(),
            source: Source::File,
            discovery: None,
        })
        .collect();
    for i in 0..backends {
        pools[(i % vips) as usize].backends.push(backend(i));
    }
    Status {
        vips: (0..vips)
            .map(|v| VipStatus {
                config: vip_config(&format!("pool{v}"), u8::try_from(v % 250 + 1).unwrap()),
                active_backends: 2,
                counters: Counters::default(),
                active_flows: Some(flows(10 + u64::from(v))),
                source: Source::File,
            })
            .collect(),
        pools,
        global: balancer_common::stat::NAMES
            .iter()
            .map(|n| ((*n).to_owned(), 7))
            .collect(),
        interfaces: vec![InterfaceStatus {
            name: "lbc0".into(),
            state: InterfaceState::Attached,
            ifindex: Some(3),
            mode: Some("driver".into()),
            since_change_secs: 1.0,
            error: None,
        }],
        vrrp: Vec::new(),
        http: Vec::new(),
        config: Some(ConfigStatus {
            path: "/etc/balancer/balancer.toml".into(),
            generation: 3,
            last_reload: None,
            dump: None,
        }),
        flow_census: Some(FlowCensusStatus {
            at: Some("2026-01-01T00:00:00Z".into()),
            age_secs: Some(2.5),
            took_secs: Some(0.0125),
            entries: Some(40),
            last_error: None,
        }),
        sync: None,
    }
}

fn one(
    families: &BTreeMap<String, (String, Vec<Sample>)>,
    family: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let samples = &families
        .get(family)
        .unwrap_or_else(|| panic!("no {family}"))
        .1;
    let found: Vec<_> = samples
        .iter()
        .filter(|(_, l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{family} {labels:?}: {found:?}");
    found[0].2
}

#[test]
fn every_family_is_well_formed_and_carries_the_status() {
    let families = check(&render(&status(2, 6)));
    assert_eq!(one(&families, "balancer_build_info", &[]), 1.0);
    assert_eq!(one(&families, "balancer_config_generation", &[]), 3.0);
    assert_eq!(
        one(
            &families,
            "balancer_interface_attached",
            &[("interface", "lbc0")]
        ),
        1.0
    );
    let b = [("pool", "pool1"), ("backend", "10.0.0.1:80")];
    let client = [b[0], b[1], ("direction", "client")];
    assert_eq!(
        one(&families, "balancer_backend_packets_total", &client),
        10.0
    );
    let reply = [b[0], b[1], ("direction", "reply")];
    assert_eq!(
        one(&families, "balancer_backend_bytes_total", &reply),
        900.0
    );
    assert_eq!(one(&families, "balancer_backend_weight", &b), 0.0);
    assert_eq!(
        one(&families, "balancer_backend_health_transitions_total", &b),
        1.0
    );
    assert_eq!(
        one(&families, "balancer_backend_check_latency_seconds", &b),
        0.0015
    );
    let drained = [b[0], b[1], ("state", "drained")];
    assert_eq!(one(&families, "balancer_backend_state", &drained), 1.0);
    let active = [b[0], b[1], ("state", "active")];
    assert_eq!(one(&families, "balancer_backend_state", &active), 0.0);
    let down = [("pool", "pool0"), ("backend", "10.0.0.2:80")];
    assert_eq!(one(&families, "balancer_backend_up", &down), 0.0);
    assert_eq!(
        one(
            &families,
            "balancer_dataplane_drops_total",
            &[("reason", "no_backend")]
        ),
        7.0
    );
    assert_eq!(
        one(
            &families,
            "balancer_xdp_verdicts_total",
            &[("verdict", "redirect")]
        ),
        7.0
    );
    assert_eq!(
        one(
            &families,
            "balancer_dataplane_events_total",
            &[("event", "nat_reply")]
        ),
        7.0
    );
    // Every GLOBAL_STATS counter lands in exactly one family.
    let dataplane: usize = [
        "balancer_xdp_verdicts_total",
        "balancer_dataplane_drops_total",
        "balancer_dataplane_passes_total",
        "balancer_dataplane_events_total",
    ]
    .iter()
    .map(|f| families[*f].1.len())
    .sum();
    assert_eq!(dataplane, balancer_common::stat::NAMES.len());
}

#[test]
fn active_flows_are_gauges_of_the_last_census() {
    let mut s = status(2, 4);
    let families = check(&render(&s));
    assert_eq!(families["balancer_vip_active_flows"].0, "gauge");
    assert_eq!(
        one(
            &families,
            "balancer_vip_active_flows",
            &[("vip", "pool1"), ("pool", "pool1")]
        ),
        11.0
    );
    assert_eq!(
        one(
            &families,
            "balancer_backend_active_flows",
            &[("pool", "pool1"), ("backend", "10.0.0.3:80")]
        ),
        4.0
    );
    assert_eq!(one(&families, "balancer_flow_census_age_seconds", &[]), 2.5);
    assert_eq!(
        one(&families, "balancer_flow_census_duration_seconds", &[]),
        0.0125
    );
    assert_eq!(one(&families, "balancer_flow_table_entries", &[]), 40.0);

    // Before the first census: the families, without samples.
    s.flow_census = None;
    s.vips[0].active_flows = None;
    s.pools[0].backends[0].active_flows = None;
    let families = check(&render(&s));
    assert_eq!(families["balancer_vip_active_flows"].1.len(), 1);
    assert_eq!(families["balancer_backend_active_flows"].1.len(), 3);
    assert!(families["balancer_flow_census_age_seconds"].1.is_empty());
}

#[test]
fn label_values_are_escaped() {
    let mut s = status(1, 1);
    s.interfaces[0].name = "we\"ird\\na\nme".into();
    let text = render(&s);
    assert!(text.contains(r#"interface="we\"ird\\na\nme""#), "{text}");
    let families = check(&text);
    assert_eq!(
        one(
            &families,
            "balancer_interface_attached",
            &[("interface", "we\"ird\\na\nme")]
        ),
        1.0
    );
}

#[test]
fn ipv6_addresses_are_labelled_as_written() {
    let mut s = status(1, 1);
    s.vips[0].config.address = "fd00:100::1".parse().unwrap();
    s.pools[0].backends[0].address = "fd00:2::10".parse().unwrap();
    let text = render(&s);
    check(&text);
    assert!(text.contains(r#"address="fd00:100::1""#), "{text}");
    assert!(text.contains(r#"backend="[fd00:2::10]:80""#), "{text}");
}

/// A status with one of everything: an HTTP VIP, a VRRP instance and a reload besides the
/// L4 VIPs and backends of [`status`].
fn full_status() -> Status {
    let mut s = status(1, 1);
    s.http.push(HttpVipStatus {
        name: "api".into(),
        listen: "10.0.100.9:80".parse().unwrap(),
        connections: 4,
        active_connections: 1,
        requests: 5,
        active_requests: 1,
        queued: 2,
        responses: [("2xx".to_owned(), 4), ("5xx".to_owned(), 1)].into(),
        bytes_in: 10,
        bytes_out: 20,
        retries: 1,
        errors: [("connect".to_owned(), 1)].into(),
        latency_ms: vec![("1".into(), 2), ("50".into(), 3), ("+Inf".into(), 0)],
        latency_sum_secs: 0.125,
        rules: Vec::new(),
        backends: Vec::new(),
    });
    s.vrrp.push(VrrpStatus {
        name: "vi_1".into(),
        interface: "lbc0".into(),
        vrid: 51,
        version: 3,
        state: "MASTER".into(),
        priority: 150,
        effective_priority: 140,
        source: "10.0.1.2".parse().unwrap(),
        master: None,
        since_change_secs: 2.0,
        reason: "timeout".into(),
        adverts_sent: 9,
        adverts_received: 0,
        became_master: 1,
        errors: [("bad_ttl".to_owned(), 2)].into(),
        checksums: BTreeMap::new(),
        sync_group: None,
        addresses: Vec::new(),
    });
    if let Some(config) = &mut s.config {
        config.last_reload = Some(crate::api::ReloadStatus {
            at: "2026-01-01T00:00:00Z".into(),
            ok: true,
            message: "1 backend changed".into(),
        });
    }
    s
}

#[test]
fn http_and_vrrp_families() {
    let s = full_status();
    let families = check(&render(&s));
    let api = ("vip", "api");
    assert_eq!(
        one(
            &families,
            "balancer_http_responses_total",
            &[api, ("class", "5xx")]
        ),
        1.0
    );
    assert_eq!(one(&families, "balancer_http_queued_requests", &[api]), 2.0);
    let histogram = &families["balancer_http_response_duration_seconds"];
    assert_eq!(histogram.0, "histogram");
    let bucket = |le| {
        one(
            &families,
            "balancer_http_response_duration_seconds",
            &[api, ("le", le)],
        )
    };
    assert_eq!(
        (bucket("0.001"), bucket("0.05"), bucket("+Inf")),
        (2.0, 5.0, 5.0)
    );
    let sum = "balancer_http_response_duration_seconds_sum";
    assert_eq!(
        families["balancer_http_response_duration_seconds"]
            .1
            .iter()
            .find(|(n, ..)| n == sum)
            .map(|s| s.2),
        Some(0.125)
    );
    let vi = ("instance", "vi_1");
    assert_eq!(
        one(&families, "balancer_vrrp_state", &[vi, ("state", "MASTER")]),
        1.0
    );
    assert_eq!(
        one(&families, "balancer_vrrp_state", &[vi, ("state", "BACKUP")]),
        0.0
    );
    assert_eq!(
        one(&families, "balancer_vrrp_effective_priority", &[vi]),
        140.0
    );
    assert_eq!(
        one(
            &families,
            "balancer_vrrp_advert_errors_total",
            &[vi, ("reason", "bad_ttl")]
        ),
        2.0
    );
}

/// Prints how long rendering 100 VIPs and 1,000 backends takes (the target lives in the
/// bench: timed assertions are not tests).
#[test]
fn a_large_scrape_is_rendered_and_well_formed() {
    let s = status(100, 1000);
    let started = std::time::Instant::now();
    let text = render(&s);
    let took = started.elapsed();
    let families = check(&text);
    assert_eq!(families["balancer_backend_weight"].1.len(), 1000);
    assert_eq!(families["balancer_vip_flows_total"].1.len(), 100);
    println!(
        "rendered 100 VIPs and 1000 backends in {took:?} ({} bytes)",
        text.len()
    );
}

/// The checker itself fails on what promtool refuses (so that passing it means something).
#[test]
fn the_checker_refuses_broken_expositions() {
    let good = "# HELP balancer_a_total A.\n# TYPE balancer_a_total counter\nbalancer_a_total 1\n";
    check(good);
    let broken = [
        // a counter without _total, a gauge with it
        "# HELP balancer_a A.\n# TYPE balancer_a counter\nbalancer_a 1\n",
        "# HELP balancer_a_total A.\n# TYPE balancer_a_total gauge\nbalancer_a_total 1\n",
        // no HELP, a duplicate series, a scaled unit
        "# TYPE balancer_a_total counter\nbalancer_a_total 1\n",
        &format!("{good}balancer_a_total 2\n"),
        "# HELP balancer_latency_ms A.\n# TYPE balancer_latency_ms gauge\nbalancer_latency_ms 1\n",
        "# HELP balancer_check_latency A.\n# TYPE balancer_check_latency gauge\nbalancer_check_latency 1\n",
        // a histogram without _sum, and one whose +Inf bucket is not its count
        "# HELP balancer_h_seconds H.\n# TYPE balancer_h_seconds histogram\n\
         balancer_h_seconds_bucket{le=\"+Inf\"} 1\nbalancer_h_seconds_count 1\n",
        "# HELP balancer_h_seconds H.\n# TYPE balancer_h_seconds histogram\n\
         balancer_h_seconds_bucket{le=\"+Inf\"} 1\nbalancer_h_seconds_sum 1\n\
         balancer_h_seconds_count 2\n",
    ];
    for text in broken {
        let refused = std::panic::catch_unwind(|| check(text)).is_err();
        assert!(refused, "accepted:\n{text}");
    }
}

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// The Grafana dashboard cannot rot: every metric it names is in the exposition, and every
/// label its queries group or select by is one of those metrics' labels.
#[test]
fn the_grafana_dashboard_uses_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/grafana/balancer.json"
    )))
    .expect("contrib/grafana/balancer.json is JSON");
    let families = check(&render(&full_status()));
    // Sample name -> the label names of its samples.
    let mut exported: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for (_, samples) in families.values() {
        for (name, labels, _) in samples {
            let names = exported.entry(name).or_default();
            names.extend(labels.keys().map(String::as_str));
        }
    }
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "only {} queries found", queries.len());
    let mut used = HashSet::new();
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "{query}: no metric");
        let mut labels: HashSet<&str> = TARGET_LABELS.into();
        for name in &names {
            let found = exported
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{query}: {name} is not in /metrics"));
            labels.extend(found.iter());
            used.insert(name.clone());
        }
        for label in query_labels(query) {
            assert!(
                labels.contains(label.as_str()),
                "{query}: label {label} is not on {names:?}"
            );
        }
    }
    // What the dashboard is for (issue 21) is there.
    for family in [
        "balancer_vip_packets_total",
        "balancer_backend_up",
        "balancer_dataplane_drops_total",
        "balancer_http_responses_total",
        "balancer_http_response_duration_seconds_bucket",
        "balancer_vrrp_state",
        "balancer_config_generation",
    ] {
        assert!(
            used.contains(family),
            "the dashboard does not show {family}"
        );
    }
    assert!(
        queries.iter().any(|q| q.contains("histogram_quantile(")),
        "no latency quantile"
    );
}

/// Every `PromQL` text of the dashboard: panel targets' `expr` and variables' queries.
fn collect_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// The `balancer_*` identifiers of a query.
fn metric_names(query: &str) -> Vec<String> {
    identifiers(query)
        .into_iter()
        .filter(|w| w.starts_with("balancer_"))
        .collect()
}

/// Identifiers, in order (label values in quotes skipped).
fn identifiers(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in query.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && (c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// The labels a query groups by (`by (...)`), selects on (`{label=...}`) or asks the
/// values of (`label_values(metric, label)`).
fn query_labels(query: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find(['{', '(']) {
        let open = rest.as_bytes()[at];
        let before = rest[..at].trim_end();
        let close = if open == b'{' { '}' } else { ')' };
        let inner_end = rest[at..].find(close).map_or(rest.len(), |e| at + e);
        let inner = &rest[at + 1..inner_end];
        if open == b'{' {
            labels.extend(
                inner
                    .split(',')
                    .filter_map(|m| m.split(['=', '!']).next())
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        } else if before.ends_with(" by") || before.ends_with("label_values") {
            let skip = usize::from(before.ends_with("label_values"));
            labels.extend(identifiers(inner).into_iter().skip(skip));
        }
        rest = &rest[at + 1..];
    }
    labels
}

#[test]
fn query_labels_are_found() {
    let q = r#"histogram_quantile(0.9, sum by (vip, le) (rate(m_bucket{vip=~"$vip",a!="x"}[5m])))"#;
    assert_eq!(query_labels(q), ["vip", "le", "vip", "a"]);
    assert_eq!(
        query_labels("label_values(balancer_vip_info, vip)"),
        ["vip"]
    );
    assert_eq!(metric_names(q), Vec::<String>::new());
    assert_eq!(
        metric_names(r#"sum(balancer_a_total{x="balancer_b"}) / balancer_c"#),
        ["balancer_a_total", "balancer_c"]
    );
}
