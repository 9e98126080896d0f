//! What `[sync]` gives the flow-sync subsystem (the validator is
//! `config/validate/sync.rs`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The UDP port flow-sync datagrams go to when `[sync].port` is not given.
pub const DEFAULT_PORT: u16 = 7471;
/// How often the Master walks its connection table for changes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the Master sends every live flow, changed or not.
pub const DEFAULT_FULL_RESYNC: Duration = Duration::from_mins(1);
/// Datagrams per second the Master sends at most (about 1.4 KB each).
pub const DEFAULT_RATE: u32 = 5000;
/// The shortest key: HMAC-SHA256's security rests on the key's entropy.
pub const MIN_KEY_LEN: usize = 16;

/// Where the shared key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Written in the file.
    Inline(String),
    /// A file holding it (trailing whitespace ignored), read when the agent starts.
    File(PathBuf),
}

impl std::fmt::Debug for KeySource {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Inline(_) => f.write_str("Inline(..)"),
            KeySource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// `[sync]`: flow-table sync between the balancers of a VRRP pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// The peers' addresses and ports (unicast).
    pub peers: Vec<SocketAddr>,
    /// The address datagrams are sent from and received on (`None`: any of this host's).
    pub source: Option<IpAddr>,
    /// The interface the socket is bound to (`SO_BINDTODEVICE`), if given.
    pub interface: Option<String>,
    pub port: u16,
    pub key: KeySource,
    /// The VRRP instance or sync group whose Master sends (`None`: any instance's).
    pub instance: Option<String>,
    pub interval: Duration,
    pub full_resync: Duration,
    /// Datagrams per second, at most.
    pub rate: u32,
}

impl SyncConfig {
    /// The shared key's bytes.
    ///
    /// # Errors
    /// When the key file cannot be read or the key is shorter than [`MIN_KEY_LEN`].
    pub fn key_bytes(&self) -> Result<Vec<u8>, String> {
        let key = match &self.key {
            KeySource::Inline(key) => key.clone().into_bytes(),
            KeySource::File(path) => {
                let mut bytes = std::fs::read(path)
                    .map_err(|e| format!("sync.key_file {}: {e}", path.display()))?;
                while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                    bytes.pop();
                }
                bytes
            }
        };
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "the sync key is {} bytes: at least {MIN_KEY_LEN} are needed",
                key.len()
            ));
        }
        Ok(key)
    }
}
