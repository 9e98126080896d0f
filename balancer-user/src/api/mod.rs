//! The control protocol: what the CLI (and later the metrics endpoint and the stats
//! page) asks the agent and what it answers, as JSON lines over the control socket
//! ([`client`] is the CLI's half; the agent's is `agent::control_server`). Everything
//! that reads the agent's state reads it from these types.

pub mod client;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use balancer_common::FlowStats;
use serde::{Deserialize, Serialize};

use crate::{
    config::{DownPolicy, VipConfig},
    health::Health,
};

/// One request to the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    VipAdd {
        #[serde(flatten)]
        vip: VipConfig,
    },
    VipDel {
        name: String,
    },
    BackendAdd {
        target: String,
        address: SocketAddr,
        weight: u32,
    },
    BackendDel {
        target: String,
        address: SocketAddr,
    },
    BackendWeight {
        target: String,
        address: SocketAddr,
        weight: u32,
    },
    /// Create an empty pool (with no check; backends added later get none).
    PoolAdd {
        name: String,
    },
    /// Delete a pool that no VIP uses, and its backends.
    PoolDel {
        name: String,
    },
    /// Read the configuration file again and apply what changed.
    Reload,
    /// The running configuration as TOML (in [`Status::config`]).
    ConfigDump,
}

/// Where an object of the running configuration comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The configuration file, as it says.
    #[default]
    File,
    /// A CLI command added or changed it.
    Cli,
    /// A key under the pool's etcd discovery prefix.
    Etcd,
}

impl Source {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Cli => "cli",
            Source::Etcd => "etcd",
        }
    }
}

/// The configuration the agent runs: its file, how often it was applied, the last reload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub path: String,
    /// 1 at start, one more for each reload that changed something.
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadStatus>,
    /// The running configuration as TOML: only in the answer to [`Request::ConfigDump`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<String>,
}

/// The outcome of the last reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// When (RFC 3339, UTC).
    pub at: String,
    pub ok: bool,
    /// The summary ("2 VIPs added, 1 backend changed"), or why it was refused.
    pub message: String,
}

/// The agent's answer: the status after the request, or why it was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(message.into()),
            status: None,
        }
    }
}

/// Counters of a VIP or a backend, summed over CPUs, one direction each: `packets` and
/// `bytes` from clients (towards the backends), `reply_packets` and `reply_bytes` from the
/// backends (towards the clients). The CLI's tables show them as CLIENT and REPLY columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets from clients.
    pub packets: u64,
    /// Bytes from clients.
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets from the backends.
    pub reply_packets: u64,
    /// Bytes from the backends.
    pub reply_bytes: u64,
}

impl From<FlowStats> for Counters {
    fn from(s: FlowStats) -> Self {
        Counters {
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            reply_packets: s.reply_packets,
            reply_bytes: s.reply_bytes,
        }
    }
}

/// Live flows of a VIP or a backend in the connection table at the agent's last census
/// (see [`Status::flow_census`]): entries its data plane would still forward on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFlows {
    /// All of them.
    pub total: u64,
    /// TCP flows whose handshake completed, without FIN or RST yet (IPVS's `ActiveConn`).
    pub tcp_established: u64,
    /// TCP flows half-open or closing (IPVS's `InActConn`).
    pub tcp_other: u64,
    pub udp: u64,
}

/// The agent's last census of the connection table, which [`ActiveFlows`] come from: it
/// reads the whole table every few seconds, off its event loop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowCensusStatus {
    /// When it was taken (RFC 3339, UTC); none before the first one succeeded.
    pub at: Option<String>,
    /// Seconds since then, when the status was made.
    pub age_secs: Option<f64>,
    /// How long reading and counting the table took, in seconds.
    pub took_secs: Option<f64>,
    /// Entries read, live or not (an LRU table keeps expired entries until it needs room).
    pub entries: Option<u64>,
    /// Why the newest attempt failed, while none succeeded since.
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    #[serde(flatten)]
    pub config: VipConfig,
    /// Backends that take new flows (weight > 0 and up).
    pub active_backends: usize,
    pub counters: Counters,
    /// Its live flows at the last census (none before one, or for a newer VIP).
    #[serde(default)]
    pub active_flows: Option<ActiveFlows>,
    #[serde(default)]
    pub source: Source,
}

/// The newest health check of a backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastCheck {
    pub ok: bool,
    pub latency_ms: f64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    /// "active", "drained" (weight 0), "down" (failed its health checks) or "unchecked"
    /// (added at run time, its first check not done yet: it takes no flows meanwhile).
    pub state: String,
    /// `down` while "unchecked".
    pub health: Health,
    /// Check type ("none", "tcp", "http", "udp").
    pub check: String,
    pub last_check: Option<LastCheck>,
    /// Seconds since the health last changed (or since the backend was added).
    pub since_change_secs: f64,
    /// Why the health last changed.
    pub change_reason: String,
    /// Health changes since the backend was added.
    #[serde(default)]
    pub transitions: u64,
    pub counters: Counters,
    /// Its live flows at the last census, over the VIPs of its pool (none before one, or
    /// for a newer backend).
    #[serde(default)]
    pub active_flows: Option<ActiveFlows>,
    #[serde(default)]
    pub source: Source,
    /// The share of its SNAT ports in use (0 to 1), estimated from new flows' first probes
    /// over the agent's last window with enough of them; none before.
    #[serde(default)]
    pub snat_ports_in_use: Option<f64>,
}

impl BackendStatus {
    /// The backend's address and port (printed `[2001:db8::1]:80` for IPv6).
    #[must_use]
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub on_backend_down: DownPolicy,
    pub backends: Vec<BackendStatus>,
    #[serde(default)]
    pub source: Source,
    /// Where the pool's etcd discovery stands, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

/// A pool's etcd discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    pub state: crate::discovery::watch::State,
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The etcd revision the pool's backends are current at (0 before the first list).
    pub revision: i64,
    /// Why the last attempt failed, while it has not succeeded since.
    pub last_error: Option<String>,
    /// When the state last changed (RFC 3339, UTC).
    pub since: String,
}

/// One VRRP instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    /// 2 or 3.
    pub version: u8,
    /// keepalived's words: "INIT", "BACKUP", "MASTER" or "FAULT".
    pub state: String,
    /// As configured.
    pub priority: u8,
    /// As advertised: the configured priority adjusted by weighted tracks.
    pub effective_priority: u8,
    /// The address adverts are sent from.
    pub source: IpAddr,
    /// The current Master as known (this host while Master).
    pub master: Option<IpAddr>,
    /// Seconds in the current state.
    pub since_change_secs: f64,
    /// Why the last transition happened.
    pub reason: String,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub became_master: u64,
    /// Adverts refused, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Accepted `VRRPv3` IPv4 adverts by checksum: with the IPv4 pseudo-header (keepalived,
    /// FRR) or without it (RFC 9568).
    pub checksums: BTreeMap<String, u64>,
    pub sync_group: Option<String>,
    /// The virtual addresses, "ADDRESS/PREFIX".
    pub addresses: Vec<String>,
}

/// One HTTP-mode VIP, served by the agent's proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpVipStatus {
    pub name: String,
    pub listen: SocketAddr,
    /// Client connections accepted, and open now.
    pub connections: u64,
    pub active_connections: u64,
    pub requests: u64,
    pub active_requests: u64,
    /// Requests waiting for a connection slot (`maxconn`).
    pub queued: u64,
    /// Responses sent by class ("1xx" .. "5xx").
    pub responses: BTreeMap<String, u64>,
    /// Body bytes from clients and to them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests sent again to another backend after a connect failure.
    pub retries: u64,
    /// Requests that got no backend's answer, by reason.
    pub errors: BTreeMap<String, u64>,
    /// Response times: (upper bound in ms, or "+Inf"; responses in that bucket), in order.
    pub latency_ms: Vec<(String, u64)>,
    /// The response times summed, in seconds (absent from an older agent's answer).
    #[serde(default)]
    pub latency_sum_secs: f64,
    /// Hits per rule, the default pool last.
    pub rules: Vec<HttpRuleStatus>,
    pub backends: Vec<HttpBackendStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRuleStatus {
    pub name: String,
    pub pool: String,
    pub hits: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpBackendStatus {
    pub address: SocketAddr,
    pub requests: u64,
    /// Connect failures and broken answers.
    pub errors: u64,
    pub active: u64,
}

/// Where the program stands on one configured interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceState {
    /// The program is attached.
    Attached,
    /// The interface was there and is gone: nothing is balanced there (an error).
    Missing,
    /// The interface has not existed since the start (`agent.wait_for_interfaces`).
    Waiting,
    /// The interface is there and the program could not be attached (an error).
    Failed,
}

impl InterfaceState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Missing => "missing",
            Self::Waiting => "waiting",
            Self::Failed => "failed",
        }
    }

    /// Whether it is an error: the program is not where it was, or could not be put.
    #[must_use]
    pub fn is_error(self) -> bool {
        matches!(self, Self::Missing | Self::Failed)
    }
}

/// One configured interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub state: InterfaceState,
    /// The interface's index (while missing, the one it had).
    pub ifindex: Option<u32>,
    /// While attached: "driver", "skb" (generic), or "unrecorded" (a link taken over from
    /// an agent that did not record it).
    pub mode: Option<String>,
    /// Seconds in the current state.
    pub since_change_secs: f64,
    /// Why it is missing or failed.
    pub error: Option<String>,
}

/// Everything `balancer status` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub vips: Vec<VipStatus>,
    pub pools: Vec<PoolStatus>,
    /// Verdicts and drop/pass reasons (`balancer_common::stat::NAMES`).
    pub global: BTreeMap<String, u64>,
    /// The configured interfaces and the program on each.
    #[serde(default)]
    pub interfaces: Vec<InterfaceStatus>,
    /// VRRP instances, when the configuration has any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vrrp: Vec<VrrpStatus>,
    /// HTTP-mode VIPs, when the configuration has any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpVipStatus>,
    /// The configuration file and its reloads (the agent's; absent in tests without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigStatus>,
    /// The census of the connection table that the VIPs' and backends' `active_flows`
    /// come from (absent before the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_census: Option<FlowCensusStatus>,
    /// Flow sync with the VRRP peers, when `[sync]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
}

/// Flow-table sync with the VRRP peers (`[sync]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// "sending" while this node is the Master of the sync's VRRP instance, else
    /// "receiving".
    pub role: String,
    /// The socket's address.
    pub local: Option<String>,
    /// Datagrams waiting for the rate bound, and those dropped because too many waited.
    pub queued: u64,
    pub queue_drops: u64,
    /// Datagrams from addresses that are not peers.
    pub strangers: u64,
    /// Records received while Master (not written), and those dropped because too many
    /// waited to be written.
    pub ignored_while_master: u64,
    pub dropped: u64,
    /// The newest walk of the table for changes (while Master).
    pub last_round: Option<SyncRoundStatus>,
    /// Why the newest write of received flows failed, while none succeeded since.
    pub last_error: Option<String>,
    pub peers: Vec<SyncPeerStatus>,
}

/// One walk of the Master's table for what to send.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRoundStatus {
    pub age_secs: f64,
    /// How long the walk and the comparison took.
    pub took_secs: f64,
    /// A full round (every live flow).
    pub full: bool,
    /// Records it sent.
    pub records: u64,
    /// Flows the peers were told of and not told gone since.
    pub flows: u64,
}

/// Flow sync with one peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncPeerStatus {
    /// Address and port.
    pub address: String,
    pub flows_sent: u64,
    pub datagrams_sent: u64,
    pub flows_received: u64,
    pub datagrams_received: u64,
    /// Seconds since the peer was last heard (a Master sends at least one datagram every
    /// `interval`); none before.
    pub lag_secs: Option<f64>,
    /// Seconds since its last full resync arrived; none before.
    pub last_full_resync_secs: Option<f64>,
    /// Received flows written into the tables, and removed.
    pub flows_written: u64,
    pub flows_removed: u64,
    /// Received flows skipped: their VIP or backend is unknown here.
    pub unknown: u64,
    /// Datagrams refused: a wrong MAC (forged, or another key), malformed, or stale (an
    /// older boot, seen before, or older than the window).
    pub auth_failures: u64,
    pub malformed: u64,
    pub stale: u64,
    /// Datagrams missing from its sequence.
    pub lost: u64,
    pub resync_requests_sent: u64,
    pub resync_requests_received: u64,
}
