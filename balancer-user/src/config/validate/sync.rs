//! `[sync]`: flow-table sync between VRRP peers: the peers, where the socket listens, the
//! shared key, which VRRP instance's Master sends, and the pace.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::{Checked, Validator};
use crate::config::raw::RawSync;
use crate::config::{KeySource, SyncConfig, MAX_IFNAME_LEN};
use crate::sync::config::{
    DEFAULT_FULL_RESYNC, DEFAULT_INTERVAL, DEFAULT_PORT, DEFAULT_RATE, MIN_KEY_LEN,
};
use crate::vrrp::{InstanceConfig, SyncGroupConfig};

impl Validator<'_> {
    pub(super) fn sync(
        &self,
        raw: &Spanned<RawSync>,
        vrrp: &[InstanceConfig],
        groups: &[SyncGroupConfig],
    ) -> Checked<SyncConfig> {
        let span = raw.span();
        let raw = raw.get_ref();
        if vrrp.is_empty() {
            return Err(self.error(
                span,
                "sync",
                "flow sync follows VRRP (the Master sends): it needs a [[vrrp]] instance",
            ));
        }
        let port = match &raw.port {
            Some(p) => self.port(p, "sync.port")?,
            None => DEFAULT_PORT,
        };
        if raw.peers.get_ref().is_empty() {
            return Err(self.error(raw.peers.span(), "sync.peers", "no peer"));
        }
        let peers = raw
            .peers
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, p)| self.sync_peer(p, i, port))
            .collect::<Checked<Vec<_>>>()?;
        let source = raw
            .source
            .as_ref()
            .map(|s| {
                s.get_ref().parse::<IpAddr>().map_err(|_| {
                    self.error(
                        s.span(),
                        "sync.source",
                        format!("{:?} is not an IP address", s.get_ref()),
                    )
                })
            })
            .transpose()?;
        let interface = raw
            .interface
            .as_ref()
            .map(|i| {
                let name = i.get_ref();
                if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains('/') {
                    Err(self.error(
                        i.span(),
                        "sync.interface",
                        format!("{name:?} is not an interface name"),
                    ))
                } else {
                    Ok(name.clone())
                }
            })
            .transpose()?;
        let key = match (&raw.key, &raw.key_file) {
            (Some(key), None) if key.get_ref().len() < MIN_KEY_LEN => {
                return Err(self.error(
                    key.span(),
                    "sync.key",
                    format!("the key must be at least {MIN_KEY_LEN} bytes long"),
                ))
            }
            (Some(key), None) => KeySource::Inline(key.get_ref().clone()),
            (None, Some(file)) if !file.get_ref().is_empty() => {
                KeySource::File(PathBuf::from(file.get_ref()))
            }
            (Some(_), Some(file)) => {
                return Err(self.error(
                    file.span(),
                    "sync.key_file",
                    "give sync.key or sync.key_file, not both",
                ))
            }
            _ => {
                return Err(self.error(
                    span,
                    "sync",
                    "needs a shared key: sync.key or sync.key_file (every datagram is \
                     authenticated with it)",
                ))
            }
        };
        let instance = raw
            .instance
            .as_ref()
            .map(|i| {
                let name = i.get_ref();
                let known =
                    vrrp.iter().any(|v| v.name() == name) || groups.iter().any(|g| &g.name == name);
                if known {
                    Ok(name.clone())
                } else {
                    Err(self.error(
                        i.span(),
                        "sync.instance",
                        format!("no VRRP instance or sync group is called {name:?}"),
                    ))
                }
            })
            .transpose()?;
        let interval = match &raw.interval {
            Some(d) => self.duration(
                d,
                "sync.interval",
                Duration::from_millis(100)..=Duration::from_mins(1),
                "100ms and 1m",
            )?,
            None => DEFAULT_INTERVAL,
        };
        let full_resync = match &raw.full_resync {
            Some(d) => self.duration(
                d,
                "sync.full_resync",
                Duration::from_secs(1)..=Duration::from_hours(24),
                "1s and 24h",
            )?,
            None => DEFAULT_FULL_RESYNC,
        };
        let rate = match &raw.rate {
            Some(r) => {
                let v = r.get_ref().0;
                u32::try_from(v)
                    .ok()
                    .filter(|r| (10..=1_000_000).contains(r))
                    .ok_or_else(|| {
                        self.error(
                            r.span(),
                            "sync.rate",
                            format!("{v} datagrams per second is out of range 10..=1000000"),
                        )
                    })?
            }
            None => DEFAULT_RATE,
        };
        Ok(SyncConfig {
            peers,
            source,
            interface,
            port,
            key,
            instance,
            interval,
            full_resync,
            rate,
        })
    }

    /// `sync.peers[i]`: `ADDRESS` (on `port`) or `ADDRESS:PORT` (`[V6]:PORT`).
    fn sync_peer(&self, raw: &Spanned<String>, i: usize, port: u16) -> Checked<SocketAddr> {
        let text = raw.get_ref();
        let addr = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port))
        });
        match addr {
            Some(a) if !a.ip().is_unspecified() && !a.ip().is_multicast() && a.port() != 0 => Ok(a),
            _ => Err(self.error(
                raw.span(),
                format_args!("sync.peers[{i}]"),
                format!("{text:?} is not a peer's address (write e.g. \"10.0.2.12\")"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::{error_of, ORIGIN};
    use crate::config::{parse, KeySource, SyncConfig};

    const PAIR: &str = r#"[agent]
interfaces = ["lbc0"]
[[vrrp]]
name = "vi_1"
interface = "lbc0"
vrid = 51
addresses = ["10.0.1.100/24"]
[sync]
"#;

    fn sync_of(section: &str) -> SyncConfig {
        parse(&format!("{PAIR}{section}"), ORIGIN)
            .unwrap()
            .sync
            .expect("a [sync] section")
    }

    #[test]
    fn defaults_and_values() {
        let s = sync_of("peers = [\"10.0.2.12\"]\nkey = \"0123456789abcdef\"\n");
        assert_eq!(s.peers, ["10.0.2.12:7471".parse().unwrap()]);
        assert_eq!(
            (s.port, s.rate, s.instance, s.source),
            (7471, 5000, None, None)
        );
        assert_eq!(s.key, KeySource::Inline("0123456789abcdef".into()));
        assert_eq!(
            format!("{:?}", s.key),
            "Inline(..)",
            "the key is never shown"
        );
        assert_eq!(
            (s.interval, s.full_resync),
            (Duration::from_secs(1), Duration::from_mins(1))
        );
        let s = sync_of(
            "peers = [\"10.0.2.12\", \"10.0.2.13:9000\"]\nport = 8000\nsource = \"10.0.2.11\"\n\
             interface = \"lbs0\"\nkey_file = \"/etc/balancer/sync.key\"\ninstance = \"vi_1\"\n\
             interval = \"500ms\"\nfull_resync = \"30s\"\nrate = 200\n",
        );
        assert_eq!(
            s.peers,
            [
                "10.0.2.12:8000".parse().unwrap(),
                "10.0.2.13:9000".parse().unwrap()
            ]
        );
        assert_eq!(s.key, KeySource::File("/etc/balancer/sync.key".into()));
        assert_eq!(s.source, Some("10.0.2.11".parse().unwrap()));
        assert_eq!(s.interface.as_deref(), Some("lbs0"));
        assert_eq!(s.instance.as_deref(), Some("vi_1"));
        assert_eq!((s.interval, s.rate), (Duration::from_millis(500), 200));
        assert!(parse(PAIR.trim_end_matches("[sync]\n"), ORIGIN)
            .unwrap()
            .sync
            .is_none());
    }

    #[test]
    fn bad_values_are_named() {
        let key = "key = \"0123456789abcdef\"\n";
        for (section, field, problem) in [
            ("peers = []\n", "sync.peers", "no peer"),
            (
                "peers = [\"ten\"]\n",
                "sync.peers[0]",
                "not a peer's address",
            ),
            (
                "peers = [\"0.0.0.0\"]\n",
                "sync.peers[0]",
                "not a peer's address",
            ),
            (
                "peers = [\"10.0.2.12\"]\nkey = \"short\"\n",
                "sync.key",
                "at least 16 bytes",
            ),
            ("peers = [\"10.0.2.12\"]\n", "sync", "needs a shared key"),
            (
                "peers = [\"10.0.2.12\"]\nkey = \"0123456789abcdef\"\nkey_file = \"/k\"\n",
                "sync.key_file",
                "not both",
            ),
            (
                "peers = [\"10.0.2.12\"]\ninstance = \"vi_9\"\n",
                "sync.instance",
                "\"vi_9\"",
            ),
            (
                "peers = [\"10.0.2.12\"]\nrate = 1\n",
                "sync.rate",
                "out of range",
            ),
            (
                "peers = [\"10.0.2.12\"]\ninterval = \"1h\"\n",
                "sync.interval",
                "out of range",
            ),
            (
                "peers = [\"10.0.2.12\"]\nsource = \"x\"\n",
                "sync.source",
                "not an IP address",
            ),
            (
                "peers = [\"10.0.2.12\"]\nport = 0\n",
                "sync.port",
                "out of range",
            ),
        ] {
            let section = if field == "sync.key" || field == "sync" || section.contains("key") {
                section.to_owned()
            } else {
                format!("{section}{key}")
            };
            let message = error_of(&format!("{PAIR}{section}"));
            assert!(
                message.contains(&format!(": {field}: ")) && message.contains(problem),
                "{section:?}: {message:?}"
            );
        }
        let lone = "[agent]\ninterfaces = [\"lbc0\"]\n[sync]\npeers = [\"10.0.2.12\"]\n";
        let message = error_of(&format!("{lone}{key}"));
        assert!(message.contains("needs a [[vrrp]] instance"), "{message}");
    }
}
