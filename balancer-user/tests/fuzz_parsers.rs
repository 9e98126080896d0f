//! Property tests of the parsers the agent exposes to its users and peers: the
//! configuration file (`config::parse`), the control protocol's request decoding, and the
//! HTTP routing rules (values from the file, requests from clients). Arbitrary input and
//! mutations of valid input: never a panic; configuration errors always carry a location.
//! (VRRP adverts are fuzzed beside their decoder, in `vrrp/advert.rs`.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use balancer::api::Request;
use balancer::config::{self, ConfigError};
use balancer::l7::rules::{request_host, Condition, HeaderKind, Kind, Rule, Rules, Test};
use proptest::prelude::*;

/// A configuration with every section the parser knows, valid as it is.
const VALID: &str = r#"
[agent]
interfaces = ["eth0", "eth1"]

[nat]
port_range = "20000-32767"

[timeouts]
tcp = "5m"
udp = "30s"
tcp_closing = "10s"
snat_time_wait = "60s"
tcp_handshake = "5s"

[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80, weight = 1 },
  { address = "10.0.2.12", port = 80, weight = 2 },
]

[[pool]]
name = "static"
backends = [{ address = "10.0.2.21", port = 80 }]

[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
ring_size = 65537
pool = "web"

[[vip]]
name = "www"
address = "10.0.100.2"
port = 80
protocol = "tcp"
mode = "http"
pool = "web"

[[vip.rule]]
name = "static"
pool = "static"
host = ["static.example.com", "*.cdn.example.com"]
path_prefix = ["/static", "/images"]

[[vip.rule]]
pool = "static"
path_suffix = [".jpg", ".css"]
"#;

/// Whether a configuration error says where: a line within the text (or just after
/// it) and a column, both from 1, and the origin first in its message.
fn has_location(error: &ConfigError, text: &str) -> Result<(), String> {
    let (line, column) = match error {
        ConfigError::Io { .. } => return Err(format!("an I/O error from parsing text: {error}")),
        ConfigError::Toml { line, column, .. } | ConfigError::Invalid { line, column, .. } => {
            (*line, *column)
        }
    };
    let lines = text.lines().count() + 1;
    if line == 0 || line > lines || column == 0 {
        return Err(format!(
            "location {line}:{column} outside the text ({lines} lines): {error}"
        ));
    }
    if !error.to_string().starts_with("fuzz.toml:") {
        return Err(format!(
            "the message does not start with the origin: {error}"
        ));
    }
    Ok(())
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    if let Err(error) = config::parse(text, "fuzz.toml") {
        has_location(&error, text).map_err(TestCaseError::fail)?;
    }
    Ok(())
}

/// An edit of a text: at a position (modulo its length), delete some characters, insert a
/// string, or repeat a line.
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    RepeatLine(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let insert = prop_oneof![
        "[ -~\n]{0,12}",
        Just("\"".to_string()),
        Just("]".to_string()),
        Just("[[vip]]\n".to_string()),
        Just("= ".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\u{feff}é\u{0}".to_string()),
    ];
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), insert).prop_map(|(at, s)| Edit::Insert(at, s)),
        any::<usize>().prop_map(Edit::RepeatLine),
    ]
}

/// `text` with `edit` applied (positions rounded down to a character boundary).
fn apply(text: &str, edit: &Edit) -> String {
    let boundary = |at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match edit {
        Edit::Delete(at, n) => {
            let from = boundary(*at);
            let to = boundary((from + n).min(text.len()));
            format!("{}{}", &text[..from], &text[to.max(from)..])
        }
        Edit::Insert(at, s) => {
            let at = boundary(*at);
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        Edit::RepeatLine(at) => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let i = at % lines.len();
                lines.insert(i, lines[i]);
            }
            lines.join("\n")
        }
    }
}

/// Valid control requests, one of each kind the CLI sends, and `backend add` of an IPv6
/// backend.
fn valid_requests() -> Vec<String> {
    let backend: SocketAddr = "10.0.2.11:80".parse().unwrap();
    let backend6: SocketAddr = "[fd00::2:11]:80".parse().unwrap();
    let vip = config::parse(VALID, "valid.toml").unwrap().vips[0].clone();
    [
        Request::Status,
        Request::VipAdd { vip },
        Request::VipDel { name: "web".into() },
        Request::BackendAdd {
            target: "web".into(),
            address: backend,
            weight: 3,
        },
        Request::BackendAdd {
            target: "web6".into(),
            address: backend6,
            weight: 1,
        },
        Request::BackendDel {
            target: "web".into(),
            address: backend,
        },
        Request::BackendWeight {
            target: "web".into(),
            address: backend,
            weight: 0,
        },
        Request::PoolAdd { name: "p".into() },
        Request::PoolDel { name: "p".into() },
        Request::Reload,
        Request::ConfigDump,
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect()
}

/// Decodes a request line as the control server does.
fn decode_request(line: &str) {
    if let Ok(request) = serde_json::from_str::<Request>(line) {
        // What decodes encodes again (the agent logs and answers with requests).
        serde_json::to_string(&request).expect("a decoded request encodes");
    }
}

const KINDS: [Kind; 8] = [
    Kind::Host,
    Kind::PathPrefix,
    Kind::PathSuffix,
    Kind::PathExact,
    Kind::PathRegex,
    Kind::Method,
    Kind::HeaderPresent,
    Kind::Source,
];

/// Rule values as an operator may write them, right or wrong.
fn rule_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,16}",
        "\\*?\\.?[a-zA-Z0-9.\\-]{0,12}\\.?",
        "\\[[0-9a-f:]{0,12}\\]",
        "/[a-z/.*+?()\\[\\]^$]{0,12}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(/[0-9]{1,3})?",
        "[0-9a-f:]{2,16}(/[0-9]{1,3})?",
        any::<String>(),
    ]
}

/// A request head: method, target, headers (raw; what `http` refuses is skipped, as hyper
/// refuses it before routing).
type Head = (String, String, Vec<(String, Vec<u8>)>);

fn request_head() -> impl Strategy<Value = Head> {
    let target = prop_oneof![
        "/[ -~]{0,20}",
        "https?://([a-z0-9]{0,6}@)?[a-zA-Z0-9.\\-]{0,12}\\.?(:[0-9]{0,6})?/[a-z/.]{0,8}",
        "https?://\\[[0-9a-f:]{0,12}\\]?(:[0-9]{0,5})?/",
        "[ -~]{0,20}",
    ];
    let header_name = prop_oneof![Just("host".to_string()), "[a-zA-Z\\-]{1,12}"];
    let header_value = prop_oneof![
        "[ -~]{0,20}".prop_map(String::into_bytes),
        "\\[[0-9a-f:]{0,12}\\]?(:[0-9]{0,5})?".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..20),
    ];
    (
        "[A-Z]{1,8}",
        target,
        prop::collection::vec((header_name, header_value), 0..5),
    )
}

/// Conditions from `tests` (kind, negated, values) and `header_tests` (name, regex or
/// equals, values), keeping those the values make valid.
fn conditions(
    tests: &[(usize, bool, Vec<String>)],
    header_tests: &[(String, bool, Vec<String>)],
) -> Vec<Condition> {
    let mut conditions = Vec::new();
    for (kind, negate, values) in tests {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        if let Ok(test) = Test::new(KINDS[*kind], &values) {
            conditions.push(Condition {
                negate: *negate,
                test,
            });
        }
    }
    for (name, regex, values) in header_tests {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let kind = if *regex {
            HeaderKind::Regex
        } else {
            HeaderKind::Equals
        };
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("a header name");
        if let Ok(test) = Test::header(kind, name, &values) {
            conditions.push(Condition {
                negate: false,
                test,
            });
        }
    }
    conditions
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn config_parse_of_any_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn config_parse_of_toml_ish_text(
        text in "([\\[\\]a-z_.=\"{}, 0-9#\n-]|vip|pool|rule|address|port){0,60}"
    ) {
        check_config(&text)?;
    }

    #[test]
    fn config_parse_of_a_valid_config_mutated(edits in prop::collection::vec(edit(), 1..6)) {
        let text = edits.iter().fold(VALID.to_string(), |text, e| apply(&text, e));
        check_config(&text)?;
    }

    #[test]
    fn control_request_of_any_line(line in any::<String>()) {
        decode_request(&line);
    }

    #[test]
    fn control_request_mutated(i in 0usize..10, edits in prop::collection::vec(edit(), 1..4)) {
        let valid = valid_requests();
        let line = edits.iter().fold(valid[i % valid.len()].clone(), |text, e| apply(&text, e));
        decode_request(&line);
    }

    #[test]
    fn http_rules_of_any_values_route_any_request(
        tests in prop::collection::vec(
            (0usize..KINDS.len(), any::<bool>(), prop::collection::vec(rule_value(), 0..4)),
            0..6,
        ),
        header_tests in prop::collection::vec(
            ("[a-z\\-]{1,8}", any::<bool>(), prop::collection::vec(rule_value(), 0..3)),
            0..3,
        ),
        (method, target, headers) in request_head(),
        client in any::<u32>(),
    ) {
        let conditions = conditions(&tests, &header_tests);
        let first: Vec<Condition> = conditions.iter().take(1).cloned().collect();
        let rules = Rules::new(
            vec![
                Rule { name: "all".into(), pool: "a".into(), conditions },
                Rule { name: "first".into(), pool: "b".into(), conditions: first },
            ],
            "default",
        );
        let mut builder = http::Request::builder().method(method.as_str()).uri(target.as_str());
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        if let Ok(request) = builder.body(()) {
            let (parts, ()) = request.into_parts();
            let _ = request_host(&parts);
            let v4 = Ipv4Addr::from(client);
            for client in [IpAddr::V4(v4), IpAddr::V6(v4.to_ipv6_mapped())] {
                let route = rules.route(&parts, client);
                prop_assert!(["a", "b", "default"].contains(&route.pool));
            }
        }
    }
}

#[test]
fn the_valid_configuration_is_valid() {
    config::parse(VALID, "valid.toml").unwrap();
    assert_eq!(valid_requests().len(), 11);
}
