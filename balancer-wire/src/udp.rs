//! UDP (RFC 768) datagrams.

use crate::{check_room, len16, read_u16, write_u16, Error, IpProtocol, PseudoHeader, Result};

pub mod field {
    use crate::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    /// Bytes of the datagram, header included.
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// Bytes of the header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

crate::buffer_view! {
    /// A UDP datagram in a buffer.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds the header and the length it names.
    ///
    /// # Errors
    /// [`Error::Truncated`] when either is cut short, [`Error::Malformed`] for a length
    /// below the header's.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_room("UDP", len, HEADER_LEN)?;
        let named = usize::from(self.len());
        if named < HEADER_LEN {
            return Err(Error::Malformed {
                layer: "UDP",
                reason: "length below 8 bytes",
            });
        }
        check_room("UDP", len, named)
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: bytes of the datagram, header included.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a header field, as smoltcp names it"
    )]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum field: 0 when the sender computed none (allowed over IPv4 only).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Whether the checksum is right for the datagram sent with `pseudo`'s addresses; a
    /// datagram without one (field 0) is not right: see [`Packet::checksum`].
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> bool {
        let datagram = &self.buffer.as_ref()[..usize::from(self.len())];
        self.checksum() != 0 && pseudo.checksum(IpProtocol::UDP, datagram) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The data after the header, up to the length field's end.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, value);
    }

    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, value);
    }

    pub fn set_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    /// Sets the checksum field (0: no checksum).
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// The data after the header, once the length is set.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes the checksum over the datagram and `pseudo`, and writes it (a computed 0
    /// is sent as 0xffff, its other form, since 0 means none).
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader) {
        self.set_checksum(0);
        let end = usize::from(self.len());
        let sum = pseudo.checksum(IpProtocol::UDP, &self.buffer.as_ref()[..end]);
        self.set_checksum(if sum == 0 { 0xffff } else { sum });
    }
}

/// A UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// The datagram `packet` (the checksum is not verified: see
    /// [`Packet::verify_checksum`]).
    ///
    /// # Errors
    /// As [`Packet::check_len`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload: packet.payload(),
        })
    }

    /// Bytes of the datagram.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes the datagram, with the checksum for `pseudo`'s addresses (set it to 0 after,
    /// for a datagram without one).
    ///
    /// # Panics
    /// When `packet` is shorter than [`Repr::buffer_len`], or that is beyond 65535 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        pseudo: &PseudoHeader,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len16(self.buffer_len()));
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(pseudo);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// 40000 to 5300, "query".
    const V4_DATAGRAM: [u8; 13] = [
        0x9c, 0x40, 0x14, 0xb4, 0x00, 0x0d, 0x85, 0xf4, b'q', b'u', b'e', b'r', b'y',
    ];

    fn v4() -> PseudoHeader {
        PseudoHeader::from((Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 100, 1)))
    }

    fn repr() -> Repr<'static> {
        Repr {
            src_port: 40000,
            dst_port: 5300,
            payload: b"query",
        }
    }

    #[test]
    fn parses_fields_and_verifies_the_checksum() {
        let packet = Packet::new_checked(&V4_DATAGRAM[..]).unwrap();
        assert_eq!(
            (packet.src_port(), packet.dst_port(), packet.len()),
            (40000, 5300, 13)
        );
        assert!(packet.verify_checksum(&v4()));
        assert_eq!(Repr::parse(&packet), Ok(repr()));
        let mut none = V4_DATAGRAM;
        none[6..8].fill(0);
        let packet = Packet::new_checked(&none[..]).unwrap();
        assert_eq!(packet.checksum(), 0);
        assert!(
            !packet.verify_checksum(&v4()),
            "no checksum is no valid one"
        );
    }

    #[test]
    fn emits_the_same_bytes_over_ipv4_and_ipv6() {
        let mut bytes = [0u8; 13];
        repr().emit(&mut Packet::new_unchecked(&mut bytes[..]), &v4());
        assert_eq!(bytes, V4_DATAGRAM);

        let v6 = PseudoHeader::from((
            "fd00::1".parse::<Ipv6Addr>().unwrap(),
            "fd00::2".parse::<Ipv6Addr>().unwrap(),
        ));
        repr().emit(&mut Packet::new_unchecked(&mut bytes[..]), &v6);
        assert_eq!(&bytes[6..8], &[0x04, 0xf3]);
        assert!(Packet::new_checked(&bytes[..])
            .unwrap()
            .verify_checksum(&v6));
    }

    #[test]
    fn padding_after_the_length_is_not_payload() {
        let mut padded = V4_DATAGRAM.to_vec();
        padded.extend_from_slice(&[0; 5]);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload(), b"query");
        assert!(packet.verify_checksum(&v4()));
    }

    #[test]
    fn truncated_and_malformed_datagrams_are_refused() {
        for len in 0..V4_DATAGRAM.len() {
            assert!(
                Packet::new_checked(&V4_DATAGRAM[..len]).is_err(),
                "{len} bytes"
            );
        }
        let mut short = V4_DATAGRAM;
        short[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert!(matches!(
            Packet::new_checked(&short[..]),
            Err(Error::Malformed { .. })
        ));
    }
}
