//! Test support for the balancer: network-namespace topologies, test servers, an agent driver and client helpers.
//!
//! Every end-to-end test builds its own hosts out of network namespaces and veth pairs, and
//! sends packets only between them (nothing in the root namespace):
//!
//! ```text
//!  client ns ──veth── lb ns ──veth── switch ns (Linux bridge br0) ──veth── backend ns 1..N
//! ```
//!
//! The VRRP tests use [`HaTopology`] instead: a client and two or three balancer namespaces
//! on a front bridge, the balancers and the backends on a back bridge, with a keepalived
//! driver ([`Keepalived`]), a capture of the adverts ([`Capture`]) and a client that
//! measures the gap in service during a failover ([`Prober`]).
//!
//! A typical test:
//!
//! ```no_run
//! use balancer_tests::{default_config, require_root, Agent, Topology};
//! use std::time::Duration;
//!
//! require_root();
//! let topo = Topology::new(3).unwrap();
//! let _servers = topo.start_backends().unwrap();
//! let agent = Agent::start(&topo, &default_config(&topo, "maglev")).unwrap();
//! let client = topo.client_ns().unwrap();
//! let name = client.http_get(Topology::vip_http(), Duration::from_secs(2)).unwrap();
//! assert!(name.starts_with('b'));
//! # drop(agent);
//! ```
//!
//! Everything cleans up after itself through `Drop` guards, also when a test panics.

pub mod agent;
pub mod capture;
pub mod client;
pub mod etcd;
pub mod failover;
pub mod fixtures;
pub mod flood;
pub mod forge;
pub mod frame;
pub mod ha;
pub mod ha_agent;
pub mod keepalived;
pub mod long_flows;
pub mod model;
pub mod netns;
pub mod running;
pub mod servers;
pub mod soak;
pub mod topology;
pub mod util;

pub use agent::{balancer_cli, balancer_path, config_for, default_config, Agent, CliOutput};
pub use capture::{assert_one_master, Advert, Capture, VrrpChecksum, TRANSITION_WINDOW};
pub use client::{
    http_get, http_get_many, http_request, udp_request, udp_request_many, ClientNs, HttpResponse,
    KeepAlive, Tally, DEFAULT_TIMEOUT,
};
pub use etcd::{Etcd, ETCD_ADDR};
pub use failover::{Gap, ProbeReport, Prober};
pub use ha::{HaTopology, HA_BACK_FLOATING, HA_PREFIX_LEN, HA_VIP};
pub use keepalived::{Keepalived, KeepalivedConfig, VrrpState};
pub use netns::{Netns, NsThread};
pub use running::Running;
pub use servers::{testsrv_path, ServerSpec, Servers};
pub use topology::{
    BpfMount, Topology, CLIENT_ADDR, CLIENT_ADDR6, CLIENT_SIDE_DOOR, HTTP_PORT, LB_BACKEND_ADDR,
    LB_BACKEND_ADDR6, LB_CLIENT_ADDR, LB_CLIENT_ADDR6, LB_INTERFACES, UDP_PORT, VIP, VIP6,
};

use std::process::{Command, Stdio};

/// Panics with a clear message unless the process runs as root and iproute2's `ip` exists.
///
/// The end-to-end tests never skip silently: CI runs them as root, and a skipped test there
/// would hide a broken balancer.
pub fn require_root() {
    const HOW: &str = "these tests need root and iproute2 to create network namespaces; \
                       run them with `cargo xtask test` as root";
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "{HOW} (effective uid is {euid}, not 0)");
    let ip_ok = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ip_ok,
        "{HOW} (`ip -V` could not be run: is iproute2 installed and in PATH?)"
    );
}
