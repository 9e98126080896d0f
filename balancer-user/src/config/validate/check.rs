//! The `check` tables of pools and backends: a backend's table is merged over its pool's,
//! field by field, then checked and completed with defaults into a [`CheckConfig`].

use toml::Spanned;

use super::{Checked, Validator};
use crate::config::raw::{Int, RawCheck};
use crate::health::config::{
    CheckConfig, CheckKind, CheckType, HttpCheck, StatusRangesError, UdpCheck,
    DEFAULT_CHECK_INTERVAL, DEFAULT_FALL, DEFAULT_RISE, MAX_CHECK_DURATION, MAX_EXPECT_LEN,
    MAX_HTTP_FIELD_LEN, MAX_HTTP_METHOD_LEN, MAX_RISE_FALL, MAX_UDP_PAYLOAD, MIN_CHECK_DURATION,
};
use crate::health::Health;

/// One table of a merged check and the key path it was written at
/// (`pool[0] ("web").check`, `pool[0] ("web").backends[1].check`).
pub(super) struct CheckLayer<'r> {
    pub(super) raw: &'r RawCheck,
    pub(super) field: String,
}

/// The layers of one check, the pool's table first and a backend's over it, with the
/// check type as merged after each layer.
struct Layers<'l, 'r> {
    layers: &'l [CheckLayer<'r>],
    types: Vec<CheckType>,
}

/// A field's value and its key path.
type Picked<'r, T> = Option<(&'r T, String)>;

impl<'r> Layers<'_, 'r> {
    /// The merged type.
    fn ty(&self) -> CheckType {
        self.types.last().copied().unwrap_or_default()
    }

    /// The last layer that sets a field, with the field's key path.
    fn pick<T>(&self, name: &str, get: impl Fn(&'r RawCheck) -> Option<&'r T>) -> Picked<'r, T> {
        self.layers
            .iter()
            .rev()
            .find_map(|l| get(l.raw).map(|v| (v, format!("{}.{name}", l.field))))
    }
}

/// The fields that only HTTP checks have, as picked from the layers.
struct HttpFields<'r> {
    method: Picked<'r, Spanned<String>>,
    path: Picked<'r, Spanned<String>>,
    host: Picked<'r, Spanned<String>>,
    expect_status: Picked<'r, Spanned<String>>,
    expect_body: Picked<'r, Spanned<String>>,
}

/// The fields that only UDP checks have, as picked from the layers.
struct UdpFields<'r> {
    payload: Picked<'r, Spanned<String>>,
    expect: Picked<'r, Spanned<String>>,
}

impl Validator<'_> {
    /// A health check from `layers`, the pool's table first and a backend's
    /// over it: each field comes from the last layer that sets it, and
    /// defaults are applied after merging (so `timeout` follows the merged
    /// `interval`). Fields of one check type (`path`, `payload`, ...) are
    /// inherited only while the type stays the same; set in a layer whose
    /// type (as merged so far) is another one, they are an error.
    pub(super) fn check(&self, layers: &[CheckLayer<'_>]) -> Checked<CheckConfig> {
        let layers = self.merge_types(layers)?;
        let interval = self
            .check_duration(&layers, "interval", |r| r.interval.as_ref())?
            .unwrap_or(DEFAULT_CHECK_INTERVAL);
        let timeout = self
            .check_duration(&layers, "timeout", |r| r.timeout.as_ref())?
            .unwrap_or(interval);
        let fastinter = self
            .check_duration(&layers, "fastinter", |r| r.fastinter.as_ref())?
            .unwrap_or(interval);
        let downinter = self
            .check_duration(&layers, "downinter", |r| r.downinter.as_ref())?
            .unwrap_or(interval);
        let rise = self.check_count(&layers, "rise", |r| r.rise.as_ref(), DEFAULT_RISE)?;
        let fall = self.check_count(&layers, "fall", |r| r.fall.as_ref(), DEFAULT_FALL)?;
        let initial_state = match layers.pick("initial_state", |r| r.initial_state.as_ref()) {
            None => Health::Up,
            Some((raw, field)) => self.word(raw, field)?,
        };
        let port = layers
            .pick("port", |r| r.port.as_ref())
            .map(|(raw, field)| self.port(raw, field))
            .transpose()?;
        let address = layers
            .pick("address", |r| r.address.as_ref())
            .map(|(raw, field)| self.ip(raw, field))
            .transpose()?;
        let kind = self.check_kind(&layers)?;
        Ok(CheckConfig {
            kind,
            interval,
            timeout,
            rise,
            fall,
            fastinter,
            downinter,
            initial_state,
            port,
            address,
        })
    }

    /// `layers` with the check type as merged after each of them.
    fn merge_types<'l, 'r>(&self, layers: &'l [CheckLayer<'r>]) -> Checked<Layers<'l, 'r>> {
        let mut types = Vec::with_capacity(layers.len());
        let mut ty = CheckType::None;
        for layer in layers {
            if let Some(t) = &layer.raw.kind {
                ty = self.word(t, format_args!("{}.type", layer.field))?;
            }
            types.push(ty);
        }
        Ok(Layers { layers, types })
    }

    /// A timing of the check, if a layer sets it.
    fn check_duration<'r>(
        &self,
        layers: &Layers<'_, 'r>,
        name: &str,
        get: fn(&'r RawCheck) -> Option<&'r Spanned<String>>,
    ) -> Checked<Option<std::time::Duration>> {
        // MIN_CHECK_DURATION and MAX_CHECK_DURATION.
        let spelled = "10ms and 1h";
        layers
            .pick(name, get)
            .map(|(raw, field)| {
                self.duration(raw, field, MIN_CHECK_DURATION..=MAX_CHECK_DURATION, spelled)
            })
            .transpose()
    }

    /// `rise` or `fall`.
    fn check_count<'r>(
        &self,
        layers: &Layers<'_, 'r>,
        name: &str,
        get: fn(&'r RawCheck) -> Option<&'r Spanned<Int>>,
        default: u32,
    ) -> Checked<u32> {
        let Some((raw, field)) = layers.pick(name, get) else {
            return Ok(default);
        };
        let v = raw.get_ref().0;
        u32::try_from(v)
            .ok()
            .filter(|n| (1..=MAX_RISE_FALL).contains(n))
            .ok_or_else(|| {
                self.error(
                    raw.span(),
                    field,
                    format!("{name} {v} is out of range 1..={MAX_RISE_FALL}"),
                )
            })
    }

    /// The merged type with its own fields. Fields of another type are refused first,
    /// whatever the values of the type's own fields.
    fn check_kind(&self, layers: &Layers<'_, '_>) -> Checked<CheckKind> {
        let http = HttpFields {
            method: self.typed_field(layers, "method", CheckType::Http, |r| r.method.as_ref())?,
            path: self.typed_field(layers, "path", CheckType::Http, |r| r.path.as_ref())?,
            host: self.typed_field(layers, "host", CheckType::Http, |r| r.host.as_ref())?,
            expect_status: self.typed_field(layers, "expect_status", CheckType::Http, |r| {
                r.expect_status.as_ref()
            })?,
            expect_body: self.typed_field(layers, "expect_body", CheckType::Http, |r| {
                r.expect_body.as_ref()
            })?,
        };
        let udp = UdpFields {
            payload: self.typed_field(layers, "payload", CheckType::Udp, |r| r.payload.as_ref())?,
            expect: self.typed_field(layers, "expect", CheckType::Udp, |r| r.expect.as_ref())?,
        };
        Ok(match layers.ty() {
            CheckType::None => CheckKind::None,
            CheckType::Tcp => CheckKind::Tcp,
            CheckType::Http => CheckKind::Http(self.http_check(http)?),
            CheckType::Udp => CheckKind::Udp(self.udp_check(udp, layers)?),
        })
    }

    /// Like [`Layers::pick`] for a field of check type `owner`: an error where a layer
    /// whose type is another one sets it; inherited only from layers of the merged type.
    fn typed_field<'r>(
        &self,
        layers: &Layers<'_, 'r>,
        name: &str,
        owner: CheckType,
        get: fn(&'r RawCheck) -> Option<&'r Spanned<String>>,
    ) -> Checked<Picked<'r, Spanned<String>>> {
        let mut found = None;
        for (layer, &layer_ty) in layers.layers.iter().zip(&layers.types).rev() {
            let Some(value) = get(layer.raw) else {
                continue;
            };
            let field = format!("{}.{name}", layer.field);
            if layer_ty != owner {
                return Err(self.error(
                    value.span(),
                    field,
                    format!("only allowed with type = \"{owner}\" (this check's type is \"{layer_ty}\")"),
                ));
            }
            if layer_ty == layers.ty() && found.is_none() {
                found = Some((value, field));
            }
        }
        Ok(found)
    }

    fn http_check(&self, fields: HttpFields<'_>) -> Checked<HttpCheck> {
        let mut http = HttpCheck::default();
        if let Some((raw, field)) = fields.method {
            http.method = self.text_field(raw, field, "method", method_problem)?;
        }
        if let Some((raw, field)) = fields.path {
            http.path = self.text_field(raw, field, "path", path_problem)?;
        }
        if let Some((raw, field)) = fields.host {
            http.host = Some(self.text_field(raw, field, "host", host_problem)?);
        }
        if let Some((raw, field)) = fields.expect_status {
            let text = raw.get_ref();
            http.expect_status = text.parse().map_err(|e: StatusRangesError| {
                self.error(
                    raw.span(),
                    field,
                    format!("invalid status list {text:?}: {e} (write e.g. \"200\", \"200-299\" or \"200,204,301-302\")"),
                )
            })?;
        }
        if let Some((raw, field)) = fields.expect_body {
            http.expect_body = Some(self.text_field(raw, field, "expect_body", expect_problem)?);
        }
        Ok(http)
    }

    /// A UDP check's fields. A `payload` is required: without one the check would send an
    /// empty datagram, which most UDP services (DNS, syslog, RADIUS, ...) ignore without a
    /// word, so the backend would never come up. Only `payload = ""`, written out, sends
    /// one, for the services that answer it (echo, some game and voice servers).
    fn udp_check(&self, fields: UdpFields<'_>, layers: &Layers<'_, '_>) -> Checked<UdpCheck> {
        let mut udp = UdpCheck::default();
        let Some((raw, field)) = fields.payload else {
            let typed = layers
                .layers
                .iter()
                .rev()
                .find_map(|l| l.raw.kind.as_ref().map(|t| (t.span(), &l.field)));
            let (span, field) = typed.expect("the type is udp: some layer set it");
            return Err(self.error(
                span,
                format_args!("{field}.type"),
                "a UDP check needs a `payload` the service answers (e.g. a DNS query): \
                 without one it sends an empty datagram, which most services ignore; write \
                 payload = \"\" if this one answers it",
            ));
        };
        udp.payload = self.text_field(raw, field, "payload", payload_problem)?;
        if let Some((raw, field)) = fields.expect {
            udp.expect = Some(self.text_field(raw, field, "expect", expect_problem)?);
        }
        Ok(udp)
    }
}

fn method_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if s.len() > MAX_HTTP_METHOD_LEN {
        return Some(format!("is longer than {MAX_HTTP_METHOD_LEN} bytes"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Some("must be an uppercase token such as \"GET\" or \"HEAD\"".to_owned());
    }
    None
}

/// Bytes allowed in a request target or a `Host` value: visible ASCII.
fn visible_ascii_problem(s: &str) -> Option<String> {
    if s.len() > MAX_HTTP_FIELD_LEN {
        return Some(format!("is longer than {MAX_HTTP_FIELD_LEN} bytes"));
    }
    s.bytes()
        .any(|b| !b.is_ascii_graphic())
        .then(|| "must be visible ASCII without spaces (percent-encode other bytes)".to_owned())
}

fn path_problem(s: &str) -> Option<String> {
    if !s.starts_with('/') {
        return Some("must start with '/'".to_owned());
    }
    visible_ascii_problem(s)
}

fn host_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    visible_ascii_problem(s)
}

fn expect_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty (leave the field out to accept anything)".to_owned());
    }
    (s.len() > MAX_EXPECT_LEN).then(|| format!("is longer than {MAX_EXPECT_LEN} bytes"))
}

fn payload_problem(s: &str) -> Option<String> {
    (s.len() > MAX_UDP_PAYLOAD)
        .then(|| format!("is longer than {MAX_UDP_PAYLOAD} bytes (the largest UDP payload)"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::testing::{
        assert_error, assert_error_at, assert_mangling_never_panics, ONE_VIP, ORIGIN,
    };
    use super::super::super::{parse, AllDownPolicy, DownPolicy};
    use super::*;

    /// Health checks: a pool check, per-backend overrides and both policies; line
    /// numbers are used by the tests below.
    const CHECKS: &str = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
on_backend_down = "keep"
backends = [
  { address = "10.0.2.11", port = 80, check = { port = 8081 } },
  { address = "10.0.2.12", port = 80 },
  { address = "10.0.2.13", port = 80, check = { type = "tcp", interval = "10s" } },
]
[pool.check]
type = "http"
interval = "2s"
timeout = "1s"
rise = 4
fall = 5
fastinter = "500ms"
downinter = "5s"
initial_state = "down"
path = "/health"
host = "example.org"
expect_status = "200,204,301-302"
expect_body = "ok"
method = "HEAD"
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"
on_all_down = "pass"
"#;

    /// Asserts that replacing `from` by `to` in [`CHECKS`] fails at the first `at` on
    /// `line` (which `to` puts there), naming `field` and saying `fragment`.
    fn assert_check_error(
        from: &str,
        to: &str,
        line: usize,
        at: &str,
        field: &str,
        fragment: &str,
    ) {
        assert_error_at(CHECKS, (from, to), (line, at), field, fragment);
    }

    #[test]
    fn checks_parse() {
        let config = parse(CHECKS, ORIGIN).unwrap();
        let pool = &config.pools[0];
        assert_eq!(pool.on_backend_down, DownPolicy::Keep);
        assert_eq!(config.vips[0].on_all_down, AllDownPolicy::Pass);
        let http = HttpCheck {
            method: "HEAD".into(),
            path: "/health".into(),
            host: Some("example.org".into()),
            expect_status: "200,204,301-302".parse().unwrap(),
            expect_body: Some("ok".into()),
        };
        let expected = CheckConfig {
            kind: CheckKind::Http(http),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 4,
            fall: 5,
            fastinter: Duration::from_millis(500),
            downinter: Duration::from_secs(5),
            initial_state: Health::Down,
            port: None,
            address: None,
        };
        assert_eq!(pool.check, expected);
        // The override of backends[0] changes the port only.
        assert_eq!(
            pool.backends[0].check,
            CheckConfig {
                port: Some(8081),
                ..expected.clone()
            }
        );
        assert_eq!(
            pool.backends[0]
                .check
                .target(pool.backends[0].socket_addr()),
            "10.0.2.11:8081".parse().unwrap()
        );
        // backends[1] has no override.
        assert_eq!(pool.backends[1].check, expected);
        // backends[2] changes the type: the HTTP fields are not inherited, the rest is.
        assert_eq!(
            pool.backends[2].check,
            CheckConfig {
                kind: CheckKind::Tcp,
                interval: Duration::from_secs(10),
                ..expected.clone()
            }
        );
        assert!(pool.check.is_enabled());
        assert_eq!(pool.check.check_type(), CheckType::Http);
    }

    #[test]
    fn udp_check_without_payload() {
        let hint = "a UDP check needs a `payload` the service answers (e.g. a DNS query): \
                    without one it sends an empty datagram, which most services ignore; \
                    write payload = \"\" if this one answers it";
        // On the pool's type ...
        let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"dns\"\n\
                    [pool.check]\ntype = \"udp\"\nexpect = \"pong\"\n";
        assert_error(
            text,
            "balancer.toml:6:8: pool[0] (\"dns\").check.type: ",
            hint,
        );
        // ... and on a backend's that changes the pool's type, without inheriting the
        // pool's other fields.
        let text = CHECKS.replace(
            "check = { type = \"tcp\", interval = \"10s\" }",
            "check = { type = \"udp\", interval = \"10s\" }",
        );
        assert_error_at(
            &text,
            ("method = \"HEAD\"", "method = \"GET\""),
            (9, "\"udp\""),
            "pool[0] (\"web\").backends[2].check.type",
            hint,
        );
    }

    #[test]
    fn check_defaults() {
        // No [pool.check]: type none, default timings, both policies at their defaults.
        let config = parse(ONE_VIP, ORIGIN).unwrap();
        assert_eq!(config.pools[0].check, CheckConfig::default());
        assert!(!config.pools[0].check.is_enabled());
        assert_eq!(config.pools[0].on_backend_down, DownPolicy::Shutdown);
        assert_eq!(config.vips[0].on_all_down, AllDownPolicy::Drop);

        let pool = |check: &str| {
            let text = format!(
                "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                 backends = [{{ address = \"10.0.2.1\", port = 53, check = {{ interval = \"4s\" }} }}]\n\
                 [pool.check]\n{check}\n"
            );
            parse(&text, ORIGIN).unwrap().pools.remove(0)
        };
        let tcp = pool("type = \"tcp\"");
        assert_eq!(
            tcp.check,
            CheckConfig {
                kind: CheckKind::Tcp,
                ..CheckConfig::default()
            }
        );
        assert_eq!(tcp.check.interval, Duration::from_secs(2));
        assert_eq!(tcp.check.timeout, Duration::from_secs(2));
        assert_eq!((tcp.check.rise, tcp.check.fall), (2, 3));
        assert_eq!(tcp.check.initial_state, Health::Up);
        // Timings that default to the interval follow the backend's merged interval.
        let b = &tcp.backends[0].check;
        let four = Duration::from_secs(4);
        assert_eq!(
            (b.interval, b.timeout, b.fastinter, b.downinter),
            (four, four, four, four)
        );

        let http = pool("type = \"HTTP\"\ninterval = \"300ms\"");
        assert_eq!(http.check.kind, CheckKind::Http(HttpCheck::default()));
        assert_eq!(http.check.timeout, Duration::from_millis(300));
        let CheckKind::Http(h) = &http.check.kind else {
            unreachable!()
        };
        assert_eq!((h.method.as_str(), h.path.as_str()), ("GET", "/"));
        assert_eq!(h.expect_status.to_string(), "200-399");

        let udp = pool("type = \"udp\"\npayload = \"ping\"");
        assert_eq!(
            udp.check.kind,
            CheckKind::Udp(UdpCheck {
                payload: "ping".into(),
                expect: None,
            })
        );
        // An empty datagram only when asked for in so many words (see `udp_check`).
        assert_eq!(
            pool("type = \"udp\"\npayload = \"\"").check.kind,
            CheckKind::Udp(UdpCheck::default())
        );
        // The bounds are accepted.
        let edge =
            pool("type = \"tcp\"\ninterval = \"1h\"\ntimeout = \"10ms\"\nrise = 1\nfall = 100");
        assert_eq!(edge.check.interval, MAX_CHECK_DURATION);
        assert_eq!(edge.check.timeout, MIN_CHECK_DURATION);
        assert_eq!((edge.check.rise, edge.check.fall), (1, 100));
    }

    #[test]
    fn backend_check_override_merges_field_by_field() {
        let text = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80, check = { port = 8081 } },
  { address = "10.0.2.12", port = 80, check = { path = "/ready", fall = 1 } },
  { address = "10.0.2.13", port = 80, check = { address = "10.0.3.13", type = "http" } },
]
[pool.check]
type = "http"
path = "/health"
expect_status = "200"
"#;
        let pool = parse(text, ORIGIN).unwrap().pools.remove(0);
        let http = |path: &str| {
            CheckKind::Http(HttpCheck {
                path: path.into(),
                expect_status: "200".parse().unwrap(),
                ..HttpCheck::default()
            })
        };
        let b = &pool.backends;
        assert_eq!(b[0].check.kind, http("/health"));
        assert_eq!(b[0].check.port, Some(8081));
        assert_eq!(b[1].check.kind, http("/ready"));
        assert_eq!(
            (b[1].check.rise, b[1].check.fall, b[1].check.port),
            (2, 1, None)
        );
        // Repeating the same type keeps the pool's HTTP fields.
        assert_eq!(b[2].check.kind, http("/health"));
        assert_eq!(
            b[2].check.target(b[2].socket_addr()),
            "10.0.3.13:80".parse().unwrap()
        );
        // The pool's own check has no override.
        assert_eq!(pool.check.port, None);
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of cases")]
    fn check_errors_name_line_and_field() {
        let pc = "pool[0] (\"web\").check";
        let cases: &[(&str, &str, usize, &str, String, &str)] = &[
            (
                "interval = \"2s\"",
                "interval = \"5ms\"",
                13,
                "\"5ms\"",
                format!("{pc}.interval"),
                "\"5ms\" is out of range: must be between 10ms and 1h",
            ),
            (
                "timeout = \"1s\"",
                "timeout = \"61m\"",
                14,
                "\"61m\"",
                format!("{pc}.timeout"),
                "\"61m\" is out of range: must be between 10ms and 1h",
            ),
            (
                "fastinter = \"500ms\"",
                "fastinter = \"fast\"",
                17,
                "\"fast\"",
                format!("{pc}.fastinter"),
                "invalid duration \"fast\"",
            ),
            (
                "downinter = \"5s\"",
                "downinter = \"0s\"",
                18,
                "\"0s\"",
                format!("{pc}.downinter"),
                "is out of range",
            ),
            (
                "rise = 4",
                "rise = 0",
                15,
                "0",
                format!("{pc}.rise"),
                "rise 0 is out of range 1..=100",
            ),
            (
                "fall = 5",
                "fall = 101",
                16,
                "101",
                format!("{pc}.fall"),
                "fall 101 is out of range 1..=100",
            ),
            (
                "type = \"http\"",
                "type = \"icmp\"",
                12,
                "\"icmp\"",
                format!("{pc}.type"),
                "invalid check type \"icmp\": expected \"tcp\", \"http\", \"udp\" or \"none\"",
            ),
            (
                "initial_state = \"down\"",
                "initial_state = \"maybe\"",
                19,
                "\"maybe\"",
                format!("{pc}.initial_state"),
                "invalid initial state \"maybe\": expected \"up\" or \"down\"",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"200,99\"",
                22,
                "\"200",
                format!("{pc}.expect_status"),
                "invalid status list \"200,99\": code 99 is out of range 100..=599",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"302-301\"",
                22,
                "\"302",
                format!("{pc}.expect_status"),
                "range 302-301 is not ordered (302 > 301)",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"2xx\"",
                22,
                "\"2xx",
                format!("{pc}.expect_status"),
                "\"2xx\" is not a status code",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \" \"",
                22,
                "\" \"",
                format!("{pc}.expect_status"),
                "must list at least one status code",
            ),
            (
                "expect_status = \"200,204,301-302\"",
                "expect_status = \"600\"",
                22,
                "\"600",
                format!("{pc}.expect_status"),
                "code 600 is out of range 100..=599",
            ),
            (
                "method = \"HEAD\"",
                "method = \"get\"",
                24,
                "\"get\"",
                format!("{pc}.method"),
                "invalid method \"get\": must be an uppercase token",
            ),
            (
                "method = \"HEAD\"",
                "method = \"GET /x\"",
                24,
                "\"GET",
                format!("{pc}.method"),
                "must be an uppercase token",
            ),
            (
                "path = \"/health\"",
                "path = \"health\"",
                20,
                "\"health\"",
                format!("{pc}.path"),
                "invalid path \"health\": must start with '/'",
            ),
            (
                "path = \"/health\"",
                "path = \"/a b\"",
                20,
                "\"/a b\"",
                format!("{pc}.path"),
                "must be visible ASCII without spaces",
            ),
            (
                "host = \"example.org\"",
                "host = \"\"",
                21,
                "\"\"",
                format!("{pc}.host"),
                "must not be empty",
            ),
            (
                "expect_body = \"ok\"",
                "expect_body = \"\"",
                23,
                "\"\"",
                format!("{pc}.expect_body"),
                "must not be empty",
            ),
            // Fields of another check type.
            (
                "method = \"HEAD\"",
                "payload = \"ping\"",
                24,
                "\"ping\"",
                format!("{pc}.payload"),
                "only allowed with type = \"udp\" (this check's type is \"http\")",
            ),
            (
                "method = \"HEAD\"",
                "expect = \"pong\"",
                24,
                "\"pong\"",
                format!("{pc}.expect"),
                "only allowed with type = \"udp\" (this check's type is \"http\")",
            ),
            (
                "type = \"http\"",
                "type = \"tcp\"",
                24,
                "\"HEAD\"",
                format!("{pc}.method"),
                "only allowed with type = \"http\" (this check's type is \"tcp\")",
            ),
            (
                "type = \"http\"\n",
                "\n",
                24,
                "\"HEAD\"",
                format!("{pc}.method"),
                "only allowed with type = \"http\" (this check's type is \"none\")",
            ),
            (
                "port = 8081",
                "port = 0",
                7,
                "0 }",
                "pool[0] (\"web\").backends[0].check.port".into(),
                "port 0 is out of range 1..=65535",
            ),
            (
                "port = 8081",
                "address = \"10.0.2\"",
                7,
                "\"10.0.2\"",
                "pool[0] (\"web\").backends[0].check.address".into(),
                "invalid IP address \"10.0.2\"",
            ),
            (
                "port = 8081",
                "rise = 200",
                7,
                "200",
                "pool[0] (\"web\").backends[0].check.rise".into(),
                "rise 200 is out of range 1..=100",
            ),
            (
                "interval = \"10s\"",
                "path = \"/x\"",
                9,
                "\"/x\"",
                "pool[0] (\"web\").backends[2].check.path".into(),
                "only allowed with type = \"http\" (this check's type is \"tcp\")",
            ),
            (
                "interval = \"10s\"",
                "timeout = \"2ms\"",
                9,
                "\"2ms\"",
                "pool[0] (\"web\").backends[2].check.timeout".into(),
                "must be between 10ms and 1h",
            ),
            (
                "on_backend_down = \"keep\"",
                "on_backend_down = \"drain\"",
                5,
                "\"drain\"",
                "pool[0] (\"web\").on_backend_down".into(),
                "invalid on_backend_down policy \"drain\": expected \"shutdown\" or \"keep\"",
            ),
            (
                "on_all_down = \"pass\"",
                "on_all_down = \"reject\"",
                31,
                "\"reject\"",
                "vip[0] (\"web\").on_all_down".into(),
                "invalid on_all_down policy \"reject\": expected \"drop\" or \"pass\"",
            ),
        ];
        for (from, to, line, at, field, fragment) in cases {
            assert_check_error(from, to, *line, at, field, fragment);
        }
    }

    #[test]
    fn check_schema_errors_name_line_and_field() {
        assert_check_error(
            "path = \"/health\"",
            "pathh = \"/health\"",
            20,
            "pathh",
            "pool[0] (\"web\").check.pathh",
            "unknown field `pathh`",
        );
        assert_check_error(
            "check = { port = 8081 }",
            "check = { prot = 8081 }",
            7,
            "prot",
            "pool[0] (\"web\").backends[0].check.prot",
            "unknown field `prot`",
        );
        assert_check_error(
            "rise = 4",
            "rise = \"4\"",
            15,
            "\"4\"",
            "pool[0] (\"web\").check.rise",
            "invalid type: string \"4\", expected an integer",
        );
    }

    #[test]
    fn mangled_check_tables_never_panic() {
        let substitutes = ["\"", "{", "}", "=", "\n", "-", "0", "é"];
        assert_mangling_never_panics(CHECKS, &substitutes);
    }
}
