//! Backends from etcd: a pool with `discovery = { etcd = { ... } }` takes its backends
//! from the keys under a prefix. Each pool's prefix is watched by a task of its own
//! ([`Watcher`]), which sends the whole backend set after every change on a channel of
//! its own (as the health checker does); the agent applies the difference. The watch
//! itself is a state machine without I/O (`watch.rs`), the values' format is in
//! `value.rs`, the tokio and etcd side in `etcd.rs`, and `balancer register` (the
//! secretary that keeps a backend's key alive while it is healthy) in `register.rs`.

mod etcd;
pub mod register;
pub mod value;
pub mod watch;

use std::{path::PathBuf, time::Duration};

use tokio::{
    sync::{mpsc, watch as snapshot},
    task::JoinHandle,
};

pub use value::Backends;

use crate::api::DiscoveryStatus;

/// How long a connection attempt to etcd may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `discovery.etcd` of a pool: where its backends' keys are, and how to reach etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`, at least one.
    pub endpoints: Vec<String>,
    /// Every key under it is a backend.
    pub prefix: String,
    pub tls: TlsFiles,
    /// `user` and `password` (both or neither).
    pub credentials: Option<(String, String)>,
}

/// PEM files for TLS to etcd: the CA that signed its certificate, and a client
/// certificate with its key (both or neither).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// A new backend set of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub pool: String,
    /// Which watcher of the pool sent it (a reload replaces watchers; a replaced one's
    /// queued updates are ignored).
    pub watcher: u64,
    pub backends: Backends,
}

/// The task watching one pool's prefix; dropping it stops the task.
#[derive(Debug)]
pub struct Watcher {
    pub config: EtcdConfig,
    pub id: u64,
    status: snapshot::Receiver<DiscoveryStatus>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Starts watching `config`'s prefix for `pool`; updates go to `updates` with `id`.
    #[must_use]
    pub fn start(pool: &str, config: &EtcdConfig, id: u64, updates: mpsc::Sender<Update>) -> Self {
        let (tx, status) = snapshot::channel(etcd::initial_status(config));
        let task = tokio::spawn(etcd::run(pool.to_owned(), config.clone(), id, updates, tx));
        Watcher {
            config: config.clone(),
            id,
            status,
            task,
        }
    }

    /// The watch's state for `status`.
    #[must_use]
    pub fn status(&self) -> DiscoveryStatus {
        self.status.borrow().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
