//! Addresses that can only be mistakes, refused in the same words wherever they come from
//! (the file's validator, `vip add` and `backend add` over the control socket): one check
//! per kind of address (a VIP's, a backend's, the SNAT source), with what only the host can
//! tell ([`Host`]: its own addresses, its ephemeral ports) when the caller knows it.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
};

use super::{Protocol, VipMode};
use crate::sys;

/// Where the kernel keeps the ports it gives local sockets that bind none.
const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// What the checks need to know of the host (the agent's network namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Every interface's addresses of both families: (interface, address).
    pub local: Vec<(String, IpAddr)>,
    /// Addresses the agent itself puts on an interface and takes off again: a `[[vrrp]]`
    /// instance's (on its interface while it is Master, gone while it is Backup) and an
    /// HTTP-mode VIP's (on `lo` while the proxy serves it). Being local is what they are
    /// for, not a mistake, whatever the moment the check runs at; so they never count as
    /// the host's own.
    pub ours: HashSet<IpAddr>,
    /// `net.ipv4.ip_local_port_range`, if it could be read.
    pub ephemeral_ports: Option<RangeInclusive<u16>>,
}

impl Host {
    /// This host's addresses and ephemeral ports (no address is [`Host::ours`] yet).
    ///
    /// # Errors
    ///
    /// When the interfaces' addresses cannot be listed.
    pub fn read() -> io::Result<Host> {
        let local = sys::all_addresses()?
            .into_iter()
            .map(|(interface, address, _)| (interface, address))
            .collect();
        let ephemeral_ports = std::fs::read_to_string(EPHEMERAL_PORTS)
            .ok()
            .and_then(|text| parse_port_pair(&text));
        Ok(Host {
            local,
            ours: HashSet::new(),
            ephemeral_ports,
        })
    }

    /// The host with `addresses` counted as the agent's own ([`Host::ours`]).
    #[must_use]
    pub fn with_ours(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Host {
        self.ours.extend(addresses);
        self
    }

    /// The interface that has `address`, when the host has it and the agent did not put
    /// it there.
    fn own_interface(&self, address: IpAddr) -> Option<&str> {
        if self.ours.contains(&address) {
            return None;
        }
        self.local
            .iter()
            .find(|(_, a)| *a == address)
            .map(|(interface, _)| interface.as_str())
    }

    /// Whether the host has `address`, whoever put it there.
    fn has(&self, address: IpAddr) -> bool {
        self.local.iter().any(|(_, a)| *a == address)
    }
}

/// `"32768\t60999\n"` (the format of `ip_local_port_range`).
fn parse_port_pair(text: &str) -> Option<RangeInclusive<u16>> {
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Some(low..=high),
        _ => None,
    }
}

/// Why an address cannot be used where it was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not an address a client can send a flow to.
    #[error("{address} is {why}, not a VIP's address")]
    VipNotUnicast { address: IpAddr, why: &'static str },
    /// An L4 VIP on one of the host's own addresses.
    #[error(
        "{address} is an address of this host ({interface}): balancing it would take over \
         the host's own traffic to port {port}/{protocol}"
    )]
    VipLocal {
        address: IpAddr,
        interface: String,
        port: u16,
        protocol: Protocol,
    },
    /// An L4 pool's backend on loopback or on the host itself.
    #[error(
        "{address} is {what}: the XDP program cannot forward flows to the balancer itself \
         (a local backend can serve only HTTP-mode VIPs, whose proxy connects to it)"
    )]
    BackendLocal { address: IpAddr, what: String },
    /// A SNAT source that cannot be anyone's.
    #[error("{address} is {why}, not a source address backends can answer")]
    SourceNotUnicast { address: IpAddr, why: &'static str },
    /// A SNAT source the host does not have.
    #[error(
        "{address} is not an address of this host: the backends' replies to it would never \
         reach the balancer (use an address of one of its interfaces, or of a [[vrrp]] \
         instance that moves it)"
    )]
    SourceNotLocal { address: IpAddr },
}

/// Why `addr` cannot be a backend's (unicast host) address, if it cannot. An IPv6
/// link-local address names a host only with an interface (which the maps do not hold),
/// and an IPv4-mapped one is the IPv4 address's, to be written as such.
#[must_use]
pub fn not_a_host(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else {
        match addr {
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            IpAddr::V6(v6) if is_link_local(v6) => Some("a link-local address"),
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                Some("an IPv4-mapped address (write the IPv4 address)")
            }
            _ => None,
        }
    }
}

/// `fe80::/10`.
fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// Why `addr` cannot be a client's destination or a source others answer: not a unicast
/// host ([`not_a_host`]), reserved (240/4, which Linux does not route), or loopback.
fn not_unicast(addr: IpAddr) -> Option<&'static str> {
    not_a_host(addr).or_else(|| {
        if matches!(addr, IpAddr::V4(v4) if v4.octets()[0] >= 240) {
            Some("a reserved (class E) address")
        } else if addr.is_loopback() {
            Some("a loopback address")
        } else {
            None
        }
    })
}

/// Whether `address` can be a VIP's (`port`, `protocol` and `mode` are the VIP's): a
/// unicast address of the network, and for an L4 VIP none of the host's own (`host`,
/// when known): the XDP program would take every packet to that port from the host's
/// own services (`vip add self <host-addr>:22/tcp` would hijack its SSH). An HTTP VIP's
/// address is local by design: the proxy listens on it.
///
/// # Errors
///
/// Why it cannot.
pub fn check_vip_address(
    (address, port, protocol): (IpAddr, u16, Protocol),
    mode: VipMode,
    host: Option<&Host>,
) -> Result<(), AddressError> {
    if let Some(why) = not_unicast(address) {
        return Err(AddressError::VipNotUnicast { address, why });
    }
    if mode == VipMode::L4 {
        if let Some(interface) = host.and_then(|h| h.own_interface(address)) {
            return Err(AddressError::VipLocal {
                address,
                interface: interface.to_owned(),
                port,
                protocol,
            });
        }
    }
    Ok(())
}

/// Whether `address` can be a backend of an L4 VIP's pool, beyond
/// [`check_backend_address`]: the XDP program forwards flows out of an interface, so
/// neither loopback nor an address of the host itself (`host`, when known) can take them.
///
/// # Errors
///
/// Why it cannot.
pub fn check_l4_backend(address: IpAddr, host: Option<&Host>) -> Result<(), AddressError> {
    let what = if address.is_loopback() {
        "a loopback address".to_owned()
    } else if let Some(interface) = host.and_then(|h| h.own_interface(address)) {
        format!("an address of this host ({interface})")
    } else {
        return Ok(());
    };
    Err(AddressError::BackendLocal { address, what })
}

/// Whether `address` can be `nat.source_address`: a unicast address that the host has
/// (`host`, when known), or one a `[[vrrp]]` instance moves (in [`Host::ours`]: on this
/// host while it is Master, which is when the data plane here forwards).
///
/// # Errors
///
/// Why it cannot.
pub fn check_source_address(address: IpAddr, host: Option<&Host>) -> Result<(), AddressError> {
    if let Some(why) = not_unicast(address) {
        return Err(AddressError::SourceNotUnicast { address, why });
    }
    match host {
        Some(h) if !h.has(address) && !h.ours.contains(&address) => {
            Err(AddressError::SourceNotLocal { address })
        }
        _ => Ok(()),
    }
}

/// A warning when the SNAT ports `ports` share some with the kernel's ephemeral ports:
/// the data plane takes a backend's reply to the SNAT address and a port of the range for
/// a flow's, so a local connection to a backend (a health check, the HTTP proxy) that the
/// kernel gave such a port from that address meets a flow's entry, and one of the two
/// loses its replies.
#[must_use]
pub fn port_range_overlap(ports: RangeInclusive<u16>, host: &Host) -> Option<String> {
    let ephemeral = host.ephemeral_ports.as_ref()?;
    let low = *ports.start().max(ephemeral.start());
    let high = *ports.end().min(ephemeral.end());
    (low <= high).then(|| {
        format!(
            "{}-{} overlaps net.ipv4.ip_local_port_range ({}-{}) in {low}-{high}: a local \
             connection to a backend (a health check, the HTTP proxy) may get a port a flow \
             holds, and then it or the flow loses the backend's replies; keep the two apart",
            ports.start(),
            ports.end(),
            ephemeral.start(),
            ephemeral.end()
        )
    })
}

/// Why an address and port cannot be a backend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendAddressError {
    /// The address is not a unicast host's (see [`not_a_host`]).
    #[error("{address} is {why}, not a backend's address")]
    NotAHost { address: IpAddr, why: &'static str },
    /// Port 0.
    #[error("port 0 is out of range 1..=65535")]
    PortZero,
}

/// Whether `addr` can be a backend's address and port: a unicast host and a port other
/// than 0. The one check of a backend's address, wherever one comes from (the file, the
/// command line, the control socket); a backend of an L4 VIP's pool must also pass
/// [`check_l4_backend`].
///
/// # Errors
///
/// Why it cannot.
pub fn check_backend_address(addr: SocketAddr) -> Result<(), BackendAddressError> {
    if let Some(why) = not_a_host(addr.ip()) {
        return Err(BackendAddressError::NotAHost {
            address: addr.ip(),
            why,
        });
    }
    if addr.port() == 0 {
        return Err(BackendAddressError::PortZero);
    }
    Ok(())
}

/// The name of `addr`'s family in messages: "IPv4" or "IPv6".
#[must_use]
pub fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Of the SNAT source addresses `sources`, those a backend at `backend` can be given: its
/// own family's (each backend uses those).
pub fn sources_for(sources: &[IpAddr], backend: IpAddr) -> Vec<IpAddr> {
    sources
        .iter()
        .copied()
        .filter(|s| s.is_ipv4() == backend.is_ipv4())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn host() -> Host {
        Host {
            local: vec![
                ("lo".into(), ip("127.0.0.1")),
                ("eth0".into(), ip("10.0.0.5")),
                ("eth0".into(), ip("10.0.100.9")),
                ("eth0".into(), ip("fd00::5")),
            ],
            ours: HashSet::new(),
            ephemeral_ports: Some(32768..=60999),
        }
        .with_ours([ip("10.0.100.9")])
    }

    #[test]
    fn vip_addresses() {
        let h = host();
        let l4 = |a: &str| {
            check_vip_address((ip(a), 22, Protocol::Tcp), VipMode::L4, Some(&h))
                .map_err(|e| e.to_string())
        };
        let cases = [
            ("10.0.100.1", Ok(())),
            ("0.0.0.0", Err("0.0.0.0 is the unspecified address, not a VIP's address")),
            ("255.255.255.255", Err("255.255.255.255 is the broadcast address, not a VIP's address")),
            ("224.0.0.18", Err("224.0.0.18 is a multicast address, not a VIP's address")),
            ("240.1.2.3", Err("240.1.2.3 is a reserved (class E) address, not a VIP's address")),
            ("127.0.0.2", Err("127.0.0.2 is a loopback address, not a VIP's address")),
            ("10.0.0.5", Err("10.0.0.5 is an address of this host (eth0): balancing it would take over the host's own traffic to port 22/tcp")),
            // A VRRP or HTTP VIP address the agent put there.
            ("10.0.100.9", Ok(())),
            ("fd00::100:1", Ok(())),
            ("::", Err(":: is the unspecified address, not a VIP's address")),
            ("ff02::1", Err("ff02::1 is a multicast address, not a VIP's address")),
            ("::1", Err("::1 is a loopback address, not a VIP's address")),
            ("fe80::1", Err("fe80::1 is a link-local address, not a VIP's address")),
            ("::ffff:10.0.100.1", Err("::ffff:10.0.100.1 is an IPv4-mapped address (write the IPv4 address), not a VIP's address")),
            ("fd00::5", Err("fd00::5 is an address of this host (eth0): balancing it would take over the host's own traffic to port 22/tcp")),
        ];
        for (address, expected) in cases {
            assert_eq!(l4(address), expected.map_err(str::to_owned), "{address}");
        }
        // An HTTP VIP's address is local by design; without the host, only the address
        // itself is checked.
        let vip = (ip("10.0.0.5"), 80, Protocol::Tcp);
        assert_eq!(check_vip_address(vip, VipMode::Http, Some(&h)), Ok(()));
        assert_eq!(check_vip_address(vip, VipMode::L4, None), Ok(()));
        let loopback = (ip("127.0.0.1"), 80, Protocol::Tcp);
        assert!(check_vip_address(loopback, VipMode::Http, None).is_err());
    }

    #[test]
    fn l4_backends() {
        let h = host();
        let check = |a: &str| check_l4_backend(ip(a), Some(&h)).map_err(|e| e.to_string());
        assert_eq!(check("10.0.2.11"), Ok(()));
        assert_eq!(
            check("127.0.0.1").unwrap_err(),
            "127.0.0.1 is a loopback address: the XDP program cannot forward flows to the \
             balancer itself (a local backend can serve only HTTP-mode VIPs, whose proxy \
             connects to it)"
        );
        assert!(check("10.0.0.5")
            .unwrap_err()
            .starts_with("10.0.0.5 is an address of this host (eth0): the XDP program"));
        assert!(check_l4_backend(ip("127.0.0.1"), None).is_err());
        assert_eq!(check("fd00::2:11"), Ok(()));
        assert!(check("::1")
            .unwrap_err()
            .starts_with("::1 is a loopback address: the XDP program"));
        assert!(check("fd00::5")
            .unwrap_err()
            .starts_with("fd00::5 is an address of this host (eth0): the XDP program"));
        assert_eq!(check_l4_backend(ip("10.0.0.5"), None), Ok(()));
    }

    #[test]
    fn source_addresses() {
        let h = host().with_ours([ip("10.0.2.1")]);
        let check = |a: &str| check_source_address(ip(a), Some(&h)).map_err(|e| e.to_string());
        assert_eq!(check("10.0.0.5"), Ok(()));
        // A VRRP instance's floating address, on this host only while it is Master.
        assert_eq!(check("10.0.2.1"), Ok(()));
        assert_eq!(
            check("10.0.2.2").unwrap_err(),
            "10.0.2.2 is not an address of this host: the backends' replies to it would \
             never reach the balancer (use an address of one of its interfaces, or of a \
             [[vrrp]] instance that moves it)"
        );
        assert_eq!(
            check("127.0.0.1").unwrap_err(),
            "127.0.0.1 is a loopback address, not a source address backends can answer"
        );
        assert_eq!(check_source_address(ip("10.0.2.2"), None), Ok(()));
        assert_eq!(check("fd00::5"), Ok(()));
        assert!(check("fd00::6")
            .unwrap_err()
            .starts_with("fd00::6 is not an address of this host"));
        assert_eq!(
            check("::1").unwrap_err(),
            "::1 is a loopback address, not a source address backends can answer"
        );
    }

    #[test]
    fn backend_addresses_of_both_families() {
        let check = |a: &str| check_backend_address(a.parse().unwrap()).map_err(|e| e.to_string());
        assert_eq!(check("10.0.2.11:80"), Ok(()));
        assert_eq!(check("[fd00::2:11]:80"), Ok(()));
        assert_eq!(
            check("[fe80::1]:80").unwrap_err(),
            "fe80::1 is a link-local address, not a backend's address"
        );
        assert_eq!(
            check("[::]:80").unwrap_err(),
            ":: is the unspecified address, not a backend's address"
        );
        assert_eq!(
            check("[fd00::2:11]:0").unwrap_err(),
            "port 0 is out of range 1..=65535"
        );
        assert_eq!(family(ip("fd00::1")), "IPv6");
        assert_eq!(family(ip("10.0.0.1")), "IPv4");
        let sources = [ip("10.0.2.1"), ip("fd00::2:1"), ip("10.0.2.2")];
        assert_eq!(sources_for(&sources, ip("fd00::2:11")), [ip("fd00::2:1")]);
        assert_eq!(
            sources_for(&sources, ip("10.0.2.11")),
            [ip("10.0.2.1"), ip("10.0.2.2")]
        );
    }

    #[test]
    fn port_ranges() {
        let h = host();
        assert_eq!(port_range_overlap(20000..=32767, &h), None);
        let warning = port_range_overlap(30000..=40000, &h).unwrap();
        assert!(
            warning.starts_with(
                "30000-40000 overlaps net.ipv4.ip_local_port_range (32768-60999) in 32768-40000"
            ),
            "{warning}"
        );
        let unknown = Host {
            ephemeral_ports: None,
            ..host()
        };
        assert_eq!(port_range_overlap(30000..=40000, &unknown), None);
        assert_eq!(parse_port_pair("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_pair("60999 32768"), None);
        assert_eq!(parse_port_pair(""), None);
    }
}
