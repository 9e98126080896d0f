//! Flow-sync datagrams between balancers of a VRRP pair (`[sync]`): the Master tells its
//! peers which flows it holds (client tuple, backend, SNAT address and port, state, and
//! how long ago each was last seen), a peer asks for a full resync.
//!
//! A datagram is a fixed header, `count` fixed-size [`Record`]s and a 32-byte
//! HMAC-SHA256 over everything before it (computed by the caller: this crate holds no
//! key). Integers are big-endian. Addresses are 16 bytes, IPv4 as `::ffff:a.b.c.d`, so
//! that IPv6 flows need no new format.
//!
//! ```text
//!  0      4   5    6      8         16         24       28      30    32
//!  | BLFS | v | kd | flags | boot id | sequence | resync | count | 0 0 | records.. | mac (32) |
//! ```

use std::net::Ipv6Addr;

use crate::{array, check_room, read_u16, read_u32, write_u16, write_u32, Error, Result};

pub mod field {
    use crate::Field;

    pub const MAGIC: Field = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const FLAGS: Field = 6..8;
    /// The sender's start (its wall clock in ns when it started): a later start is a new
    /// sender whose sequence begins again.
    pub const BOOT_ID: Field = 8..16;
    pub const SEQUENCE: Field = 16..24;
    /// The full resync this datagram belongs to (0: an incremental one).
    pub const RESYNC: Field = 24..28;
    pub const COUNT: Field = 28..30;
    pub const RESERVED: Field = 30..32;

    /// Fields of a record, from its start.
    pub mod record {
        use crate::Field;

        pub const CLIENT_ADDR: Field = 0..16;
        pub const VIP_ADDR: Field = 16..32;
        pub const CLIENT_PORT: Field = 32..34;
        pub const VIP_PORT: Field = 34..36;
        pub const PROTO: usize = 36;
        pub const OP: usize = 37;
        pub const RESERVED: Field = 38..40;
        pub const BACKEND_ADDR: Field = 40..56;
        pub const BACKEND_PORT: Field = 56..58;
        pub const SNAT_PORT: Field = 58..60;
        pub const SNAT_ADDR: Field = 60..76;
        /// The flow's `FLOW_*` bits.
        pub const STATE: Field = 76..80;
        /// Milliseconds since the flow's last packet, by the sender's data-plane clock.
        pub const AGE_MS: Field = 80..84;
        pub const HANDSHAKE_ACK: Field = 84..88;
    }
}

pub const MAGIC: [u8; 4] = *b"BLFS";
pub const VERSION: u8 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = field::RESERVED.end;
/// Bytes of one record.
pub const RECORD_LEN: usize = field::record::HANDSHAKE_ACK.end;
/// Bytes of the HMAC-SHA256 trailer.
pub const MAC_LEN: usize = 32;
/// Records per datagram: the datagram stays under 1400 bytes, so it crosses any Ethernet
/// path (and most tunnels) in one IP packet.
pub const MAX_RECORDS: usize = (1400 - HEADER_LEN - MAC_LEN) / RECORD_LEN;

/// The datagram is part of a full resync (every live flow of the sender).
pub const FLAG_FULL: u16 = 1;
/// The last datagram of a full resync.
pub const FLAG_END: u16 = 2;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Flow records.
    Flows,
    /// The sender asks its peers' Master for a full resync (no records).
    ResyncRequest,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Flows => 1,
            Kind::ResyncRequest => 2,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Flows),
            2 => Some(Kind::ResyncRequest),
            _ => None,
        }
    }
}

/// What a record says of its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// The flow exists (new, changed, or refreshed) as the record says.
    Upsert,
    /// The flow is gone from the sender's table.
    Remove,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Upsert => 1,
            Op::Remove => 2,
        }
    }

    fn from_code(code: u8) -> Option<Op> {
        match code {
            1 => Some(Op::Upsert),
            2 => Some(Op::Remove),
            _ => None,
        }
    }
}

crate::buffer_view! {
    /// A flow-sync datagram in a buffer.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer is exactly a header, the records it counts and a MAC.
    ///
    /// # Errors
    /// [`Error::Truncated`] when it is shorter, [`Error::Malformed`] when longer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_room("sync", len, HEADER_LEN + MAC_LEN)?;
        let needed = datagram_len(usize::from(self.count()));
        check_room("sync", len, needed)?;
        if len > needed {
            return Err(malformed("bytes past the MAC"));
        }
        Ok(())
    }

    pub fn magic(&self) -> [u8; 4] {
        array(&self.buffer.as_ref()[field::MAGIC])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn kind_code(&self) -> u8 {
        self.buffer.as_ref()[field::KIND]
    }

    pub fn flags(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS)
    }

    pub fn boot_id(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[field::BOOT_ID]))
    }

    pub fn sequence(&self) -> u64 {
        u64::from_be_bytes(array(&self.buffer.as_ref()[field::SEQUENCE]))
    }

    pub fn resync(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::RESYNC)
    }

    pub fn count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::COUNT)
    }

    /// The bytes the MAC covers: everything before it.
    pub fn signed(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[..data.len() - MAC_LEN]
    }

    /// The MAC trailer.
    pub fn mac(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[data.len() - MAC_LEN..]
    }

    /// Record `i`'s bytes.
    fn record(&self, i: usize) -> &[u8] {
        let start = HEADER_LEN + i * RECORD_LEN;
        &self.buffer.as_ref()[start..start + RECORD_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the MAC trailer (computed over [`Packet::signed`]).
    pub fn set_mac(&mut self, mac: &[u8; MAC_LEN]) {
        let data = self.buffer.as_mut();
        let len = data.len();
        data[len - MAC_LEN..].copy_from_slice(mac);
    }
}

/// Bytes of a datagram of `records` records.
pub const fn datagram_len(records: usize) -> usize {
    HEADER_LEN + records * RECORD_LEN + MAC_LEN
}

fn malformed(reason: &'static str) -> Error {
    Error::Malformed {
        layer: "sync",
        reason,
    }
}

/// One flow as a record: the client's tuple (towards the VIP), where it goes, and its state.
/// Ports are in host byte order; IPv4 addresses are IPv4-mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub op: Op,
    pub client_addr: Ipv6Addr,
    pub client_port: u16,
    pub vip_addr: Ipv6Addr,
    pub vip_port: u16,
    pub proto: u8,
    pub backend_addr: Ipv6Addr,
    pub backend_port: u16,
    /// The SNAT source (unspecified and 0 for a flow without translation).
    pub snat_addr: Ipv6Addr,
    pub snat_port: u16,
    /// `FLOW_*` bits.
    pub state: u32,
    /// Milliseconds since the flow's last packet, by the sender's clock.
    pub age_ms: u32,
    pub handshake_ack: u32,
}

impl Record {
    /// Parses record bytes.
    ///
    /// # Errors
    /// [`Error::Malformed`] for an unknown operation.
    fn parse(data: &[u8]) -> Result<Record> {
        use field::record as f;
        let op = Op::from_code(data[f::OP]).ok_or_else(|| malformed("unknown record op"))?;
        let addr = |field: crate::Field| Ipv6Addr::from(array::<16>(&data[field]));
        Ok(Record {
            op,
            client_addr: addr(f::CLIENT_ADDR),
            client_port: read_u16(data, f::CLIENT_PORT),
            vip_addr: addr(f::VIP_ADDR),
            vip_port: read_u16(data, f::VIP_PORT),
            proto: data[f::PROTO],
            backend_addr: addr(f::BACKEND_ADDR),
            backend_port: read_u16(data, f::BACKEND_PORT),
            snat_addr: addr(f::SNAT_ADDR),
            snat_port: read_u16(data, f::SNAT_PORT),
            state: read_u32(data, f::STATE),
            age_ms: read_u32(data, f::AGE_MS),
            handshake_ack: read_u32(data, f::HANDSHAKE_ACK),
        })
    }

    fn emit(&self, data: &mut [u8]) {
        use field::record as f;
        data[f::CLIENT_ADDR].copy_from_slice(&self.client_addr.octets());
        data[f::VIP_ADDR].copy_from_slice(&self.vip_addr.octets());
        write_u16(data, f::CLIENT_PORT, self.client_port);
        write_u16(data, f::VIP_PORT, self.vip_port);
        data[f::PROTO] = self.proto;
        data[f::OP] = self.op.code();
        data[f::RESERVED].fill(0);
        data[f::BACKEND_ADDR].copy_from_slice(&self.backend_addr.octets());
        write_u16(data, f::BACKEND_PORT, self.backend_port);
        write_u16(data, f::SNAT_PORT, self.snat_port);
        data[f::SNAT_ADDR].copy_from_slice(&self.snat_addr.octets());
        write_u32(data, f::STATE, self.state);
        write_u32(data, f::AGE_MS, self.age_ms);
        write_u32(data, f::HANDSHAKE_ACK, self.handshake_ack);
    }
}

/// A flow-sync datagram, its MAC aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repr {
    pub kind: Kind,
    /// [`FLAG_FULL`], [`FLAG_END`].
    pub flags: u16,
    pub boot_id: u64,
    pub sequence: u64,
    pub resync: u32,
    pub records: Vec<Record>,
}

impl Repr {
    /// Validates a datagram (not its MAC: the caller checks it first, over
    /// [`Packet::signed`]).
    ///
    /// # Errors
    /// [`Error::Malformed`] for another magic or version, an unknown kind or op, records in
    /// a resync request, or reserved bytes set.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.magic() != MAGIC {
            return Err(malformed("not a flow-sync datagram (magic)"));
        }
        if packet.version() != VERSION {
            return Err(malformed("unknown version"));
        }
        let kind = Kind::from_code(packet.kind_code()).ok_or_else(|| malformed("unknown kind"))?;
        if packet.as_ref()[field::RESERVED] != [0, 0] {
            return Err(malformed("reserved bytes set"));
        }
        let count = usize::from(packet.count());
        if kind == Kind::ResyncRequest && count != 0 {
            return Err(malformed("records in a resync request"));
        }
        let records = (0..count)
            .map(|i| Record::parse(packet.record(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Repr {
            kind,
            flags: packet.flags(),
            boot_id: packet.boot_id(),
            sequence: packet.sequence(),
            resync: packet.resync(),
            records,
        })
    }

    /// Bytes of the datagram, MAC included.
    pub fn buffer_len(&self) -> usize {
        datagram_len(self.records.len())
    }

    /// Writes the datagram into `packet` (of [`Repr::buffer_len`] bytes), the MAC zeroed.
    ///
    /// # Panics
    /// With more than [`MAX_RECORDS`] records.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        assert!(
            self.records.len() <= MAX_RECORDS,
            "{} records in one datagram",
            self.records.len()
        );
        let data = packet.buffer.as_mut();
        data[field::MAGIC].copy_from_slice(&MAGIC);
        data[field::VERSION] = VERSION;
        data[field::KIND] = self.kind.code();
        write_u16(data, field::FLAGS, self.flags);
        data[field::BOOT_ID].copy_from_slice(&self.boot_id.to_be_bytes());
        data[field::SEQUENCE].copy_from_slice(&self.sequence.to_be_bytes());
        write_u32(data, field::RESYNC, self.resync);
        write_u16(data, field::COUNT, self.records.len() as u16);
        data[field::RESERVED].fill(0);
        for (i, record) in self.records.iter().enumerate() {
            let start = HEADER_LEN + i * RECORD_LEN;
            record.emit(&mut data[start..start + RECORD_LEN]);
        }
        let end = self.buffer_len();
        data[end - MAC_LEN..end].fill(0);
    }

    /// The datagram as a new buffer, the MAC zeroed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        bytes
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn mapped(a: [u8; 4]) -> Ipv6Addr {
        Ipv4Addr::from(a).to_ipv6_mapped()
    }

    fn record() -> Record {
        Record {
            op: Op::Upsert,
            client_addr: mapped([10, 0, 1, 2]),
            client_port: 40000,
            vip_addr: mapped([10, 0, 1, 100]),
            vip_port: 80,
            proto: 6,
            backend_addr: mapped([10, 0, 2, 101]),
            backend_port: 80,
            snat_addr: mapped([10, 0, 2, 1]),
            snat_port: 20001,
            state: 0x0c,
            age_ms: 1500,
            handshake_ack: 0x0102_0304,
        }
    }

    fn flows() -> Repr {
        Repr {
            kind: Kind::Flows,
            flags: FLAG_FULL | FLAG_END,
            boot_id: 0x1122_3344_5566_7788,
            sequence: 9,
            resync: 3,
            records: vec![record()],
        }
    }

    /// The datagram of [`flows`], byte by byte (MAC zeroed).
    #[rustfmt::skip]
    const FLOWS: [u8; HEADER_LEN + RECORD_LEN + MAC_LEN] = {
        let mut b = [0u8; HEADER_LEN + RECORD_LEN + MAC_LEN];
        let head: [u8; 32] = [
            b'B', b'L', b'F', b'S', 1, 1, 0x00, 0x03,
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
            0, 0, 0, 0, 0, 0, 0, 9,
            0, 0, 0, 3, 0, 1, 0, 0,
        ];
        let rec: [u8; 88] = [
            // client ::ffff:10.0.1.2
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2,
            // vip ::ffff:10.0.1.100
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 100,
            0x9c, 0x40, 0x00, 0x50, 6, 1, 0, 0,
            // backend ::ffff:10.0.2.101
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 2, 101,
            0x00, 0x50, 0x4e, 0x21,
            // snat ::ffff:10.0.2.1
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 2, 1,
            0, 0, 0, 0x0c, 0, 0, 0x05, 0xdc, 1, 2, 3, 4,
        ];
        let mut i = 0;
        while i < 32 { b[i] = head[i]; i += 1; }
        let mut j = 0;
        while j < 88 { b[32 + j] = rec[j]; j += 1; }
        b
    };

    #[test]
    fn a_datagram_of_flows_byte_by_byte() {
        assert_eq!(flows().to_bytes(), FLOWS);
        let packet = Packet::new_checked(&FLOWS[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap(), flows());
        assert_eq!(packet.signed(), &FLOWS[..HEADER_LEN + RECORD_LEN]);
        assert_eq!(packet.mac(), &[0; MAC_LEN]);
    }

    #[test]
    fn a_resync_request_and_the_mac() {
        let request = Repr {
            kind: Kind::ResyncRequest,
            flags: 0,
            boot_id: 7,
            sequence: 1,
            resync: 0,
            records: Vec::new(),
        };
        let mut bytes = request.to_bytes();
        assert_eq!(bytes.len(), HEADER_LEN + MAC_LEN);
        assert_eq!(&bytes[..8], b"BLFS\x01\x02\x00\x00");
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_mac(&[0xab; MAC_LEN]);
        assert_eq!(&bytes[HEADER_LEN..], &[0xab; MAC_LEN]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap(), request);
    }

    #[test]
    fn the_largest_datagram_fits_the_budget() {
        let repr = Repr {
            records: vec![record(); MAX_RECORDS],
            ..flows()
        };
        let bytes = repr.to_bytes();
        assert!(bytes.len() <= 1400, "{} bytes", bytes.len());
        assert!(datagram_len(MAX_RECORDS + 1) > 1400);
        let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(parsed, repr);
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let edit = |at: usize, value: u8| {
            let mut b = FLOWS.to_vec();
            b[at] = value;
            b
        };
        let cases: Vec<(&str, Vec<u8>, Error)> = vec![
            (
                "magic",
                edit(0, b'X'),
                malformed("not a flow-sync datagram (magic)"),
            ),
            (
                "version",
                edit(field::VERSION, 2),
                malformed("unknown version"),
            ),
            ("kind", edit(field::KIND, 9), malformed("unknown kind")),
            (
                "reserved",
                edit(field::RESERVED.start, 1),
                malformed("reserved bytes set"),
            ),
            (
                "op",
                edit(HEADER_LEN + field::record::OP, 0),
                malformed("unknown record op"),
            ),
            (
                "records in a request",
                edit(field::KIND, 2),
                malformed("records in a resync request"),
            ),
            (
                "count beyond the buffer",
                edit(field::COUNT.end - 1, 2),
                Error::Truncated {
                    layer: "sync",
                    needed: datagram_len(2),
                    len: FLOWS.len(),
                },
            ),
            (
                "count below the buffer",
                edit(field::COUNT.end - 1, 0),
                malformed("bytes past the MAC"),
            ),
            (
                "shorter than a header",
                FLOWS[..40].to_vec(),
                Error::Truncated {
                    layer: "sync",
                    needed: HEADER_LEN + MAC_LEN,
                    len: 40,
                },
            ),
        ];
        for (what, bytes, want) in cases {
            let got = Packet::new_checked(&bytes[..]).and_then(|p| Repr::parse(&p));
            assert_eq!(got, Err(want), "{what}");
        }
    }
}
