//! What the tests of several config modules share: small configurations and assertions
//! on error messages.

use std::net::IpAddr;

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

/// An HTTP-mode VIP with two rules (the second unnamed); tests swap single lines, keeping
/// line numbers.
pub(super) const HTTP_VIP: &str = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "app"
[[pool]]
name = "static"
[[vip]]
name = "www"
address = "10.0.100.1"
port = 80
protocol = "tcp"
mode = "http"
pool = "app"
[[vip.rule]]
name = "static"
pool = "static"
path_prefix = ["/static", "/images"]
path_suffix = [".css"]
[[vip.rule]]
pool = "static"
not_path_regex = ["^/api(/|$)"]
header_equals = { "X-Env" = ["beta", "staging"] }
source = ["10.0.0.0/8"]
"#;

pub(super) const TIMEOUTS: &str = r#"[agent]
interfaces = ["lbc0"]

[timeouts]
tcp = "5m"
udp = "30s"
tcp_closing = "10s"
snat_time_wait = "60s"
tcp_handshake = "60s"
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

/// Asserts that replacing `from` by `to` in `base` fails at the first `at` on `line` (which
/// `to` puts there), naming `field` and saying `fragment`.
pub(super) fn assert_error_at(
    base: &str,
    (from, to): (&str, &str),
    (line, at): (usize, &str),
    field: &str,
    fragment: &str,
) {
    let text = with(base, from, to);
    let line_text = text.lines().nth(line - 1).unwrap_or_default();
    let column = line_text
        .find(at)
        .unwrap_or_else(|| panic!("{at:?} not on line {line}: {line_text:?}"))
        + 1;
    assert_error(
        &text,
        &format!("{ORIGIN}:{line}:{column}: {field}: "),
        fragment,
    );
}

/// Every truncation of `base`, and `base` with each of `substitutes` in place of each of
/// its bytes, gives a configuration or an error that names its line, never a panic.
pub(super) fn assert_mangling_never_panics(base: &str, substitutes: &[&str]) {
    for end in (0..=base.len()).filter(|i| base.is_char_boundary(*i)) {
        if let Err(e) = parse(&base[..end], ORIGIN) {
            assert!(e.line().is_some());
        }
    }
    for i in 0..base.len() {
        for c in substitutes {
            let mut text = base.to_owned();
            text.replace_range(i..=i, c);
            if let Err(e) = parse(&text, ORIGIN) {
                assert!(e.to_string().starts_with(&format!("{ORIGIN}:")));
            }
        }
    }
}

/// The README's TOML example whose block starts with `first_line`.
pub(super) fn readme_toml(first_line: &str) -> &'static str {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find(&format!("```toml\n{first_line}"))
        .unwrap_or_else(|| panic!("the README has a TOML example starting with {first_line:?}"));
    let body = &readme[start + "```toml\n".len()..];
    &body[..body.find("```").expect("the example block ends")]
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
