//! The client / lb / switch / backends test network, built from namespaces and veth pairs and torn down on drop.

use crate::client::ClientNs;
use crate::netns::{run_command, unique_prefix, Netns};
use crate::util::{SerialGuard, TempDir};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// Address of the client (`cli0` in the client namespace).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// Balancer address on the client side (`lbc0`); the client's route to the VIPs points here.
pub const LB_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
/// Balancer address on the backend side (`lbs0`); the NAT source address backends reply to.
pub const LB_BACKEND_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// The virtual IP clients connect to (inside 10.0.100.0/24, routed to the balancer).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 1);
/// Port of the HTTP (TCP) VIP and of the backends' HTTP servers.
pub const HTTP_PORT: u16 = 80;
/// Port of the UDP VIP and of the backends' UDP servers.
pub const UDP_PORT: u16 = 5300;
/// The client's address on its own link to the backends' switch
/// ([`Topology::add_direct_return_path`]).
pub const CLIENT_SIDE_DOOR: &str = "10.0.2.200";

/// IPv6 ([`Topology::add_ipv6`]): the client's address on `cli0`.
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
/// IPv6: the balancer's address on `lbc0`; the client's route to the IPv6 VIPs.
pub const LB_CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// IPv6: the balancer's address on `lbs0`, the NAT source address IPv6 backends reply to.
pub const LB_BACKEND_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// IPv6: the VIP clients connect to (inside `fd00:100::/64`, routed to the balancer).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);

/// The balancer's interfaces in the lb namespace: client side, backend side.
pub const LB_INTERFACES: [&str; 2] = ["lbc0", "lbs0"];

/// Largest number of backends (addresses 10.0.2.11 ..= 10.0.2.(10+N)).
const MAX_BACKENDS: usize = 200;

/// A test network:
///
/// ```text
///  client ns ──veth── lb ns ──veth── switch ns (Linux bridge br0) ──veth── backend ns 1..N
///  cli0 10.0.1.2     lbc0 10.0.1.1   swlb, sw1..swN                     eth0 10.0.2.(10+i)
///                    lbs0 10.0.2.1
/// ```
///
/// The client routes 10.0.100.0/24 (the VIPs) via the lb; the lb forwards (sysctl) and
/// holds both subnets; backends only know their own subnet (NAT mode). Nothing is created
/// in the root namespace. Dropping the topology deletes every namespace (and so every
/// interface), also when building it failed halfway.
///
/// Only one topology exists at a time per process: `new` waits for the previous one to be
/// dropped (see [`SerialGuard`]). Never hold two in one thread.
pub struct Topology {
    prefix: String,
    // Fields drop in declaration order: namespaces first, then the run dir, then the lock.
    backends: Vec<Netns>,
    switch: Netns,
    lb: Netns,
    client: Netns,
    run_dir: TempDir,
    /// The agent's pin directory: unmounting it frees the pinned flow tables and detaches
    /// links an agent left attached.
    pin_dir: BpfMount,
    _serial: SerialGuard,
}

impl Topology {
    /// Builds the topology with `n_backends` backend namespaces (1-based: `b1`..`bN`).
    pub fn new(n_backends: usize) -> Result<Topology> {
        if n_backends == 0 || n_backends > MAX_BACKENDS {
            bail!("a topology needs 1..={MAX_BACKENDS} backends, not {n_backends}");
        }
        let serial = SerialGuard::acquire();
        let prefix = unique_prefix();
        let run_dir = TempDir::new(&prefix)?;
        let pin_dir = BpfMount::new(&format!("{prefix}-bpf"))?;
        // Each Netns deletes itself if a later step fails and returns early.
        let client = Netns::new(&format!("{prefix}-cli"))?;
        let lb = Netns::new(&format!("{prefix}-lb"))?;
        let switch = Netns::new(&format!("{prefix}-sw"))?;
        let backends = (1..=n_backends)
            .map(|i| Netns::new(&format!("{prefix}-b{i}")))
            .collect::<Result<Vec<_>>>()?;
        let topo = Topology {
            prefix,
            backends,
            switch,
            lb,
            client,
            run_dir,
            pin_dir,
            _serial: serial,
        };
        topo.wire()
            .with_context(|| format!("building test topology {}", topo.prefix))?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        let s = &self.switch;
        self.create_client_link()?;
        s.ip(&["link", "add", "br0", "type", "bridge"])?;
        self.create_backend_link()?;
        for (idx, b) in self.backends.iter().enumerate() {
            let sw = format!("sw{}", idx + 1);
            s.ip(&[
                "link",
                "add",
                &sw,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                b.name(),
            ])?;
            s.ip(&["link", "set", &sw, "master", "br0"])?;
            let addr = self.backend_addr(idx + 1);
            b.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            // Senders must put full checksums in packets that XDP forwards (see
            // `create_client_link`).
            b.run(&["ethtool", "-K", "eth0", "tx", "off"])?;
        }

        // Forwarding in the lb namespace (sysctls of net.* are per namespace).
        self.lb
            .run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        self.lb
            .run(&["sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=1"])?;

        // A switch, not a firewall: when br_netfilter is loaded (it is by default on some
        // hosts), bridged IPv4 would also run through iptables/nftables hooks in the switch
        // namespace, costing CPU a real switch does not. `-e`: the keys exist only with
        // that module loaded.
        s.run(&[
            "sysctl",
            "-q",
            "-e",
            "-w",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ])?;

        // Everything up.
        for ns in self.all_namespaces() {
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        s.ip(&["link", "set", "br0", "up"])?;
        for idx in 1..=self.backends.len() {
            s.ip(&["link", "set", &format!("sw{idx}"), "up"])?;
        }
        for b in &self.backends {
            b.ip(&["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Creates the client-side link, `cli0` (client) ── `lbc0` (lb), with its addresses,
    /// up, and the client's route to the VIPs through the balancer: as [`Topology::new`]
    /// does, and again after a test deleted it.
    pub fn create_client_link(&self) -> Result<()> {
        let (c, l) = (&self.client, &self.lb);
        c.ip(&[
            "link",
            "add",
            "cli0",
            "type",
            "veth",
            "peer",
            "name",
            "lbc0",
            "netns",
            l.name(),
        ])?;
        c.ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "cli0"])?;
        l.ip(&[
            "addr",
            "add",
            &format!("{LB_CLIENT_ADDR}/24"),
            "dev",
            "lbc0",
        ])?;
        // veth + XDP gotchas (shared/TOOLCHAIN.md): senders must put full checksums in
        // packets that XDP forwards, and the peers of the balancer's veths must have GRO
        // on, or XDP_REDIRECT into the veth delivers nothing.
        c.run(&["ethtool", "-K", "cli0", "tx", "off"])?;
        c.run(&["ethtool", "-K", "cli0", "gro", "on"])?;
        c.ip(&["link", "set", "cli0", "up"])?;
        l.ip(&["link", "set", "lbc0", "up"])?;
        // The client reaches the VIP range through the balancer; backends get no route.
        c.ip(&[
            "route",
            "add",
            "10.0.100.0/24",
            "via",
            &LB_CLIENT_ADDR.to_string(),
        ])?;
        Ok(())
    }

    /// Creates the lb's backend-side link, `lbs0` (lb) ── `swlb` (a port of the switch's
    /// bridge `br0`, which must exist), with its address, up: as [`Topology::new`] does,
    /// and again after a test deleted it.
    pub fn create_backend_link(&self) -> Result<()> {
        let (l, s) = (&self.lb, &self.switch);
        l.ip(&[
            "link",
            "add",
            "lbs0",
            "type",
            "veth",
            "peer",
            "name",
            "swlb",
            "netns",
            s.name(),
        ])?;
        s.ip(&["link", "set", "swlb", "master", "br0"])?;
        l.ip(&[
            "addr",
            "add",
            &format!("{LB_BACKEND_ADDR}/24"),
            "dev",
            "lbs0",
        ])?;
        // (GRO on the peer: see `create_client_link`.)
        s.run(&["ethtool", "-K", "swlb", "gro", "on"])?;
        s.ip(&["link", "set", "swlb", "up"])?;
        l.ip(&["link", "set", "lbs0", "up"])?;
        Ok(())
    }

    fn all_namespaces(&self) -> impl Iterator<Item = &Netns> {
        [&self.client, &self.lb, &self.switch]
            .into_iter()
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

    /// The balancer's namespace (`lbc0` 10.0.1.1/24, `lbs0` 10.0.2.1/24, forwarding on).
    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    /// The switch namespace (bridge `br0` with ports `swlb`, `sw1`..`swN`).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// The backend namespaces, in order (index 0 is backend 1).
    pub fn backends(&self) -> &[Netns] {
        &self.backends
    }

    /// Backend `i` (1-based).
    pub fn backend(&self, i: usize) -> &Netns {
        self.check_index(i);
        &self.backends[i - 1]
    }

    /// Number of backend namespaces.
    pub fn n_backends(&self) -> usize {
        self.backends.len()
    }

    /// Address of backend `i` (1-based): 10.0.2.(10+i).
    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        self.check_index(i);
        Ipv4Addr::new(10, 0, 2, 10 + i as u8)
    }

    /// Name backend `i` answers with (`b{i}`).
    pub fn backend_name(&self, i: usize) -> String {
        self.check_index(i);
        format!("b{i}")
    }

    /// The index of the backend that answers with `name` (`"b2"` -> 2).
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix('b')?.parse().ok()?;
        (1..=self.backends.len()).contains(&i).then_some(i)
    }

    /// `ADDR:80` of backend `i`, as the CLI takes it (`10.0.2.12:80`).
    pub fn backend_http(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.backend_addr(i), HTTP_PORT)
    }

    /// `ADDR:5300` of backend `i`.
    pub fn backend_udp(&self, i: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.backend_addr(i), UDP_PORT)
    }

    /// The balancer's interfaces: `["lbc0", "lbs0"]`.
    pub fn lb_interfaces(&self) -> [&'static str; 2] {
        LB_INTERFACES
    }

    /// The HTTP VIP, 10.0.100.1:80.
    pub fn vip_http() -> SocketAddrV4 {
        SocketAddrV4::new(VIP, HTTP_PORT)
    }

    /// The UDP VIP, 10.0.100.1:5300.
    pub fn vip_udp() -> SocketAddrV4 {
        SocketAddrV4::new(VIP, UDP_PORT)
    }

    /// A directory private to this topology, removed on drop.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// The agent's pin directory for this topology: a bpf filesystem of its own,
    /// unmounted (with everything pinned in it) on drop.
    pub fn pin_dir(&self) -> &Path {
        self.pin_dir.dir.path()
    }

    /// The agent control socket path for this topology (in [`Topology::run_dir`]); used
    /// by [`crate::default_config`] and [`crate::Agent::start`].
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.path().join("balancer.sock")
    }

    /// Gives the backends the VIP (on `lo`, ARP for it ignored, as IPVS's DR set-up asks)
    /// and a way back to the client that avoids the balancer: a second link of the
    /// client's, [`CLIENT_SIDE_DOOR`], to the backends' switch. For VIPs whose backends
    /// answer clients themselves (direct server return, tunnels).
    ///
    /// # Panics
    /// When a command of the set-up fails.
    pub fn add_direct_return_path(&self) {
        let (client, switch) = (self.client(), self.switch());
        client
            .ip(&[
                "link",
                "add",
                "clb0",
                "type",
                "veth",
                "peer",
                "name",
                "swc",
                "netns",
                switch.name(),
            ])
            .expect("a client link to the switch");
        switch.ip(&["link", "set", "swc", "master", "br0"]).unwrap();
        switch.ip(&["link", "set", "swc", "up"]).unwrap();
        client
            .ip(&[
                "addr",
                "add",
                &format!("{CLIENT_SIDE_DOOR}/24"),
                "dev",
                "clb0",
            ])
            .unwrap();
        client.ip(&["link", "set", "clb0", "up"]).unwrap();
        // Replies come from the VIP on a link the client does not route the VIP through.
        for key in ["all", "default", "clb0"] {
            client
                .run(&["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")])
                .unwrap();
        }
        for backend in self.backends() {
            backend
                .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])
                .expect("the VIP on the backend's lo");
            for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
                backend
                    .run(&["sysctl", "-qw", &format!("net.ipv4.conf.all.{key}={value}")])
                    .unwrap();
            }
            backend
                .ip(&["route", "add", "10.0.1.0/24", "via", CLIENT_SIDE_DOOR])
                .expect("the backend's route to the client");
        }
    }

    /// Adds IPv6 beside IPv4: `cli0` [`CLIENT_ADDR6`], `lbc0` [`LB_CLIENT_ADDR6`], `lbs0`
    /// [`LB_BACKEND_ADDR6`], backend `i`'s `eth0` `fd00:2::(10+i)` (all /64, without
    /// duplicate address detection, so they are usable at once), the client's route to
    /// `fd00:100::/64` (the IPv6 VIPs) via the balancer, and IPv6 forwarding in the lb
    /// namespace.
    ///
    /// # Errors
    /// When a command fails.
    pub fn add_ipv6(&self) -> Result<()> {
        let addr = |ns: &Netns, addr: Ipv6Addr, dev: &str| {
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ])
        };
        addr(&self.client, CLIENT_ADDR6, "cli0")?;
        addr(&self.lb, LB_CLIENT_ADDR6, "lbc0")?;
        addr(&self.lb, LB_BACKEND_ADDR6, "lbs0")?;
        for i in 1..=self.backends.len() {
            addr(self.backend(i), self.backend_addr6(i), "eth0")?;
        }
        self.client.ip(&[
            "-6",
            "route",
            "add",
            "fd00:100::/64",
            "via",
            &LB_CLIENT_ADDR6.to_string(),
        ])?;
        self.lb
            .run(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(())
    }

    /// IPv6 address of backend `i` (1-based, after [`Topology::add_ipv6`]): `fd00:2::(10+i)`.
    pub fn backend_addr6(&self, i: usize) -> Ipv6Addr {
        self.check_index(i);
        // Written in hex: 0x11 is `fd00:2::11`.
        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x10 + i as u16)
    }

    /// `[ADDR]:80` of backend `i` over IPv6, as the CLI takes it.
    pub fn backend_http6(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.backend_addr6(i).into(), HTTP_PORT)
    }

    /// The IPv6 HTTP VIP, `[fd00:100::1]:80`.
    pub fn vip6_http() -> SocketAddr {
        SocketAddr::new(VIP6.into(), HTTP_PORT)
    }

    /// A worker thread inside the client namespace with the client helpers.
    pub fn client_ns(&self) -> Result<ClientNs> {
        ClientNs::new(&self.client)
    }

    fn check_index(&self, i: usize) {
        assert!(
            (1..=self.backends.len()).contains(&i),
            "backend index {i} out of range 1..={}",
            self.backends.len()
        );
    }
}

/// A bpf filesystem of its own, mounted on a temporary directory. Not /sys/fs/bpf: `ip netns
/// exec`, which starts the agent, mounts a fresh /sys, but keeps other mounts. Unmounting
/// it frees whatever is pinned in it.
pub struct BpfMount {
    dir: TempDir,
}

impl BpfMount {
    /// Mounts one; `tag` names its directory.
    ///
    /// # Errors
    /// When the directory cannot be made or the mount fails.
    pub fn new(tag: &str) -> Result<BpfMount> {
        let dir = TempDir::new(tag)?;
        let path = dir
            .path()
            .to_str()
            .context("a temporary path that is UTF-8")?;
        run_command("mount", &["-t", "bpf", "bpf", path])?;
        Ok(BpfMount { dir })
    }

    /// Where the bpf filesystem is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        if let Some(path) = self.dir.path().to_str() {
            let _ = run_command("umount", &["-l", path]);
        }
    }
}
