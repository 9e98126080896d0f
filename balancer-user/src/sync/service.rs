//! The tokio side of flow sync: one task owns the UDP socket and the [`Machine`]. It
//! signs and paces what the agent gives it to send, checks what arrives, hands the agent
//! what passed (on a channel: it never touches the maps), and publishes its counters as a
//! `watch` snapshot after each step.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use balancer_wire::sync::Record;
use tokio::sync::{mpsc, watch};

use super::config::SyncConfig;
use super::machine::{Delivery, Machine, PeerStats};
use crate::sys;

/// What the service's counters look like now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// This node's boot id (its start, ns since the epoch).
    pub boot_id: u64,
    pub local: Option<SocketAddr>,
    pub peers: BTreeMap<SocketAddr, PeerStats>,
    pub queued: usize,
    pub queue_drops: u64,
    /// Datagrams from addresses that are not peers.
    pub strangers: u64,
}

#[derive(Debug)]
enum Command {
    Flows { records: Vec<Record>, full: bool },
}

/// The agent's handle on the running flow-sync service.
#[derive(Debug)]
pub struct FlowSync {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Arc<Snapshot>>,
}

/// The largest datagram read (ours are under 1400 bytes).
const MAX_DATAGRAM: usize = 2048;

impl FlowSync {
    /// Opens the socket and starts the service; what peers send comes on `deliveries`. A
    /// resync is asked for at once: a starting node wants the Master's flows.
    ///
    /// # Errors
    /// When the key cannot be read or the socket cannot be opened.
    pub fn start(config: &SyncConfig, deliveries: mpsc::Sender<Delivery>) -> anyhow::Result<Self> {
        let key = config.key_bytes().map_err(anyhow::Error::msg)?;
        let socket = open_socket(config)?;
        let local = socket.local_addr().ok();
        let boot_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let now = Instant::now();
        let mut machine = Machine::new(&key, boot_id, &config.peers, config.rate, now);
        machine.ask_resync(now);
        let (commands, rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Arc::new(snapshot(&machine, boot_id, local)));
        tokio::spawn(run(machine, socket, rx, deliveries, status_tx, boot_id));
        Ok(FlowSync { commands, status })
    }

    /// Sends `records` to every peer (`full`: a full resync).
    pub fn send(&self, records: Vec<Record>, full: bool) {
        if self
            .commands
            .send(Command::Flows { records, full })
            .is_err()
        {
            log::warn!("flow sync: the service has stopped; records were not sent");
        }
    }

    /// The counters now.
    pub fn status(&self) -> Arc<Snapshot> {
        Arc::clone(&self.status.borrow())
    }
}

fn open_socket(config: &SyncConfig) -> anyhow::Result<tokio::net::UdpSocket> {
    let ip = config.source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let bound = SocketAddr::new(ip, config.port);
    let socket = std::net::UdpSocket::bind(bound)
        .with_context(|| format!("flow sync: binding UDP {bound}"))?;
    let socket = match &config.interface {
        Some(name) => {
            let fd = OwnedFd::from(socket);
            sys::setsockopt_bytes(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_bytes(),
            )
            .with_context(|| format!("flow sync: binding the socket to {name}"))?;
            std::net::UdpSocket::from(fd)
        }
        None => socket,
    };
    socket.set_nonblocking(true)?;
    Ok(tokio::net::UdpSocket::from_std(socket)?)
}

fn snapshot(machine: &Machine, boot_id: u64, local: Option<SocketAddr>) -> Snapshot {
    Snapshot {
        boot_id,
        local,
        peers: machine.stats(),
        queued: machine.queued(),
        queue_drops: machine.queue_drops,
        strangers: machine.strangers,
    }
}

async fn run(
    mut machine: Machine,
    socket: tokio::net::UdpSocket,
    mut commands: mpsc::UnboundedReceiver<Command>,
    deliveries: mpsc::Sender<Delivery>,
    status: watch::Sender<Arc<Snapshot>>,
    boot_id: u64,
) {
    let local = socket.local_addr().ok();
    let peers: Vec<SocketAddr> = machine.peers().collect();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let wake = machine
            .poll_at(Instant::now())
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Flows { records, full }) => machine.send_flows(&records, full),
                // The agent is gone.
                None => return,
            },
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => {
                    if let Some(delivery) = machine.receive(from, &buf[..len], Instant::now()) {
                        if deliveries.send(delivery).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => log::warn!("flow sync: receiving: {e}"),
            },
            () = sleep_until(wake) => {}
        }
        for datagram in machine.poll(Instant::now()) {
            for peer in &peers {
                if let Err(e) = socket.send_to(&datagram, peer).await {
                    log::debug!("flow sync: sending to {peer}: {e}");
                }
            }
        }
        status.send_replace(Arc::new(snapshot(&machine, boot_id, local)));
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
