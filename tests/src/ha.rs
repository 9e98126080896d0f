//! The high-availability test network: a client and two or three balancers on one front bridge, the balancers and the backends on a back bridge, so that VRRP (ARP and gratuitous ARP) decides which balancer gets the VIP's packets.

use crate::agent::{web_and_dns_on, Agent};
use crate::capture::Capture;
use crate::client::ClientNs;
use crate::keepalived::{Keepalived, KeepalivedConfig};
use crate::netns::{run_command, unique_prefix, Netns};
use crate::servers::{ServerSpec, Servers};
use crate::topology::{BpfMount, CLIENT_ADDR, HTTP_PORT, LB_INTERFACES};
use crate::util::{SerialGuard, TempDir};
use anyhow::{bail, Context, Result};
use balancer_wire::MacAddr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// The VIP the balancers share, on the client's own subnet: the client reaches it through
/// ARP, so whichever balancer answers ARP (or last sent a gratuitous ARP) gets its packets.
pub const HA_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
/// Prefix length of the front and back subnets (10.0.1.0/24, 10.0.2.0/24).
pub const HA_PREFIX_LEN: u8 = 24;
/// The floating back-side address: the backends route replies to the client subnet through
/// it, so it must move with the VIP (a sync group, or a second address of one instance).
pub const HA_BACK_FLOATING: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// Most balancers a topology holds (front addresses 10.0.1.11 ..= 10.0.1.19).
pub const HA_MAX_LBS: usize = 9;
/// Most backends a topology holds (addresses 10.0.2.101 ..= 10.0.2.150).
pub const HA_MAX_BACKENDS: usize = 50;

/// One balancer's namespace and its bpf filesystem.
struct Lb {
    // Declared first: dropping the namespace kills what runs there before the pins go.
    ns: Netns,
    pins: BpfMount,
}

/// The high-availability test network:
///
/// ```text
///  client ns ── front ns (bridge br0) ──┬── lb1 ns ──┬── back ns (bridge br0) ── backend ns 1..N
///  cli0 10.0.1.2   fcli, flb1..flbN     ├── lb2 ns ──┤   blb1..blbN, bb1..bbN    eth0 10.0.2.(100+j)
///                                       └── (lb3) ───┘
///  lb i: lbc0 10.0.1.(10+i)/24 (front), lbs0 10.0.2.(10+i)/24 (back), forwarding on
/// ```
///
/// The VIP ([`HA_VIP`]) and the floating back address ([`HA_BACK_FLOATING`]) are on no
/// interface until VRRP (keepalived or a balancer agent) puts them on a Master. The client
/// has the VIP on-link; the backends route the client subnet via the floating address. The
/// veths that send test traffic (client, backends) have tx checksum offload off, and the
/// bridge ends of the balancers' veths have GRO on, so XDP forwarding works
/// (shared/TOOLCHAIN.md). Each balancer has a bpf filesystem of its own for an agent's pins.
///
/// Nothing is created in the root namespace; dropping the topology deletes every namespace
/// (which kills what runs there), then unmounts the pin directories. Like [`crate::Topology`],
/// only one exists at a time per process.
pub struct HaTopology {
    prefix: String,
    // Fields drop in declaration order: namespaces first, then the run dir, then the lock.
    backends: Vec<Netns>,
    back: Netns,
    lbs: Vec<Lb>,
    front: Netns,
    client: Netns,
    run_dir: TempDir,
    _serial: SerialGuard,
}

impl HaTopology {
    /// Builds the network with `n_lbs` balancers (1-based: `lb1`..) and `n_backends`
    /// backends (1-based: `b1`..; none is fine when the test needs no backend).
    pub fn new(n_lbs: usize, n_backends: usize) -> Result<HaTopology> {
        if !(1..=HA_MAX_LBS).contains(&n_lbs) {
            bail!("an HA topology needs 1..={HA_MAX_LBS} balancers, not {n_lbs}");
        }
        if n_backends > HA_MAX_BACKENDS {
            bail!("an HA topology holds at most {HA_MAX_BACKENDS} backends, not {n_backends}");
        }
        let serial = SerialGuard::acquire();
        let prefix = unique_prefix();
        let run_dir = TempDir::new(&prefix)?;
        // Each Netns (and BpfMount) cleans up if a later step fails and returns early.
        let client = Netns::new(&format!("{prefix}-cli"))?;
        let front = Netns::new(&format!("{prefix}-fr"))?;
        let lbs = (1..=n_lbs)
            .map(|i| {
                Ok(Lb {
                    ns: Netns::new(&format!("{prefix}-lb{i}"))?,
                    pins: BpfMount::new(&format!("{prefix}-lb{i}-bpf"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let back = Netns::new(&format!("{prefix}-bk"))?;
        let backends = (1..=n_backends)
            .map(|j| Netns::new(&format!("{prefix}-b{j}")))
            .collect::<Result<Vec<_>>>()?;
        let topo = HaTopology {
            prefix,
            backends,
            back,
            lbs,
            front,
            client,
            run_dir,
            _serial: serial,
        };
        topo.wire()
            .with_context(|| format!("building HA test topology {}", topo.prefix))?;
        topo.wait_lb_links_up()?;
        Ok(topo)
    }

    /// Waits until every balancer's links report their operational state up: the kernel
    /// publishes it a moment after `ip link set up` (linkwatch), and an agent that tracks
    /// an interface must not start before, or it starts in FAULT.
    fn wait_lb_links_up(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        for lb in &self.lbs {
            for dev in LB_INTERFACES {
                let path = format!("/sys/class/net/{dev}/operstate");
                loop {
                    let state = lb.ns.run(&["cat", &path])?;
                    if state.trim() == "up" {
                        break;
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "{dev} in {} is {:?}, not up, after 3 s",
                            lb.ns.name(),
                            state.trim()
                        );
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    fn wire(&self) -> Result<()> {
        let [lbc, lbs] = LB_INTERFACES;
        for bridge in [&self.front, &self.back] {
            bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
            // A switch, not a firewall (see Topology::wire); `-e`: the keys exist only
            // when br_netfilter is loaded.
            bridge.run(&[
                "sysctl",
                "-q",
                "-e",
                "-w",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ])?;
        }

        veth(&self.client, "cli0", &self.front, "fcli")?;
        self.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_ADDR}/{HA_PREFIX_LEN}"),
            "dev",
            "cli0",
        ])?;
        // Senders put full checksums in what XDP forwards (shared/TOOLCHAIN.md).
        self.client.run(&["ethtool", "-K", "cli0", "tx", "off"])?;
        self.client.run(&["ethtool", "-K", "cli0", "gro", "on"])?;

        for i in 1..=self.n_lbs() {
            let lb = self.lb(i);
            let (fport, bport) = (format!("flb{i}"), format!("blb{i}"));
            veth(lb, lbc, &self.front, &fport)?;
            veth(lb, lbs, &self.back, &bport)?;
            lb.ip(&["addr", "add", &cidr(self.lb_front_addr(i)), "dev", lbc])?;
            lb.ip(&["addr", "add", &cidr(self.lb_back_addr(i)), "dev", lbs])?;
            lb.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
            lb.run(&["sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=1"])?;
            // XDP_REDIRECT into lbc0/lbs0 delivers nothing unless their peers have GRO on.
            self.front.run(&["ethtool", "-K", &fport, "gro", "on"])?;
            self.back.run(&["ethtool", "-K", &bport, "gro", "on"])?;
        }

        for j in 1..=self.n_backends() {
            let b = self.backend(j);
            veth(b, "eth0", &self.back, &format!("bb{j}"))?;
            b.ip(&["addr", "add", &cidr(self.backend_addr(j)), "dev", "eth0"])?;
            b.run(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }

        for ns in self.all_namespaces() {
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        for bridge in [&self.front, &self.back] {
            bridge.ip(&["link", "set", "br0", "up"])?;
        }
        self.client.ip(&["link", "set", "cli0", "up"])?;
        for i in 1..=self.n_lbs() {
            self.lb(i).ip(&["link", "set", lbc, "up"])?;
            self.lb(i).ip(&["link", "set", lbs, "up"])?;
        }
        for j in 1..=self.n_backends() {
            let b = self.backend(j);
            b.ip(&["link", "set", "eth0", "up"])?;
            // Replies to clients go through the floating address, wherever it is.
            b.ip(&[
                "route",
                "add",
                &format!("{}/{HA_PREFIX_LEN}", self.front_subnet()),
                "via",
                &HA_BACK_FLOATING.to_string(),
            ])?;
        }
        Ok(())
    }

    fn all_namespaces(&self) -> impl Iterator<Item = &Netns> {
        [&self.client, &self.front, &self.back]
            .into_iter()
            .chain(self.lbs.iter().map(|lb| &lb.ns))
            .chain(self.backends.iter())
    }

    /// The prefix shared by this topology's namespace names (`blt{pid}-{n}`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client namespace (`cli0`, 10.0.1.2/24).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The front bridge's namespace (`br0` with ports `fcli`, `flb1`..): where a capture
    /// sees every balancer's adverts and ARPs.
    pub fn front(&self) -> &Netns {
        &self.front
    }

    /// The back bridge's namespace (`br0` with ports `blb1`.., `bb1`..).
    pub fn back(&self) -> &Netns {
        &self.back
    }

    /// Number of balancers.
    pub fn n_lbs(&self) -> usize {
        self.lbs.len()
    }

    /// Balancer `i`'s namespace (1-based).
    pub fn lb(&self, i: usize) -> &Netns {
        &self.lb_entry(i).ns
    }

    /// Balancer `i`'s front address: 10.0.1.(10+i).
    pub fn lb_front_addr(&self, i: usize) -> Ipv4Addr {
        self.lb_entry(i);
        Ipv4Addr::new(10, 0, 1, 10 + index_octet(i))
    }

    /// Balancer `i`'s back address: 10.0.2.(10+i).
    pub fn lb_back_addr(&self, i: usize) -> Ipv4Addr {
        self.lb_entry(i);
        Ipv4Addr::new(10, 0, 2, 10 + index_octet(i))
    }

    /// The balancers' interfaces, the same in every lb namespace: `["lbc0", "lbs0"]`.
    pub fn lb_interfaces(&self) -> [&'static str; 2] {
        LB_INTERFACES
    }

    /// Balancer `i`'s bpf filesystem (for an agent's `pin_dir`), unmounted on drop.
    pub fn pin_dir(&self, i: usize) -> &Path {
        self.lb_entry(i).pins.path()
    }

    /// A control socket path for an agent in balancer `i` (in [`HaTopology::run_dir`]).
    pub fn control_socket(&self, i: usize) -> PathBuf {
        self.lb_entry(i);
        self.run_dir.path().join(format!("lb{i}.sock"))
    }

    /// A directory private to this topology, removed on drop.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// Number of backends.
    pub fn n_backends(&self) -> usize {
        self.backends.len()
    }

    /// Backend `j`'s namespace (1-based).
    pub fn backend(&self, j: usize) -> &Netns {
        self.check_backend(j);
        &self.backends[j - 1]
    }

    /// Backend `j`'s address: 10.0.2.(100+j).
    pub fn backend_addr(&self, j: usize) -> Ipv4Addr {
        self.check_backend(j);
        Ipv4Addr::new(10, 0, 2, 100 + index_octet(j))
    }

    /// The name backend `j`'s test server answers with: `b{j}`.
    pub fn backend_name(&self, j: usize) -> String {
        self.check_backend(j);
        format!("b{j}")
    }

    /// The front subnet's address (10.0.1.0).
    pub fn front_subnet(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 1, 0)
    }

    /// `HA_VIP:80`.
    pub fn vip_http() -> SocketAddrV4 {
        SocketAddrV4::new(HA_VIP, HTTP_PORT)
    }

    /// A worker thread inside the client namespace with the client helpers.
    pub fn client_ns(&self) -> Result<ClientNs> {
        ClientNs::new(&self.client)
    }

    /// Starts the test server on every backend (`b{j}`, HTTP :80 and UDP :5300) and waits
    /// until each answers from balancer 1's namespace.
    pub fn start_backends(&self) -> Result<Servers> {
        let specs: Vec<ServerSpec> = (1..=self.n_backends())
            .map(|j| ServerSpec {
                ns: self.backend(j),
                name: self.backend_name(j),
                addr: self.backend_addr(j),
            })
            .collect();
        Servers::start_in(self.lb(1), &specs)
    }

    /// Starts the test server in every balancer namespace, answering with `lb{i}` on every
    /// address (so on the VIP too, once the balancer holds it), and waits until each answers
    /// at its front address from the client. Proves which balancer holds the VIP when no
    /// agent runs (keepalived alone).
    pub fn start_lb_servers(&self) -> Result<Servers> {
        let specs: Vec<ServerSpec> = (1..=self.n_lbs())
            .map(|i| ServerSpec {
                ns: self.lb(i),
                name: format!("lb{i}"),
                addr: self.lb_front_addr(i),
            })
            .collect();
        Servers::start_in(&self.client, &specs)
    }

    /// The `[agent]` and `[nat]` sections for an agent in balancer `i`: XDP on both of its
    /// interfaces, its control socket ([`HaTopology::control_socket`]) and pin directory
    /// ([`HaTopology::pin_dir`]), NAT from its own back address. Append `[[pool]]`,
    /// `[[vip]]` and VRRP tables to it.
    pub fn agent_and_nat(&self, i: usize) -> String {
        let [lbc, lbs] = LB_INTERFACES;
        format!(
            r#"# Written by balancer-tests for balancer {i} of HA topology {prefix}.
[agent]
interfaces = ["{lbc}", "{lbs}"]
xdp_mode = "auto"
control_socket = "{socket}"
pin_dir = "{pins}"

[nat]
source_address = "{source}"
"#,
            prefix = self.prefix,
            socket = self.control_socket(i).display(),
            pins = self.pin_dir(i).display(),
            source = self.lb_back_addr(i),
        )
    }

    /// A whole agent configuration for balancer `i`: [`HaTopology::agent_and_nat`], every
    /// backend in pools "web" (port 80) and "dns" (port 5300), VIPs "web" and "dns" on
    /// [`HA_VIP`] with `scheduler`. No VRRP table: add the one under test.
    pub fn agent_config(&self, i: usize, scheduler: &str) -> String {
        let backends: Vec<Ipv4Addr> = (1..=self.n_backends())
            .map(|j| self.backend_addr(j))
            .collect();
        format!(
            "{}\n{}",
            self.agent_and_nat(i),
            web_and_dns_on(HA_VIP, &backends, scheduler)
        )
    }

    /// Starts a balancer agent in balancer `i`'s namespace with `config_toml` (whose
    /// control socket should be [`HaTopology::control_socket`]`(i)`, as
    /// [`HaTopology::agent_and_nat`] writes it); returns once `balancer status` answers.
    pub fn start_agent(&self, i: usize, config_toml: &str) -> Result<Agent> {
        Agent::start_in(self.lb(i), config_toml, &self.control_socket(i))
            .with_context(|| format!("starting the balancer agent in lb{i}"))
    }

    /// Starts keepalived with `config` in balancer `i`'s namespace; returns once it
    /// reported its first state.
    pub fn start_keepalived(&self, i: usize, config: &KeepalivedConfig) -> Result<Keepalived> {
        Keepalived::start(self.lb(i), config)
            .with_context(|| format!("starting keepalived in lb{i}"))
    }

    /// keepalived in balancer `ka_lb` and a balancer agent in balancer `agent_lb`: the
    /// interoperability set-up (keepalived first, so that it is the Master the agent finds
    /// when it starts; start them one by one for the other order).
    pub fn keepalived_and_agent(
        &self,
        ka_lb: usize,
        ka_config: &KeepalivedConfig,
        agent_lb: usize,
        agent_toml: &str,
    ) -> Result<(Keepalived, Agent)> {
        if ka_lb == agent_lb {
            bail!("keepalived and the agent need two balancers, not both lb{ka_lb}");
        }
        let keepalived = self.start_keepalived(ka_lb, ka_config)?;
        let agent = self.start_agent(agent_lb, agent_toml)?;
        Ok((keepalived, agent))
    }

    /// Starts a capture of VRRP and ARP on the front bridge: every frame a balancer or the
    /// client sends, once (as it enters its bridge port; the bridge's own `br0` is left out).
    pub fn capture_front(&self) -> Result<Capture> {
        Capture::start(&self.front, &["br0"])
    }

    /// The MAC address of balancer `i`'s front interface (`lbc0`).
    pub fn lb_front_mac(&self, i: usize) -> Result<MacAddr> {
        let out = self.lb(i).ip(&["-o", "link", "show", LB_INTERFACES[0]])?;
        parse_link_mac(&out).with_context(|| format!("no MAC address in `ip link` output {out:?}"))
    }

    /// The MAC address the client's neighbour table holds for `addr`, if any (none while
    /// the entry is incomplete or failed).
    pub fn client_neighbour(&self, addr: Ipv4Addr) -> Result<Option<MacAddr>> {
        let out = self
            .client
            .ip(&["neigh", "show", &addr.to_string(), "dev", "cli0"])?;
        Ok(parse_lladdr(&out))
    }

    /// Whether balancer `i` has `addr` on any of its interfaces.
    pub fn lb_has_address(&self, i: usize, addr: Ipv4Addr) -> Result<bool> {
        let out = self.lb(i).ip(&["-o", "-4", "addr", "show"])?;
        let needle = format!(" {addr}/");
        Ok(out.lines().any(|l| l.contains(&needle)))
    }

    /// The balancers (1-based) that have `addr` on an interface: exactly one, normally.
    pub fn holders(&self, addr: Ipv4Addr) -> Result<Vec<usize>> {
        let mut holders = Vec::new();
        for i in 1..=self.n_lbs() {
            if self.lb_has_address(i, addr)? {
                holders.push(i);
            }
        }
        Ok(holders)
    }

    /// Removes `addr`/24 from balancer `i`'s `dev` if it is there: what a reboot does to
    /// an address a killed VRRP daemon left behind.
    pub fn remove_address(&self, i: usize, addr: Ipv4Addr, dev: &str) -> Result<()> {
        if self.lb_has_address(i, addr)? {
            self.lb(i).ip(&[
                "addr",
                "del",
                &format!("{addr}/{HA_PREFIX_LEN}"),
                "dev",
                dev,
            ])?;
        }
        Ok(())
    }

    /// Cuts balancer `i` off both bridges (their ports stop forwarding, the balancer's links
    /// stay up): to the others it is gone, as a crashed or partitioned machine is, while
    /// what runs in it notices nothing.
    pub fn isolate(&self, i: usize) -> Result<()> {
        self.set_ports(i, false)
    }

    /// Undoes [`HaTopology::isolate`].
    pub fn rejoin(&self, i: usize) -> Result<()> {
        self.set_ports(i, true)
    }

    fn set_ports(&self, i: usize, forwarding: bool) -> Result<()> {
        self.lb_entry(i);
        // Bridge port states: 0 disabled, 3 forwarding (allowed while STP is off).
        let state = if forwarding { "3" } else { "0" };
        for (bridge, port) in [
            (&self.front, format!("flb{i}")),
            (&self.back, format!("blb{i}")),
        ] {
            bridge
                .run(&["bridge", "link", "set", "dev", &port, "state", state])
                .with_context(|| format!("setting the state of bridge port {port} to {state}"))?;
        }
        Ok(())
    }

    /// Sets balancer `i`'s two links down (or up): the balancer sees its carrier go, as
    /// with a pulled cable.
    pub fn set_lb_links(&self, i: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        for dev in LB_INTERFACES {
            self.lb(i).ip(&["link", "set", dev, state])?;
        }
        Ok(())
    }

    fn lb_entry(&self, i: usize) -> &Lb {
        assert!(
            (1..=self.lbs.len()).contains(&i),
            "balancer index {i} out of range 1..={}",
            self.lbs.len()
        );
        &self.lbs[i - 1]
    }

    fn check_backend(&self, j: usize) {
        assert!(
            (1..=self.backends.len()).contains(&j),
            "backend index {j} out of range 1..={}",
            self.backends.len()
        );
    }
}

/// A veth pair `a_dev` in `a` and `b_dev` in the bridge namespace `b`, where it becomes a
/// port of `br0`, up.
fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])?;
    b.ip(&["link", "set", b_dev, "master", "br0"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}

fn cidr(addr: Ipv4Addr) -> String {
    format!("{addr}/{HA_PREFIX_LEN}")
}

/// A 1-based index (checked against the topology's bounds) as an address octet.
fn index_octet(i: usize) -> u8 {
    u8::try_from(i).expect("an index bounded by HA_MAX_LBS or HA_MAX_BACKENDS")
}

/// The MAC after `link/ether` in `ip -o link show` output.
pub fn parse_link_mac(out: &str) -> Option<MacAddr> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    parse_mac(words.next()?)
}

/// The MAC after `lladdr` in `ip neigh show` output.
fn parse_lladdr(out: &str) -> Option<MacAddr> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    parse_mac(words.next()?)
}

/// `aa:bb:cc:dd:ee:ff` as a MAC address.
pub fn parse_mac(text: &str) -> Option<MacAddr> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(MacAddr(bytes))
}

/// The namespaces `ip netns list` shows whose names start with `prefix`: none once a
/// topology with that prefix is dropped.
pub fn namespaces_left(prefix: &str) -> Result<Vec<String>> {
    let out = run_command("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_read_from_ip_output() {
        let link = "2: lbc0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue \
                    state UP mode DEFAULT group default qlen 1000\\    link/ether \
                    06:2c:35:1d:3d:18 brd ff:ff:ff:ff:ff:ff link-netns x-fr";
        assert_eq!(
            parse_link_mac(link),
            Some(MacAddr([0x06, 0x2c, 0x35, 0x1d, 0x3d, 0x18]))
        );
        let neigh = "10.0.1.100 lladdr be:ec:8a:ca:44:73 REACHABLE \n";
        assert_eq!(
            parse_lladdr(neigh),
            Some(MacAddr([0xbe, 0xec, 0x8a, 0xca, 0x44, 0x73]))
        );
        assert_eq!(parse_lladdr("10.0.1.100 INCOMPLETE \n"), None);
        assert_eq!(parse_lladdr(""), None);
        assert_eq!(parse_mac("06:2c:35:1d:3d"), None);
        assert_eq!(parse_mac("06:2c:35:1d:3d:18:00"), None);
        assert_eq!(parse_mac("06:2c:35:1d:3d:zz"), None);
    }
}
