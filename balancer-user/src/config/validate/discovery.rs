//! A pool's `discovery = { etcd = { ... } }`: the endpoints (URLs), the key prefix, TLS
//! files and credentials, each checked where it is written.

use std::path::PathBuf;

use toml::Spanned;

use super::{Checked, Validator};
use crate::config::raw::{RawBackend, RawDiscovery};
use crate::discovery::{EtcdConfig, TlsFiles};

impl Validator<'_> {
    /// `discovery` of the pool at key path `field`, whose file `backends` must be empty
    /// (its backends are the prefix's keys).
    pub(super) fn discovery(
        &self,
        raw: &Spanned<RawDiscovery>,
        backends: &[Spanned<RawBackend>],
        field: &str,
    ) -> Checked<EtcdConfig> {
        let field = format!("{field}.discovery.etcd");
        if let Some(first) = backends.first() {
            return Err(self.error(
                first.span(),
                format_args!("{field}"),
                "a pool with discovery takes its backends from etcd: remove its `backends` \
                 (or its `discovery`)",
            ));
        }
        let etcd = raw.get_ref().etcd.get_ref();
        if etcd.endpoints.get_ref().is_empty() {
            return Err(self.error(
                etcd.endpoints.span(),
                format_args!("{field}.endpoints"),
                "at least one endpoint is required, e.g. \"http://127.0.0.1:2379\"",
            ));
        }
        let mut endpoints = Vec::new();
        for (i, e) in etcd.endpoints.get_ref().iter().enumerate() {
            endpoints.push(self.text_field(
                e,
                format_args!("{field}.endpoints[{i}]"),
                "etcd endpoint",
                endpoint_problem,
            )?);
        }
        let prefix = self.text_field(
            &etcd.prefix,
            format_args!("{field}.prefix"),
            "key prefix",
            |p| p.is_empty().then(|| "must not be empty".to_owned()),
        )?;
        let path = |raw: &Option<Spanned<String>>, name: &str| -> Checked<Option<PathBuf>> {
            raw.as_ref()
                .map(|p| {
                    self.text_field(p, format_args!("{field}.{name}"), "file path", |p| {
                        p.is_empty().then(|| "must not be empty".to_owned())
                    })
                    .map(PathBuf::from)
                })
                .transpose()
        };
        let tls = TlsFiles {
            ca: path(&etcd.ca, "ca")?,
            cert: path(&etcd.cert, "cert")?,
            key: path(&etcd.key, "key")?,
        };
        for (given, missing, absent) in [
            (&etcd.cert, "key", tls.key.is_none()),
            (&etcd.key, "cert", tls.cert.is_none()),
        ] {
            if let (Some(given), true) = (given, absent) {
                return Err(self.error(
                    given.span(),
                    format_args!("{field}"),
                    format!(
                        "a client certificate needs both `cert` and `key`: `{missing}` is missing"
                    ),
                ));
            }
        }
        let credentials = match (&etcd.user, &etcd.password) {
            (None, None) => None,
            (Some(user), Some(password)) => {
                Some((user.get_ref().clone(), password.get_ref().clone()))
            }
            (Some(one), None) | (None, Some(one)) => {
                return Err(self.error(
                    one.span(),
                    format_args!("{field}"),
                    "`user` and `password` go together",
                ));
            }
        };
        if !tls.is_empty() && endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(self.error(
                etcd.endpoints.span(),
                format_args!("{field}.endpoints"),
                "TLS files are given: the endpoints must be https:// URLs",
            ));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix,
            tls,
            credentials,
        })
    }
}

/// Why `endpoint` is not an etcd endpoint URL (`http://HOST:PORT` or `https://...`).
fn endpoint_problem(endpoint: &str) -> Option<String> {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return Some("not a URL; expected e.g. \"http://127.0.0.1:2379\"".to_owned());
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Some("the scheme must be http:// or https://".to_owned());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Some("the URL has no host".to_owned());
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Some("an endpoint has no path".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, testing::ORIGIN};

    const POOL: &str = "[agent]\ninterfaces = [\"eth0\"]\n[[pool]]\nname = \"web\"\n";

    #[test]
    fn a_pool_takes_its_backends_from_an_etcd_prefix() {
        let text = format!(
            "{POOL}discovery = {{ etcd = {{ endpoints = [\"https://10.0.0.5:2379\"], \
             prefix = \"/services/web/\", ca = \"/etc/ca.pem\", cert = \"/etc/c.pem\", \
             key = \"/etc/k.pem\", user = \"lb\", password = \"s\" }} }}\n"
        );
        let config = parse(&text, ORIGIN).unwrap();
        let etcd = config.pools[0].discovery.clone().unwrap();
        assert_eq!(etcd.endpoints, ["https://10.0.0.5:2379"]);
        assert_eq!(etcd.prefix, "/services/web/");
        assert_eq!(
            etcd.tls.ca.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(etcd.credentials, Some(("lb".into(), "s".into())));
    }

    #[test]
    fn bad_discovery_settings_are_refused_where_they_are_written() {
        let cases = [
            (
                "discovery = { etcd = { endpoints = [], prefix = \"/s/\" } }",
                "5:36: pool[0] (\"web\").discovery.etcd.endpoints: at least one endpoint",
            ),
            (
                "discovery = { etcd = { endpoints = [\"127.0.0.1:2379\"], prefix = \"/s/\" } }",
                "5:37: pool[0] (\"web\").discovery.etcd.endpoints[0]:",
            ),
            (
                "discovery = { etcd = { endpoints = [\"http://a:2379\"], prefix = \"\" } }",
                "5:64: pool[0] (\"web\").discovery.etcd.prefix:",
            ),
            (
                "discovery = { etcd = { endpoints = [\"https://a:2379\"], prefix = \"/s/\", cert = \"/c\" } }",
                "5:79: pool[0] (\"web\").discovery.etcd: a client certificate needs both",
            ),
            (
                "discovery = { etcd = { endpoints = [\"https://a:2379\"], prefix = \"/s/\", user = \"u\" } }",
                "5:79: pool[0] (\"web\").discovery.etcd: `user` and `password` go together",
            ),
            (
                "discovery = { etcd = { endpoints = [\"http://a:2379\"], prefix = \"/s/\", ca = \"/c\" } }",
                "5:36: pool[0] (\"web\").discovery.etcd.endpoints: TLS files are given",
            ),
            (
                "discovery = { etcd = { endpoint = [\"http://a:2379\"], prefix = \"/s/\" } }",
                "5:",
            ),
            (
                "discovery = { etcd = { endpoints = [\"http://a:2379\"], prefix = \"/s/\" } }\n\
                 backends = [{ address = \"10.0.2.11\", port = 80 }]",
                "6:13: pool[0] (\"web\").discovery.etcd: a pool with discovery takes its backends",
            ),
        ];
        for (pool, expected) in cases {
            let text = format!("{POOL}{pool}\n");
            let error = parse(&text, ORIGIN).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{ORIGIN}:{expected}")),
                "{pool}\n{error}"
            );
        }
    }
}
