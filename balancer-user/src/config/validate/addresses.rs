//! The checks that need the whole file (and, when known, the host): each VIP's and
//! backend's address against the host's own and against what its VIPs' modes allow, the
//! SNAT source, the SNAT ports against the kernel's, and each ring against its pool.

use std::ops::Range;

use super::{Checked, Validator};
use crate::config::{
    check_l4_backend, check_ring_size, check_source_address, check_vip_address, family,
    port_range_overlap, sources_for, Config, ConfigError, Forwarding, Host, PoolConfig, VipMode,
    DEFAULT_NAT_PORT_MAX, DEFAULT_NAT_PORT_MIN,
};

/// Where the values checked here were written.
#[derive(Default)]
pub(super) struct Places {
    /// Each SNAT source address: its field name and place.
    pub(super) source_addresses: Vec<(String, Range<usize>)>,
    /// `None`: not written (the default range).
    pub(super) port_range: Option<Range<usize>>,
    /// Each pool's backends' `address`, by pool and backend index.
    pub(super) backends: Vec<Vec<Range<usize>>>,
    /// By VIP index.
    pub(super) vips: Vec<VipPlaces>,
}

pub(super) struct VipPlaces {
    pub(super) address: Range<usize>,
    /// Its `ring_size`, or the VIP's table when it has none.
    pub(super) ring_size: Range<usize>,
}

impl Validator<'_> {
    /// The checks of this module on a `config` otherwise valid; returns the warnings.
    pub(super) fn addresses(&self, config: &Config) -> Checked<Vec<ConfigError>> {
        let places = self.places.borrow();
        // Addresses the agent puts on the host itself: a VRRP instance's, an HTTP VIP's.
        let ours = config
            .vrrp
            .iter()
            .flat_map(|i| &i.addresses)
            .map(|a| a.address)
            .chain(
                config
                    .vips
                    .iter()
                    .filter(|v| v.mode == VipMode::Http)
                    .map(|v| v.address),
            );
        let host = self.host.map(|h| h.clone().with_ours(ours));
        let host = host.as_ref();

        for (address, (field, place)) in config
            .nat
            .source_addresses
            .iter()
            .zip(&places.source_addresses)
        {
            check_source_address(*address, host)
                .map_err(|e| self.error(place.clone(), field, e.to_string()))?;
        }
        for (pi, pool) in config.pools.iter().enumerate() {
            self.pool_families(config, pi, pool)?;
            let Some(vip) = config
                .vips
                .iter()
                .find(|v| v.mode == VipMode::L4 && v.pool == pool.name)
            else {
                continue;
            };
            for (bi, backend) in pool.backends.iter().enumerate() {
                check_l4_backend(backend.address, host).map_err(|e| {
                    self.error(
                        places.backends[pi][bi].clone(),
                        format_args!("pool[{pi}] ({:?}).backends[{bi}].address", pool.name),
                        format!("{e}; pool {:?} serves L4 VIP {:?}", pool.name, vip.name),
                    )
                })?;
            }
        }
        for (vi, vip) in config.vips.iter().enumerate() {
            let field = format!("vip[{vi}] ({:?})", vip.name);
            let at = &places.vips[vi];
            check_vip_address((vip.address, vip.port, vip.protocol), vip.mode, host).map_err(
                |e| {
                    self.error(
                        at.address.clone(),
                        format_args!("{field}.address"),
                        e.to_string(),
                    )
                },
            )?;
            self.vip_family(config, vi, &field)?;
            let backends = config.pool(&vip.pool).map_or(0, |p| p.backends.len());
            if vip.mode == VipMode::L4 {
                check_ring_size(vip.ring_size, backends, &vip.pool).map_err(|why| {
                    self.error(at.ring_size.clone(), format_args!("{field}.ring_size"), why)
                })?;
            }
        }
        Ok(host
            .and_then(|h| self.port_range_warning(config, &places, h))
            .into_iter()
            .collect())
    }

    /// Pool `pool` (index `pi`) holds backends of one family, and `nat.source_addresses`,
    /// when given, has an address of that family for them.
    fn pool_families(&self, config: &Config, pi: usize, pool: &PoolConfig) -> Checked<()> {
        let places = self.places.borrow();
        let field = |bi: usize| format!("pool[{pi}] ({:?}).backends[{bi}].address", pool.name);
        let Some(first) = pool.backends.first() else {
            return Ok(());
        };
        if let Some((bi, other)) = (pool.backends.iter().enumerate())
            .find(|(_, b)| b.address.is_ipv4() != first.address.is_ipv4())
        {
            return Err(self.error(
                places.backends[pi][bi].clone(),
                field(bi),
                format!(
                    "{} is an {} address, and backends[0] ({}) an {} one: the backends of \
                     a pool must be of one family",
                    other.address,
                    family(other.address),
                    first.address,
                    family(first.address)
                ),
            ));
        }
        let sources = &config.nat.source_addresses;
        if !sources.is_empty() && sources_for(sources, first.address).is_empty() {
            return Err(self.error(
                places.backends[pi][0].clone(),
                field(0),
                format!(
                    "nat.source_addresses has no {} address, and backend {} of pool {:?} \
                     needs one (each backend uses the source addresses of its own family)",
                    family(first.address),
                    first.socket_addr(),
                    pool.name
                ),
            ));
        }
        Ok(())
    }

    /// VIP `vi`, at key path `field`, is of its pool's family, and an IPv6 one is neither
    /// a tunnel's (its outer headers are IPv4) nor an HTTP VIP's.
    fn vip_family(&self, config: &Config, vi: usize, field: &str) -> Checked<()> {
        let vip = &config.vips[vi];
        let at = self.places.borrow().vips[vi].address.clone();
        let refuse =
            |why: String| Err(self.error(at.clone(), format_args!("{field}.address"), why));
        if vip.address.is_ipv6() && vip.forwarding == Forwarding::Tunnel {
            return refuse(format!(
                "VIP {:?} is IPv6 and forwarding = \"tunnel\" encapsulates in IPv4 only: \
                 use \"nat\" or \"dsr\" for an IPv6 VIP",
                vip.name
            ));
        }
        if vip.address.is_ipv6() && vip.mode == VipMode::Http {
            return refuse(format!(
                "VIP {:?} is IPv6, and HTTP-mode VIPs are IPv4 only for now",
                vip.name
            ));
        }
        let backend = config
            .pool(&vip.pool)
            .and_then(|p| p.backends.first())
            .map(|b| b.address);
        match backend {
            Some(b) if vip.mode == VipMode::L4 && b.is_ipv4() != vip.address.is_ipv4() => {
                refuse(format!(
                    "VIP {:?} is an {} address, and its pool {:?} has {} backends ({b}): an \
                     L4 VIP and its pool must be of one family",
                    vip.name,
                    family(vip.address),
                    vip.pool,
                    family(b)
                ))
            }
            _ => Ok(()),
        }
    }

    /// The warning of [`port_range_overlap`], at `nat.port_range` (or the file's start,
    /// for the default range).
    fn port_range_warning(
        &self,
        config: &Config,
        places: &Places,
        host: &Host,
    ) -> Option<ConfigError> {
        let (min, max) = (config.nat.port_min, config.nat.port_max);
        let why = port_range_overlap(min..=max, host)?;
        if let Some(span) = &places.port_range {
            return Some(self.error(span.clone(), "nat.port_range", why));
        }
        debug_assert_eq!((min, max), (DEFAULT_NAT_PORT_MIN, DEFAULT_NAT_PORT_MAX));
        Some(self.error(0..0, "nat.port_range", format!("the default {why}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::super::testing::{ip, ORIGIN};
    use crate::config::{parse, parse_on, Host};

    /// The balancer's host: `lbc0` 10.0.1.1, `lbs0` 10.0.2.1, `lo`; ephemeral ports
    /// 32768-60999.
    fn host() -> Host {
        Host {
            local: vec![
                ("lo".into(), ip("127.0.0.1")),
                ("lbc0".into(), ip("10.0.1.1")),
                ("lbs0".into(), ip("10.0.2.1")),
            ],
            ours: HashSet::new(),
            ephemeral_ports: Some(32768..=60999),
        }
    }

    /// A file with `nat` (the `[nat]` table's lines), pool "web" with `backends`, and VIP
    /// "web" on `vip` (`ADDRESS:PORT`, TCP) with `extra` lines; `tail` follows. The
    /// `[nat]` lines are 3 and 4, the backends line 7, the VIP's address line 10.
    fn file(nat: &str, backends: &str, vip: &str, extra: &str, tail: &str) -> String {
        let (address, port) = vip.rsplit_once(':').unwrap();
        format!(
            "[agent]\ninterfaces = [\"lbc0\", \"lbs0\"]\n[nat]\n{nat}\n[[pool]]\nname = \"web\"\n\
             backends = [{backends}]\n[[vip]]\nname = \"web\"\naddress = \"{address}\"\n\
             port = {port}\nprotocol = \"tcp\"\npool = \"web\"\n{extra}\n{tail}"
        )
    }

    const B: &str = "{ address = \"10.0.2.11\", port = 80 }";

    #[test]
    fn refused_with_the_place_and_why() {
        let http = "mode = \"http\"";
        let vrrp_back = "[[vrrp]]\nname = \"back\"\ninterface = \"lbs0\"\nvrid = 52\n\
                         addresses = [\"10.0.2.100/24\"]\n";
        let lo = "{ address = \"127.0.0.1\", port = 8080 }";
        let self_backend = "{ address = \"10.0.2.1\", port = 80 }";
        let cases: [(&str, String, Option<&str>); 13] = [
            ("a plain file", file("", B, "10.0.100.1:80", "", ""), None),
            (
                "the host's own address as an L4 VIP",
                file("", B, "10.0.1.1:22", "", ""),
                Some(
                    "10:11: vip[0] (\"web\").address: 10.0.1.1 is an address of this host \
                     (lbc0): balancing it would take over the host's own traffic to port 22/tcp",
                ),
            ),
            (
                "the host's own address as an HTTP VIP: the proxy listens there",
                file("", B, "10.0.1.1:80", http, ""),
                None,
            ),
            (
                "a VRRP instance's address as an L4 VIP, whether on the host (Master) or not",
                file("", B, "10.0.2.100:80", "", vrrp_back),
                None,
            ),
            (
                "a loopback backend of an L4 VIP's pool",
                file("", lo, "10.0.100.1:80", "", ""),
                Some(
                    "7:25: pool[0] (\"web\").backends[0].address: 127.0.0.1 is a loopback \
                     address: the XDP program cannot forward flows to the balancer itself",
                ),
            ),
            (
                "the host itself as a backend of an L4 VIP's pool",
                file("", self_backend, "10.0.100.1:80", "", ""),
                Some(
                    "7:25: pool[0] (\"web\").backends[0].address: 10.0.2.1 is an address of \
                     this host (lbs0): the XDP program cannot",
                ),
            ),
            (
                "a loopback backend of an HTTP VIP's pool: the proxy connects to it",
                file("", lo, "10.0.100.1:80", http, ""),
                None,
            ),
            (
                "a SNAT source the host has",
                file("source_address = \"10.0.2.1\"", B, "10.0.100.1:80", "", ""),
                None,
            ),
            (
                "a SNAT source the host does not have",
                file("source_address = \"10.0.2.9\"", B, "10.0.100.1:80", "", ""),
                Some(
                    "4:18: nat.source_address: 10.0.2.9 is not an address of this host: the \
                     backends' replies to it would never reach the balancer",
                ),
            ),
            (
                "a SNAT source a VRRP instance moves (a sync group's floating address)",
                file(
                    "source_address = \"10.0.2.100\"",
                    B,
                    "10.0.100.1:80",
                    "",
                    vrrp_back,
                ),
                None,
            ),
            (
                "a loopback SNAT source",
                file("source_address = \"127.0.0.1\"", B, "10.0.100.1:80", "", ""),
                Some(
                    "4:18: nat.source_address: 127.0.0.1 is a loopback address, not a source \
                     address backends can answer",
                ),
            ),
            (
                "a ring smaller than the pool",
                file(
                    "",
                    &[
                        B,
                        B.replace(".11", ".12").as_str(),
                        B.replace(".11", ".13").as_str(),
                    ]
                    .join(", "),
                    "10.0.100.1:80",
                    "ring_size = 2",
                    "",
                ),
                Some(
                    "14:13: vip[0] (\"web\").ring_size: 2 is smaller than the 3 backends of \
                     pool \"web\": Maglev gives every backend at least one slot (use a prime \
                     of at least 3, e.g. 3)",
                ),
            ),
            (
                "a multicast VIP, with or without the host",
                file("", B, "224.0.0.18:80", "", ""),
                Some(
                    "10:11: vip[0] (\"web\").address: 224.0.0.18 is a multicast address, not \
                     a VIP's address",
                ),
            ),
        ];
        expect(&cases, &host());
    }

    /// Parses each case's file on `host` and checks its error (or none).
    fn expect(cases: &[(&str, String, Option<&str>)], host: &Host) {
        for (what, text, expected) in cases {
            let got = parse_on(text, ORIGIN, Some(host));
            match (expected, got) {
                (None, Ok(_)) => {}
                (None, Err(e)) => panic!("{what}: expected no error, got {e}\n{text}"),
                (Some(expected), Ok(_)) => panic!("{what}: expected {expected:?}, got none"),
                (Some(expected), Err(e)) => {
                    let e = e.to_string();
                    assert!(
                        e.starts_with(&format!("{ORIGIN}:{expected}")),
                        "{what}: expected {expected:?}, got {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn families_are_checked_with_the_place_and_why() {
        let b6 = "{ address = \"fd00:2::11\", port = 80 }";
        let b6_12 = "{ address = \"fd00:2::12\", port = 80 }";
        let nat6 = "source_addresses = [\"10.0.2.1\", \"fd00:2::1\"]";
        let cases = [
            (
                "an IPv6 VIP and pool, sources of both families",
                file(nat6, &format!("{b6}, {b6_12}"), "fd00:100::1:80", "", ""),
                None,
            ),
            (
                "an IPv6 VIP and pool, the source chosen by route",
                file("", b6, "fd00:100::1:80", "", ""),
                None,
            ),
            (
                "an IPv6 dsr VIP",
                file("", b6, "fd00:100::1:80", "forwarding = \"dsr\"", ""),
                None,
            ),
            (
                "a pool of both families",
                file("", &format!("{B}, {b6}"), "10.0.100.1:80", "", ""),
                Some(
                    "7:63: pool[0] (\"web\").backends[1].address: fd00:2::11 is an IPv6 \
                     address, and backends[0] (10.0.2.11) an IPv4 one: the backends of a pool \
                     must be of one family",
                ),
            ),
            (
                "an IPv6 VIP over an IPv4 pool",
                file("", B, "fd00:100::1:80", "", ""),
                Some(
                    "10:11: vip[0] (\"web\").address: VIP \"web\" is an IPv6 address, and its \
                     pool \"web\" has IPv4 backends (10.0.2.11): an L4 VIP and its pool must \
                     be of one family",
                ),
            ),
            (
                "IPv6 backends and only IPv4 sources",
                file(
                    "source_address = \"10.0.2.1\"",
                    b6,
                    "fd00:100::1:80",
                    "",
                    "",
                ),
                Some(
                    "7:25: pool[0] (\"web\").backends[0].address: nat.source_addresses has no \
                     IPv6 address, and backend [fd00:2::11]:80 of pool \"web\" needs one (each \
                     backend uses the source addresses of its own family)",
                ),
            ),
            (
                "an IPv6 SNAT source the host does not have",
                file(
                    "source_address = \"fd00:2::9\"",
                    b6,
                    "fd00:100::1:80",
                    "",
                    "",
                ),
                Some("4:18: nat.source_address: fd00:2::9 is not an address of this host"),
            ),
            (
                "an IPv6 tunnel VIP",
                file(
                    "",
                    b6,
                    "fd00:100::1:80",
                    "forwarding = \"tunnel\"",
                    "[tunnel]\nsource = \"10.0.3.1\"\n",
                ),
                Some(
                    "10:11: vip[0] (\"web\").address: VIP \"web\" is IPv6 and forwarding = \
                     \"tunnel\" encapsulates in IPv4 only",
                ),
            ),
            (
                "an IPv6 HTTP VIP",
                file("", b6, "fd00:100::1:80", "mode = \"http\"", ""),
                Some(
                    "10:11: vip[0] (\"web\").address: VIP \"web\" is IPv6, and HTTP-mode VIPs \
                     are IPv4 only for now",
                ),
            ),
            (
                "the host's own IPv6 address as an L4 VIP",
                file("", b6, "fd00:2::1:22", "", ""),
                Some(
                    "10:11: vip[0] (\"web\").address: fd00:2::1 is an address of this host \
                     (lbs0)",
                ),
            ),
            (
                "a link-local backend",
                file(
                    "",
                    "{ address = \"fe80::11\", port = 80 }",
                    "fd00:100::1:80",
                    "",
                    "",
                ),
                Some(
                    "7:25: pool[0] (\"web\").backends[0].address: fe80::11 is a link-local \
                     address, not a backend's address",
                ),
            ),
        ];
        let mut host = host();
        host.local.push(("lbs0".into(), ip("fd00:2::1")));
        expect(&cases, &host);
    }

    #[test]
    fn without_the_host_only_what_the_file_tells() {
        // `parse` (no host): the host's addresses are not known, the rest is checked.
        let own = file("source_address = \"10.0.2.9\"", B, "10.0.1.1:22", "", "");
        assert!(parse(&own, ORIGIN).is_ok());
        let lo = file(
            "",
            "{ address = \"127.0.0.1\", port = 80 }",
            "10.0.100.1:80",
            "",
            "",
        );
        assert!(parse(&lo, ORIGIN).is_err());
    }

    #[test]
    fn port_range_overlap_is_a_warning() {
        let host = host();
        let warnings = |nat: &str| {
            let text = file(nat, B, "10.0.100.1:80", "", "");
            let (_, warnings) = parse_on(&text, ORIGIN, Some(&host)).unwrap();
            warnings.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert_eq!(warnings(""), Vec::<String>::new());
        let overlap = warnings("port_range = \"30000-40000\"");
        assert_eq!(overlap.len(), 1, "{overlap:?}");
        assert!(
            overlap[0].starts_with(
                "balancer.toml:4:14: nat.port_range: 30000-40000 overlaps \
                 net.ipv4.ip_local_port_range (32768-60999) in 32768-40000: a local \
                 connection to a backend"
            ),
            "{overlap:?}"
        );
        // The default range, where the host's ephemeral ports were widened.
        let wide = Host {
            ephemeral_ports: Some(1024..=65535),
            ..host.clone()
        };
        let text = file("", B, "10.0.100.1:80", "", "");
        let (_, warnings) = parse_on(&text, ORIGIN, Some(&wide)).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .to_string()
                .starts_with("balancer.toml:1:1: nat.port_range: the default 20000-32767 overlaps"),
            "{warnings:?}"
        );
    }
}
