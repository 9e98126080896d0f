//! The configuration file as written: `serde` reads the text into these structs. They
//! mirror the file one-to-one, reject unknown fields and wrap every value a later check may
//! point at in [`toml::Spanned`], so that the validator's errors can name the exact line.
//! Every value is kept as written (strings, [`Int`]): the validator parses and checks it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use crate::l7::rules::{HeaderKind, Kind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawConfig {
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) nat: Option<RawNat>,
    #[serde(default)]
    pub(super) timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pub(super) http: Option<RawHttp>,
    #[serde(default)]
    pub(super) telemetry: Option<RawTelemetry>,
    #[serde(default)]
    pub(super) tunnel: Option<RawTunnel>,
    #[serde(default)]
    pub(super) sync: Option<Spanned<RawSync>>,
    #[serde(default)]
    pub(super) pool: Vec<Spanned<RawPool>>,
    #[serde(default)]
    pub(super) vip: Vec<Spanned<RawVip>>,
    #[serde(default)]
    pub(super) vrrp: Vec<Spanned<RawVrrp>>,
    #[serde(default)]
    pub(super) vrrp_sync_group: Vec<Spanned<RawSyncGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawAgent {
    pub(super) interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) xdp_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) control_socket: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) pin_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) keep_attached: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) wait_for_interfaces: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawNat {
    #[serde(default)]
    pub(super) source_address: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) source_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) port_range: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTunnel {
    #[serde(default)]
    pub(super) source: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) gue_port: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) mtu: Option<Spanned<Int>>,
}

/// `[sync]`: flow-table sync between VRRP peers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSync {
    pub(super) peers: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) source: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) interface: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) port: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) instance: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) interval: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) full_resync: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) rate: Option<Spanned<Int>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTimeouts {
    #[serde(default)]
    pub(super) tcp: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) udp: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) tcp_closing: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) snat_time_wait: Option<Spanned<String>>,
    /// Earlier versions' name for it (when it counted from the backend's answer).
    #[serde(default, alias = "tcp_unreplied")]
    pub(super) tcp_handshake: Option<Spanned<String>>,
}

/// `[http]`: the HTTP proxy's timeouts and limits, for every HTTP-mode VIP.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawHttp {
    #[serde(default)]
    pub(super) timeout_connect: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeout_server: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeout_http_request: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeout_queue: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeout_drain: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) maxconn: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) retries: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) forwarded: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) request_id: Option<bool>,
    #[serde(default)]
    pub(super) access_log: Option<bool>,
    #[serde(default)]
    pub(super) max_headers: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) max_header_bytes: Option<Spanned<Int>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawPool {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) on_backend_down: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) check: Option<RawCheck>,
    #[serde(default)]
    pub(super) backends: Vec<Spanned<RawBackend>>,
    // HTTP balancing (L7 VIPs only)
    #[serde(default)]
    pub(super) balance: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) hash_key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) cookie: Option<Spanned<RawCookie>>,
    #[serde(default)]
    pub(super) discovery: Option<Spanned<RawDiscovery>>,
}

/// A pool's `discovery = { etcd = { ... } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawDiscovery {
    pub(super) etcd: Spanned<RawEtcd>,
}

/// `discovery.etcd`: the endpoints, the prefix, TLS files and credentials.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawEtcd {
    pub(super) endpoints: Spanned<Vec<Spanned<String>>>,
    pub(super) prefix: Spanned<String>,
    #[serde(default)]
    pub(super) ca: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) cert: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) user: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) password: Option<Spanned<String>>,
}

/// A pool's `cookie = { name = "SERVERID", insert = true, ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawCookie {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) insert: Option<bool>,
    #[serde(default)]
    pub(super) nocache: Option<bool>,
    #[serde(default)]
    pub(super) indirect: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBackend {
    pub(super) address: Spanned<String>,
    pub(super) port: Spanned<Int>,
    #[serde(default)]
    pub(super) weight: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) check: Option<RawCheck>,
    /// Its persistence cookie's id (L7 VIPs only).
    #[serde(default)]
    pub(super) cookie: Option<Spanned<String>>,
    /// Requests in progress on it at once (L7 VIPs only).
    #[serde(default)]
    pub(super) maxconn: Option<Spanned<Int>>,
}

/// `[pool.check]`, or a backend's `check`: every field optional, so a
/// backend's table can be merged over its pool's field by field.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawCheck {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) interval: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) rise: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) fall: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) fastinter: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) downinter: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) initial_state: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) port: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) address: Option<Spanned<String>>,
    // http
    #[serde(default)]
    pub(super) method: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) path: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) host: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) expect_status: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) expect_body: Option<Spanned<String>>,
    // udp
    #[serde(default)]
    pub(super) payload: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) expect: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawVip {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) port: Spanned<Int>,
    pub(super) protocol: Spanned<String>,
    #[serde(default)]
    pub(super) scheduler: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) ring_size: Option<Spanned<Int>>,
    pub(super) pool: Spanned<String>,
    #[serde(default)]
    pub(super) on_all_down: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) forwarding: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) encapsulation: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) rule: Vec<Spanned<RawRule>>,
}

/// A rule's list of values (`path_prefix = ["/static", "/images"]`).
pub(super) type Values = Spanned<Vec<Spanned<String>>>;

/// A rule's header table (`header_equals = { "X-Env" = ["beta"] }`): header name -> values.
pub(super) type HeaderValues = Spanned<BTreeMap<Spanned<String>, Values>>;

/// `[[vip.rule]]`: one routing rule of an HTTP-mode VIP. Each condition key has its `not_`
/// twin.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) name: Option<Spanned<String>>,
    pub(super) pool: Spanned<String>,
    #[serde(default)]
    pub(super) method: Option<Values>,
    #[serde(default)]
    pub(super) not_method: Option<Values>,
    #[serde(default)]
    pub(super) host: Option<Values>,
    #[serde(default)]
    pub(super) not_host: Option<Values>,
    #[serde(default)]
    pub(super) path_exact: Option<Values>,
    #[serde(default)]
    pub(super) not_path_exact: Option<Values>,
    #[serde(default)]
    pub(super) path_prefix: Option<Values>,
    #[serde(default)]
    pub(super) not_path_prefix: Option<Values>,
    #[serde(default)]
    pub(super) path_suffix: Option<Values>,
    #[serde(default)]
    pub(super) not_path_suffix: Option<Values>,
    #[serde(default)]
    pub(super) source: Option<Values>,
    #[serde(default)]
    pub(super) not_source: Option<Values>,
    #[serde(default)]
    pub(super) header_present: Option<Values>,
    #[serde(default)]
    pub(super) not_header_present: Option<Values>,
    #[serde(default)]
    pub(super) path_regex: Option<Values>,
    #[serde(default)]
    pub(super) not_path_regex: Option<Values>,
    #[serde(default)]
    pub(super) header_equals: Option<HeaderValues>,
    #[serde(default)]
    pub(super) not_header_equals: Option<HeaderValues>,
    #[serde(default)]
    pub(super) header_regex: Option<HeaderValues>,
    #[serde(default)]
    pub(super) not_header_regex: Option<HeaderValues>,
}

impl RawRule {
    /// The conditions that take a list, each with whether it is the `not_` twin, cheapest
    /// test first (the order changes nothing but the time a request takes).
    pub(super) fn lists(&self) -> [(Kind, bool, Option<&Values>); 16] {
        [
            (Kind::Method, false, self.method.as_ref()),
            (Kind::Method, true, self.not_method.as_ref()),
            (Kind::Host, false, self.host.as_ref()),
            (Kind::Host, true, self.not_host.as_ref()),
            (Kind::PathExact, false, self.path_exact.as_ref()),
            (Kind::PathExact, true, self.not_path_exact.as_ref()),
            (Kind::PathPrefix, false, self.path_prefix.as_ref()),
            (Kind::PathPrefix, true, self.not_path_prefix.as_ref()),
            (Kind::PathSuffix, false, self.path_suffix.as_ref()),
            (Kind::PathSuffix, true, self.not_path_suffix.as_ref()),
            (Kind::Source, false, self.source.as_ref()),
            (Kind::Source, true, self.not_source.as_ref()),
            (Kind::HeaderPresent, false, self.header_present.as_ref()),
            (Kind::HeaderPresent, true, self.not_header_present.as_ref()),
            (Kind::PathRegex, false, self.path_regex.as_ref()),
            (Kind::PathRegex, true, self.not_path_regex.as_ref()),
        ]
    }

    /// The header tables, likewise.
    pub(super) fn header_tables(&self) -> [(HeaderKind, bool, Option<&HeaderValues>); 4] {
        [
            (HeaderKind::Equals, false, self.header_equals.as_ref()),
            (HeaderKind::Equals, true, self.not_header_equals.as_ref()),
            (HeaderKind::Regex, false, self.header_regex.as_ref()),
            (HeaderKind::Regex, true, self.not_header_regex.as_ref()),
        ]
    }
}

/// `[[vrrp]]`: one VRRP instance, in keepalived's words where it has one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawVrrp {
    pub(super) name: Spanned<String>,
    pub(super) interface: Spanned<String>,
    pub(super) vrid: Spanned<Int>,
    #[serde(default)]
    pub(super) priority: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) advert_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) version: Option<Spanned<Int>>,
    pub(super) addresses: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) nopreempt: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) preempt_delay: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) unicast_source: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) unicast_peers: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) garp_master_delay: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) garp_master_repeat: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) v3_checksum: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) track: Vec<Spanned<RawTrack>>,
    #[serde(default)]
    pub(super) notify: Option<Spanned<String>>,
}

/// One entry of a `[[vrrp]]`'s `track`: exactly one of `vip`, `interface` and `data_plane`
/// (the validator checks that), with its weight.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTrack {
    #[serde(default)]
    pub(super) vip: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) interface: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) data_plane: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) weight: Option<Spanned<Int>>,
    #[serde(default)]
    pub(super) reverse: Option<bool>,
}

/// `[[vrrp_sync_group]]`: instances that fail over together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSyncGroup {
    pub(super) name: Spanned<String>,
    pub(super) instances: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) notify: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) sync_group_tracking_weight: Option<bool>,
}

/// A TOML integer; range checks happen in the validator so their messages can
/// name the field. (Also makes type errors read "expected an integer".)
#[derive(Clone, Copy, Debug)]
pub(super) struct Int(pub(super) i64);

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

/// `[telemetry]`: the metrics and stats page listener.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTelemetry {
    pub(super) listen: Spanned<String>,
    #[serde(default)]
    pub(super) auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    pub(super) admin: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) refresh: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawAuth {
    pub(super) user: Spanned<String>,
    pub(super) password: Spanned<String>,
}
