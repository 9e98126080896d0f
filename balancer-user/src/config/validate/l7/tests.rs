//! The `mode` of a VIP and its `[[vip.rule]]` tables: what they build, and each refusal
//! named by file, line, column and key path.

use std::net::IpAddr;

use super::super::super::testing::{
    assert_error_at, assert_mangling_never_panics, HTTP_VIP, ONE_VIP, ORIGIN,
};
use super::super::super::{parse, VipMode};
use crate::l7::rules::{Kind, Rules, Test};

#[test]
fn an_http_vip_and_its_rules() {
    let config = parse(HTTP_VIP, ORIGIN).unwrap_or_else(|e| panic!("{e}"));
    let vip = &config.vips[0];
    assert_eq!(vip.mode, VipMode::Http);
    assert_eq!(vip.pool, "app");
    let names: Vec<_> = vip.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["static", "rule 2"]);
    assert_eq!(vip.rules[0].pool, "static");
    let tests: Vec<_> = vip.rules[0].conditions.iter().map(|c| &c.test).collect();
    assert_eq!(
        tests,
        [
            &Test::new(Kind::PathPrefix, &["/static", "/images"]).unwrap(),
            &Test::new(Kind::PathSuffix, &[".css"]).unwrap(),
        ]
    );
    let negated: Vec<_> = vip.rules[1].conditions.iter().map(|c| c.negate).collect();
    assert_eq!(
        negated,
        [false, true, false],
        "source, not_path_regex, header_equals"
    );

    let rules = Rules::new(vip.rules.clone(), vip.pool.clone());
    let route = |target: &str, env: &str, client: &str| {
        let parts = http::Request::get(target)
            .header("x-env", env)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let route = rules.route(&parts, client.parse::<IpAddr>().unwrap());
        (route.rule, route.pool.to_owned())
    };
    // Rule 0's prefix and suffix are ANDed.
    assert_eq!(
        route("/static/a.css", "prod", "192.0.2.1"),
        (Some(0), "static".into())
    );
    assert_eq!(
        route("/static/a", "prod", "192.0.2.1"),
        (None, "app".into())
    );
    assert_eq!(route("/x.css", "prod", "192.0.2.1"), (None, "app".into()));
    assert_eq!(route("/x", "prod", "192.0.2.1"), (None, "app".into()));
    assert_eq!(route("/x", "beta", "10.1.1.1"), (Some(1), "static".into()));
    assert_eq!(route("/api/x", "beta", "10.1.1.1"), (None, "app".into()));
    assert_eq!(route("/x", "beta", "192.0.2.1"), (None, "app".into()));
}

#[test]
fn l4_is_the_default_and_has_no_rules() {
    let config = parse(ONE_VIP, ORIGIN).unwrap();
    assert_eq!(config.vips[0].mode, VipMode::L4);
    assert!(config.vips[0].rules.is_empty());
    let text = ONE_VIP.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nmode = \"L4\"");
    assert_eq!(parse(&text, ORIGIN).unwrap().vips[0].mode, VipMode::L4);
}

#[test]
fn a_rule_without_conditions_matches_everything() {
    let text = HTTP_VIP.replace(
        "path_prefix = [\"/static\", \"/images\"]\npath_suffix = [\".css\"]\n",
        "",
    );
    let config = parse(&text, ORIGIN).unwrap();
    assert!(config.vips[0].rules[0].conditions.is_empty());
}

const WWW: &str = "vip[0] (\"www\")";
const STATIC: &str = "vip[0] (\"www\").rule[0] (\"static\")";
const SECOND: &str = "vip[0] (\"www\").rule[1]";

#[test]
fn mode_errors() {
    assert_error_at(
        HTTP_VIP,
        ("mode = \"http\"", "mode = \"https\""),
        (12, "\"https\""),
        &format!("{WWW}.mode"),
        "invalid VIP mode \"https\": expected \"l4\" or \"http\"",
    );
    assert_error_at(
        HTTP_VIP,
        ("protocol = \"tcp\"", "protocol = \"udp\""),
        (11, "\"udp\""),
        &format!("{WWW}.protocol"),
        "an HTTP-mode VIP (mode = \"http\") needs protocol = \"tcp\", not \"udp\"",
    );
    assert_error_at(
        HTTP_VIP,
        ("mode = \"http\"", "mode = \"l4\""),
        (14, "[[vip.rule]]"),
        &format!("{WWW}.rule[0]"),
        "rules route HTTP requests: they need mode = \"http\" on the VIP",
    );
}

#[test]
fn rule_errors() {
    let cases = [
        (
            (
                "pool = \"static\"\npath_prefix",
                "pool = \"statik\"\npath_prefix",
            ),
            (16, "\"statik\""),
            format!("{STATIC}.pool"),
            "unknown pool \"statik\" (defined pools: \"app\", \"static\")",
        ),
        (
            ("name = \"static\"\npool", "name = \"stat ic\"\npool"),
            (15, "\"stat ic\""),
            "vip[0] (\"www\").rule[0] (\"stat ic\").name".to_owned(),
            "invalid rule name \"stat ic\": contains ' '",
        ),
        (
            ("not_path_regex = [\"^/api(/|$)\"]", "name = \"static\""),
            (21, "\"static\""),
            "vip[0] (\"www\").rule[1] (\"static\").name".to_owned(),
            "duplicate rule name \"static\" (already the name of rule[0])",
        ),
        (
            ("path_suffix = [\".css\"]", "path_regex = [\"[a\"]"),
            (18, "\"[a\""),
            format!("{STATIC}.path_regex[0]"),
            "invalid regex \"[a\": unclosed character class",
        ),
        (
            ("[\"/static\", \"/images\"]", "[\"/static\", \"images\"]"),
            (17, "\"images\""),
            format!("{STATIC}.path_prefix[1]"),
            "\"images\" does not start with '/'",
        ),
        (
            (
                "path_suffix = [\".css\"]",
                "not_method = [\"GET\", \"post\"]",
            ),
            (18, "\"post\""),
            format!("{STATIC}.not_method[1]"),
            "is not the method \"POST\": methods are case-sensitive",
        ),
        (
            ("path_suffix = [\".css\"]", "host = [\"*.example.com:443\"]"),
            (18, "\"*.example"),
            format!("{STATIC}.host[0]"),
            "has a port",
        ),
        (
            ("path_suffix = [\".css\"]", "header_present = [\"X:Debug\"]"),
            (18, "\"X:Debug\""),
            format!("{STATIC}.header_present[0]"),
            "invalid header name \"X:Debug\"",
        ),
        (
            ("[\"^/api(/|$)\"]", "[\"^/api(/|$\"]"),
            (21, "\"^/api"),
            format!("{SECOND}.not_path_regex[0]"),
            "invalid regex \"^/api(/|$\": unclosed group",
        ),
        (
            ("[\"10.0.0.0/8\"]", "[\"10.0.0.0/8\", \"2001:db8::1/32\"]"),
            (23, "\"2001"),
            format!("{SECOND}.source[1]"),
            "did you mean \"2001:db8::/32\"?",
        ),
        (
            ("[\"10.0.0.0/8\"]", "[]"),
            (23, "[]"),
            format!("{SECOND}.source"),
            "an empty list matches nothing",
        ),
        (
            (
                "{ \"X-Env\" = [\"beta\", \"staging\"] }",
                "{ \"X Env\" = [\"beta\"] }",
            ),
            (22, "\"X Env\""),
            format!("{SECOND}.header_equals.\"X Env\""),
            "invalid header name \"X Env\"",
        ),
        (
            (
                "{ \"X-Env\" = [\"beta\", \"staging\"] }",
                "{ \"X-Env\" = [\"beta\"], x-env = [\"b\"] }",
            ),
            (22, "x-env"),
            format!("{SECOND}.header_equals.x-env"),
            "header \"X-Env\" is already listed (header names are case-insensitive)",
        ),
        (
            (
                "{ \"X-Env\" = [\"beta\", \"staging\"] }",
                "{ \"X-Env\" = [\"beta\", \" staging\"] }",
            ),
            (22, "\" staging\""),
            format!("{SECOND}.header_equals.X-Env[1]"),
            "has surrounding whitespace",
        ),
        (
            (
                "header_equals = { \"X-Env\" = [\"beta\", \"staging\"] }",
                "not_header_regex = { User-Agent = [\"(?i)bot\", \"*\"] }",
            ),
            (22, "\"*\""),
            format!("{SECOND}.not_header_regex.User-Agent[1]"),
            "invalid regex \"*\": repetition operator missing expression",
        ),
        (
            (
                "header_equals = { \"X-Env\" = [\"beta\", \"staging\"] }",
                "header_regex = {}",
            ),
            (22, "{}"),
            format!("{SECOND}.header_regex"),
            "an empty table matches nothing",
        ),
        (
            (
                "header_equals = { \"X-Env\" = [\"beta\", \"staging\"] }",
                "header_regex = { X-Env = [] }",
            ),
            (22, "[]"),
            format!("{SECOND}.header_regex.X-Env"),
            "an empty list matches nothing",
        ),
    ];
    for (swap, at, field, fragment) in cases {
        assert_error_at(HTTP_VIP, swap, at, &field, fragment);
    }
}

#[test]
fn rule_schema_errors() {
    assert_error_at(
        HTTP_VIP,
        ("path_suffix = [\".css\"]", "path_begin = [\"/static\"]"),
        (18, "path_begin"),
        &format!("{STATIC}.path_begin"),
        "unknown field `path_begin`, expected one of",
    );
    assert_error_at(
        HTTP_VIP,
        ("path_suffix = [\".css\"]", "path_suffix = \".css\""),
        (18, "\".css\""),
        &format!("{STATIC}.path_suffix"),
        "invalid type: string \".css\", expected a sequence",
    );
    assert_error_at(
        HTTP_VIP,
        ("pool = \"static\"\nnot_path_regex", "\nnot_path_regex"),
        (19, "[[vip.rule]]"),
        SECOND,
        "missing field `pool`",
    );
}

#[test]
fn mangled_http_vips_never_panic() {
    let substitutes = ["\"", "[", "]", "{", "}", "=", "\n", "(", "*", "/", "é"];
    assert_mangling_never_panics(HTTP_VIP, &substitutes);
}
