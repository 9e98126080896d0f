//! Forwarder-bound: what one CPU forwards. An `AF_PACKET` sender on one CPU offers more
//! than the forwarder can take; the forwarder's ingress veth runs its NAPI as a thread
//! pinned to the other CPU, which receives, forwards (the path under test) and transmits;
//! a sink counts what arrives. Forwarded packets per second, that CPU's busy share (from
//! /proc/stat: near 100% proves it is the bottleneck) and so its ns per packet, for the
//! balancer in skb and driver mode, the kernel's own routing and nftables DNAT, over
//! working sets of flows; and a stream of SYNs of new TCP flows (new flows per second).
//!
//! Live-frame `BPF_PROG_TEST_RUN` (what xdp-trafficgen uses) returns EPERM here, hence the
//! socket sender (shared/TOOLCHAIN.md).

mod net;
mod sender;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};

use crate::e2e::cpu_jiffies;
use crate::stats::{summarize, Summary};
use crate::xdp::XDP_DROP;
use crate::Stop;
use net::{check_attached, check_verdicts, Net, CLIENT_MAC, FWD_IN_MAC, VIP};
pub use net::{BACKENDS, PORT_RANGE};
use sender::{template, Sender, Traffic};

/// The sender's CPU, and the CPU whose NAPI thread forwards.
pub const SENDER_CPU: usize = 0;
pub const FORWARD_CPU: usize = 1;
/// The working sets (flows) of the UDP columns.
pub const FLOWS: [u32; 4] = [1, 10_000, 65_536, 1_000_000];
/// Where the UDP flows' client addresses begin (50000 ports each), and the SYNs'.
const UDP_CLIENTS: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
const SYN_CLIENTS: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
/// The paced rate at which every flow is first sent (a new flow for a stateful path), so
/// that the measured windows see established flows only.
const WARM_RATE: f64 = 250_000.0;
/// Traffic before each window, not counted: the path reaches its steady state.
const SETTLE: Duration = Duration::from_millis(300);

/// How long and how often.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rounds: usize,
    pub window: Duration,
}

/// The compared forwarders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    BalancerSkb,
    BalancerDriver,
    Kernel,
    Nftables,
}

impl Path {
    pub const ALL: [Path; 4] = [
        Path::BalancerSkb,
        Path::BalancerDriver,
        Path::Kernel,
        Path::Nftables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Path::BalancerSkb => "balancer, skb mode",
            Path::BalancerDriver => "balancer, driver mode",
            Path::Kernel => "kernel forwarding (routing, no NAT)",
            Path::Nftables => "nftables DNAT + masquerade",
        }
    }

    /// Whether it keeps per-flow state (and so gets new flows).
    fn stateful(self) -> bool {
        self != Path::Kernel
    }
}

/// One measured window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Frames that reached the sink per second.
    pub pps: f64,
    /// The forwarding CPU's busy share (0..=1).
    pub busy: f64,
}

impl Sample {
    /// ns of the forwarding CPU per forwarded packet.
    pub fn ns_per_packet(&self) -> f64 {
        self.busy * 1e9 / self.pps
    }
}

/// A path with one kind of traffic, over the rounds.
#[derive(Clone, Debug)]
pub struct Cell {
    pub path: Path,
    /// The UDP working set, or `None`: the stream of new TCP flows.
    pub flows: Option<u32>,
    pub samples: Vec<Sample>,
}

impl Cell {
    pub fn pps(&self) -> Summary {
        summarize(&self.samples.iter().map(|s| s.pps).collect::<Vec<_>>())
    }

    pub fn busy(&self) -> Summary {
        summarize(&self.samples.iter().map(|s| s.busy).collect::<Vec<_>>())
    }

    pub fn ns_per_packet(&self) -> Summary {
        summarize(
            &self
                .samples
                .iter()
                .map(Sample::ns_per_packet)
                .collect::<Vec<_>>(),
        )
    }
}

/// Results of [`run`].
#[derive(Clone, Debug)]
pub struct Forward {
    pub plan: Plan,
    pub cells: Vec<Cell>,
    /// The kernel's conntrack limit (nftables' flows beyond it are not tracked).
    pub conntrack_max: Option<u64>,
}

impl Forward {
    pub fn cell(&self, path: Path, flows: Option<u32>) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.path == path && c.flows == flows)
    }
}

/// The forwarder-bound bench: `plan.rounds` rounds, each path in turn within a round.
pub fn run(plan: Plan, stop: &Stop) -> Result<Forward> {
    ensure!(
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get) > FORWARD_CPU,
        "the forwarder-bound bench needs 2 CPUs (sender and forwarder)"
    );
    let net = Net::new()?;
    let client_if = net.client_ifindex()?;
    let mut cells: Vec<Cell> = Vec::new();
    let mut syns = Traffic::Syns { first: 0 };
    for round in 0..plan.rounds {
        for path in Path::ALL {
            stop.check()?;
            crate::say(&format!(
                "forward: round {}/{}: {}",
                round + 1,
                plan.rounds,
                path.name()
            ));
            let guard = net.path(path)?;
            check_attached(&net, path)?;
            let largest = FLOWS.iter().copied().max().unwrap_or(1);
            let udp = |flows| Traffic::Udp { flows };
            if path.stateful() {
                // Every flow once, paced, so that the windows see established flows.
                let secs = f64::from(largest) / WARM_RATE;
                send(
                    &net,
                    client_if,
                    udp(largest),
                    Duration::from_secs_f64(secs),
                    Some(WARM_RATE),
                )?;
            }
            for flows in FLOWS {
                stop.check()?;
                let (sample, _) = window(&net, client_if, udp(flows), plan.window)
                    .with_context(|| format!("{}, {flows} flows", path.name()))?;
                push(&mut cells, path, Some(flows), sample);
            }
            if path.stateful() {
                let (sample, continued) = window(&net, client_if, syns, plan.window)
                    .with_context(|| format!("{}, new flows", path.name()))?;
                syns = continued;
                push(&mut cells, path, None, sample);
            }
            check_verdicts(&guard).with_context(|| path.name())?;
            drop(guard);
        }
    }
    Ok(Forward {
        plan,
        cells,
        conntrack_max: net::conntrack_max(),
    })
}

fn push(cells: &mut Vec<Cell>, path: Path, flows: Option<u32>, sample: Sample) {
    if let Some(cell) = cells
        .iter_mut()
        .find(|c| c.path == path && c.flows == flows)
    {
        cell.samples.push(sample);
    } else {
        cells.push(Cell {
            path,
            flows,
            samples: vec![sample],
        });
    }
}

/// Sends `traffic` for `duration` (at most `rate` per second) from a thread pinned to the
/// sender's CPU in the client namespace; returns the frames sent and where `traffic` goes on.
fn send(
    net: &Net,
    client_if: u32,
    traffic: Traffic,
    duration: Duration,
    rate: Option<f64>,
) -> Result<(sender::Sent, Traffic)> {
    let frame = template(
        traffic,
        (CLIENT_MAC, FWD_IN_MAC),
        VIP,
        (balancer_tests::UDP_PORT, balancer_tests::HTTP_PORT),
        match traffic {
            Traffic::Udp { .. } => UDP_CLIENTS,
            Traffic::Syns { .. } => SYN_CLIENTS,
        },
    );
    net.client.in_thread(|| {
        crate::pin(0, SENDER_CPU)?;
        Sender::new(client_if)?.send(&frame, traffic, duration, rate)
    })?
}

/// One measured window of `traffic` after [`SETTLE`]: what arrived at the sink and the
/// forwarding CPU's busy share meanwhile.
fn window(
    net: &Net,
    client_if: u32,
    traffic: Traffic,
    duration: Duration,
) -> Result<(Sample, Traffic)> {
    let (_, traffic) = send(net, client_if, traffic, SETTLE, None)?;
    let before = net.arrived.count(XDP_DROP)?;
    let cpu0 = cpu_jiffies(Some(FORWARD_CPU)).context("reading /proc/stat")?;
    let started = std::time::Instant::now();
    let (sent, continued) = send(net, client_if, traffic, duration, None)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu1 = cpu_jiffies(Some(FORWARD_CPU)).context("reading /proc/stat")?;
    let arrived = net.arrived.count(XDP_DROP)? - before;
    ensure!(
        arrived > 0,
        "nothing arrived at the sink ({} frames sent, {} refused)",
        sent.frames,
        sent.refused
    );
    let busy = (cpu1.0 - cpu0.0) as f64 / (cpu1.1 - cpu0.1).max(1) as f64;
    Ok((
        Sample {
            pps: arrived as f64 / secs,
            busy,
        },
        continued,
    ))
}
