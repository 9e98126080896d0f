use super::super::testing::{assert_error, ip, with, NAT, ONE_VIP, ORIGIN, TIMEOUTS};
use super::super::{parse, Protocol, MAX_TIMEOUT, MIN_TIMEOUT};

use balancer_common::MAX_VIPS;
use std::fmt::Write as _;

#[test]
fn duplicate_vip_name() {
    let text = format!(
        "{ONE_VIP}[[vip]]\nname = \"web\"\naddress = \"10.0.100.2\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n"
    );
    // The second vip's name is on line 13.
    assert_error(
        &text,
        "balancer.toml:13:8: vip[1] (\"web\").name: ",
        "duplicate VIP name \"web\" (first defined as vip[0] on line 6)",
    );
}

#[test]
fn duplicate_vip_listener() {
    let text = format!(
        "{ONE_VIP}[[vip]]\nname = \"web2\"\naddress = \"10.0.100.1\"\nport = 80\nprotocol = \"TCP\"\npool = \"web\"\n"
    );
    // The second [[vip]] starts on line 12.
    assert_error(
        &text,
        "balancer.toml:12:1: vip[1] (\"web2\"): ",
        "10.0.100.1:80/tcp is already used by vip[0] (\"web\") on line 5",
    );
}

#[test]
fn same_listener_with_other_protocol_is_allowed() {
    let text = format!(
        "{ONE_VIP}[[vip]]\nname = \"web-udp\"\naddress = \"10.0.100.1\"\nport = 80\nprotocol = \"udp\"\npool = \"web\"\n"
    );
    let config = parse(&text, ORIGIN).unwrap();
    assert_eq!(config.vips[1].protocol, Protocol::Udp);
}

#[test]
fn unknown_pool() {
    let text = with(ONE_VIP, "pool = \"web\"", "pool = \"wbe\"");
    assert_error(
        &text,
        "balancer.toml:11:8: vip[0] (\"web\").pool: ",
        "unknown pool \"wbe\" (defined pools: \"web\")",
    );
}

#[test]
fn unknown_pool_when_none_defined() {
    let text = with(ONE_VIP, "[[pool]]\nname = \"web\"\n", "\n\n");
    assert_error(
        &text,
        "balancer.toml:11:8: vip[0] (\"web\").pool: ",
        "unknown pool \"web\" (no [[pool]] is defined)",
    );
}

#[test]
fn vip_named_like_another_pool() {
    // VIP "web" may use pool "web"; with pool "api" it would make `backend add web`
    // ambiguous.
    let text = with(ONE_VIP, "[[vip]]", "[[pool]]\nname = \"api\"\n[[vip]]");
    let text = with(&text, "pool = \"web\"", "pool = \"api\"");
    assert_error(
        &text,
        "balancer.toml:8:8: vip[0] (\"web\").name: ",
        "\"web\" is also the name of a pool, and this VIP uses pool \"api\"",
    );
}

#[test]
fn backend_address_must_be_a_host() {
    for (address, why) in [
        ("0.0.0.0", "the unspecified address"),
        ("255.255.255.255", "the broadcast address"),
        ("239.1.2.3", "a multicast address"),
    ] {
        let text = with(
            ONE_VIP,
            "name = \"web\"\n[[vip]]",
            &format!(
                "name = \"web\"\n[[pool.backends]]\naddress = \"{address}\"\nport = 80\n[[vip]]"
            ),
        );
        assert_error(
            &text,
            "balancer.toml:6:11: pool[0] (\"web\").backends[0].address: ",
            &format!("{address} is {why}, not a backend's address"),
        );
    }
}

#[test]
fn duplicate_pool_name() {
    let text =
        "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"web\"\n\n[[pool]]\nname = \"web\"\n";
    assert_error(
        text,
        "balancer.toml:7:8: pool[1] (\"web\").name: ",
        "duplicate pool name \"web\" (first defined as pool[0] on line 4)",
    );
}

#[test]
fn duplicate_backend() {
    let text = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80 },
  { address = "10.0.2.12", port = 80 },
  { address = "10.0.2.11", port = 80, weight = 5 },
]
"#;
    assert_error(
        text,
        "balancer.toml:8:3: pool[0] (\"web\").backends[2]: ",
        "duplicate backend 10.0.2.11:80 (already listed as backends[0])",
    );
}

#[test]
fn same_backend_in_two_pools_is_allowed() {
    let text = "[agent]\ninterfaces = [\"lbc0\"]\n\
                [[pool]]\nname = \"a\"\nbackends = [{ address = \"10.0.2.11\", port = 80 }]\n\
                [[pool]]\nname = \"b\"\nbackends = [{ address = \"10.0.2.11\", port = 80 }]\n";
    assert_eq!(parse(text, ORIGIN).unwrap().pools.len(), 2);
}

/// A config with one pool "p" and `n` VIPs `v0..`; VIP i starts on line 5 + 6 * i.
fn many_vips(n: usize) -> String {
    let mut text = String::from("[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n");
    for i in 0..n {
        let _ = write!(
            text,
            "[[vip]]\nname = \"v{i}\"\naddress = \"10.0.100.{i}\"\nport = 80\nprotocol = \"tcp\"\npool = \"p\"\n"
        );
    }
    text
}

#[test]
fn too_many_vips() {
    assert_eq!(
        parse(&many_vips(MAX_VIPS as usize), ORIGIN)
            .unwrap()
            .vips
            .len(),
        128
    );
    assert_error(
        &many_vips(MAX_VIPS as usize + 1),
        "balancer.toml:773:1: vip[128] (\"v128\"): ",
        "too many VIPs: 129 defined, at most 128 are supported",
    );
}

/// Two pools "a" and "b" with `a` and `b` backends, one per line: backend
/// j of "a" is on line 6 + j, backend k of "b" on line 10 + a + k.
fn many_backends(a: usize, b: usize) -> String {
    let mut text = String::from("[agent]\ninterfaces = [\"lbc0\"]\n");
    let mut n = 0usize;
    for (name, count) in [("a", a), ("b", b)] {
        let _ = write!(text, "[[pool]]\nname = \"{name}\"\nbackends = [\n");
        for _ in 0..count {
            let _ = writeln!(
                text,
                "  {{ address = \"10.1.{}.{}\", port = 80 }},",
                n / 256,
                n % 256
            );
            n += 1;
        }
        text.push_str("]\n");
    }
    text
}

#[test]
fn too_many_backends() {
    let ok = parse(&many_backends(2000, 2096), ORIGIN).unwrap();
    assert_eq!(
        ok.pools.iter().map(|p| p.backends.len()).sum::<usize>(),
        4096
    );
    // The 4097th backend is backends[2096] of pool "b", on line 10 + 2000 + 2096.
    assert_error(
        &many_backends(2000, 2097),
        "balancer.toml:4106:3: pool[1] (\"b\").backends[2096]: ",
        "too many backends: 4097 in total over all pools, at most 4096 are supported",
    );
}

#[test]
fn several_source_addresses() {
    let list = "source_addresses = [\"10.0.2.1\", \"10.0.2.2\"]";
    let nat = parse(&with(NAT, "source_address = \"10.0.2.1\"", list), ORIGIN)
        .unwrap()
        .nat;
    assert_eq!(nat.source_addresses, [ip("10.0.2.1"), ip("10.0.2.2")]);
    let both = with(NAT, "[nat]\n", &format!("[nat]\n{list}\n"));
    assert_error(
        &both,
        "balancer.toml:4:20: nat.source_addresses: ",
        "give either nat.source_address or nat.source_addresses, not both",
    );
    let twice = "source_addresses = [\"10.0.2.1\", \"10.0.2.1\"]";
    assert_error(
        &with(NAT, "source_address = \"10.0.2.1\"", twice),
        "balancer.toml:4:33: nat.source_addresses[1]: ",
        "10.0.2.1 is listed twice",
    );
    let nine = (1..=9)
        .map(|i| format!("\"10.0.2.{i}\""))
        .collect::<Vec<_>>();
    assert_error(
        &with(
            NAT,
            "source_address = \"10.0.2.1\"",
            &format!("source_addresses = [{}]", nine.join(", ")),
        ),
        "balancer.toml:4:20: nat.source_addresses: ",
        "give 1 to 8 addresses (got 9)",
    );
}

#[test]
fn bad_port_range() {
    let cases = [
        ("\"1000-2000\"", "MIN 1000 is below 1024"),
        ("\"30000-20000\"", "MIN 30000 is greater than MAX 20000"),
        ("\"20000\"", "expected \"MIN-MAX\""),
        ("\"20000-70000\"", "MAX 70000 is larger than 65535"),
        ("\"a-b\"", "MIN \"a\" is not a port number"),
        ("\"-5-6\"", "MIN \"\" is not a port number"),
    ];
    for (value, why) in cases {
        let text = with(NAT, "\"20000-32767\"", value);
        assert_error(
            &text,
            "balancer.toml:5:14: nat.port_range: invalid port range ",
            why,
        );
    }
    let text = with(NAT, "\"20000-32767\"", "\"1024 - 65535\"");
    let nat = parse(&text, ORIGIN).unwrap().nat;
    assert_eq!((nat.port_min, nat.port_max), (1024, 65535));
}

#[test]
fn bad_nat_source_address() {
    let text = with(NAT, "\"10.0.2.1\"", "\"10.0.2\"");
    assert_error(
        &text,
        "balancer.toml:4:18: nat.source_address: ",
        "invalid IP address \"10.0.2\" (expected IPv4 or IPv6, e.g. \"10.0.0.1\" or \"2001:db8::1\")",
    );
}

#[test]
fn ring_size_not_prime() {
    let text = with(ONE_VIP, "ring_size = 65537", "ring_size = 65536");
    assert_error(
        &text,
        "balancer.toml:10:13: vip[0] (\"web\").ring_size: ",
        "65536 is not prime (Maglev needs a prime ring size, e.g. 65537)",
    );
    let text = with(ONE_VIP, "ring_size = 65537", "ring_size = 0");
    assert_error(
        &text,
        "balancer.toml:10:13: vip[0] (\"web\").ring_size: ",
        "0 is not prime",
    );
}

#[test]
fn ring_size_too_large() {
    for value in ["65539", "131071", "-7", "9999999999"] {
        let text = with(
            ONE_VIP,
            "ring_size = 65537",
            &format!("ring_size = {value}"),
        );
        assert_error(
            &text,
            "balancer.toml:10:13: vip[0] (\"web\").ring_size: ",
            &format!("{value} is out of range: must be a prime no larger than 65537"),
        );
    }
}

#[test]
fn bad_vip_name() {
    let text = with(
        ONE_VIP,
        "name = \"web\"\naddress",
        "name = \"web site\"\naddress",
    );
    assert_error(
        &text,
        "balancer.toml:6:8: vip[0] (\"web site\").name: ",
        "invalid name \"web site\": contains ' '",
    );
    let long = "x".repeat(65);
    let text = with(
        ONE_VIP,
        "name = \"web\"\naddress",
        &format!("name = \"{long}\"\naddress"),
    );
    assert_error(
        &text,
        "balancer.toml:6:8: vip[0] (",
        "is 65 characters long, at most 64",
    );
}

#[test]
fn bad_pool_name() {
    let text = with(ONE_VIP, "name = \"web\"\n[[vip]]", "name = \"\"\n[[vip]]");
    assert_error(
        &text,
        "balancer.toml:4:8: pool[0] (\"\").name: ",
        "invalid name \"\": must not be empty",
    );
}

#[test]
fn bad_interface_name() {
    let cases = [
        ("\"bad/name\"", "must not contain '/'"),
        ("\"eth 0\"", "must not contain ' '"),
        ("\"eth0:1\"", "must not contain ':'"),
        ("\"\"", "must not be empty"),
        (
            "\"sixteen-chars-xx\"",
            "is 16 bytes long, Linux allows at most 15",
        ),
        ("\"..\"", "are not interface names"),
    ];
    for (value, why) in cases {
        let text = format!("[agent]\ninterfaces = [\"lbc0\", {value}]\n");
        assert_error(
            &text,
            "balancer.toml:2:23: agent.interfaces[1]: invalid interface name ",
            why,
        );
    }
}

#[test]
fn duplicate_interface() {
    let text = "[agent]\ninterfaces = [\n  \"lbc0\",\n  \"lbs0\",\n  \"lbc0\",\n]\n";
    assert_error(
        text,
        "balancer.toml:5:3: agent.interfaces[2]: ",
        "duplicate interface \"lbc0\" (already listed as agent.interfaces[0])",
    );
}

#[test]
fn empty_interfaces() {
    assert_error(
        "\n[agent]\ninterfaces = []\n",
        "balancer.toml:3:14: agent.interfaces: ",
        "at least one interface is required",
    );
}

#[test]
fn duration_out_of_range() {
    let cases = [
        (
            "timeouts.tcp",
            5,
            "tcp = \"5m\"",
            "tcp = \"500ms\"",
            "\"500ms\"",
        ),
        (
            "timeouts.udp",
            6,
            "udp = \"30s\"",
            "udp = \"25h\"",
            "\"25h\"",
        ),
        (
            "timeouts.tcp_closing",
            7,
            "tcp_closing = \"10s\"",
            "tcp_closing = \"0s\"",
            "\"0s\"",
        ),
        (
            "timeouts.snat_time_wait",
            8,
            "snat_time_wait = \"60s\"",
            "snat_time_wait = \"0s\"",
            "\"0s\"",
        ),
        (
            "timeouts.tcp_handshake",
            9,
            "tcp_handshake = \"60s\"",
            "tcp_handshake = \"0s\"",
            "\"0s\"",
        ),
    ];
    for (field, line, from, to, value) in cases {
        let text = with(TIMEOUTS, from, to);
        let column = to.find('"').unwrap() + 1;
        assert_error(
            &text,
            &format!("balancer.toml:{line}:{column}: {field}: "),
            &format!("{value} is out of range: must be between 1s and 24h"),
        );
    }
    // The bounds themselves are accepted.
    let text = with(TIMEOUTS, "tcp = \"5m\"", "tcp = \"24h\"");
    let text = with(&text, "udp = \"30s\"", "udp = \"1s\"");
    let timeouts = parse(&text, ORIGIN).unwrap().timeouts;
    assert_eq!(timeouts.tcp, MAX_TIMEOUT);
    assert_eq!(timeouts.udp, MIN_TIMEOUT);
}

#[test]
fn bad_duration() {
    let text = with(TIMEOUTS, "udp = \"30s\"", "udp = \"30 parsecs\"");
    assert_error(
        &text,
        "balancer.toml:6:7: timeouts.udp: ",
        "invalid duration \"30 parsecs\": unknown time unit \"parsecs\"",
    );
    let text = with(TIMEOUTS, "udp = \"30s\"", "udp = 30");
    assert_error(
        &text,
        "balancer.toml:6:7: timeouts.udp: ",
        "invalid type: integer `30`, expected a string",
    );
}

#[test]
fn port_out_of_range() {
    let text = with(ONE_VIP, "port = 80\n", "port = 0\n");
    assert_error(
        &text,
        "balancer.toml:8:8: vip[0] (\"web\").port: ",
        "port 0 is out of range 1..=65535",
    );
    let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                backends = [{ address = \"10.0.2.1\", port = 65536 }]\n";
    assert_error(
        text,
        "balancer.toml:5:44: pool[0] (\"p\").backends[0].port: ",
        "port 65536 is out of range 1..=65535",
    );
}

#[test]
fn weight_out_of_range() {
    let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                backends = [{ address = \"10.0.2.1\", port = 80, weight = 10001 }]\n";
    assert_error(
        text,
        "balancer.toml:5:57: pool[0] (\"p\").backends[0].weight: ",
        "weight 10001 is out of range 0..=10000 (0 = drained)",
    );
}

#[test]
fn bad_ip_address() {
    let text = with(ONE_VIP, "\"10.0.100.1\"", "\"10.0.100.300\"");
    assert_error(
        &text,
        "balancer.toml:7:11: vip[0] (\"web\").address: ",
        "invalid IP address \"10.0.100.300\"",
    );
    let text = "[agent]\ninterfaces = [\"lbc0\"]\n[[pool]]\nname = \"p\"\n\
                backends = [{ address = \"fe80::1\", port = 80 }]\n";
    assert_error(
        text,
        "balancer.toml:5:25: pool[0] (\"p\").backends[0].address: ",
        "fe80::1 is a link-local address, not a backend's address",
    );
    let text = with(ONE_VIP, "\"10.0.100.1\"", "\"fd00:100::1::2\"");
    assert_error(
        &text,
        "balancer.toml:7:11: vip[0] (\"web\").address: ",
        "invalid IP address \"fd00:100::1::2\"",
    );
}

#[test]
fn bad_protocol() {
    let text = with(ONE_VIP, "\"tcp\"", "\"icmp\"");
    assert_error(
        &text,
        "balancer.toml:9:12: vip[0] (\"web\").protocol: ",
        "invalid protocol \"icmp\": expected \"tcp\" or \"udp\"",
    );
}

#[test]
fn bad_scheduler_and_xdp_mode() {
    let text = with(ONE_VIP, "ring_size = 65537", "scheduler = \"random\"");
    assert_error(
        &text,
        "balancer.toml:10:13: vip[0] (\"web\").scheduler: ",
        "invalid scheduler \"random\": expected \"maglev\" or \"round-robin\"",
    );
    let text = "[agent]\ninterfaces = [\"lbc0\"]\nxdp_mode = \"native\"\n";
    assert_error(
        text,
        "balancer.toml:3:12: agent.xdp_mode: ",
        "invalid XDP mode \"native\": expected \"driver\", \"skb\" or \"auto\"",
    );
}

#[test]
fn pin_dir_and_keep_attached() {
    let agent = |extra: &str| format!("[agent]\ninterfaces = [\"lbc0\"]\n{extra}");
    let config = parse(&agent("pin_dir = \"\"\n"), ORIGIN).unwrap();
    assert_eq!(
        (config.agent.pin_dir, config.agent.keep_attached),
        (None, false),
        "an empty pin_dir pins nothing"
    );
    assert_error(
        &agent("pin_dir = \"bpf/lb\"\n"),
        "balancer.toml:3:11: agent.pin_dir: ",
        "\"bpf/lb\" is not an absolute path",
    );
    assert_error(
        &agent("pin_dir = \"\"\nkeep_attached = true\n"),
        "balancer.toml:4:17: agent.keep_attached: ",
        "needs agent.pin_dir",
    );
    assert_error(
        &agent("keep_attached = \"yes\"\n"),
        "balancer.toml:3:17: agent.keep_attached: ",
        "invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn empty_control_socket() {
    let text = "[agent]\ninterfaces = [\"lbc0\"]\ncontrol_socket = \"\"\n";
    assert_error(
        text,
        "balancer.toml:3:18: agent.control_socket: ",
        "must not be empty",
    );
}
