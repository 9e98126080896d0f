//! End-to-end: the agent attaches in the configured XDP mode, detaches and removes its
//! socket on SIGTERM, and refuses a bad configuration file with a clear one-line error.
use std::process::Command;

use balancer_tests::{balancer_path, default_config, Running, Topology, DEFAULT_TIMEOUT};

/// The XDP attachment of each balancer interface as `ip link` shows it ("xdp", "xdpgeneric", or none).
fn xdp_modes(topo: &Topology) -> Vec<Option<String>> {
    topo.lb_interfaces()
        .iter()
        .map(|iface| {
            let out = topo
                .lb()
                .ip(&["-d", "link", "show", "dev", iface])
                .unwrap_or_else(|e| panic!("ip link show {iface}: {e:#}"));
            ["xdpgeneric", "xdpdrv", "xdp"]
                .iter()
                .find(|m| out.split_whitespace().any(|w| w == **m))
                .map(ToString::to_string)
        })
        .collect()
}

#[test]
fn agent_attaches_in_driver_mode_and_detaches_on_sigterm() {
    let mut run = Running::start_with(1, |topo| {
        default_config(topo, "maglev").replace("xdp_mode = \"auto\"", "xdp_mode = \"driver\"")
    });
    assert_eq!(
        xdp_modes(&run.topo),
        vec![Some("xdp".to_string()); 2],
        "driver-mode XDP expected on both balancer interfaces"
    );
    run.client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("a request through the VIP while the agent runs");

    let socket = run.agent.socket().to_path_buf();
    let code = run.agent.stop();
    assert_eq!(
        code,
        Some(0),
        "the agent must exit 0 on SIGTERM; log:\n{}",
        run.agent.log()
    );
    assert_eq!(
        xdp_modes(&run.topo),
        vec![None, None],
        "XDP must be detached after the agent exits"
    );
    assert!(
        !socket.exists(),
        "the control socket {} must be removed",
        socket.display()
    );
}

#[test]
fn skb_mode_is_honoured() {
    let run = Running::start_with(1, |topo| {
        default_config(topo, "round-robin").replace("xdp_mode = \"auto\"", "xdp_mode = \"skb\"")
    });
    assert_eq!(
        xdp_modes(&run.topo),
        vec![Some("xdpgeneric".to_string()); 2]
    );
    run.client
        .http_get(Topology::vip_http(), DEFAULT_TIMEOUT)
        .expect("a request through the VIP with generic XDP");
    // UDP too: the bench measures generic mode as the mode to pick on veth.
    let tally = run
        .client
        .udp_request_many(Topology::vip_udp(), 10, DEFAULT_TIMEOUT);
    assert!(
        tally.failures.is_empty(),
        "expected 10 UDP requests through the VIP with generic XDP to be answered: {tally}"
    );
}

#[test]
fn bad_config_is_refused_with_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("blt-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[agent]\ninterfaces = [\"lo\"]\n\n[[vip]]\nname = \"web\"\naddress = \"10.0.100.1\"\nport = 80\nprotocol = \"tcp\"\nshceduler = \"maglev\"\npool = \"web\"\n",
    )
    .unwrap();
    let out = Command::new(balancer_path())
        .args([
            "--socket",
            dir.join("s.sock").to_str().unwrap(),
            "run",
            "--config",
        ])
        .arg(&path)
        .output()
        .expect("run balancer");
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad config must be refused");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    assert!(
        line.contains("bad.toml:9") && line.contains("shceduler"),
        "the error must name the file, line 9 and the field: {line}"
    );
}
