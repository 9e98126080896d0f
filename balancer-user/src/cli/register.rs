//! `balancer register`'s arguments, and the [`Registration`] they make.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    config::{check_backend_address, DEFAULT_WEIGHT, MAX_WEIGHT},
    discovery::{register::Registration, EtcdConfig, TlsFiles},
    health::config::{CheckConfig, CheckKind, HttpCheck},
};

/// Keep a backend's key in etcd while its health check passes.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// etcd endpoint URL (repeat, or separate with commas).
    #[arg(long, required = true, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The pool the backend belongs to (the default prefix is `/services/POOL/`).
    #[arg(long)]
    pool: String,
    /// The backend's address and port.
    #[arg(long)]
    address: SocketAddr,
    /// Key prefix the pool's balancers watch [default: /services/POOL/].
    #[arg(long)]
    prefix: Option<String>,
    /// Lease time to live in seconds: how long the key outlives a secretary killed outright.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(2..=86_400))]
    ttl: i64,
    #[arg(long, default_value_t = DEFAULT_WEIGHT, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_WEIGHT)))]
    weight: u32,
    /// Health check of the service: tcp (connect), http, or none (registered while running).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "http", "none"])]
    check: String,
    /// Path an http check requests.
    #[arg(long, default_value = "/")]
    check_path: String,
    /// Time between checks (also each check's timeout).
    #[arg(long, default_value = "1s", value_parser = humantime_serde::re::humantime::parse_duration)]
    check_interval: Duration,
    /// Consecutive failures before the key is removed (successes before it is put back).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    fall: u32,
    /// PEM CA certificate of etcd's TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// PEM client certificate (with --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM client key (with --cert).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    #[arg(long, requires = "password")]
    user: Option<String>,
    #[arg(long, requires = "user")]
    password: Option<String>,
}

impl RegisterArgs {
    /// The registration these arguments describe.
    ///
    /// # Errors
    /// When the address is not a usable backend's.
    pub fn registration(self) -> Result<Registration, String> {
        check_backend_address(self.address)
            .map_err(|e| format!("--address {}: {e}", self.address))?;
        let kind = match self.check.as_str() {
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http(HttpCheck {
                path: self.check_path,
                ..HttpCheck::default()
            }),
            _ => CheckKind::None,
        };
        let check = CheckConfig {
            kind,
            interval: self.check_interval,
            timeout: self.check_interval,
            fastinter: self.check_interval,
            downinter: self.check_interval,
            rise: 1,
            fall: self.fall,
            ..CheckConfig::default()
        };
        Ok(Registration {
            etcd: EtcdConfig {
                endpoints: self.etcd,
                prefix: self
                    .prefix
                    .unwrap_or_else(|| format!("/services/{}/", self.pool)),
                tls: TlsFiles {
                    ca: self.ca,
                    cert: self.cert,
                    key: self.key,
                },
                credentials: self.user.zip(self.password),
            },
            address: self.address,
            weight: self.weight,
            check,
            ttl: self.ttl,
        })
    }
}
