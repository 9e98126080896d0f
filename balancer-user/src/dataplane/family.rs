//! Addresses of both families as the maps hold them: the one pair of conversions per
//! family, and the VIP keys, backend entries and flows of either family that the [`Maps`]
//! trait takes (each family has maps of its own; ids, rings and counters are shared).
//!
//! [`Maps`]: super::Maps

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer_common::{addr_slot, Backend, Conn, FlowKey, VipKey, V4, V6};

/// An IPv4 address as the maps hold it (network byte order, as it lies in memory).
#[must_use]
pub fn v4_word(addr: Ipv4Addr) -> V4 {
    u32::from_ne_bytes(addr.octets())
}

/// The IPv4 address of a map's word.
#[must_use]
pub fn v4_addr(word: V4) -> Ipv4Addr {
    Ipv4Addr::from(word.to_ne_bytes())
}

/// An IPv6 address as the maps hold it: four words, each in network byte order as it lies
/// in memory (Linux's `in6_addr` as `__be32[4]`).
#[must_use]
pub fn v6_words(addr: Ipv6Addr) -> V6 {
    let octets = addr.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    })
}

/// The IPv6 address of a map's four words.
#[must_use]
pub fn v6_addr(words: V6) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

/// A VIP's key in its family's map (`VIPS` or `VIPS6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnyVipKey {
    V4(VipKey),
    V6(VipKey<V6>),
}

impl AnyVipKey {
    /// The key of `addr`, `port` (host byte order) and `proto`.
    #[must_use]
    pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
        let port = port.to_be();
        match addr {
            IpAddr::V4(a) => AnyVipKey::V4(VipKey {
                addr: v4_word(a),
                port,
                proto,
                _pad: 0,
            }),
            IpAddr::V6(a) => AnyVipKey::V6(VipKey {
                addr: v6_words(a),
                port,
                proto,
                _pad: 0,
            }),
        }
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        match self {
            AnyVipKey::V4(k) => v4_addr(k.addr).into(),
            AnyVipKey::V6(k) => v6_addr(k.addr).into(),
        }
    }

    /// Its port, network byte order (as in the key).
    #[must_use]
    pub fn port(&self) -> u16 {
        match self {
            AnyVipKey::V4(k) => k.port,
            AnyVipKey::V6(k) => k.port,
        }
    }

    #[must_use]
    pub fn proto(&self) -> u8 {
        match self {
            AnyVipKey::V4(k) => k.proto,
            AnyVipKey::V6(k) => k.proto,
        }
    }

    /// Its address's slot in `VIP_ADDRS` (shared by both families).
    #[must_use]
    pub fn slot(&self) -> u32 {
        match self {
            AnyVipKey::V4(k) => addr_slot(&k.addr),
            AnyVipKey::V6(k) => addr_slot(&k.addr),
        }
    }
}

/// A backend's entry in its family's map (`BACKENDS` or `BACKENDS6`); the other family's
/// entry of the same id is left empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyBackend {
    V4(Backend),
    V6(Backend<V6>),
}

impl AnyBackend {
    /// `BACKEND_F_*` bits.
    #[must_use]
    pub fn flags(&self) -> u32 {
        match self {
            AnyBackend::V4(b) => b.flags,
            AnyBackend::V6(b) => b.flags,
        }
    }
}

/// A connection-table entry (`CONNS` or `CONNS6`) as the census reads it, whatever its
/// family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// The client's destination (the VIP): address, port (network byte order), protocol.
    pub dst: (IpAddr, u16, u8),
    /// `Conn::backend_addr` and `backend_port` (network byte order).
    pub backend: (IpAddr, u16),
    pub backend_id: u32,
    pub vip_id: u32,
    pub vip_gen: u32,
    /// `FLOW_*` bits.
    pub state: u32,
    pub last_seen_ns: u64,
    /// An IPv4 flow's entry as the table holds it (what flow sync sends).
    pub v4: Option<(FlowKey, Conn)>,
}

impl FlowEntry {
    /// The protocol of the flow.
    #[must_use]
    pub fn proto(&self) -> u8 {
        self.dst.2
    }
}

impl FlowEntry {
    /// The entry of `key` and `conn`, whose addresses `ip` reads.
    fn of<A: Copy>(key: &FlowKey<A>, conn: &Conn<A>, ip: impl Fn(A) -> IpAddr) -> Self {
        FlowEntry {
            dst: (ip(key.dst_addr), key.dst_port, key.proto),
            backend: (ip(conn.backend_addr), conn.backend_port),
            backend_id: conn.backend_id,
            vip_id: conn.vip_id,
            vip_gen: conn.vip_gen,
            state: conn.state,
            last_seen_ns: conn.last_seen_ns,
            v4: None,
        }
    }
}

impl From<(&FlowKey, &Conn)> for FlowEntry {
    fn from((key, conn): (&FlowKey, &Conn)) -> Self {
        FlowEntry {
            v4: Some((*key, *conn)),
            ..FlowEntry::of(key, conn, |a| v4_addr(a).into())
        }
    }
}

impl From<(&FlowKey<V6>, &Conn<V6>)> for FlowEntry {
    fn from((key, conn): (&FlowKey<V6>, &Conn<V6>)) -> Self {
        FlowEntry::of(key, conn, |a| v6_addr(a).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_network_byte_order() {
        let v4: Ipv4Addr = "10.0.2.11".parse().unwrap();
        assert_eq!(v4_word(v4).to_ne_bytes(), [10, 0, 2, 11]);
        assert_eq!(v4_addr(v4_word(v4)), v4);
        let v6: Ipv6Addr = "2001:db8::1:2".parse().unwrap();
        let words = v6_words(v6);
        // Each word holds four octets of the address as they lie in memory.
        assert_eq!(words[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(words[1], 0);
        assert_eq!(words[3].to_ne_bytes(), [0, 1, 0, 2]);
        assert_eq!(v6_addr(words), v6);
    }

    #[test]
    fn vip_keys_of_both_families() {
        let v4 = AnyVipKey::new("10.0.100.1".parse().unwrap(), 80, 6);
        let v6 = AnyVipKey::new("fd00::100:1".parse().unwrap(), 80, 6);
        assert!(matches!(v4, AnyVipKey::V4(_)));
        assert!(matches!(v6, AnyVipKey::V6(_)));
        assert_eq!(v6.addr(), "fd00::100:1".parse::<IpAddr>().unwrap());
        assert_eq!(v6.port(), 80u16.to_be());
        assert_eq!(v6.proto(), 6);
        let AnyVipKey::V6(k) = v6 else { unreachable!() };
        assert_eq!(v6.slot(), addr_slot(&k.addr));
    }

    #[test]
    fn flow_entries_of_both_families() {
        let conn = Conn {
            backend_addr: v6_words("fd00::2:11".parse().unwrap()),
            backend_port: 80u16.to_be(),
            backend_id: 3,
            vip_id: 1,
            vip_gen: 9,
            state: 8,
            last_seen_ns: 5,
            ..Conn::default()
        };
        let key = FlowKey {
            dst_addr: v6_words("fd00::100:1".parse().unwrap()),
            dst_port: 80u16.to_be(),
            proto: 6,
            ..FlowKey::default()
        };
        let entry = FlowEntry::from((&key, &conn));
        assert_eq!(
            entry.dst,
            ("fd00::100:1".parse().unwrap(), 80u16.to_be(), 6)
        );
        assert_eq!(
            entry.backend,
            ("fd00::2:11".parse().unwrap(), 80u16.to_be())
        );
        assert_eq!((entry.backend_id, entry.vip_id, entry.vip_gen), (3, 1, 9));
        assert_eq!((entry.state, entry.last_seen_ns, entry.proto()), (8, 5, 6));
    }
}
