//! The proxy's counters: per HTTP VIP, per rule and per backend, lock-free on the request
//! path (atomics; a backend's counters are found once per request under a read lock), and
//! their snapshot for `balancer status`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::api::{HttpBackendStatus, HttpRuleStatus, HttpVipStatus};

/// Upper bounds of the latency buckets, in milliseconds (the last bucket is unbounded).
pub const LATENCY_BUCKETS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
];

/// Why a request got no answer from a backend, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpstreamError {
    /// No backend of the pool is up (503).
    NoBackend,
    /// The VIP's or every backend's `maxconn` was reached and the queue timed out (503).
    QueueTimeout,
    /// Connecting failed on every backend tried (502).
    Connect,
    /// The backend did not answer in `timeout_server` (504).
    Timeout,
    /// The backend closed or sent something that is not HTTP (502).
    Protocol,
}

impl UpstreamError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoBackend => "no_backend",
            Self::QueueTimeout => "queue_timeout",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
        }
    }

    const ALL: [Self; 5] = [
        Self::NoBackend,
        Self::QueueTimeout,
        Self::Connect,
        Self::Timeout,
        Self::Protocol,
    ];
}

/// One backend's counters.
#[derive(Debug, Default)]
pub struct BackendCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub active: AtomicU64,
}

/// One HTTP VIP's counters.
#[derive(Debug)]
pub struct VipCounters {
    pub connections: AtomicU64,
    pub active_connections: AtomicU64,
    pub requests: AtomicU64,
    pub active_requests: AtomicU64,
    pub queued: AtomicU64,
    /// Responses by class: 1xx to 5xx.
    pub responses: [AtomicU64; 5],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub retries: AtomicU64,
    errors: [AtomicU64; 5],
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    /// The response times summed, in microseconds (the histogram's `_sum`).
    latency_sum_us: AtomicU64,
    /// Hits per rule, the default pool's last (replaced when a reload changes the rules).
    rules: arc_swap::ArcSwap<Vec<AtomicU64>>,
    backends: RwLock<HashMap<SocketAddr, Arc<BackendCounters>>>,
}

impl VipCounters {
    /// Counters for a VIP with `rules` rules (and its default pool).
    pub fn new(rules: usize) -> Self {
        VipCounters {
            connections: AtomicU64::new(0),
            active_connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            responses: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: Default::default(),
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            rules: arc_swap::ArcSwap::from_pointee(rule_hits(rules)),
            backends: RwLock::default(),
        }
    }

    /// The VIP now has `rules` rules: their hits count from 0.
    pub fn set_rules(&self, rules: usize) {
        self.rules.store(Arc::new(rule_hits(rules)));
    }

    pub fn error(&self, error: UpstreamError) {
        self.errors[error as usize].fetch_add(1, Relaxed);
    }

    /// A response of `status` sent after `took`.
    pub fn response(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Relaxed);
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// A request routed by rule `rule` (`None`: the default pool).
    pub fn routed(&self, rule: Option<usize>) {
        let rules = self.rules.load();
        let index = rule.unwrap_or(rules.len() - 1).min(rules.len() - 1);
        rules[index].fetch_add(1, Relaxed);
    }

    /// The counters of `backend`, created on first use.
    pub fn backend(&self, backend: SocketAddr) -> Arc<BackendCounters> {
        if let Some(found) = self
            .backends
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&backend)
        {
            return Arc::clone(found);
        }
        let mut backends = self
            .backends
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(backends.entry(backend).or_default())
    }

    /// The counters as `balancer status` shows them; `rules` are the (name, pool) of each
    /// rule, then the default pool's.
    pub fn snapshot(
        &self,
        name: &str,
        listen: SocketAddr,
        rules: &[(String, String)],
    ) -> HttpVipStatus {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let mut backends: Vec<HttpBackendStatus> = self
            .backends
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(addr, c)| HttpBackendStatus {
                address: *addr,
                requests: load(&c.requests),
                errors: load(&c.errors),
                active: load(&c.active),
            })
            .collect();
        backends.sort_by_key(|b| b.address);
        HttpVipStatus {
            name: name.to_owned(),
            listen,
            connections: load(&self.connections),
            active_connections: load(&self.active_connections),
            requests: load(&self.requests),
            active_requests: load(&self.active_requests),
            queued: load(&self.queued),
            responses: classes
                .iter()
                .zip(&self.responses)
                .map(|(c, n)| ((*c).to_owned(), load(n)))
                .collect(),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            retries: load(&self.retries),
            errors: UpstreamError::ALL
                .iter()
                .map(|e| (e.as_str().to_owned(), load(&self.errors[*e as usize])))
                .filter(|(_, n)| *n > 0)
                .collect::<BTreeMap<_, _>>(),
            latency_ms: LATENCY_BUCKETS_MS
                .iter()
                .map(ToString::to_string)
                .chain(std::iter::once("+Inf".to_owned()))
                .zip(&self.latency)
                .map(|(le, n)| (le, load(n)))
                .collect(),
            latency_sum_secs: Duration::from_micros(load(&self.latency_sum_us)).as_secs_f64(),
            rules: rules
                .iter()
                .zip(self.rules.load().iter())
                .map(|((name, pool), hits)| HttpRuleStatus {
                    name: name.clone(),
                    pool: pool.clone(),
                    hits: load(hits),
                })
                .collect(),
            backends,
        }
    }
}

/// A hit counter for each of `rules` rules and the default pool.
fn rule_hits(rules: usize) -> Vec<AtomicU64> {
    (0..=rules).map(|_| AtomicU64::new(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_land_in_their_class_and_latency_bucket() {
        let c = VipCounters::new(1);
        c.response(204, Duration::from_micros(300));
        c.response(503, Duration::from_millis(30));
        c.response(99, Duration::from_mins(1));
        c.routed(Some(0));
        c.routed(None);
        c.routed(None);
        c.error(UpstreamError::Connect);
        c.backend("10.0.2.11:80".parse().unwrap())
            .requests
            .fetch_add(2, Relaxed);
        let rules = [
            ("static".to_owned(), "static".to_owned()),
            ("default".to_owned(), "app".to_owned()),
        ];
        let s = c.snapshot("www", "10.0.1.100:80".parse().unwrap(), &rules);
        assert_eq!(s.responses["2xx"], 1);
        assert_eq!(s.responses["5xx"], 1);
        assert_eq!(s.responses["1xx"], 1);
        let bucket = |le: &str| s.latency_ms.iter().find(|(l, _)| l == le).unwrap().1;
        assert_eq!(bucket("1"), 1);
        assert_eq!(bucket("50"), 1);
        assert_eq!(bucket("+Inf"), 1);
        assert!(
            (s.latency_sum_secs - 60.0303).abs() < 1e-9,
            "{}",
            s.latency_sum_secs
        );
        assert_eq!(s.rules[0].hits, 1);
        assert_eq!(s.rules[1].hits, 2);
        assert_eq!(s.errors["connect"], 1);
        assert_eq!(s.backends[0].requests, 2);
    }
}
