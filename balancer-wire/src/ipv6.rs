//! IPv6 (RFC 8200) fixed headers; extension headers are the payload's first bytes, named
//! by the next header field.

use std::net::Ipv6Addr;

use crate::{
    check_room, len16, read_u16, read_u32, write_u16, write_u32, Error, IpProtocol, PseudoHeader,
    Result,
};

pub mod field {
    use crate::Field;

    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub const VER_TC_FLOW: Field = 0..4;
    pub const PAYLOAD_LEN: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLOW_LABEL: u32 = 0x000f_ffff;

crate::buffer_view! {
    /// An IPv6 packet in a buffer.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds the fixed header of version 6 and its payload.
    ///
    /// # Errors
    /// [`Error::Truncated`] when either is cut short, [`Error::Malformed`] when the version
    /// is not 6.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_room("IPv6", len, HEADER_LEN)?;
        if self.version() != 6 {
            return Err(Error::Malformed {
                layer: "IPv6",
                reason: "version is not 6",
            });
        }
        check_room("IPv6", len, HEADER_LEN + usize::from(self.payload_len()))
    }

    fn ver_tc_flow(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW.start] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        // The low byte of what is left once the flow label is shifted out.
        (self.ver_tc_flow() >> 20).to_be_bytes()[3]
    }

    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & FLOW_LABEL
    }

    /// Bytes after the fixed header (extension headers included).
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(crate::array::<16>(&self.buffer.as_ref()[field::SRC_ADDR]))
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(crate::array::<16>(&self.buffer.as_ref()[field::DST_ADDR]))
    }

    /// The addresses for the checksum of the payload.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V6 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, the traffic class and the flow label (its low 20 bits).
    pub fn set_ver_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let value = (6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & FLOW_LABEL);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, value);
    }

    pub fn set_payload_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, value);
    }

    pub fn set_next_header(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value.0;
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// The payload, after the payload length is set.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// An IPv6 fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: IpProtocol,
    /// Bytes after the fixed header.
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    /// The low 20 bits.
    pub flow_label: u32,
}

impl Repr {
    /// The fixed header of `packet`.
    ///
    /// # Errors
    /// As [`Packet::check_len`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Bytes of the packet.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// The addresses for the checksum of the payload.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V6 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// Writes the fixed header; the payload is the next layer's to write.
    ///
    /// # Panics
    /// When `packet` is shorter than [`HEADER_LEN`], or the payload longer than 65535
    /// bytes (jumbograms are not handled).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_ver_tc_flow(self.traffic_class, self.flow_label);
        packet.set_payload_len(len16(self.payload_len));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Traffic class 0xb8 (expedited forwarding), flow label 0x12345, 4 bytes of UDP
    /// payload, hop limit 64, `fd00::1` to `fd00::2`.
    const PACKET: [u8; 44] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x04, 0x11, 0x40, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, //
        0xca, 0xfe, 0xf0, 0x0d,
    ];

    fn repr() -> Repr {
        Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: IpProtocol::UDP,
            payload_len: 4,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
        }
    }

    #[test]
    fn parses_and_emits() {
        let packet = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(
            (packet.traffic_class(), packet.flow_label()),
            (0xb8, 0x12345)
        );
        assert_eq!(packet.payload(), &[0xca, 0xfe, 0xf0, 0x0d]);
        assert_eq!(Repr::parse(&packet), Ok(repr()));
        let mut bytes = [0u8; 44];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        packet
            .payload_mut()
            .copy_from_slice(&[0xca, 0xfe, 0xf0, 0x0d]);
        assert_eq!(bytes, PACKET);
    }

    #[test]
    fn truncated_or_other_versions_are_refused() {
        for len in 0..PACKET.len() {
            assert!(Packet::new_checked(&PACKET[..len]).is_err(), "{len} bytes");
        }
        let mut v4 = PACKET;
        v4[0] = 0x4b;
        assert!(matches!(
            Packet::new_checked(&v4[..]),
            Err(Error::Malformed { .. })
        ));
    }
}
