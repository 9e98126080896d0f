//! The plan of a reload: old file, new file and what runs in; what runs and the steps out.

use super::*;
use crate::config::{parse, AllDownPolicy, Protocol, Scheduler};

/// Two pools and two VIPs; tests replace parts of it.
const BASE: &str = r#"[agent]
interfaces = ["lbc0"]

[[pool]]
name = "web"
check = { type = "tcp" }
backends = [
  { address = "10.0.2.11", port = 80 },
  { address = "10.0.2.12", port = 80, weight = 2 },
]

[[pool]]
name = "dns"
backends = [{ address = "10.0.2.21", port = 53 }]

[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"

[[vip]]
name = "dns"
address = "10.0.100.1"
port = 53
protocol = "udp"
pool = "dns"
"#;

fn config(text: &str) -> Config {
    parse(text, "balancer.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// `BASE` with `from` replaced by `to`.
fn base_with(from: &str, to: &str) -> Config {
    assert!(BASE.contains(from), "{from:?}");
    config(&BASE.replacen(from, to, 1))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn api_vip() -> VipConfig {
    VipConfig {
        name: "api".into(),
        address: "10.0.100.2".parse().unwrap(),
        port: 443,
        protocol: Protocol::Tcp,
        scheduler: Scheduler::Maglev,
        ring_size: 65537,
        pool: "api".into(),
        on_all_down: AllDownPolicy::Drop,
        forwarding: crate::config::Forwarding::Nat,
        encapsulation: crate::config::Encapsulation::Ipip,
        mode: VipMode::L4,
        rules: Vec::new(),
    }
}

/// What the CLI did: a weight, a backend deleted, a VIP with its new pool and a backend.
fn cli_changes(config: &mut Config) {
    for request in [
        Request::BackendWeight {
            target: "web".into(),
            address: addr("10.0.2.11:80"),
            weight: 3,
        },
        Request::BackendDel {
            target: "dns".into(),
            address: addr("10.0.2.21:53"),
        },
        Request::VipAdd { vip: api_vip() },
        Request::BackendAdd {
            target: "api".into(),
            address: addr("10.0.2.31:443"),
            weight: 1,
        },
        // Through the VIP's name, as the CLI allows.
        Request::BackendAdd {
            target: "web".into(),
            address: addr("10.0.2.13:80"),
            weight: 1,
        },
    ] {
        record(config, &request);
    }
}

#[test]
fn the_same_file_again_changes_nothing() {
    let file = config(BASE);
    let (target, replaced) = merge(&file, &file, &file);
    assert_eq!(target, file);
    assert!(replaced.is_empty());
    let plan = plan(&file, &target);
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(plan.to_string(), "no change");
}

#[test]
fn what_the_cli_changed_stays_when_the_file_does_not_touch_it() {
    let file = config(BASE);
    let mut running = file.clone();
    cli_changes(&mut running);
    // The file changes only the dns VIP's scheduler.
    let new = base_with(
        "port = 53\nprotocol = \"udp\"\n",
        "port = 53\nprotocol = \"udp\"\nscheduler = \"rr\"\n",
    );
    let (target, replaced) = merge(&file, &new, &running);
    assert!(replaced.is_empty(), "{replaced:?}");
    assert_eq!(
        find_backend(&target, "web", addr("10.0.2.11:80"))
            .unwrap()
            .weight,
        3
    );
    assert!(find_backend(&target, "web", addr("10.0.2.13:80")).is_some());
    assert!(find_backend(&target, "dns", addr("10.0.2.21:53")).is_none());
    assert_eq!(find_vip(&target, "api"), Some(&api_vip()));
    assert!(find_backend(&target, "api", addr("10.0.2.31:443")).is_some());
    assert_eq!(
        find_vip(&target, "dns").unwrap().scheduler,
        Scheduler::RoundRobin
    );
    let plan = plan(&running, &target);
    assert_eq!(
        plan.steps,
        [Step::ChangeVip(find_vip(&target, "dns").unwrap().clone())]
    );
    assert_eq!(plan.to_string(), "1 VIP changed");
    // Sources: what the CLI made is the CLI's, the rest the file's.
    assert_eq!(vip_source(&new, &target, "web"), Source::File);
    assert_eq!(vip_source(&new, &target, "api"), Source::Cli);
    assert_eq!(pool_source(&new, &target, "api"), Source::Cli);
    assert_eq!(pool_source(&new, &target, "web"), Source::File);
    assert_eq!(
        backend_source(&new, &target, "web", addr("10.0.2.11:80")),
        Source::Cli
    );
    assert_eq!(
        backend_source(&new, &target, "web", addr("10.0.2.12:80")),
        Source::File
    );
}

#[test]
fn the_file_wins_for_an_object_it_changes_and_says_what_it_replaced() {
    let file = config(BASE);
    let mut running = file.clone();
    cli_changes(&mut running);
    // The file now gives 10.0.2.11 weight 4 (the CLI set 3) and adds 10.0.2.13 itself.
    let new = base_with(
        "  { address = \"10.0.2.11\", port = 80 },\n",
        "  { address = \"10.0.2.11\", port = 80, weight = 4 },\n  { address = \"10.0.2.13\", port = 80, weight = 5 },\n",
    );
    let (target, replaced) = merge(&file, &new, &running);
    assert_eq!(
        find_backend(&target, "web", addr("10.0.2.11:80"))
            .unwrap()
            .weight,
        4
    );
    assert_eq!(
        find_backend(&target, "web", addr("10.0.2.13:80"))
            .unwrap()
            .weight,
        5
    );
    assert_eq!(
        replaced,
        [
            "backend 10.0.2.11:80 in pool web: weight 3 set by the CLI replaced by the file's 4",
            "backend 10.0.2.13:80 in pool web: weight 1 set by the CLI replaced by the file's 5",
        ]
    );
    // The file's order, then what only the CLI added.
    let web: Vec<SocketAddr> = find_pool(&target, "web")
        .unwrap()
        .backends
        .iter()
        .map(BackendConfig::socket_addr)
        .collect();
    assert_eq!(
        web,
        [
            addr("10.0.2.11:80"),
            addr("10.0.2.13:80"),
            addr("10.0.2.12:80")
        ]
    );
    // A backend the CLI deleted that the file now changes comes back.
    let new = base_with(
        "{ address = \"10.0.2.21\", port = 53 }",
        "{ address = \"10.0.2.21\", port = 53, weight = 7 }",
    );
    let (target, replaced) = merge(&file, &new, &running);
    assert_eq!(
        find_backend(&target, "dns", addr("10.0.2.21:53"))
            .unwrap()
            .weight,
        7
    );
    assert_eq!(
        replaced,
        ["backend 10.0.2.21:53 in pool dns: deleted by the CLI, put back by the file"]
    );
}

#[test]
fn a_plan_adds_and_removes_vips_and_backends_and_changes_weights() {
    let old = config(BASE);
    // VIP dns removed (its pool too), VIP api added with its pool, a backend added to web
    // and a weight changed.
    let new_text = BASE
        .replacen("  { address = \"10.0.2.12\", port = 80, weight = 2 },\n", "  { address = \"10.0.2.12\", port = 80, weight = 5 },\n  { address = \"10.0.2.13\", port = 80 },\n", 1)
        .replacen("[[pool]]\nname = \"dns\"\nbackends = [{ address = \"10.0.2.21\", port = 53 }]\n", "[[pool]]\nname = \"api\"\n", 1)
        .replacen("name = \"dns\"\naddress = \"10.0.100.1\"\nport = 53\nprotocol = \"udp\"\npool = \"dns\"", "name = \"api\"\naddress = \"10.0.100.2\"\nport = 443\nprotocol = \"tcp\"\npool = \"api\"", 1);
    let new = config(&new_text);
    let (target, replaced) = merge(&old, &new, &old);
    assert!(replaced.is_empty());
    assert_eq!(target, new);
    let plan = plan(&old, &target);
    let dns = find_vip(&old, "dns").unwrap().clone();
    let mut api = api_vip();
    api.ring_size = crate::config::DEFAULT_RING_SIZE;
    let web = find_pool(&new, "web").unwrap();
    assert_eq!(
        plan.steps,
        [
            Step::DelVip(dns),
            Step::AddPool(pool_settings(find_pool(&new, "api").unwrap())),
            Step::DelBackend {
                pool: "dns".into(),
                addr: addr("10.0.2.21:53")
            },
            Step::ChangeBackend {
                pool: "web".into(),
                backend: web.backends[1].clone(),
                weight: true,
                check: false
            },
            Step::AddBackend {
                pool: "web".into(),
                backend: web.backends[2].clone()
            },
            Step::AddVip(api),
            Step::DelPool("dns".into()),
        ]
    );
    assert_eq!(
        plan.to_string(),
        "1 VIP added, 1 removed, 1 pool added, 1 removed, 1 backend added, 1 removed, 1 changed"
    );
    assert!(!plan.http && !plan.vrrp);
    // Applied to the running configuration, the steps give the target.
    let mut running = old.clone();
    for step in &plan.steps {
        apply_to_config(&mut running, step);
    }
    assert_eq!(sorted(running), sorted(target));
}

/// `config` with its pools and VIPs in name order (steps append what they add).
fn sorted(mut config: Config) -> Config {
    config.pools.sort_by(|a, b| a.name.cmp(&b.name));
    config.vips.sort_by(|a, b| a.name.cmp(&b.name));
    config
}

#[test]
fn a_changed_check_restarts_only_the_backends_that_have_it() {
    let old = config(BASE);
    let new = base_with(
        "check = { type = \"tcp\" }",
        "check = { type = \"tcp\", interval = \"1s\" }",
    );
    let plan = plan(&old, &merge(&old, &new, &old).0);
    let restarted: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s,
                Step::ChangeBackend {
                    check: true,
                    weight: false,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(restarted.len(), 2, "{plan:?}");
    assert!(matches!(plan.steps[0], Step::ChangePool(_)), "{plan:?}");
    assert_eq!(
        plan.to_string(),
        "1 pool changed, 2 backends changed, 2 checks restarted"
    );
}

#[test]
fn a_vip_that_moves_is_removed_and_added_and_one_that_changes_mode_too() {
    let old = config(BASE);
    let new = base_with(
        "address = \"10.0.100.1\"\nport = 80",
        "address = \"10.0.100.9\"\nport = 80",
    );
    let plan = plan(&old, &new);
    assert_eq!(
        plan.steps,
        [
            Step::DelVip(find_vip(&old, "web").unwrap().clone()),
            Step::AddVip(find_vip(&new, "web").unwrap().clone()),
        ]
    );
    assert_eq!(plan.to_string(), "1 VIP changed");
    let http = base_with(
        "protocol = \"tcp\"\npool = \"web\"",
        "protocol = \"tcp\"\nmode = \"http\"\npool = \"web\"",
    );
    let plan = super::plan(&old, &http);
    assert_eq!(
        plan.steps,
        [Step::DelVip(find_vip(&old, "web").unwrap().clone())]
    );
    assert!(plan.http);
}

#[test]
fn what_needs_a_restart_is_refused_by_name() {
    let old = config(BASE);
    let new = base_with(
        "interfaces = [\"lbc0\"]",
        "interfaces = [\"lbc0\", \"lbs0\"]",
    );
    let e = check_live(&old, &new).unwrap_err();
    assert_eq!(
        e,
        "interfaces: changing the attached interfaces needs a restart (the running \
         configuration is unchanged)"
    );
    let new = base_with("interfaces = [\"lbc0\"]", "interfaces = [\"lbc0\"]\ncontrol_socket = \"/tmp/x.sock\"\n[nat]\nsource_address = \"10.0.2.1\"");
    let e = check_live(&old, &new).unwrap_err();
    assert!(
        e.starts_with("agent.control_socket: moving the control socket; nat.source_address"),
        "{e}"
    );
    let new = base_with(
        "[[pool]]\nname = \"web\"",
        "[timeouts]\ntcp = \"1m\"\n[nat]\nport_range = \"30000-31000\"\n[[pool]]\nname = \"web\"",
    );
    assert_eq!(check_live(&old, &new), Ok(()));
    let plan = plan(&old, &new);
    assert!(
        matches!(plan.steps[..], [Step::Settings { .. }]),
        "{plan:?}"
    );
    assert_eq!(plan.to_string(), "timeouts/NAT settings changed");
}

#[test]
fn a_vip_kept_from_the_cli_whose_pool_the_file_removes_is_refused() {
    let file = config(BASE);
    let mut running = file.clone();
    record(
        &mut running,
        &Request::VipAdd {
            vip: VipConfig {
                pool: "dns".into(),
                ..api_vip()
            },
        },
    );
    let new = config(
        &BASE
            .replacen("[[pool]]\nname = \"dns\"\nbackends = [{ address = \"10.0.2.21\", port = 53 }]\n", "", 1)
            .replacen("\n[[vip]]\nname = \"dns\"\naddress = \"10.0.100.1\"\nport = 53\nprotocol = \"udp\"\npool = \"dns\"\n", "\n", 1),
    );
    let (target, _) = merge(&file, &new, &running);
    assert_eq!(
        check_pools(&target, &running),
        Err("vip api (kept from the running configuration) uses pool dns, which the new file removes".into())
    );
}

#[test]
fn a_backend_the_cli_added_follows_its_pools_check() {
    let file = config(BASE);
    let mut running = file.clone();
    record(
        &mut running,
        &Request::BackendAdd {
            target: "web".into(),
            address: addr("10.0.2.13:80"),
            weight: 1,
        },
    );
    let new = base_with(
        "check = { type = \"tcp\" }",
        "check = { type = \"tcp\", rise = 5 }",
    );
    let (target, _) = merge(&file, &new, &running);
    let added = find_backend(&target, "web", addr("10.0.2.13:80")).unwrap();
    assert_eq!(added.check.rise, 5);
    assert_eq!(added.check, find_pool(&new, "web").unwrap().check);
}

#[test]
fn http_rules_and_vrrp_are_flagged_for_their_subsystems() {
    let http = |prefix: &str| {
        config(&format!(
            "{BASE}\n[[vip]]\nname = \"www\"\naddress = \"10.0.100.5\"\nport = 80\nprotocol = \"tcp\"\n\
             mode = \"http\"\npool = \"web\"\n[[vip.rule]]\npool = \"dns\"\npath_prefix = [\"{prefix}\"]\n"
        ))
    };
    let (old, new) = (http("/a"), http("/b"));
    let plan = plan(&old, &merge(&old, &new, &old).0);
    // The data plane has nothing of HTTP VIPs: only the proxy changes.
    assert!(plan.steps.is_empty() && plan.http && !plan.vrrp, "{plan:?}");
    assert_eq!(plan.to_string(), "1 VIP changed");

    let vrrp = |priority: u32| {
        config(&format!(
            "{BASE}\n[[vrrp]]\nname = \"vi_1\"\ninterface = \"lbc0\"\nvrid = 51\npriority = {priority}\n\
             addresses = [\"10.0.100.1/24\"]\n"
        ))
    };
    let (old, new) = (vrrp(100), vrrp(150));
    let plan = super::plan(&old, &merge(&old, &new, &old).0);
    assert!(plan.steps.is_empty() && plan.vrrp && !plan.http, "{plan:?}");
    assert_eq!(plan.to_string(), "VRRP restarted");
}
