//! `[telemetry]`: where the metrics, `/status.json` and the stats page are served, and who
//! may read them or act from the page (the validator is `config/validate/telemetry.rs`).

use std::{net::SocketAddr, time::Duration};

/// How often the stats page reloads itself unless the file says.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// The telemetry listener's settings; absent from the file, nothing listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub listen: SocketAddr,
    /// Basic authentication every path requires (HAProxy's `stats auth`).
    pub auth: Option<Credentials>,
    /// Forms on the stats page that drain, enable or weigh a backend (needs `auth`).
    pub admin: bool,
    /// How often the stats page reloads itself.
    pub refresh: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Never prints the password (the configuration is logged and dumped in debug output).
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}
