//! What the tests of several config modules share: small configurations and assertions
//! on error messages.

use std::net::Ipv4Addr;

use super::parse;

pub(super) const ORIGIN: &str = "balancer.toml";

/// One pool and one VIP; tests swap single lines, keeping line numbers.
pub(super) const ONE_VIP: &str = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
ring_size = 65537
pool = "web"
"#;

pub(super) const TIMEOUTS: &str = r#"[agent]
interfaces = ["lbc0"]

[timeouts]
tcp = "5m"
udp = "30s"
tcp_closing = "10s"
snat_time_wait = "60s"
tcp_unreplied = "60s"
"#;

pub(super) const NAT: &str = r#"[agent]
interfaces = ["lbc0"]
[nat]
source_address = "10.0.2.1"
port_range = "20000-32767"
"#;

/// `base` with the first `from` replaced by `to` (which must be present).
pub(super) fn with(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} not in test input");
    base.replacen(from, to, 1)
}

/// The error message for `text`, which must fail to parse.
pub(super) fn error_of(text: &str) -> String {
    match parse(text, ORIGIN) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts `text` fails with a message that starts with `prefix`
/// (`FILE:LINE:COL: FIELD: `) and contains `fragment`.
pub(super) fn assert_error(text: &str, prefix: &str, fragment: &str) {
    let message = error_of(text);
    assert!(
        message.starts_with(prefix),
        "message {message:?} does not start with {prefix:?}"
    );
    assert!(
        message.contains(fragment),
        "message {message:?} does not contain {fragment:?}"
    );
}

pub(super) fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
