//! The tokio side of a pool's watch: connects to etcd with the `etcd-client` crate, does
//! what [`Watch::next`] says (list the prefix, or watch it from the next revision), feeds
//! the answers back, sends each new backend set, and keeps the status `status` shows.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
};
use tokio::sync::{mpsc, watch as snapshot};

use super::{
    watch::{Change, Next, Outcome, Watch},
    EtcdConfig, Update, CONNECT_TIMEOUT,
};
use crate::api::DiscoveryStatus;

/// The longest a list may take before the attempt counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on an idle connection, so that a watch on an etcd that went away (without
/// closing the connection) fails rather than waits forever.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(2));

/// A client of `config`'s etcd (TLS and credentials as configured).
///
/// # Errors
/// When a TLS file cannot be read, or etcd cannot be reached or refuses the credentials.
pub async fn connect(config: &EtcdConfig) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &config.credentials {
        options = options.with_user(user, password);
    }
    if !config.tls.is_empty() {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &config.tls.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    // (The connect timeout bounds each endpoint; this bounds the whole, with auth.)
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        Client::connect(&config.endpoints, Some(options)),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| e.to_string())
}

/// The status of a watch that has not started.
pub(super) fn initial_status(config: &EtcdConfig) -> DiscoveryStatus {
    DiscoveryStatus {
        state: super::watch::State::Connecting,
        endpoints: config.endpoints.clone(),
        prefix: config.prefix.clone(),
        revision: 0,
        last_error: None,
        since: now(),
    }
}

fn now() -> String {
    humantime_serde::re::humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The pool's watch, until the task is aborted.
pub(super) async fn run(
    pool: String,
    config: EtcdConfig,
    id: u64,
    updates: mpsc::Sender<Update>,
    status: snapshot::Sender<DiscoveryStatus>,
) {
    let mut task = Task {
        pool,
        config,
        id,
        updates,
        status,
        watch: Watch::new(),
        client: None,
    };
    log::info!(
        "pool {}: discovery from etcd {} prefix {:?}",
        task.pool,
        task.config.endpoints.join(","),
        task.config.prefix
    );
    loop {
        if let Err(e) = task.step().await {
            let (wait, outcome) = task.watch.failed(&e);
            task.client = None;
            task.publish(outcome).await;
            tokio::time::sleep(wait).await;
        }
    }
}

struct Task {
    pool: String,
    config: EtcdConfig,
    id: u64,
    updates: mpsc::Sender<Update>,
    status: snapshot::Sender<DiscoveryStatus>,
    watch: Watch,
    client: Option<Client>,
}

impl Task {
    /// One list, or one watch until it ends; an error when it failed.
    async fn step(&mut self) -> Result<(), String> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self.client.insert(connect(&self.config).await?),
        };
        match self.watch.next() {
            Next::List => {
                let options = GetOptions::new().with_prefix();
                let response = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    client.get(self.config.prefix.as_bytes(), Some(options)),
                )
                .await
                .map_err(|_| "listing timed out".to_owned())?
                .map_err(|e| format!("listing: {e}"))?;
                let revision = response
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision);
                let kvs = response
                    .kvs()
                    .iter()
                    .map(|kv| (key_text(kv.key()), kv.value().to_vec()))
                    .collect::<Vec<_>>();
                let outcome = self.watch.listed(kvs, revision);
                self.publish(outcome).await;
                Ok(())
            }
            Next::Watch { from } => {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(from)
                    .with_progress_notify();
                let mut stream = client
                    .watch(self.config.prefix.as_bytes(), Some(options))
                    .await
                    .map_err(|e| format!("watching: {e}"))?;
                loop {
                    let Some(response) = stream
                        .message()
                        .await
                        .map_err(|e| format!("watching: {e}"))?
                    else {
                        return Err("the watch ended".to_owned());
                    };
                    if response.canceled() {
                        if response.compact_revision() > 0 {
                            let outcome = self.watch.compacted(response.compact_revision());
                            self.publish(outcome).await;
                            return Ok(());
                        }
                        return Err(format!("watch cancelled: {}", response.cancel_reason()));
                    }
                    let revision = response
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::revision);
                    let changes = response.events().iter().filter_map(|event| {
                        let kv = event.kv()?;
                        let key = key_text(kv.key());
                        Some(match event.event_type() {
                            EventType::Put => Change::Put {
                                key,
                                value: kv.value().to_vec(),
                            },
                            EventType::Delete => Change::Delete { key },
                        })
                    });
                    let outcome = self.watch.changed(changes.collect::<Vec<_>>(), revision);
                    self.publish(outcome).await;
                }
            }
        }
    }

    /// Logs, sends the new set if there is one, and updates the status.
    async fn publish(&self, outcome: Outcome) {
        for line in &outcome.log {
            log::warn!("pool {}: etcd: {line}", self.pool);
        }
        if let Some(backends) = outcome.backends {
            log::info!(
                "pool {}: etcd revision {}: {} backend(s)",
                self.pool,
                self.watch.revision(),
                backends.len()
            );
            let update = Update {
                pool: self.pool.clone(),
                watcher: self.id,
                backends,
            };
            // (Closed: the agent is stopping.)
            let _ = self.updates.send(update).await;
        }
        self.status.send_modify(|s| {
            if s.state != self.watch.state() {
                s.state = self.watch.state();
                s.since = now();
            }
            s.revision = self.watch.revision();
            s.last_error = self.watch.last_error().map(str::to_owned);
        });
    }
}

/// A key as text for logs and ordering (etcd keys are bytes; ours are UTF-8 paths).
fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
