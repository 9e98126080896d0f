//! Balancer agents running VRRP on the [`HaTopology`]: their configuration text, and their
//! instances' state as `balancer vrrp list --json` shows it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::Agent;
use crate::failover::Prober;
use crate::ha::{HaTopology, HA_PREFIX_LEN, HA_VIP};

/// The VRID the tests' front instance uses.
pub const FRONT_VRID: u8 = 51;

/// One `[[vrrp]]` table.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub priority: u8,
    pub version: u8,
    /// `ADDRESS/PREFIX`.
    pub addresses: Vec<String>,
    /// More lines of the table, as written (`nopreempt = true`, `track = [...]`).
    pub extra: Vec<String>,
}

impl Instance {
    /// `vi_1` on balancer's front interface, VRID 51, holding [`HA_VIP`].
    pub fn front(priority: u8, version: u8) -> Instance {
        Instance {
            name: "vi_1".into(),
            interface: "lbc0".into(),
            vrid: FRONT_VRID,
            priority,
            version,
            addresses: vec![format!("{HA_VIP}/{HA_PREFIX_LEN}")],
            extra: Vec::new(),
        }
    }

    /// With one more line in its table.
    #[must_use]
    pub fn with(mut self, line: &str) -> Instance {
        self.extra.push(line.to_owned());
        self
    }

    pub fn render(&self) -> String {
        let addresses: Vec<String> = self.addresses.iter().map(|a| format!("{a:?}")).collect();
        let mut text = format!(
            "\n[[vrrp]]\nname = {:?}\ninterface = {:?}\nvrid = {}\npriority = {}\nversion = {}\n\
             addresses = [{}]\n",
            self.name,
            self.interface,
            self.vrid,
            self.priority,
            self.version,
            addresses.join(", ")
        );
        for line in &self.extra {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

/// Pool "web" (port 80 of every backend, with `check` when given, e.g. `{ type = "tcp" }`)
/// and VIP "web" on [`HA_VIP`]:80.
pub fn web(topo: &HaTopology, check: Option<&str>) -> String {
    let backends: Vec<String> = (1..=topo.n_backends())
        .map(|j| format!("  {{ address = \"{}\", port = 80 }},", topo.backend_addr(j)))
        .collect();
    let check = check.map_or_else(String::new, |c| format!("check = {c}\n"));
    format!(
        "\n[[pool]]\nname = \"web\"\n{check}backends = [\n{}\n]\n\n[[vip]]\nname = \"web\"\n\
         address = \"{HA_VIP}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n",
        backends.join("\n")
    )
}

/// A whole configuration for balancer `i`: its agent and NAT sections, "web", and
/// `instances`.
pub fn config(topo: &HaTopology, i: usize, instances: &[Instance]) -> String {
    let mut text = topo.agent_and_nat(i) + &web(topo, None);
    for instance in instances {
        text += &instance.render();
    }
    text
}

/// Instance `name` of `agent` as `balancer vrrp list --json` shows it; panics (with the
/// agent's output) when the CLI fails or has no such instance.
pub fn instance(agent: &Agent, name: &str) -> Value {
    let out = agent.cli(&["vrrp", "list", "--json"]);
    assert!(out.success(), "`balancer vrrp list --json` failed: {out}");
    let list: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("`vrrp list --json` printed invalid JSON ({e}): {out}"));
    list.as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no VRRP instance {name:?} in {out}"))
}

/// The state of `agent`'s instance `name`: "INIT", "BACKUP", "MASTER" or "FAULT".
pub fn state(agent: &Agent, name: &str) -> String {
    instance(agent, name)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until `agent`'s instance `name` is in `want`; returns how long that took. Panics
/// after `timeout`, showing the instance and the agent's log.
pub fn wait_state(agent: &Agent, name: &str, want: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if state(agent, name) == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "VRRP instance {name} did not become {want} within {timeout:?}: {:#}\nagent log:\n{}",
            instance(agent, name),
            agent.log()
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// Waits (at most `timeout`) until `holders` (which balancers hold an address) is `want`.
pub fn wait_holders(topo: &HaTopology, address: Ipv4Addr, want: &[usize], timeout: Duration) {
    let start = Instant::now();
    loop {
        let holders = topo
            .holders(address)
            .expect("reading the balancers' addresses");
        if holders == want {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{address} is on balancers {holders:?}, not {want:?}, after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// A client in `topo`'s client namespace opening a connection to the VIP every 50 ms (for
/// at most 40 s), once it is served. Panics when it is not within 3 s.
pub fn start_prober(topo: &HaTopology) -> Prober {
    let prober = Prober::every_50ms(
        topo.client(),
        HaTopology::vip_http(),
        Duration::from_secs(40),
    )
    .expect("starting the client");
    assert!(
        prober
            .wait_answer(Duration::ZERO, Duration::from_secs(3))
            .is_some(),
        "the client is not served through the VIP: {}",
        prober.snapshot()
    );
    prober
}
