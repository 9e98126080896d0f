//! Table-driven tests of the rules: each condition kind, negation, AND/OR, order, and the
//! values refused at load.

use super::*;

/// A request: `target` as the request line has it, then `headers`.
fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::builder().method(method).uri(target);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(())
        .expect("a valid test request")
        .into_parts()
        .0
}

fn get(target: &str, headers: &[(&str, &str)]) -> Parts {
    request("GET", target, headers)
}

const CLIENT: &str = "192.0.2.7";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn test(kind: Kind, values: &[&str]) -> Test {
    Test::new(kind, values).unwrap_or_else(|e| panic!("{kind:?} {values:?}: {e}"))
}

fn header_test(kind: HeaderKind, name: &str, values: &[&str]) -> Test {
    Test::header(kind, header_name(name).unwrap(), values).unwrap()
}

/// Asserts each (description, request, client, expected) against `test`, and its negation
/// against the opposite.
fn check(test: &Test, cases: &[(&str, Parts, &str, bool)]) {
    for (description, parts, client, expected) in cases {
        let request = Request::new(parts, ip(client));
        assert_eq!(test.matches(&request), *expected, "{description}: {test:?}");
        let negated = Condition {
            negate: true,
            test: test.clone(),
        };
        assert_eq!(negated.matches(&request), !*expected, "not {description}");
    }
}

#[test]
fn host() {
    let t = test(Kind::Host, &["api.example", "*.example.com"]);
    let cases = [
        ("exact", get("/", &[("host", "api.example")]), CLIENT, true),
        (
            "port removed",
            get("/", &[("host", "api.example:8080")]),
            CLIENT,
            true,
        ),
        ("case", get("/", &[("host", "API.Example")]), CLIENT, true),
        (
            "trailing dot",
            get("/", &[("host", "api.example.")]),
            CLIENT,
            true,
        ),
        (
            "dot and port",
            get("/", &[("host", "api.example.:80")]),
            CLIENT,
            true,
        ),
        ("other", get("/", &[("host", "www.example")]), CLIENT, false),
        (
            "longer",
            get("/", &[("host", "xapi.example")]),
            CLIENT,
            false,
        ),
        (
            "sub",
            get("/", &[("host", "www.example.com")]),
            CLIENT,
            true,
        ),
        (
            "deep sub",
            get("/", &[("host", "a.b.EXAMPLE.com")]),
            CLIENT,
            true,
        ),
        (
            "bare suffix",
            get("/", &[("host", "example.com")]),
            CLIENT,
            false,
        ),
        (
            "empty label",
            get("/", &[("host", ".example.com")]),
            CLIENT,
            false,
        ),
        (
            "glued",
            get("/", &[("host", "badexample.com")]),
            CLIENT,
            false,
        ),
        ("no host", get("/", &[]), CLIENT, false),
        (
            "absolute form wins over Host",
            get("http://api.example:81/x", &[("host", "www.example")]),
            CLIENT,
            true,
        ),
        (
            "absolute form with user info",
            get("http://u:p@w.example.com/x", &[]),
            CLIENT,
            true,
        ),
        (
            "absolute form, other host",
            get("http://other.example/x", &[("host", "api.example")]),
            CLIENT,
            false,
        ),
    ];
    check(&t, &cases);
    let literal = test(Kind::Host, &["[2001:db8::1]", "192.0.2.1"]);
    let cases = [
        (
            "v6 literal",
            get("/", &[("host", "[2001:db8::1]:8443")]),
            CLIENT,
            true,
        ),
        (
            "v4 literal",
            get("/", &[("host", "192.0.2.1:80")]),
            CLIENT,
            true,
        ),
        (
            "other literal",
            get("/", &[("host", "[2001:db8::2]")]),
            CLIENT,
            false,
        ),
    ];
    check(&literal, &cases);
    // The pattern's own case and trailing dot do not matter either.
    assert_eq!(
        test(Kind::Host, &["API.Example."]),
        test(Kind::Host, &["api.example"])
    );
}

#[test]
fn paths_ignore_the_query_string() {
    let cases = [
        (
            Kind::PathPrefix,
            &["/static", "/images"][..],
            &[
                ("/static/app.js", true),
                ("/images", true),
                ("/staticx", true),
                ("/stat", false),
                ("/x/static", false),
                ("/x?/static", false),
                ("/", false),
            ][..],
        ),
        (
            Kind::PathSuffix,
            &[".css", ".js"],
            &[
                ("/a/b.css", true),
                ("/a.js?v=1", true),
                ("/a.jsx", false),
                ("/a?x=.css", false),
                ("/a.CSS", false),
            ],
        ),
        (
            Kind::PathExact,
            &["/api", "*"],
            &[
                ("/api", true),
                ("/api?x=1", true),
                ("/api/", false),
                ("/Api", false),
                ("*", true),
            ],
        ),
        (
            Kind::PathRegex,
            &["^/api(/|$)", "\\.php"],
            &[
                ("/api", true),
                ("/api/v1", true),
                ("/apix", false),
                ("/x/api", false),
                ("/index.php", true),
                ("/index.phpx", true),
                ("/index?.php", false),
                // Not percent-decoded.
                ("/%61pi", false),
            ],
        ),
    ];
    for (kind, values, paths) in cases {
        let t = test(kind, values);
        let cases: Vec<_> = paths
            .iter()
            .map(|(target, expected)| {
                let method = if *target == "*" { "OPTIONS" } else { "GET" };
                (*target, request(method, target, &[]), CLIENT, *expected)
            })
            .collect();
        check(&t, &cases);
    }
}

#[test]
fn method_is_case_sensitive() {
    let t = test(Kind::Method, &["GET", "HEAD", "PURGE"]);
    let cases = [
        ("GET", request("GET", "/", &[]), CLIENT, true),
        ("HEAD", request("HEAD", "/", &[]), CLIENT, true),
        ("extension", request("PURGE", "/", &[]), CLIENT, true),
        ("POST", request("POST", "/", &[]), CLIENT, false),
        ("lowercase", request("get", "/", &[]), CLIENT, false),
    ];
    check(&t, &cases);
}

#[test]
fn headers() {
    let present = test(Kind::HeaderPresent, &["X-Debug", "x-trace"]);
    let cases = [
        ("present", get("/", &[("x-debug", "")]), CLIENT, true),
        ("any name", get("/", &[("X-Trace", "1")]), CLIENT, true),
        ("absent", get("/", &[("x-other", "1")]), CLIENT, false),
    ];
    check(&present, &cases);

    let equals = header_test(HeaderKind::Equals, "X-Env", &["beta", "staging"]);
    let cases = [
        ("equal", get("/", &[("x-env", "beta")]), CLIENT, true),
        (
            "other value",
            get("/", &[("X-ENV", "staging")]),
            CLIENT,
            true,
        ),
        ("value case", get("/", &[("x-env", "Beta")]), CLIENT, false),
        ("part", get("/", &[("x-env", "beta2")]), CLIENT, false),
        ("list", get("/", &[("x-env", "prod, beta")]), CLIENT, false),
        (
            "any of several",
            get("/", &[("x-env", "prod"), ("x-env", "beta")]),
            CLIENT,
            true,
        ),
        ("absent", get("/", &[]), CLIENT, false),
    ];
    check(&equals, &cases);

    let regex = header_test(HeaderKind::Regex, "User-Agent", &["(?i)bot", "^curl/"]);
    let cases = [
        (
            "anywhere",
            get("/", &[("user-agent", "Googlebot/2.1")]),
            CLIENT,
            true,
        ),
        (
            "anchored",
            get("/", &[("user-agent", "curl/8.0")]),
            CLIENT,
            true,
        ),
        (
            "not at start",
            get("/", &[("user-agent", "x curl/8.0")]),
            CLIENT,
            false,
        ),
        (
            "any of several",
            get("/", &[("user-agent", "x"), ("user-agent", "BOT")]),
            CLIENT,
            true,
        ),
        ("absent", get("/", &[]), CLIENT, false),
    ];
    check(&regex, &cases);
    // A value that is not UTF-8 is still matched, as bytes.
    let mut parts = get("/", &[]);
    parts
        .headers
        .insert("user-agent", HeaderValue::from_bytes(b"\xffrobot").unwrap());
    check(&regex, &[("obs-text", parts, CLIENT, true)]);
}

#[test]
fn source_networks() {
    let t = test(
        Kind::Source,
        &["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "0.0.0.0/0"],
    );
    let v4_only = test(Kind::Source, &["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
    let cases = [
        ("in /8", get("/", &[]), "10.200.1.1", true),
        ("host", get("/", &[]), "192.0.2.7", true),
        ("next host", get("/", &[]), "192.0.2.8", false),
        ("v6 in /32", get("/", &[]), "2001:db8:ffff::1", true),
        ("v6 outside", get("/", &[]), "2001:db9::1", false),
        ("v4-mapped", get("/", &[]), "::ffff:10.1.2.3", true),
        ("v4-mapped outside", get("/", &[]), "::ffff:11.1.2.3", false),
        ("outside", get("/", &[]), "11.0.0.1", false),
    ];
    check(&v4_only, &cases);
    // /0 holds every IPv4 address and no IPv6 one.
    let any_v4 = test(Kind::Source, &["0.0.0.0/0"]);
    check(
        &any_v4,
        &[
            ("any v4", get("/", &[]), "203.0.113.9", true),
            ("v6", get("/", &[]), "2001:db8::1", false),
        ],
    );
    check(&t, &[("v6 /32", get("/", &[]), "2001:db8::5", true)]);
    let any_v6 = test(Kind::Source, &["::/0"]);
    check(&any_v6, &[("any v6", get("/", &[]), "fe80::1", true)]);
}

/// The README's example: static content by path prefix or suffix, the api by host.
fn seeds_rules() -> Rules {
    let rule = |name: &str, pool: &str, conditions: Vec<Condition>| Rule {
        name: name.into(),
        pool: pool.into(),
        conditions,
    };
    let plain = |test| Condition {
        negate: false,
        test,
    };
    Rules::new(
        vec![
            rule(
                "api",
                "api",
                vec![plain(test(Kind::Host, &["api.example", "*.api.example"]))],
            ),
            rule(
                "static",
                "static",
                vec![plain(test(
                    Kind::PathPrefix,
                    &["/static", "/images", "/javascript", "/stylesheets"],
                ))],
            ),
            rule(
                "static files",
                "static",
                vec![plain(test(
                    Kind::PathSuffix,
                    &[".jpg", ".gif", ".png", ".css", ".js"],
                ))],
            ),
        ],
        "app",
    )
}

#[test]
fn first_match_wins_else_the_default_pool() {
    let rules = seeds_rules();
    let client = ip(CLIENT);
    let cases = [
        ("/static/a.txt", "www.example", Some(1), "static"),
        ("/app/logo.png?size=2", "www.example", Some(2), "static"),
        ("/static/logo.png", "www.example", Some(1), "static"),
        ("/static/logo.png", "api.example", Some(0), "api"),
        ("/v1/users", "eu.api.example", Some(0), "api"),
        ("/login", "www.example", None, "app"),
        ("/login?next=/static/x.css", "www.example", None, "app"),
    ];
    for (target, host, rule, pool) in cases {
        let parts = get(target, &[("host", host)]);
        assert_eq!(
            rules.route(&parts, client),
            Route { rule, pool },
            "{host}{target}"
        );
    }
    assert_eq!(rules.default_pool(), "app");
    assert_eq!(rules.rules().len(), 3);
}

#[test]
fn conditions_are_anded_values_ored_and_negation_inverts() {
    let rule = Rule {
        name: "beta api writes".into(),
        pool: "beta".into(),
        conditions: vec![
            Condition {
                negate: false,
                test: test(Kind::PathPrefix, &["/api/"]),
            },
            Condition {
                negate: false,
                test: test(Kind::Method, &["POST", "PUT"]),
            },
            Condition {
                negate: true,
                test: test(Kind::Source, &["10.0.0.0/8"]),
            },
        ],
    };
    let cases = [
        ("all hold", "POST", "/api/x", "192.0.2.1", true),
        (
            "other method of the list",
            "PUT",
            "/api/x",
            "192.0.2.1",
            true,
        ),
        ("method fails", "GET", "/api/x", "192.0.2.1", false),
        ("path fails", "POST", "/apix", "192.0.2.1", false),
        ("negated source fails", "POST", "/api/x", "10.1.1.1", false),
    ];
    for (description, method, target, client, expected) in cases {
        let parts = request(method, target, &[]);
        let request = Request::new(&parts, ip(client));
        assert_eq!(rule.matches(&request), expected, "{description}");
    }
    let catch_all = Rule {
        name: "rule 1".into(),
        pool: "p".into(),
        conditions: vec![],
    };
    let parts = get("/", &[]);
    assert!(catch_all.matches(&Request::new(&parts, ip(CLIENT))));
}

#[test]
fn segment_matching_as_the_readme_says() {
    // `path_prefix = ["/api/"]` plus `path_exact = ["/api"]` in a second rule, or a regex.
    let rules = Rules::new(
        vec![
            Rule {
                name: "api tree".into(),
                pool: "api".into(),
                conditions: vec![Condition {
                    negate: false,
                    test: test(Kind::PathPrefix, &["/api/"]),
                }],
            },
            Rule {
                name: "api root".into(),
                pool: "api".into(),
                conditions: vec![Condition {
                    negate: false,
                    test: test(Kind::PathExact, &["/api"]),
                }],
            },
        ],
        "app",
    );
    let regex = test(Kind::PathRegex, &["^/api(/|$)"]);
    for (target, api) in [
        ("/api", true),
        ("/api/v1", true),
        ("/apix", false),
        ("/", false),
    ] {
        let parts = get(target, &[]);
        let pool = rules.route(&parts, ip(CLIENT)).pool;
        assert_eq!(pool == "api", api, "{target}");
        assert_eq!(regex.matches(&Request::new(&parts, ip(CLIENT))), api);
    }
}

#[test]
fn refused_values() {
    let cases: [(Kind, &[&str], Option<usize>, &str); 18] = [
        (Kind::Host, &[], None, "an empty list matches nothing"),
        (
            Kind::Host,
            &["ok", "a b"],
            Some(1),
            "invalid host \"a b\": contains ' '",
        ),
        (Kind::Host, &["api.example:80"], Some(0), "has a port"),
        (Kind::Host, &["*.[::1]"], Some(0), "takes a domain"),
        (Kind::Host, &["[::g]"], Some(0), "not an IPv6 address"),
        (Kind::Host, &["*."], Some(0), "contains '*'"),
        (Kind::Host, &["a..b"], Some(0), "is not a host name"),
        (
            Kind::PathPrefix,
            &["api"],
            Some(0),
            "does not start with '/'",
        ),
        (Kind::PathPrefix, &[""], Some(0), "must not be empty"),
        (
            Kind::PathExact,
            &["/a?b=1"],
            Some(0),
            "without the query string",
        ),
        (
            Kind::PathSuffix,
            &[".c ss"],
            Some(0),
            "write %20 for a space",
        ),
        (
            Kind::PathRegex,
            &["^/ok", "(ab"],
            Some(1),
            "invalid regex \"(ab\": unclosed group",
        ),
        (
            Kind::Method,
            &["get"],
            Some(0),
            "is not the method \"GET\": methods are case-sensitive",
        ),
        (Kind::Method, &["GE T"], Some(0), "invalid method \"GE T\""),
        (
            Kind::HeaderPresent,
            &["X Debug"],
            Some(0),
            "invalid header name \"X Debug\"",
        ),
        (
            Kind::Source,
            &["10.0.0.1/8"],
            Some(0),
            "did you mean \"10.0.0.0/8\"?",
        ),
        (
            Kind::Source,
            &["10.0.0.0/33"],
            Some(0),
            "the prefix length must be 0..=32",
        ),
        (
            Kind::Source,
            &["10.0.0"],
            Some(0),
            "expected an address or CIDR",
        ),
    ];
    for (kind, values, index, fragment) in cases {
        let err = Test::new(kind, values).unwrap_err();
        assert_eq!(err.index, index, "{kind:?} {values:?}");
        assert!(
            err.why.contains(fragment),
            "{:?} lacks {fragment:?}",
            err.why
        );
    }
    let name = header_name("X-Env").unwrap();
    for (kind, values, index, fragment) in [
        (
            HeaderKind::Equals,
            &["ok", " beta"][..],
            Some(1),
            "surrounding whitespace",
        ),
        (
            HeaderKind::Equals,
            &["caf\u{e9}"],
            Some(0),
            "invalid header value",
        ),
        (
            HeaderKind::Regex,
            &["[z-a]"],
            Some(0),
            "invalid regex \"[z-a]\"",
        ),
        (HeaderKind::Regex, &[], None, "an empty list"),
    ] {
        let err = Test::header(kind, name.clone(), values).unwrap_err();
        assert_eq!(err.index, index, "{kind:?} {values:?}");
        assert!(
            err.why.contains(fragment),
            "{:?} lacks {fragment:?}",
            err.why
        );
    }
    assert_eq!(Kind::PathRegex.as_str(), "path_regex");
    assert_eq!(HeaderKind::Regex.as_str(), "header_regex");
}

#[test]
fn values_display_as_written() {
    assert_eq!(
        "*.Example.COM.".parse::<HostPattern>().unwrap().to_string(),
        "*.example.com"
    );
    assert_eq!(
        "192.0.2.7".parse::<Cidr>().unwrap().to_string(),
        "192.0.2.7/32"
    );
    assert_eq!(
        "2001:db8::/32".parse::<Cidr>().unwrap().to_string(),
        "2001:db8::/32"
    );
}
