//! The one place where a flow of the map ABI (`FlowKey`, `Conn`, `NatEntry`) becomes a
//! flow-sync record and back: every address and port conversion is here, so that a change
//! of the ABI (IPv6 keys) changes these functions only.

use std::net::{Ipv4Addr, Ipv6Addr};

use balancer_common::{Conn, FlowKey, NatEntry, FLOW_DSR, REPLY_TICK_SHIFT};
use balancer_wire::sync::{Op, Record};

/// An address as the ABI stores it (network byte order in a `u32`) as 16 bytes.
fn wide(addr: u32) -> Ipv6Addr {
    Ipv4Addr::from(addr.to_ne_bytes()).to_ipv6_mapped()
}

/// A 16-byte address as the ABI stores it; `None` for one that is not IPv4-mapped.
fn narrow(addr: Ipv6Addr) -> Option<u32> {
    addr.to_ipv4_mapped()
        .map(|a| u32::from_ne_bytes(a.octets()))
}

/// `key`'s flow (`conn`), last seen `age_ms` ago, as a record saying `op`.
pub fn to_record(op: Op, key: &FlowKey, conn: &Conn, age_ms: u32) -> Record {
    Record {
        op,
        client_addr: wide(key.src_addr),
        client_port: u16::from_be(key.src_port),
        vip_addr: wide(key.dst_addr),
        vip_port: u16::from_be(key.dst_port),
        proto: key.proto,
        backend_addr: wide(conn.backend_addr),
        backend_port: u16::from_be(conn.backend_port),
        snat_addr: wide(conn.snat_addr),
        snat_port: u16::from_be(conn.snat_port),
        state: conn.state,
        age_ms,
        handshake_ack: conn.handshake_ack,
    }
}

/// The flow a record describes, last seen `age_ms` before `now` (this data plane's
/// clock); its ids (`vip_id`, `vip_gen`, `backend_id`) are left 0 for the receiver to set
/// to its own. `None` for addresses this ABI cannot hold.
pub fn from_record(record: &Record, now: u64) -> Option<(FlowKey, Conn)> {
    let key = FlowKey {
        src_addr: narrow(record.client_addr)?,
        dst_addr: narrow(record.vip_addr)?,
        src_port: record.client_port.to_be(),
        dst_port: record.vip_port.to_be(),
        proto: record.proto,
        ..FlowKey::default()
    };
    let conn = Conn {
        backend_addr: narrow(record.backend_addr)?,
        snat_addr: narrow(record.snat_addr)?,
        backend_port: record.backend_port.to_be(),
        snat_port: record.snat_port.to_be(),
        backend_id: 0,
        vip_id: 0,
        state: record.state,
        vip_gen: 0,
        handshake_ack: record.handshake_ack,
        last_seen_ns: now.saturating_sub(u64::from(record.age_ms) * 1_000_000),
    };
    Some((key, conn))
}

/// The `NAT` (reply) entry of flow `key`/`conn`, as the data plane writes it when the flow
/// takes its SNAT port: keyed by the reply's tuple (backend -> SNAT address); none for a
/// flow without translation (direct server return, tunnels).
pub fn reply_of(key: &FlowKey, conn: &Conn) -> Option<(FlowKey, NatEntry)> {
    if conn.state & FLOW_DSR != 0 {
        return None;
    }
    let reply = FlowKey {
        src_addr: conn.backend_addr,
        dst_addr: conn.snat_addr,
        src_port: conn.backend_port,
        dst_port: conn.snat_port,
        proto: key.proto,
        ..FlowKey::default()
    };
    let entry = NatEntry {
        client_addr: key.src_addr,
        vip_addr: key.dst_addr,
        client_port: key.src_port,
        vip_port: key.dst_port,
        backend_id: conn.backend_id,
        vip_id: conn.vip_id,
        touched: (conn.last_seen_ns >> REPLY_TICK_SHIFT) as u32,
    };
    Some((reply, entry))
}

#[cfg(test)]
mod tests {
    use balancer_common::{FLOW_ESTABLISHED, FLOW_REPLIED, PROTO_TCP};

    use super::*;

    fn flow() -> (FlowKey, Conn) {
        let ip = |a: [u8; 4]| u32::from_ne_bytes(a);
        let key = FlowKey {
            src_addr: ip([10, 0, 1, 2]),
            dst_addr: ip([10, 0, 1, 100]),
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: PROTO_TCP,
            ..FlowKey::default()
        };
        let conn = Conn {
            backend_addr: ip([10, 0, 2, 101]),
            snat_addr: ip([10, 0, 2, 1]),
            backend_port: 80u16.to_be(),
            snat_port: 20001u16.to_be(),
            backend_id: 7,
            vip_id: 3,
            state: FLOW_ESTABLISHED | FLOW_REPLIED,
            vip_gen: 9,
            handshake_ack: 0x1234_5678,
            last_seen_ns: 50_000_000_000,
        };
        (key, conn)
    }

    #[test]
    fn a_flow_goes_to_a_record_and_back_without_its_ids() {
        let (key, conn) = flow();
        let record = to_record(Op::Upsert, &key, &conn, 1500);
        assert_eq!(record.client_addr.to_string(), "::ffff:10.0.1.2");
        assert_eq!((record.client_port, record.vip_port), (40000, 80));
        assert_eq!(record.snat_addr.to_string(), "::ffff:10.0.2.1");
        assert_eq!(record.snat_port, 20001);
        // The receiver's clock is elsewhere: only the age travels.
        let (k, c) = from_record(&record, 900_000_000_000).unwrap();
        assert_eq!(k, key);
        let want = Conn {
            backend_id: 0,
            vip_id: 0,
            vip_gen: 0,
            last_seen_ns: 900_000_000_000 - 1_500_000_000,
            ..conn
        };
        assert_eq!(c, want);
        // A clock younger than the age: the flow began at 0.
        assert_eq!(from_record(&record, 1_000).unwrap().1.last_seen_ns, 0);
    }

    #[test]
    fn addresses_this_abi_cannot_hold_are_refused() {
        let (key, conn) = flow();
        let mut record = to_record(Op::Upsert, &key, &conn, 0);
        record.backend_addr = "fd00::1".parse().unwrap();
        assert_eq!(from_record(&record, 0), None);
    }

    #[test]
    fn the_reply_entry_is_the_data_planes() {
        let (key, conn) = flow();
        let (reply, entry) = reply_of(&key, &conn).unwrap();
        assert_eq!(
            (
                reply.src_addr,
                reply.dst_addr,
                reply.src_port,
                reply.dst_port
            ),
            (
                conn.backend_addr,
                conn.snat_addr,
                conn.backend_port,
                conn.snat_port
            )
        );
        assert_eq!(reply.proto, PROTO_TCP);
        assert_eq!(
            (
                entry.client_addr,
                entry.client_port,
                entry.vip_addr,
                entry.vip_port
            ),
            (key.src_addr, key.src_port, key.dst_addr, key.dst_port)
        );
        assert_eq!((entry.backend_id, entry.vip_id), (7, 3));
        assert_eq!(
            entry.touched,
            (conn.last_seen_ns >> REPLY_TICK_SHIFT) as u32
        );
        let dsr = Conn {
            state: FLOW_DSR,
            ..conn
        };
        assert_eq!(reply_of(&key, &dsr), None, "a DSR flow has no reply entry");
    }
}
