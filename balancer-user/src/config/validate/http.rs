//! `[http]`: the proxy's timeouts and limits, for every HTTP-mode VIP (HAProxy's `timeout
//! connect`, `timeout server`, `timeout http-request`, `timeout queue`, `maxconn`,
//! `retries`, `option forwardfor`, and the request head limits).

use std::time::Duration;

use super::{Checked, Validator};
use crate::config::raw::RawHttp;
use crate::config::{ForwardedStyle, ProxySettings};

impl Validator<'_> {
    pub(super) fn http(&self, raw: RawHttp) -> Checked<ProxySettings> {
        let defaults = ProxySettings::default();
        let timeout = |raw: Option<toml::Spanned<String>>, key: &str, default: Duration| {
            raw.map_or(Ok(default), |raw| {
                self.duration(
                    &raw,
                    format_args!("http.{key}"),
                    Duration::from_millis(1)..=Duration::from_hours(24),
                    "1ms and 24h",
                )
            })
        };
        let count = |raw: Option<toml::Spanned<super::Int>>, key: &str, range, default: usize| {
            raw.map_or(Ok(default), |raw| {
                self.bounded(&raw, format_args!("http.{key}"), key, range, "")
                    .map(|v| usize::try_from(v).expect("a bounded, positive count"))
            })
        };
        let forwarded = match &raw.forwarded {
            Some(word) => self.word::<ForwardedStyle>(word, "http.forwarded")?,
            None => defaults.forwarded,
        };
        Ok(ProxySettings {
            connect_timeout: timeout(
                raw.timeout_connect,
                "timeout_connect",
                defaults.connect_timeout,
            )?,
            server_timeout: timeout(
                raw.timeout_server,
                "timeout_server",
                defaults.server_timeout,
            )?,
            http_request_timeout: timeout(
                raw.timeout_http_request,
                "timeout_http_request",
                defaults.http_request_timeout,
            )?,
            queue_timeout: timeout(raw.timeout_queue, "timeout_queue", defaults.queue_timeout)?,
            drain_timeout: timeout(raw.timeout_drain, "timeout_drain", defaults.drain_timeout)?,
            maxconn: count(raw.maxconn, "maxconn", 1..=1_000_000, defaults.maxconn)?,
            retries: u32::try_from(count(
                raw.retries,
                "retries",
                0..=10,
                defaults.retries as usize,
            )?)
            .expect("at most 10"),
            forwarded,
            request_id: raw.request_id.unwrap_or(defaults.request_id),
            access_log: raw.access_log.unwrap_or(defaults.access_log),
            max_headers: count(
                raw.max_headers,
                "max_headers",
                8..=1000,
                defaults.max_headers,
            )?,
            max_header_bytes: count(
                raw.max_header_bytes,
                "max_header_bytes",
                8192..=1_048_576,
                defaults.max_header_bytes,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{error_of, with, ONE_VIP, ORIGIN};
    use crate::config::{parse, ForwardedStyle, ProxySettings};
    use std::time::Duration;

    #[test]
    fn the_http_section_sets_the_proxy_and_defaults_the_rest() {
        let text = format!(
            "{ONE_VIP}\n[http]\ntimeout_connect = \"2s\"\ntimeout_http_request = \"500ms\"\n\
             maxconn = 50\nretries = 0\nforwarded = \"forwarded\"\nrequest_id = true\n\
             access_log = true\n"
        );
        let config = parse(&text, ORIGIN).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.http,
            ProxySettings {
                connect_timeout: Duration::from_secs(2),
                http_request_timeout: Duration::from_millis(500),
                maxconn: 50,
                retries: 0,
                forwarded: ForwardedStyle::Forwarded,
                request_id: true,
                access_log: true,
                ..ProxySettings::default()
            }
        );
        assert_eq!(
            parse(ONE_VIP, ORIGIN).unwrap().http,
            ProxySettings::default()
        );
    }

    #[test]
    fn bad_http_settings_name_their_key() {
        let base = format!("{ONE_VIP}\n[http]\nmaxconn = 50\n");
        for (bad, field, message) in [
            ("maxconn = 0", "http.maxconn", "maxconn 0 is out of range"),
            (
                "retries = 11\nmaxconn = 5",
                "http.retries",
                "retries 11 is out of range",
            ),
            ("forwarded = \"x\"\nmaxconn = 5", "http.forwarded", "\"x\""),
            (
                "timeout_server = \"soon\"\nmaxconn = 5",
                "http.timeout_server",
                "invalid duration",
            ),
        ] {
            let error = error_of(&with(&base, "maxconn = 50", bad));
            assert!(
                error.starts_with("balancer.toml:") && error.contains(&format!(": {field}: ")),
                "{error}"
            );
            assert!(error.contains(message), "{error}");
        }
    }
}
