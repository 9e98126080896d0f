//! A Backup writes the flows its Master sent into its own tables, on a blocking thread the
//! agent starts (at most one at a time), with the ids the agent's model gives the flows'
//! VIPs and backends here: a peer's ids mean nothing to this balancer, so VIPs are known
//! by address, port and protocol, backends by address and port within the VIP's pool. A
//! flow whose VIP or backend this balancer does not know is skipped and counted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use balancer_wire::sync::{Op, Record};

use super::record::{from_record, reply_of};
use crate::{dataplane::MapsError, lb::Census};

/// What became of one peer's records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Flows written (new, changed or refreshed).
    pub written: u64,
    pub removed: u64,
    /// Flows skipped: their VIP or backend is unknown here (or their addresses are of a
    /// kind this data plane cannot hold).
    pub unknown: u64,
}

/// Writes `batches` (each peer's records, in the order received) through `census`'s table,
/// with its ids.
///
/// # Errors
/// When the data plane's clock cannot be read or a table cannot be written (what was
/// written before stays).
pub fn apply(
    census: &Census,
    batches: &[(IpAddr, Vec<Record>)],
) -> Result<BTreeMap<IpAddr, Applied>, MapsError> {
    let (table, settings) = census.table();
    let now = table.now_ns(settings)?;
    let mut outcome: BTreeMap<IpAddr, Applied> = BTreeMap::new();
    for (peer, records) in batches {
        let applied = outcome.entry(*peer).or_default();
        for record in records {
            let Some((key, mut conn)) = from_record(record, now) else {
                applied.unknown += 1;
                continue;
            };
            match record.op {
                Op::Remove => {
                    let reply = reply_of(&key, &conn).map(|(reply, _)| reply);
                    table.remove(&key, reply.as_ref())?;
                    applied.removed += 1;
                }
                Op::Upsert => {
                    let ids = census.ids_of(
                        (key.dst_addr, key.dst_port, key.proto),
                        (conn.backend_addr, conn.backend_port),
                    );
                    let Some((vip_id, vip_gen, backend_id)) = ids else {
                        applied.unknown += 1;
                        continue;
                    };
                    conn.vip_id = vip_id;
                    conn.vip_gen = vip_gen;
                    conn.backend_id = backend_id;
                    table.put(&key, &conn, reply_of(&key, &conn).as_ref())?;
                    applied.written += 1;
                }
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::{Arc, PoisonError};

    use balancer_common::{Conn, FlowKey, FLOW_DSR, FLOW_ESTABLISHED, PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::config::{
        AllDownPolicy, Encapsulation, Forwarding, NatConfig, Protocol, Scheduler, Timeouts,
        TunnelConfig, VipConfig, VipMode,
    };
    use crate::dataplane::{FakeFlows, FakeMaps};
    use crate::lb::{settings, Balancer, SnatSource};
    use crate::sync::record::to_record;
    use balancer_wire::sync::Op;

    const SECOND: u64 = 1_000_000_000;
    const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

    fn vip(name: &str, port: u16, protocol: Protocol, pool: &str) -> VipConfig {
        VipConfig {
            name: name.into(),
            address: Ipv4Addr::new(10, 0, 1, 100).into(),
            port,
            protocol,
            scheduler: Scheduler::Maglev,
            ring_size: 251,
            pool: pool.into(),
            on_all_down: AllDownPolicy::Drop,
            forwarding: Forwarding::Nat,
            encapsulation: Encapsulation::Ipip,
            mode: VipMode::L4,
            rules: Vec::new(),
        }
    }

    pub(crate) fn backend(i: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100 + i), port)
    }

    /// The receiver: an extra pool and VIP added first, so its ids are not the sender's;
    /// then pool "web" (backends 2 and 1, port 80) behind TCP VIP "web" (10.0.1.100:80).
    pub(crate) fn receiver(flows: &Arc<FakeFlows>) -> Balancer<FakeMaps> {
        let maps = FakeMaps {
            flows: Arc::clone(flows),
            ..FakeMaps::default()
        };
        let s = settings(
            &Timeouts::default(),
            &NatConfig::default(),
            &TunnelConfig::default(),
        );
        let mut lb = Balancer::new(maps, &s, SnatSource::Fixed(vec![SNAT.into()])).unwrap();
        lb.add_pool("other").unwrap();
        lb.add_backend("other", backend(9, 8000).into(), 1).unwrap();
        lb.add_vip(vip("other", 8000, Protocol::Tcp, "other"))
            .unwrap();
        lb.add_pool("web").unwrap();
        lb.add_backend("web", backend(2, 80).into(), 1).unwrap();
        lb.add_backend("web", backend(1, 80).into(), 1).unwrap();
        lb.add_vip(vip("web", 80, Protocol::Tcp, "web")).unwrap();
        lb
    }

    /// A flow of the sender from 10.0.1.2, with the sender's ids (which mean nothing
    /// here).
    pub(crate) fn flow(
        client_port: u16,
        vip_port: u16,
        proto: u8,
        to: SocketAddrV4,
    ) -> (FlowKey, Conn) {
        let ip = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
        let key = FlowKey {
            src_addr: ip(Ipv4Addr::new(10, 0, 1, 2)),
            dst_addr: ip(Ipv4Addr::new(10, 0, 1, 100)),
            src_port: client_port.to_be(),
            dst_port: vip_port.to_be(),
            proto,
            ..FlowKey::default()
        };
        let conn = Conn {
            backend_addr: ip(*to.ip()),
            backend_port: to.port().to_be(),
            snat_addr: ip(SNAT),
            snat_port: (20000 + client_port).to_be(),
            backend_id: 77,
            vip_id: 66,
            vip_gen: 55,
            state: FLOW_ESTABLISHED,
            ..Conn::default()
        };
        (key, conn)
    }

    #[test]
    fn flows_are_mapped_onto_the_receivers_ids_or_skipped() {
        let flows = Arc::new(FakeFlows::default());
        flows.set_now(500 * SECOND);
        let lb = receiver(&flows);
        let web_key = lb
            .maps()
            .vips
            .keys()
            .find(|k| u16::from_be(k.port()) == 80)
            .copied()
            .unwrap();
        let web = lb.maps().vips[&web_key];
        let b1_id = *lb
            .maps()
            .backends
            .iter()
            .find(|(_, b)| b.addr == u32::from_ne_bytes(backend(1, 80).ip().octets()))
            .unwrap()
            .0;
        let up = |(k, c): (FlowKey, Conn), age| to_record(Op::Upsert, &k, &c, age);
        let records = vec![
            up(flow(1, 80, PROTO_TCP, backend(1, 80)), 2000),
            // A VIP this balancer does not have (port 81), a backend not in the VIP's pool,
            // and an address this data plane cannot hold.
            up(flow(2, 81, PROTO_TCP, backend(1, 80)), 0),
            up(flow(3, 80, PROTO_TCP, backend(9, 8000)), 0),
            up(flow(4, 80, PROTO_UDP, backend(1, 80)), 0),
            {
                let mut r = up(flow(5, 80, PROTO_TCP, backend(1, 80)), 0);
                r.client_addr = "fd00::2".parse().unwrap();
                r
            },
        ];
        let peer: IpAddr = "10.0.2.11".parse().unwrap();
        let outcome = apply(&lb.census(), &[(peer, records)]).unwrap();
        assert_eq!(
            outcome[&peer],
            Applied {
                written: 1,
                removed: 0,
                unknown: 4
            }
        );
        let (key, conn) = flow(1, 80, PROTO_TCP, backend(1, 80));
        let entries = flows
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let want = Conn {
            vip_id: web.vip_id,
            vip_gen: web.generation,
            backend_id: b1_id,
            last_seen_ns: 498 * SECOND,
            ..conn
        };
        assert_eq!(entries, [(key, want)]);
        assert_ne!((want.vip_id, want.backend_id), (66, 77));
        let (reply, entry) = reply_of(&key, &want).unwrap();
        assert_eq!(flows.nat.lock().unwrap().get(&reply), Some(&entry));

        // Removed: both entries go; a DSR flow has no reply entry to write.
        let (dkey, mut dconn) = flow(6, 80, PROTO_TCP, backend(2, 80));
        dconn.state |= FLOW_DSR;
        let records = vec![
            to_record(Op::Remove, &key, &conn, 0),
            to_record(Op::Upsert, &dkey, &dconn, 0),
        ];
        let outcome = apply(&lb.census(), &[(peer, records)]).unwrap();
        assert_eq!((outcome[&peer].written, outcome[&peer].removed), (1, 1));
        let entries = flows.entries.lock().unwrap().clone();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, dkey);
        assert!(flows.nat.lock().unwrap().is_empty());
    }
}
