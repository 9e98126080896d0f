//! `balancer register`, the secretary beside a backend: it checks the local service with
//! the agent's own health checks (`health::Checker`), and while the service is healthy
//! keeps its key under the pool's prefix alive with a lease; unhealthy, the lease is
//! revoked (etcd deletes the key at once). On SIGTERM or SIGINT it revokes the lease and
//! exits; killed outright, the lease expires after its TTL and etcd deletes the key.

use std::{net::SocketAddr, time::Duration};

use etcd_client::{Client, PutOptions};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use super::{etcd::connect, watch::MIN_BACKOFF, EtcdConfig};
use crate::health::{config::CheckConfig, Checker, Health};

/// What `balancer register` was asked.
#[derive(Clone, Debug)]
pub struct Registration {
    pub etcd: EtcdConfig,
    pub address: SocketAddr,
    pub weight: u32,
    pub check: CheckConfig,
    /// Lease time to live, in seconds.
    pub ttl: i64,
}

impl Registration {
    /// The key: the prefix and the address.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}{}", self.etcd.prefix, self.address)
    }

    /// The value: the format discovery reads (`value.rs`).
    #[must_use]
    pub fn value(&self) -> String {
        serde_json::json!({
            "address": self.address.ip().to_string(),
            "port": self.address.port(),
            "weight": self.weight,
        })
        .to_string()
    }
}

/// The key while it is registered: the client and the lease it is under.
struct Registered {
    client: Client,
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    responses: etcd_client::LeaseKeepAliveStream,
}

/// Runs the secretary until SIGTERM or SIGINT.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub async fn run(reg: Registration) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (health_tx, mut health) = mpsc::channel(16);
    let mut checker = Checker::new(health_tx);
    let mut healthy = !reg.check.is_enabled();
    if reg.check.is_enabled() {
        checker.start("register", reg.address, &reg.check, None);
    }
    log::info!(
        "registering {} as {} under a {} s lease while {}",
        reg.address,
        reg.key(),
        reg.ttl,
        if healthy {
            "running (no check)"
        } else {
            "its check passes"
        }
    );
    let mut registered: Option<Registered> = None;
    let keep_alive = Duration::from_secs(u64::try_from(reg.ttl / 3).unwrap_or(1).max(1));
    let mut tick = tokio::time::interval(keep_alive.min(Duration::from_secs(1)));
    let mut next_keep_alive = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(event) = health.recv() => {
                let now_healthy = event.health == Health::Up;
                if now_healthy != healthy {
                    log::info!(
                        "{}: {} ({})",
                        reg.address,
                        if now_healthy { "healthy" } else { "unhealthy" },
                        event.outcome.reason
                    );
                }
                healthy = now_healthy;
            }
            _ = tick.tick() => {}
        }
        match (&mut registered, healthy) {
            (None, true) => match register(&reg).await {
                Ok(r) => {
                    log::info!("{}: registered (lease {:x})", reg.key(), r.lease);
                    registered = Some(r);
                    next_keep_alive = tokio::time::Instant::now() + keep_alive;
                }
                Err(e) => {
                    log::warn!("{}: registering failed: {e}; retrying", reg.key());
                    tokio::time::sleep(MIN_BACKOFF).await;
                }
            },
            (Some(_), false) => {
                let r = registered.take().expect("matched");
                revoke(r, &reg).await;
            }
            (Some(r), true) if tokio::time::Instant::now() >= next_keep_alive => {
                match renew(r).await {
                    Ok(()) => next_keep_alive = tokio::time::Instant::now() + keep_alive,
                    Err(e) => {
                        log::warn!(
                            "{}: keeping the lease alive failed: {e}; registering again",
                            reg.key()
                        );
                        registered = None;
                    }
                }
            }
            _ => {}
        }
    }
    log::info!("stopping");
    if let Some(r) = registered {
        revoke(r, &reg).await;
    }
    Ok(())
}

async fn register(reg: &Registration) -> Result<Registered, String> {
    let mut client = connect(&reg.etcd).await?;
    let lease = client
        .lease_grant(reg.ttl, None)
        .await
        .map_err(|e| format!("lease grant: {e}"))?
        .id();
    client
        .put(
            reg.key(),
            reg.value(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(|e| format!("put: {e}"))?;
    let (keeper, responses) = client
        .lease_keep_alive(lease)
        .await
        .map_err(|e| format!("keep-alive: {e}"))?;
    Ok(Registered {
        client,
        lease,
        keeper,
        responses,
    })
}

/// One keep-alive; an error when the lease is gone (expired while etcd was away).
async fn renew(r: &mut Registered) -> Result<(), String> {
    r.keeper.keep_alive().await.map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(Duration::from_secs(2), r.responses.message())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    match answer {
        Some(a) if a.ttl() > 0 => Ok(()),
        Some(_) => Err("the lease expired".to_owned()),
        None => Err("the keep-alive stream ended".to_owned()),
    }
}

async fn revoke(mut r: Registered, reg: &Registration) {
    match r.client.lease_revoke(r.lease).await {
        Ok(_) => log::info!("{}: lease revoked, key deleted", reg.key()),
        Err(e) => log::warn!(
            "{}: revoking the lease failed ({e}): the key goes when it expires",
            reg.key()
        ),
    }
}
