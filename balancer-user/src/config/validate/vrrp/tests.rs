use std::net::IpAddr;
use std::time::Duration;

use super::super::super::parse;
use super::super::super::testing::{
    assert_error, assert_error_at, assert_mangling_never_panics, readme_toml, with, ORIGIN,
};
use crate::vrrp::{
    self, HostCheck, HostRequirement, InstanceConfig, NotifyCommand, SyncGroupConfig, Track,
    TrackTarget, V3Checksum, Version, VirtualAddress,
};

/// Two instances and a sync group; the tests name the lines.
const VRRP: &str = r#"[agent]
interfaces = ["lbc0", "lbs0"]
[[pool]]
name = "web"
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"

[[vrrp]]
name = "vi_1"
interface = "lbc0"
vrid = 51
priority = 150
advert_interval = "2s"
version = 2
addresses = ["10.0.100.1/24", "10.0.100.2/32"]
nopreempt = false
preempt_delay = "10s"
unicast_source = "10.0.1.1"
unicast_peers = ["10.0.1.2", "10.0.1.3"]
garp_master_delay = "2s"
garp_master_repeat = 3
track = [
  { vip = "web", weight = -60 },
  { interface = "lbs0", reverse = true },
  { data_plane = true, weight = 10 },
]
notify = "/etc/balancer/notify.sh 'lb pair'"

[[vrrp]]
name = "vi_2"
interface = "lbs0"
vrid = 52
version = 3
advert_interval = "500ms"
v3_checksum = "plain"
addresses = ["10.0.2.1/24"]

[[vrrp_sync_group]]
name = "g"
instances = ["vi_1", "vi_2"]
notify = "/etc/balancer/group.sh"
sync_group_tracking_weight = true
"#;

/// One instance with only the required fields; tests append lines from line 8.
const ONE_VRRP: &str = r#"[agent]
interfaces = ["lbc0"]
[[vrrp]]
name = "vi_1"
interface = "lbc0"
vrid = 51
addresses = ["10.0.1.100/24"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn address(s: &str) -> VirtualAddress {
    s.parse().unwrap()
}

fn requirement(location: &str, check: HostCheck) -> HostRequirement {
    HostRequirement {
        location: format!("{ORIGIN}:{location}"),
        check,
    }
}

/// Asserts that replacing `from` by `to` in [`VRRP`] fails at the first `at` on `line`.
fn assert_vrrp_error(from: &str, to: &str, (line, at): (usize, &str), field: &str, says: &str) {
    assert_error_at(VRRP, (from, to), (line, at), field, says);
}

/// [`ONE_VRRP`] with `extra` lines appended.
fn one_vrrp(extra: &str) -> String {
    format!("{ONE_VRRP}{extra}")
}

#[test]
fn full_example_parses() {
    let config = parse(VRRP, ORIGIN).unwrap();
    let mut params = vrrp::Config::new("vi_1", 51, ip("10.0.1.1"));
    params.priority = 150;
    params.advert_interval = Duration::from_secs(2);
    params.preempt_delay = Duration::from_secs(10);
    params.garp_master_delay = Duration::from_secs(2);
    params.garp_master_repeat = 3;
    params.tracks = vec![
        Track::weighted("vip web", -60),
        Track {
            name: "interface lbs0".into(),
            weight: 0,
            reverse: true,
        },
        Track::weighted("data_plane", 10),
    ];
    let vi_1 = InstanceConfig {
        params,
        interface: "lbc0".into(),
        addresses: vec![address("10.0.100.1/24"), address("10.0.100.2/32")],
        unicast_source: Some(ip("10.0.1.1")),
        unicast_peers: vec![ip("10.0.1.2"), ip("10.0.1.3")],
        v3_checksum: V3Checksum::PseudoHeader,
        tracks: vec![
            TrackTarget::Vip("web".into()),
            TrackTarget::Interface("lbs0".into()),
            TrackTarget::DataPlane,
        ],
        notify: Some(NotifyCommand::parse("/etc/balancer/notify.sh 'lb pair'").unwrap()),
        host_requirements: vec![
            requirement(
                "14:13: vrrp[0] (\"vi_1\").interface",
                HostCheck::Interface {
                    interface: "lbc0".into(),
                },
            ),
            requirement(
                "22:18: vrrp[0] (\"vi_1\").unicast_source",
                HostCheck::UnicastSource {
                    interface: "lbc0".into(),
                    address: ip("10.0.1.1"),
                },
            ),
            requirement(
                "31:10: vrrp[0] (\"vi_1\").notify",
                HostCheck::Executable {
                    program: "/etc/balancer/notify.sh".into(),
                },
            ),
        ],
    };
    let mut params = vrrp::Config::new("vi_2", 52, ip("0.0.0.0"));
    params.version = Version::V3;
    params.advert_interval = Duration::from_millis(500);
    let vi_2 = InstanceConfig {
        params,
        interface: "lbs0".into(),
        addresses: vec![address("10.0.2.1/24")],
        unicast_source: None,
        unicast_peers: vec![],
        v3_checksum: V3Checksum::Plain,
        tracks: vec![],
        notify: None,
        host_requirements: vec![
            requirement(
                "35:13: vrrp[1] (\"vi_2\").interface",
                HostCheck::Interface {
                    interface: "lbs0".into(),
                },
            ),
            requirement(
                "35:13: vrrp[1] (\"vi_2\").interface",
                HostCheck::PrimaryAddress {
                    interface: "lbs0".into(),
                    ipv6: false,
                },
            ),
        ],
    };
    assert_eq!(config.vrrp, [vi_1, vi_2]);
    let group = SyncGroupConfig {
        name: "g".into(),
        instances: vec!["vi_1".into(), "vi_2".into()],
        notify: Some(NotifyCommand::parse("/etc/balancer/group.sh").unwrap()),
        tracking_weight: true,
        host_requirements: vec![requirement(
            "45:10: vrrp_sync_group[0] (\"g\").notify",
            HostCheck::Executable {
                program: "/etc/balancer/group.sh".into(),
            },
        )],
    };
    assert_eq!(config.vrrp_sync_groups, [group]);
    // The configuration is ready to run: the group builds, and every instance runs alone.
    let built = config.vrrp_sync_groups[0].build(&config.vrrp).unwrap();
    assert_eq!(built.members().len(), 2);
    for instance in &config.vrrp {
        vrrp::Machine::new(instance.params.clone()).unwrap();
    }
    assert!(config.vrrp[0].destinations().contains(&ip("10.0.1.3")));
    assert!(!config.vrrp[1].pseudo_header_checksum());
}

#[test]
fn defaults_are_keepalived_s() {
    let config = parse(ONE_VRRP, ORIGIN).unwrap();
    let expected = InstanceConfig {
        params: vrrp::Config::new("vi_1", 51, ip("0.0.0.0")),
        interface: "lbc0".into(),
        addresses: vec![address("10.0.1.100/24")],
        unicast_source: None,
        unicast_peers: vec![],
        v3_checksum: V3Checksum::PseudoHeader,
        tracks: vec![],
        notify: None,
        host_requirements: vec![
            requirement(
                "5:13: vrrp[0] (\"vi_1\").interface",
                HostCheck::Interface {
                    interface: "lbc0".into(),
                },
            ),
            requirement(
                "5:13: vrrp[0] (\"vi_1\").interface",
                HostCheck::PrimaryAddress {
                    interface: "lbc0".into(),
                    ipv6: false,
                },
            ),
        ],
    };
    assert_eq!(config.vrrp, [expected]);
    assert!(config.vrrp_sync_groups.is_empty());
    let params = &config.vrrp[0].params;
    assert_eq!(params.version, Version::V2);
    assert_eq!(params.priority, 100);
    assert_eq!(params.advert_interval, Duration::from_secs(1));
    assert!(params.preempt);
    assert_eq!(params.preempt_delay, Duration::ZERO);
    assert_eq!(params.garp_master_delay, Duration::from_secs(5));
    assert_eq!(params.garp_master_repeat, 5);
    assert_eq!(config.vrrp[0].destinations(), [ip("224.0.0.18")]);
}

#[test]
fn ipv6_instances_speak_version_3() {
    let text = with(ONE_VRRP, "\"10.0.1.100/24\"", "\"fd00::100/64\"");
    let config = parse(&text, ORIGIN).unwrap();
    let instance = &config.vrrp[0];
    assert!(instance.is_ipv6());
    assert_eq!(instance.params.version, Version::V3);
    assert_eq!(instance.params.primary_address, ip("::"));
    assert_eq!(instance.destinations(), [ip("ff02::12")]);
    assert!(instance.host_requirements.iter().any(|r| r.check
        == HostCheck::PrimaryAddress {
            interface: "lbc0".into(),
            ipv6: true,
        }));
    // A VRID is per family: the same one on the same interface for IPv4 is another router.
    let both = format!("{text}[[vrrp]]\nname = \"vi_4\"\ninterface = \"lbc0\"\nvrid = 51\naddresses = [\"10.0.1.100/24\"]\n");
    assert_eq!(parse(&both, ORIGIN).unwrap().vrrp.len(), 2);
    // Unicast over IPv6.
    let text = format!("{text}unicast_source = \"fd00::1\"\nunicast_peers = [\"fd00::2\"]\n");
    let instance = parse(&text, ORIGIN).unwrap().vrrp.remove(0);
    assert_eq!(instance.params.primary_address, ip("fd00::1"));
    assert_eq!(instance.destinations(), [ip("fd00::2")]);
}

#[test]
fn address_owner_needs_its_addresses() {
    let config = parse(&one_vrrp("priority = 255\n"), ORIGIN).unwrap();
    let owner = config.vrrp[0].host_requirements.last().unwrap();
    assert_eq!(
        owner.to_string(),
        "balancer.toml:8:12: vrrp[0] (\"vi_1\").priority: priority 255 (the address owner) \
         needs interface \"lbc0\" to hold 10.0.1.100/24 already (use 254 or less otherwise)"
    );
}

#[test]
fn the_readme_example_parses() {
    let base = readme_toml("# balancer.toml");
    let vrrp = readme_toml("[[vrrp]]");
    let config = parse(&format!("{base}\n{vrrp}"), "README.md").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.vrrp.len(), 2);
    assert_eq!(config.vrrp_sync_groups.len(), 1);
    config.vrrp_sync_groups[0].build(&config.vrrp).unwrap();
}

#[test]
fn vrid_out_of_range() {
    for vrid in ["0", "256", "-1"] {
        assert_vrrp_error(
            "vrid = 51",
            &format!("vrid = {vrid}"),
            (15, vrid),
            "vrrp[0] (\"vi_1\").vrid",
            &format!("vrid {vrid} is out of range 1..=255"),
        );
    }
}

#[test]
fn duplicate_vrid_on_one_interface() {
    let text = with(
        VRRP,
        "interface = \"lbs0\"\nvrid = 52",
        "interface = \"lbc0\"\nvrid = 51",
    );
    assert_error(
        &text,
        "balancer.toml:36:8: vrrp[1] (\"vi_2\").vrid: ",
        "vrid 51 is already used on interface \"lbc0\" for IPv4 by vrrp[0] (\"vi_1\") on line 15",
    );
    // The same VRID on another interface is another router.
    let text = with(VRRP, "vrid = 52", "vrid = 51");
    assert_eq!(parse(&text, ORIGIN).unwrap().vrrp[1].params.vrid, 51);
}

#[test]
fn duplicate_instance_name() {
    assert_vrrp_error(
        "name = \"vi_2\"",
        "name = \"vi_1\"",
        (34, "\"vi_1\""),
        "vrrp[1] (\"vi_1\").name",
        "duplicate VRRP instance name \"vi_1\" (first defined as vrrp[0] on line 13)",
    );
}

#[test]
fn priority_out_of_range() {
    for priority in ["0", "256"] {
        assert_vrrp_error(
            "priority = 150",
            &format!("priority = {priority}"),
            (16, priority),
            "vrrp[0] (\"vi_1\").priority",
            &format!(
                "priority {priority} is out of range 1..=255 (255 = address owner; 0 is reserved"
            ),
        );
    }
}

#[test]
fn nopreempt_with_priority_255() {
    let text = with(VRRP, "nopreempt = false", "nopreempt = true");
    assert_error_at(
        &text,
        ("priority = 150", "priority = 255"),
        (16, "255"),
        "vrrp[0] (\"vi_1\").priority",
        "nopreempt is incompatible with priority 255 (the address owner always preempts)",
    );
    // With a lower priority, preempt_delay is what nopreempt refuses.
    assert_vrrp_error(
        "nopreempt = false",
        "nopreempt = true",
        (21, "\"10s\""),
        "vrrp[0] (\"vi_1\").preempt_delay",
        "preempt_delay is incompatible with nopreempt",
    );
    assert_vrrp_error(
        "preempt_delay = \"10s\"",
        "preempt_delay = \"1001s\"",
        (21, "\"1001s\""),
        "vrrp[0] (\"vi_1\").preempt_delay",
        "preempt_delay 1001s is over 1000 s",
    );
}

#[test]
fn version_2_refuses_ipv6_and_fractional_intervals() {
    let v6 = with(ONE_VRRP, "\"10.0.1.100/24\"", "\"fd00::100/64\"");
    assert_error(
        &format!("{v6}version = 2\n"),
        "balancer.toml:8:11: vrrp[0] (\"vi_1\").version: ",
        "VRRPv2 carries IPv4 only: an IPv6 instance needs version 3",
    );
    for interval in ["\"1500ms\"", "\"0s\"", "\"256s\""] {
        assert_vrrp_error(
            "advert_interval = \"2s\"",
            &format!("advert_interval = {interval}"),
            (17, interval),
            "vrrp[0] (\"vi_1\").advert_interval",
            "is not valid for VRRPv2: v2 takes whole seconds up to 255 s, v3 centiseconds up to 40.95 s",
        );
    }
    for interval in ["\"5ms\"", "\"41s\"", "\"1005ms\""] {
        assert_vrrp_error(
            "advert_interval = \"500ms\"",
            &format!("advert_interval = {interval}"),
            (38, interval),
            "vrrp[1] (\"vi_2\").advert_interval",
            "is not valid for VRRPv3",
        );
    }
    assert_vrrp_error(
        "version = 2",
        "version = 4",
        (18, "4"),
        "vrrp[0] (\"vi_1\").version",
        "version 4 is not 2 or 3 (2 is keepalived's default, IPv6 needs 3)",
    );
    assert_vrrp_error(
        "advert_interval = \"2s\"",
        "advert_interval = \"soon\"",
        (17, "\"soon\""),
        "vrrp[0] (\"vi_1\").advert_interval",
        "invalid duration \"soon\"",
    );
}

#[test]
fn unknown_vip_in_a_track() {
    assert_vrrp_error(
        "{ vip = \"web\"",
        "{ vip = \"wbe\"",
        (27, "\"wbe\""),
        "vrrp[0] (\"vi_1\").track[0].vip",
        "unknown VIP \"wbe\" (defined VIPs: \"web\")",
    );
    assert_error(
        &one_vrrp("track = [{ vip = \"web\" }]\n"),
        "balancer.toml:8:18: vrrp[0] (\"vi_1\").track[0].vip: ",
        "unknown VIP \"web\" (no [[vip]] is defined)",
    );
}

#[test]
fn bad_tracks() {
    let t0 = "vrrp[0] (\"vi_1\").track[0]";
    let cases: &[(&str, &str, usize, &str, String, &str)] = &[
        (
            "weight = -60",
            "weight = -254",
            27,
            "-254",
            format!("{t0}.weight"),
            "weight -254 is out of range -253..=253 (0 = Fault while down",
        ),
        (
            "{ vip = \"web\", weight = -60 }",
            "{ weight = -60 }",
            27,
            "{",
            t0.to_owned(),
            "a track needs one of vip = \"NAME\", interface = \"IF\" or data_plane = true",
        ),
        (
            "{ vip = \"web\", weight = -60 }",
            "{ vip = \"web\", data_plane = true }",
            27,
            "true",
            format!("{t0}.data_plane"),
            "a track watches one thing: this one has vip and data_plane (write two tracks)",
        ),
        (
            "{ data_plane = true, weight = 10 }",
            "{ data_plane = false }",
            29,
            "false",
            "vrrp[0] (\"vi_1\").track[2].data_plane".to_owned(),
            "data_plane = false tracks nothing",
        ),
        (
            "{ interface = \"lbs0\", reverse = true }",
            "{ interface = \"lb s0\" }",
            28,
            "\"lb s0\"",
            "vrrp[0] (\"vi_1\").track[1].interface".to_owned(),
            "invalid interface name \"lb s0\": must not contain ' '",
        ),
        (
            "{ data_plane = true, weight = 10 }",
            "{ vip = \"web\" }",
            29,
            "{",
            "vrrp[0] (\"vi_1\").track[2]".to_owned(),
            "vip web is already tracked by track[0] (track it once)",
        ),
        (
            "reverse = true",
            "revers = true",
            28,
            "revers",
            "vrrp[0] (\"vi_1\").track[1].revers".to_owned(),
            "unknown field `revers`",
        ),
    ];
    for (from, to, line, at, field, says) in cases {
        assert_vrrp_error(from, to, (*line, at), field, says);
    }
}

#[test]
fn unknown_instance_in_a_sync_group() {
    assert_vrrp_error(
        "instances = [\"vi_1\", \"vi_2\"]",
        "instances = [\"vi_1\", \"vi_3\"]",
        (44, "\"vi_3\""),
        "vrrp_sync_group[0] (\"g\").instances[1]",
        "unknown VRRP instance \"vi_3\" (defined VRRP instances: \"vi_1\", \"vi_2\")",
    );
    assert_vrrp_error(
        "instances = [\"vi_1\", \"vi_2\"]",
        "instances = []",
        (44, "[]"),
        "vrrp_sync_group[0] (\"g\").instances",
        "at least one instance is required",
    );
}

#[test]
fn an_instance_in_two_groups() {
    let text = format!("{VRRP}[[vrrp_sync_group]]\nname = \"h\"\ninstances = [\"vi_2\"]\n");
    assert_error(
        &text,
        "balancer.toml:49:14: vrrp_sync_group[1] (\"h\").instances[0]: ",
        "instance \"vi_2\" is already in vrrp_sync_group[0] (\"g\") on line 44: an instance \
         belongs to at most one sync group",
    );
    assert_vrrp_error(
        "[\"vi_1\", \"vi_2\"]",
        "[\"vi_2\", \"vi_2\"]",
        (44, "\"vi_2\"]"),
        "vrrp_sync_group[0] (\"g\").instances[1]",
        "\"vi_2\" is already listed as instances[0]",
    );
    let text = format!("{VRRP}[[vrrp_sync_group]]\nname = \"g\"\ninstances = [\"vi_2\"]\n");
    assert_error(
        &text,
        "balancer.toml:48:8: vrrp_sync_group[1] (\"g\").name: ",
        "duplicate sync group name \"g\" (first defined as vrrp_sync_group[0] on line 43)",
    );
}

#[test]
fn weighted_tracks_in_a_sync_group_need_tracking_weight() {
    assert_vrrp_error(
        "sync_group_tracking_weight = true",
        "sync_group_tracking_weight = false",
        (44, "\"vi_1\""),
        "vrrp_sync_group[0] (\"g\").instances[0]",
        "sync group g: member vi_1 has a weighted track vip web; keepalived ignores it unless \
         sync_group_tracking_weight is set (set it in this group, or give the track weight 0)",
    );
}

#[test]
fn bad_addresses() {
    let a = |i: usize| format!("vrrp[0] (\"vi_1\").addresses[{i}]");
    let cases: &[(&str, &str, String, &str)] = &[
        (
            "\"10.0.100.1\"",
            "\"10.0.100.1\"",
            a(0),
            "invalid address \"10.0.100.1\": expected ADDRESS/PREFIX, e.g. \"10.0.1.100/24\"",
        ),
        (
            "\"10.0.100.1/33\"",
            "\"10.0.100.1/33\"",
            a(0),
            "invalid address \"10.0.100.1/33\": prefix length \"33\" is not a number from 1 to 32",
        ),
        (
            "\"10.0.100/24\"",
            "\"10.0.100/24\"",
            a(0),
            "invalid address \"10.0.100/24\": \"10.0.100\" is not an IPv4 or IPv6 address",
        ),
        (
            "\"224.0.0.18/24\"",
            "\"224.0.0.18/24\"",
            a(0),
            "224.0.0.18 is a multicast address, not a virtual address",
        ),
        (
            "\"127.0.0.2/8\"",
            "\"127.0.0.2/8\"",
            a(0),
            "127.0.0.2 is a loopback address, not a virtual address",
        ),
        (
            "\"10.0.100.1/24\", \"fd00::2/64\"",
            "\"fd00::2/64\"",
            a(1),
            "fd00::2 is IPv6 but addresses[0] is IPv4: an instance's addresses are of one family",
        ),
        (
            "\"10.0.100.1/24\", \"10.0.100.1/32\"",
            "\"10.0.100.1/32\"",
            a(1),
            "10.0.100.1 is already addresses[0]: an address belongs to one instance, once",
        ),
    ];
    for (list, at, field, says) in cases {
        assert_vrrp_error(
            "[\"10.0.100.1/24\", \"10.0.100.2/32\"]",
            &format!("[{list}]"),
            (19, at),
            field,
            says,
        );
    }
    assert_vrrp_error(
        "[\"10.0.2.1/24\"]",
        "[\"10.0.100.2/24\"]",
        (40, "\"10.0.100.2/24\""),
        "vrrp[1] (\"vi_2\").addresses[0]",
        "10.0.100.2 is already a virtual address of vrrp[0] (\"vi_1\")",
    );
    assert_vrrp_error(
        "[\"10.0.2.1/24\"]",
        "[]",
        (40, "[]"),
        "vrrp[1] (\"vi_2\").addresses",
        "at least one address is required (\"ADDRESS/PREFIX\", e.g. \"10.0.1.100/24\")",
    );
}

#[test]
fn unicast_source_needs_peers_of_its_family() {
    assert_error(
        &one_vrrp("unicast_source = \"10.0.1.1\"\n"),
        "balancer.toml:8:18: vrrp[0] (\"vi_1\").unicast_source: ",
        "unicast_source needs unicast_peers: without peers adverts go to the multicast group 224.0.0.18",
    );
    let peer = |i: usize| format!("vrrp[0] (\"vi_1\").unicast_peers[{i}]");
    let cases: &[(&str, &str, String, &str)] = &[
        (
            "\"fd00::2\"",
            "\"fd00::2\"",
            peer(0),
            "fd00::2 is IPv6 but the instance's addresses are IPv4",
        ),
        (
            "\"10.0.1.2\", \"10.0.1.2\"",
            "\"10.0.1.2\"]",
            peer(1),
            "10.0.1.2 is already listed as unicast_peers[0]",
        ),
        (
            "\"10.0.1.1\"",
            "\"10.0.1.1\"",
            peer(0),
            "10.0.1.1 is the unicast_source: a peer is another router",
        ),
        (
            "\"10.0.1.2\", \"0.0.0.0\"",
            "\"0.0.0.0\"",
            peer(1),
            "0.0.0.0 is the unspecified address, not a router's address",
        ),
        (
            "\"10.0.1\"",
            "\"10.0.1\"",
            peer(0),
            "invalid address \"10.0.1\" (expected an IPv4 or IPv6 address)",
        ),
    ];
    for (list, at, field, says) in cases {
        assert_vrrp_error(
            "[\"10.0.1.2\", \"10.0.1.3\"]",
            &format!("[{list}]"),
            (23, at),
            field,
            says,
        );
    }
    assert_vrrp_error(
        "unicast_source = \"10.0.1.1\"",
        "unicast_source = \"ff02::1\"",
        (22, "\"ff02::1\""),
        "vrrp[0] (\"vi_1\").unicast_source",
        "ff02::1 is a multicast address, not a router's address",
    );
    assert_vrrp_error(
        "unicast_source = \"10.0.1.1\"",
        "unicast_source = \"fd00::1\"",
        (22, "\"fd00::1\""),
        "vrrp[0] (\"vi_1\").unicast_source",
        "fd00::1 is IPv6 but the instance's addresses are IPv4",
    );
}

#[test]
fn other_values_out_of_range() {
    let v = |key: &str| format!("vrrp[0] (\"vi_1\").{key}");
    let v2 = |key: &str| format!("vrrp[1] (\"vi_2\").{key}");
    let cases: &[(&str, &str, usize, &str, String, &str)] = &[
        (
            "garp_master_repeat = 3",
            "garp_master_repeat = 0",
            25,
            "0",
            v("garp_master_repeat"),
            "garp_master_repeat 0 is out of range 1..=255",
        ),
        (
            "garp_master_delay = \"2s\"",
            "garp_master_delay = \"2h\"",
            24,
            "\"2h\"",
            v("garp_master_delay"),
            "\"2h\" is out of range: must be between 0s (no second burst) and 1h",
        ),
        (
            "v3_checksum = \"plain\"",
            "v3_checksum = \"cisco\"",
            39,
            "\"cisco\"",
            v2("v3_checksum"),
            "invalid v3_checksum \"cisco\": expected \"pseudo-header\" or \"plain\"",
        ),
        (
            "version = 3",
            "version = 2",
            39,
            "\"plain\"",
            v2("v3_checksum"),
            "v3_checksum applies to version 3 over IPv4 only: a VRRPv2 checksum never covers",
        ),
        (
            "notify = \"/etc/balancer/notify.sh 'lb pair'\"",
            "notify = \"/etc/balancer/notify.sh 'lb pair\"",
            31,
            "\"/etc",
            v("notify"),
            "invalid notify command \"/etc/balancer/notify.sh 'lb pair\": has an opening ' \
             without its closing one",
        ),
        (
            "notify = \"/etc/balancer/group.sh\"",
            "notify = \"  \"",
            45,
            "\"  \"",
            "vrrp_sync_group[0] (\"g\").notify".to_owned(),
            "invalid notify command \"  \": names no program",
        ),
        (
            "interface = \"lbc0\"",
            "interface = \"lbc0:1\"",
            14,
            "\"lbc0:1\"",
            v("interface"),
            "invalid interface name \"lbc0:1\": must not contain ':'",
        ),
        (
            "name = \"vi_1\"",
            "name = \"vi 1\"",
            13,
            "\"vi 1\"",
            "vrrp[0] (\"vi 1\").name".to_owned(),
            "invalid name \"vi 1\": contains ' '",
        ),
    ];
    for (from, to, line, at, field, says) in cases {
        assert_vrrp_error(from, to, (*line, at), field, says);
    }
    let text = with(
        VRRP,
        "v3_checksum = \"plain\"\naddresses = [\"10.0.2.1/24\"]",
        "v3_checksum = \"plain\"\naddresses = [\"fd00::1/64\"]",
    );
    assert_error(
        &text,
        "balancer.toml:39:15: vrrp[1] (\"vi_2\").v3_checksum: ",
        "an IPv6 checksum always covers the pseudo-header",
    );
}

#[test]
fn schema_errors_name_the_key() {
    assert_vrrp_error(
        "advert_interval = \"2s\"",
        "advert_int = 2",
        (17, "advert_int"),
        "vrrp[0] (\"vi_1\").advert_int",
        "unknown field `advert_int`",
    );
    assert_vrrp_error(
        "sync_group_tracking_weight = true",
        "sync_group_tracking_weight = 1",
        (46, "1"),
        "vrrp_sync_group[0] (\"g\").sync_group_tracking_weight",
        "invalid type: integer `1`, expected a boolean",
    );
    assert_error(
        &with(ONE_VRRP, "vrid = 51\n", ""),
        "balancer.toml:3:1: vrrp[0] (\"vi_1\"): ",
        "missing field `vrid`",
    );
}

#[test]
fn mangled_vrrp_never_panics() {
    let substitutes = [
        "\"", "[", "]", "{", "}", "=", "\n", "0", "9", "-", "/", ":", "é",
    ];
    assert_mangling_never_panics(VRRP, &substitutes);
}
