//! What the agent derives for the kernel besides the tables: the data plane's settings
//! and the SNAT source address towards each backend.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use balancer_common::Settings;

use super::BalancerError;
use crate::config::{family, sources_for, NatConfig, Timeouts, TunnelConfig};

/// How the SNAT source address towards a backend is chosen.
#[derive(Clone, Debug)]
pub enum SnatSource {
    /// Always these addresses (at least one, at most `MAX_SNAT_ADDRS`), those of a
    /// backend's family towards it.
    Fixed(Vec<IpAddr>),
    /// The address the routing table would use to reach the backend.
    Route,
}

impl SnatSource {
    pub(super) fn resolve(&self, backend: SocketAddr) -> Result<Vec<IpAddr>, BalancerError> {
        match self {
            SnatSource::Fixed(addrs) => {
                let ours = sources_for(addrs, backend.ip());
                if ours.is_empty() {
                    return Err(BalancerError::NoSourceAddress {
                        backend,
                        why: format!(
                            "nat.source_addresses has no {} address",
                            family(backend.ip())
                        ),
                    });
                }
                Ok(ours)
            }
            SnatSource::Route => {
                // connect() on a UDP socket sends nothing; it asks the kernel for the route.
                let err = |e: std::io::Error| BalancerError::NoSourceAddress {
                    backend,
                    why: e.to_string(),
                };
                let any: SocketAddr = match backend {
                    SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
                    SocketAddr::V6(_) => "[::]:0".parse().expect("an address"),
                };
                let socket = UdpSocket::bind(any).map_err(err)?;
                socket.connect(backend).map_err(err)?;
                Ok(vec![socket.local_addr().map_err(err)?.ip()])
            }
        }
    }
}

/// Kernel settings derived from the configuration.
pub fn settings(timeouts: &Timeouts, nat: &NatConfig, tunnel: &TunnelConfig) -> Settings {
    let (tunnel_src, tunnel_src_mask) = tunnel.source.map_or((0, 0), |(addr, len)| {
        let host_bits = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        (u32::from(addr).to_be(), host_bits.to_be())
    });
    Settings {
        tcp_timeout_ns: timeouts.tcp.as_nanos() as u64,
        tcp_handshake_timeout_ns: timeouts.tcp_handshake.min(timeouts.tcp).as_nanos() as u64,
        udp_timeout_ns: timeouts.udp.as_nanos() as u64,
        closing_timeout_ns: timeouts.tcp_closing.as_nanos() as u64,
        snat_time_wait_ns: timeouts.snat_time_wait.as_nanos() as u64,
        snat_port_min: nat.port_min,
        snat_port_max: nat.port_max,
        flow_epoch: 0,
        ns_per_tick: ns_per_tick(),
        tunnel_src,
        tunnel_src_mask,
        tunnel_mtu: tunnel.mtu,
        gue_port: tunnel.gue_port.to_be(),
    }
}

/// The kernel's tick length in ns: the resolution of `CLOCK_MONOTONIC_COARSE`, which
/// advances once per tick (4 ms at HZ=250). 0 when that cannot be read or makes no sense
/// (the data plane then uses its coarse clock helper).
pub fn ns_per_tick() -> u32 {
    // SAFETY: an all-zero timespec is valid; clock_getres only writes it.
    let mut res: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `res` is valid for writes.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) };
    if rc != 0 || res.tv_sec != 0 {
        return 0;
    }
    // A tick of HZ = 100 to 1000 (10 ms to 1 ms); anything else is not a jiffy.
    u32::try_from(res.tv_nsec)
        .ok()
        .filter(|ns| (1_000_000..=10_000_000).contains(ns))
        .unwrap_or(0)
}
