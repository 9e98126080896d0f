use super::testing::{
    assert_error, assert_mangling_never_panics, ip, readme_toml, with, NAT, ONE_VIP, ORIGIN,
    TIMEOUTS,
};
use super::*;

/// A complete configuration; line numbers are in the comments of the tests.
const FULL: &str = r#"# balancer test config
[agent]
interfaces = ["lbc0", "lbs0"]
xdp_mode = "driver"
control_socket = "/tmp/lb.sock"
pin_dir = "/sys/fs/bpf/lb"
keep_attached = true

[nat]
source_address = "10.0.2.1"
port_range = "30000-40000"

[timeouts]
tcp = "10m"
udp = "45s"
tcp_closing = "5s"
snat_time_wait = "2m"
tcp_handshake = "20s"

[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80, weight = 1 },
  { address = "10.0.2.12", port = 80 },
  { address = "10.0.2.13", port = 8080, weight = 0 },
]

[[pool]]
name = "dns"
backends = []

[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
ring_size = 65537
pool = "web"

[[vip]]
name = "dns"
address = "10.0.100.1"
port = 53
protocol = "UDP"
scheduler = "rr"
ring_size = 251
pool = "dns"
"#;

#[test]
fn the_readme_example_parses() {
    let example = readme_toml("# balancer.toml");
    let config = parse(example, "README.md").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.agent.pin_dir, Some(PathBuf::from(DEFAULT_PIN_DIR)));
    assert_eq!(config.vips.len(), 1);
}

#[test]
fn the_readme_ipv6_example_parses() {
    let example = readme_toml("# IPv6 beside IPv4");
    let config = parse(example, "README.md").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.vips[0].socket_addr().to_string(),
        "[2001:db8:100::1]:80"
    );
    assert_eq!(
        config.pools[0].backends[0].socket_addr().to_string(),
        "[2001:db8:2::11]:80"
    );
    assert_eq!(
        config.nat.source_addresses,
        [ip("10.0.2.1"), ip("2001:db8:2::1")]
    );
}

#[test]
fn the_readme_http_example_parses() {
    let example = readme_toml("# HTTP mode");
    let config = parse(example, "README.md").unwrap_or_else(|e| panic!("{e}"));
    let vip = &config.vips[0];
    assert_eq!((vip.mode, vip.pool.as_str()), (VipMode::Http, "app"));
    let rules: Vec<_> = vip
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.pool.as_str(), r.conditions.len()))
        .collect();
    assert_eq!(
        rules,
        [
            ("api", "api", 1),
            ("static", "static", 1),
            ("static-files", "static", 1)
        ]
    );
}

#[test]
fn full_example_parses() {
    let config = parse(FULL, ORIGIN).unwrap();
    let expected = Config {
        agent: AgentConfig {
            interfaces: vec!["lbc0".into(), "lbs0".into()],
            interface_locations: vec![
                "balancer.toml:3:15: agent.interfaces[0]".into(),
                "balancer.toml:3:23: agent.interfaces[1]".into(),
            ],
            wait_for_interfaces: false,
            xdp_mode: XdpMode::Driver,
            control_socket: PathBuf::from("/tmp/lb.sock"),
            pin_dir: Some(PathBuf::from("/sys/fs/bpf/lb")),
            keep_attached: true,
        },
        nat: NatConfig {
            source_addresses: vec![ip("10.0.2.1")],
            port_min: 30000,
            port_max: 40000,
        },
        timeouts: Timeouts {
            tcp: Duration::from_mins(10),
            udp: Duration::from_secs(45),
            tcp_closing: Duration::from_secs(5),
            snat_time_wait: Duration::from_mins(2),
            tcp_handshake: Duration::from_secs(20),
        },
        http: ProxySettings::default(),
        telemetry: None,
        tunnel: TunnelConfig::default(),
        sync: None,
        pools: vec![
            PoolConfig {
                name: "web".into(),
                backends: vec![
                    BackendConfig {
                        address: ip("10.0.2.11"),
                        port: 80,
                        weight: 1,
                        check: CheckConfig::default(),
                        cookie: None,
                        maxconn: 0,
                    },
                    BackendConfig {
                        address: ip("10.0.2.12"),
                        port: 80,
                        weight: 1,
                        check: CheckConfig::default(),
                        cookie: None,
                        maxconn: 0,
                    },
                    BackendConfig {
                        address: ip("10.0.2.13"),
                        port: 8080,
                        weight: 0,
                        check: CheckConfig::default(),
                        cookie: None,
                        maxconn: 0,
                    },
                ],
                check: CheckConfig::default(),
                on_backend_down: DownPolicy::Shutdown,
                balance: PoolBalance::default(),
                discovery: None,
            },
            PoolConfig {
                name: "dns".into(),
                backends: vec![],
                check: CheckConfig::default(),
                on_backend_down: DownPolicy::Shutdown,
                balance: PoolBalance::default(),
                discovery: None,
            },
        ],
        vips: vec![
            VipConfig {
                name: "web".into(),
                address: ip("10.0.100.1"),
                port: 80,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Maglev,
                ring_size: 65537,
                pool: "web".into(),
                on_all_down: AllDownPolicy::Drop,
                forwarding: Forwarding::Nat,
                encapsulation: Encapsulation::Ipip,
                mode: VipMode::L4,
                rules: vec![],
            },
            VipConfig {
                name: "dns".into(),
                address: ip("10.0.100.1"),
                port: 53,
                protocol: Protocol::Udp,
                scheduler: Scheduler::RoundRobin,
                ring_size: 251,
                pool: "dns".into(),
                on_all_down: AllDownPolicy::Drop,
                forwarding: Forwarding::Nat,
                encapsulation: Encapsulation::Ipip,
                mode: VipMode::L4,
                rules: vec![],
            },
        ],
        vrrp: vec![],
        vrrp_sync_groups: vec![],
    };
    assert_eq!(config, expected);
    assert_eq!(config.pool("dns"), Some(&expected.pools[1]));
    assert_eq!(config.pool("nope"), None);
}

#[test]
fn minimal_config_uses_defaults() {
    let config = parse("[agent]\ninterfaces = [\"eth0\"]\n", ORIGIN).unwrap();
    assert_eq!(
        config,
        Config {
            agent: AgentConfig {
                interfaces: vec!["eth0".into()],
                interface_locations: vec!["balancer.toml:2:15: agent.interfaces[0]".into()],
                wait_for_interfaces: false,
                xdp_mode: XdpMode::Auto,
                control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
                pin_dir: Some(PathBuf::from(DEFAULT_PIN_DIR)),
                keep_attached: false,
            },
            nat: NatConfig {
                source_addresses: vec![],
                port_min: 20000,
                port_max: 32767,
            },
            timeouts: Timeouts {
                tcp: Duration::from_mins(5),
                udp: Duration::from_secs(30),
                tcp_closing: Duration::from_secs(10),
                snat_time_wait: Duration::from_mins(1),
                tcp_handshake: Duration::from_secs(5),
            },
            http: ProxySettings::default(),
            telemetry: None,
            tunnel: TunnelConfig::default(),
            sync: None,
            pools: vec![],
            vips: vec![],
            vrrp: vec![],
            vrrp_sync_groups: vec![],
        }
    );
    assert_eq!(config.nat, NatConfig::default());
    assert_eq!(config.timeouts, Timeouts::default());
}

#[test]
fn wait_for_interfaces_is_read_and_must_be_a_boolean() {
    let text = "[agent]\ninterfaces = [\"eth0\"]\nwait_for_interfaces = true\n";
    assert!(parse(text, ORIGIN).unwrap().agent.wait_for_interfaces);
    let err = parse(&text.replace("true", "\"yes\""), ORIGIN).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("balancer.toml:3:23: agent.wait_for_interfaces: "),
        "{err}"
    );
}

#[test]
fn empty_tables_and_omitted_fields_use_defaults() {
    let text = "[agent]\ninterfaces = [\"eth0\"]\n[nat]\n[timeouts]\nudp = \"1m\"\n\
                [[pool]]\nname = \"p\"\n[[vip]]\nname = \"v\"\naddress = \"1.2.3.4\"\n\
                port = 443\nprotocol = \"tcp\"\npool = \"p\"\n";
    let config = parse(text, ORIGIN).unwrap();
    assert_eq!(config.nat, NatConfig::default());
    assert_eq!(config.timeouts.udp, Duration::from_mins(1));
    assert_eq!(config.timeouts.tcp, DEFAULT_TCP_TIMEOUT);
    assert!(config.pools[0].backends.is_empty());
    assert_eq!(config.vips[0].scheduler, Scheduler::Maglev);
    assert_eq!(config.vips[0].ring_size, DEFAULT_RING_SIZE);
}

#[test]
fn one_vip_base_is_valid() {
    let config = parse(ONE_VIP, ORIGIN).unwrap();
    assert_eq!(config.vips.len(), 1);
    parse(TIMEOUTS, ORIGIN).unwrap();
    parse(NAT, ORIGIN).unwrap();
}

#[test]
fn toml_syntax_error() {
    let text = with(ONE_VIP, "port = 80\n", "port = 80 80\n");
    assert_error(&text, "balancer.toml:8:11: ", "expected newline");
    let text = with(ONE_VIP, "name = \"web\"\naddress", "name = \"web\naddress");
    assert_error(&text, "balancer.toml:6:", "");
    let text = "[agent]\ninterfaces = [\"lbc0\"]\n[agent]\n";
    assert_error(text, "balancer.toml:3:1: ", "duplicate key");
}

#[test]
fn unknown_field() {
    let text = with(ONE_VIP, "ring_size = 65537", "shceduler = \"maglev\"");
    assert_error(
        &text,
        "balancer.toml:10:1: vip[0] (\"web\").shceduler: ",
        "unknown field `shceduler`, expected one of",
    );
    let text = "[agent]\ninterfaces = [\"lbc0\"]\nxdp-mode = \"skb\"\n";
    assert_error(
        text,
        "balancer.toml:3:1: agent.xdp-mode: ",
        "unknown field `xdp-mode`",
    );
    let text = "[agent]\ninterfaces = [\"lbc0\"]\n[health]\n";
    assert_error(
        text,
        "balancer.toml:3:2: health: ",
        "unknown field `health`",
    );
}

#[test]
fn unknown_field_in_inline_backend() {
    let text = r#"[agent]
interfaces = ["lbc0"]
[[pool]]
name = "web"
backends = [
  { address = "10.0.2.11", port = 80 },
  { address = "10.0.2.12", port = 80, wieght = 2 },
]
"#;
    assert_error(
        text,
        "balancer.toml:7:39: pool[0] (\"web\").backends[1].wieght: ",
        "unknown field `wieght`, expected one of `address`, `port`, `weight`",
    );
}

#[test]
fn wrong_type() {
    let text = with(ONE_VIP, "port = 80\n", "port = \"eighty\"\n");
    assert_error(
        &text,
        "balancer.toml:8:8: vip[0] (\"web\").port: ",
        "invalid type: string \"eighty\", expected an integer",
    );
    let text = "[agent]\ninterfaces = \"lbc0\"\n";
    assert_error(
        text,
        "balancer.toml:2:14: agent.interfaces: ",
        "invalid type: string \"lbc0\", expected a sequence",
    );
    assert_error(
        "agent = 1\n",
        "balancer.toml:1:9: agent: ",
        "invalid type: integer `1`, expected a table",
    );
}

#[test]
fn missing_required_fields() {
    let text = with(ONE_VIP, "pool = \"web\"\n", "\n");
    assert_error(
        &text,
        "balancer.toml:5:1: vip[0] (\"web\"): ",
        "missing field `pool`",
    );
    assert_error("", "balancer.toml:1:1: ", "missing field `agent`");
    assert_error(
        "[agent]\n",
        "balancer.toml:1:1: agent: ",
        "missing field `interfaces`",
    );
}

#[test]
fn missing_file() {
    let path = Path::new("/nonexistent-dir/balancer.toml");
    let err = load(path).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert_eq!(err.line(), None);
    let message = err.to_string();
    assert!(
        message.starts_with("/nonexistent-dir/balancer.toml: cannot read config file: "),
        "{message}"
    );
}

#[test]
fn load_names_the_file() {
    let path = std::env::temp_dir().join(format!("config-rs-test-{}.toml", std::process::id()));
    std::fs::write(&path, with(ONE_VIP, "port = 80\n", "port = 80000\n")).unwrap();
    let err = load(&path).unwrap_err();
    std::fs::write(&path, ONE_VIP).unwrap();
    let ok = load(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(err.line(), Some(8));
    assert_eq!(
        err.to_string(),
        format!(
            "{}:8:8: vip[0] (\"web\").port: port 80000 is out of range 1..=65535",
            path.display()
        )
    );
    assert_eq!(ok.unwrap().vips[0].port, 80);
}

#[test]
fn is_prime_works() {
    let primes: Vec<u32> = (0..30).filter(|n| is_prime(*n)).collect();
    assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(is_prime(65537));
    assert!(!is_prime(65536));
    assert!(!is_prime(65535));
    assert!(is_prime(4_294_967_291));
    assert!(!is_prime(u32::MAX));
}

#[test]
fn name_rules() {
    assert!(is_valid_name("web-1.prod_A"));
    assert!(is_valid_name(&"a".repeat(64)));
    assert!(!is_valid_name(&"a".repeat(65)));
    assert!(!is_valid_name(""));
    assert!(!is_valid_name("a b"));
    assert!(!is_valid_name("wéb"));
    assert!(is_valid_interface_name("lbc0"));
    assert!(is_valid_interface_name("fifteen-chars-x"));
    assert!(!is_valid_interface_name("sixteen-chars-xx"));
    assert!(!is_valid_interface_name("a/b"));
    assert!(!is_valid_interface_name("a\tb"));
    assert!(!is_valid_interface_name("."));
}

#[test]
fn backend_addresses() {
    let check = |s: &str| check_backend_address(s.parse().unwrap());
    assert_eq!(check("10.0.2.11:80"), Ok(()));
    assert_eq!(check("10.0.2.11:0"), Err(BackendAddressError::PortZero));
    for (address, why) in [
        ("0.0.0.0", "the unspecified address"),
        ("255.255.255.255", "the broadcast address"),
        ("239.1.2.3", "a multicast address"),
    ] {
        let err = check(&format!("{address}:80")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{address} is {why}, not a backend's address")
        );
    }
    assert_eq!(
        check("10.0.2.11:0").unwrap_err().to_string(),
        "port 0 is out of range 1..=65535"
    );
}

#[test]
fn mangled_input_never_panics() {
    let base = with(
        ONE_VIP,
        "name = \"web\"\n[[vip]]",
        "name = 'web' # pool\nbackends = [{ address = \"10.0.2.1\", port = 80 }]\n[[vip]]",
    );
    let substitutes = ["\"", "'", "[", "]", "{", "=", "\n", "#", "é", "\\", "'''"];
    assert_mangling_never_panics(&base, &substitutes);
}
