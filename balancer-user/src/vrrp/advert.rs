//! Adverts as the socket layer sees them: an IPv4 packet in (the raw socket hands over the
//! IP header, whose TTL and addresses the receive checks need), a VRRP message out (the
//! kernel writes the IP header). The bytes are `balancer_wire::vrrp`'s.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use balancer_wire::{ipv4, vrrp as wire, IpProtocol, PseudoHeader};

use super::{Config, InstanceConfig, V3Checksum, Version};

/// An advert that passed the codec's checks (length, version, checksum, type, v2 auth type,
/// interval); the checks that need the instance (TTL, version, interval) are the caller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: Ipv4Addr,
    pub ttl: u8,
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    pub interval: Duration,
    pub addresses: Vec<Ipv4Addr>,
    /// For v3, which checksum matched: `"pseudo_header"` or `"plain"`.
    pub checksum_kind: Option<&'static str>,
}

/// A packet refused before it reached an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The VRID, when the bytes got that far, so that the error counts on its instance.
    pub vrid: Option<u8>,
    /// A short, stable name, as counters and `balancer status` show it.
    pub reason: &'static str,
}

/// Parses one packet from the raw socket.
///
/// # Errors
/// A [`Refused`] naming the first check that failed.
pub fn decode(packet: &[u8]) -> Result<Received, Refused> {
    let refused = |vrid, reason| Refused { vrid, reason };
    let ip =
        ipv4::Packet::new_header_checked(packet).map_err(|_| refused(None, "bad_ip_header"))?;
    if ip.protocol() != IpProtocol::VRRP {
        return Err(refused(None, "not_vrrp"));
    }
    let payload = ip.payload();
    let vrid = payload.get(1).copied();
    let message = wire::Packet::new_checked(payload, wire::Family::Ipv4)
        .map_err(|e| refused(vrid, e.reason()))?;
    let (repr, checksum) =
        wire::Repr::parse(&message, &ip.pseudo_header()).map_err(|e| refused(vrid, e.reason()))?;
    Ok(Received {
        from: ip.src_addr(),
        ttl: ip.ttl(),
        version: match repr.version {
            wire::Version::V2 => Version::V2,
            wire::Version::V3 => Version::V3,
        },
        vrid: repr.vrid,
        priority: repr.priority,
        interval: repr.interval(),
        addresses: repr
            .addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect(),
        checksum_kind: (repr.version == wire::Version::V3).then_some(match checksum {
            wire::V3Checksum::PseudoHeader => "pseudo_header",
            wire::V3Checksum::Plain => "plain",
        }),
    })
}

/// The receive checks that need the instance's parameters (RFC 9568 and RFC 3768 section
/// 7.1): the reason `received` is refused, if it is.
pub fn refusal(received: &Received, params: &Config) -> Option<&'static str> {
    if received.ttl != wire::TTL {
        Some("bad_ttl")
    } else if received.version != params.version {
        Some("version_mismatch")
    } else if params.version == Version::V2 && received.interval != params.advert_interval {
        // RFC 3768 section 7.1: a v2 advert with another interval MUST be discarded.
        Some("interval_mismatch")
    } else {
        None
    }
}

/// Whether an advert lists exactly the instance's addresses, in any order (RFC 9568 section
/// 7.1: a receiver MAY check, and MUST log a mismatch; keepalived, unless strict, goes on).
pub fn same_addresses(config: &InstanceConfig, advertised: &[Ipv4Addr]) -> bool {
    advertised.len() == config.addresses.len()
        && advertised
            .iter()
            .all(|a| config.addresses.iter().any(|v| v.address == IpAddr::V4(*a)))
}

/// The VRRP message instance `config` sends with `priority` from `source` to `destination`
/// (the multicast group or a unicast peer: a v3 checksum covers it).
pub fn encode(
    config: &InstanceConfig,
    priority: u8,
    source: Ipv4Addr,
    destination: Ipv4Addr,
) -> Vec<u8> {
    let params = &config.params;
    let addresses: Vec<Ipv4Addr> = config
        .addresses
        .iter()
        .filter_map(|a| match a.address {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    let repr = wire::Repr {
        version: match params.version {
            Version::V2 => wire::Version::V2,
            Version::V3 => wire::Version::V3,
        },
        vrid: params.vrid,
        priority,
        advert_int: params.advert_interval_field(),
        addresses: addresses.into(),
    };
    let checksum = match config.v3_checksum {
        V3Checksum::PseudoHeader => wire::V3Checksum::PseudoHeader,
        V3Checksum::Plain => wire::V3Checksum::Plain,
    };
    let mut buffer = vec![0; repr.buffer_len()];
    let pseudo = PseudoHeader::from((source, destination));
    repr.emit(
        &mut wire::Packet::new_unchecked(&mut buffer[..], wire::Family::Ipv4),
        &pseudo,
        checksum,
    );
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::VirtualAddress;

    fn instance(version: Version, checksum: V3Checksum) -> InstanceConfig {
        let mut params = Config::new("vi_1", 51, "10.0.1.11".parse().unwrap());
        params.version = version;
        params.priority = 150;
        InstanceConfig {
            params,
            interface: "eth0".into(),
            addresses: vec!["10.0.1.100/24".parse::<VirtualAddress>().unwrap()],
            unicast_source: None,
            unicast_peers: vec![],
            v3_checksum: checksum,
            tracks: vec![],
            notify: None,
            host_requirements: vec![],
        }
    }

    /// An IPv4 header with TTL `ttl` around `message`, as the raw socket hands it over.
    fn datagram(message: &[u8], source: Ipv4Addr, ttl: u8) -> Vec<u8> {
        let repr = ipv4::Repr {
            src_addr: source,
            dst_addr: wire::MULTICAST_V4,
            protocol: IpProtocol::VRRP,
            payload_len: message.len(),
            ttl,
            ..ipv4::Repr::default()
        };
        let mut bytes = vec![0; repr.buffer_len() + message.len()];
        let mut packet = ipv4::Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(message);
        bytes
    }

    #[test]
    fn what_is_encoded_decodes_for_every_version_and_checksum() {
        let source = Ipv4Addr::new(10, 0, 1, 11);
        for (version, checksum, kind) in [
            (Version::V2, V3Checksum::PseudoHeader, None),
            (Version::V3, V3Checksum::PseudoHeader, Some("pseudo_header")),
            (Version::V3, V3Checksum::Plain, Some("plain")),
        ] {
            let config = instance(version, checksum);
            let message = encode(&config, 150, source, wire::MULTICAST_V4);
            let got = decode(&datagram(&message, source, 255)).unwrap();
            assert_eq!(
                got,
                Received {
                    from: source,
                    ttl: 255,
                    version,
                    vrid: 51,
                    priority: 150,
                    interval: Duration::from_secs(1),
                    addresses: vec![Ipv4Addr::new(10, 0, 1, 100)],
                    checksum_kind: kind,
                },
                "{version:?} {checksum:?}"
            );
        }
    }

    #[test]
    fn broken_packets_are_refused_with_their_reason_and_vrid() {
        let source = Ipv4Addr::new(10, 0, 1, 11);
        let good = encode(
            &instance(Version::V3, V3Checksum::PseudoHeader),
            100,
            source,
            wire::MULTICAST_V4,
        );
        let mut bad_sum = good.clone();
        bad_sum[7] ^= 1;
        let mut version_1 = good.clone();
        version_1[0] = 0x11;
        for (what, packet, vrid, reason) in [
            ("no IP header", vec![0x45, 0], None, "bad_ip_header"),
            (
                "cut message",
                datagram(&good[..6], source, 255),
                Some(51),
                "truncated",
            ),
            (
                "bad checksum",
                datagram(&bad_sum, source, 255),
                Some(51),
                "bad_checksum",
            ),
            (
                "version 1",
                datagram(&version_1, source, 255),
                Some(51),
                "bad_version",
            ),
        ] {
            assert_eq!(decode(&packet), Err(Refused { vrid, reason }), "{what}");
        }
        // TTL is the instance's check: decoded as sent.
        assert_eq!(decode(&datagram(&good, source, 64)).unwrap().ttl, 64);
    }

    #[test]
    fn instance_checks_refuse_ttl_version_and_v2_interval() {
        let v2 = instance(Version::V2, V3Checksum::PseudoHeader);
        let v3 = instance(Version::V3, V3Checksum::PseudoHeader);
        let good = Received {
            from: Ipv4Addr::new(10, 0, 1, 12),
            ttl: 255,
            version: Version::V2,
            vrid: 51,
            priority: 100,
            interval: Duration::from_secs(1),
            addresses: vec![Ipv4Addr::new(10, 0, 1, 100)],
            checksum_kind: None,
        };
        let with = |change: fn(&mut Received)| {
            let mut r = good.clone();
            change(&mut r);
            r
        };
        assert_eq!(refusal(&good, &v2.params), None);
        assert_eq!(refusal(&with(|r| r.ttl = 254), &v2.params), Some("bad_ttl"));
        assert_eq!(refusal(&good, &v3.params), Some("version_mismatch"));
        let slow = with(|r| r.interval = Duration::from_secs(2));
        assert_eq!(refusal(&slow, &v2.params), Some("interval_mismatch"));
        // A v3 Backup learns the Master's interval instead.
        let slow_v3 = with(|r| {
            r.version = Version::V3;
            r.interval = Duration::from_secs(2);
        });
        assert_eq!(refusal(&slow_v3, &v3.params), None);
        assert!(same_addresses(&v2, &good.addresses));
        assert!(!same_addresses(&v2, &[]));
        assert!(!same_addresses(&v2, &[Ipv4Addr::new(10, 0, 1, 101)]));
    }

    mod fuzz {
        //! Adverts come from anyone on the segment: whatever the bytes, decoding refuses
        //! or accepts them, never panics; and what is encoded decodes as it was.
        use proptest::prelude::*;

        use super::*;

        /// A v2, v3 (pseudo-header checksum) or v3 (plain checksum) advert of `vrid` with
        /// `priority` and `addresses`, in its IPv4 datagram.
        fn advert(kind: usize, vrid: u8, priority: u8, addresses: &[u32]) -> Vec<u8> {
            let (version, checksum) = [
                (Version::V2, V3Checksum::PseudoHeader),
                (Version::V3, V3Checksum::PseudoHeader),
                (Version::V3, V3Checksum::Plain),
            ][kind % 3];
            let mut config = instance(version, checksum);
            config.params.vrid = vrid;
            config.addresses = addresses
                .iter()
                .map(|a| format!("{}/32", Ipv4Addr::from(*a)).parse().unwrap())
                .collect();
            let source = Ipv4Addr::new(10, 0, 1, 11);
            datagram(
                &encode(&config, priority, source, wire::MULTICAST_V4),
                source,
                255,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
                let _ = decode(&bytes);
                // The codec alone, with IPv6's pseudo-header, as a v3 IPv6 receiver would.
                if let Ok(packet) = wire::Packet::new_checked(&bytes[..], wire::Family::Ipv6) {
                    let pseudo = PseudoHeader::from((
                        "fe80::1".parse::<std::net::Ipv6Addr>().unwrap(),
                        "ff02::12".parse::<std::net::Ipv6Addr>().unwrap(),
                    ));
                    let _ = wire::Repr::parse(&packet, &pseudo);
                }
            }

            #[test]
            fn adverts_decode_as_encoded_and_mutated_ones_never_panic(
                kind in 0usize..3,
                vrid in 1u8..=255,
                priority in 1u8..=254,
                addresses in prop::collection::vec(any::<u32>(), 1..12),
                changes in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                cut in any::<usize>(),
            ) {
                let good = advert(kind, vrid, priority, &addresses);
                let got = decode(&good).expect("an encoded advert decodes");
                let sent: Vec<Ipv4Addr> = addresses.iter().copied().map(Ipv4Addr::from).collect();
                prop_assert_eq!((got.vrid, got.priority, got.addresses), (vrid, priority, sent));
                let mut bad = good.clone();
                for (at, value) in &changes {
                    let at = at % bad.len();
                    bad[at] = *value;
                }
                let _ = decode(&bad);
                bad.truncate(cut % (bad.len() + 1));
                let _ = decode(&bad);
            }
        }
    }
}
