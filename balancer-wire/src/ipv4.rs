//! IPv4 (RFC 791) headers, options included, over any payload protocol.

use std::net::Ipv4Addr;

use crate::{
    check_room, checksum, len16, read_u16, read_u32, write_u16, Error, IpProtocol, Options,
    PseudoHeader, Result,
};

pub mod field {
    use crate::Field;

    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    /// Flags (3 high bits) and fragment offset in 8-byte units.
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Bytes of a header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Bits of [`field::FLG_OFF`]: don't fragment.
pub const DONT_FRAG: u16 = 0x4000;
/// Bits of [`field::FLG_OFF`]: more fragments follow.
pub const MORE_FRAGS: u16 = 0x2000;
/// Bits of [`field::FLG_OFF`]: the fragment offset, in 8-byte units.
pub const FRAG_OFFSET: u16 = 0x1fff;

crate::buffer_view! {
    /// An IPv4 packet in a buffer.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A packet over `buffer`, which holds at least the whole header: the start of a
    /// datagram, as an ICMP error quotes it or a capture cuts it.
    ///
    /// # Errors
    /// As [`Packet::check_header`].
    pub fn new_header_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_header()?;
        Ok(packet)
    }

    /// Whether the buffer starts with a whole IPv4 header.
    ///
    /// # Errors
    /// [`Error::Truncated`] when the header is cut short, [`Error::Malformed`] when the
    /// version is not 4 or the header length below 20 bytes.
    pub fn check_header(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_room("IPv4", len, HEADER_LEN)?;
        if self.version() != 4 {
            return Err(malformed("version is not 4"));
        }
        if self.header_len() < HEADER_LEN {
            return Err(malformed("header length below 20 bytes"));
        }
        check_room("IPv4", len, self.header_len())
    }

    /// Whether the buffer holds the whole datagram: [`Packet::check_header`], and a total
    /// length from the header's end to the buffer's (bytes after it, such as Ethernet
    /// padding, are not the payload's).
    ///
    /// # Errors
    /// As [`Packet::check_header`], and [`Error::Malformed`] for a total length shorter
    /// than the header, [`Error::Truncated`] for one longer than the buffer.
    pub fn check_len(&self) -> Result<()> {
        self.check_header()?;
        let total = usize::from(self.total_len());
        if total < self.header_len() {
            return Err(malformed("total length below the header length"));
        }
        check_room("IPv4", self.buffer.as_ref().len(), total)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Bytes of the header, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Bytes of the datagram, header included.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & DONT_FRAG != 0
    }

    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & MORE_FRAGS != 0
    }

    /// The fragment's offset in bytes: not 0 for every fragment but the first, which
    /// alone carries the transport header.
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & FRAG_OFFSET) * 8
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_u32(self.buffer.as_ref(), field::SRC_ADDR))
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_u32(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// The options: the header's bytes after the fixed part.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Whether the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.buffer.as_ref()[..self.header_len()]) == 0
    }

    /// The addresses for the checksum of the payload.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V4 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }

    /// Where the payload is: from the header's end to the total length's, or the buffer's
    /// if that comes first (only after [`Packet::new_header_checked`]).
    fn payload_range(&self) -> std::ops::Range<usize> {
        let end = usize::from(self.total_len()).min(self.buffer.as_ref().len());
        self.header_len()..end.max(self.header_len())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, as far as the buffer holds it.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version(&mut self, value: u8) {
        let byte = &mut self.buffer.as_mut()[field::VER_IHL];
        *byte = (*byte & 0x0f) | (value << 4);
    }

    /// Sets the header length, in bytes (a multiple of 4, from 20 to 60).
    ///
    /// # Panics
    /// When `value` is beyond 60.
    pub fn set_header_len(&mut self, value: usize) {
        let words = crate::header_words(value);
        let byte = &mut self.buffer.as_mut()[field::VER_IHL];
        *byte = (*byte & 0xf0) | (words & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, value);
    }

    /// Sets the flags and the fragment offset (in bytes, a multiple of 8).
    pub fn set_fragment(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut value = (offset / 8) & FRAG_OFFSET;
        if dont_frag {
            value |= DONT_FRAG;
        }
        if more_frags {
            value |= MORE_FRAGS;
        }
        write_u16(self.buffer.as_mut(), field::FLG_OFF, value);
    }

    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    pub fn set_protocol(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.0;
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }

    /// The options, after the header length is set.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes the header checksum and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(sum);
    }

    /// The payload, after the header and total lengths are set.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.payload_range();
        &mut self.buffer.as_mut()[range]
    }
}

fn malformed(reason: &'static str) -> Error {
    Error::Malformed {
        layer: "IPv4",
        reason,
    }
}

/// An IPv4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: IpProtocol,
    /// Bytes after the header.
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes, a multiple of 8.
    pub frag_offset: u16,
    pub options: Options,
}

impl Default for Repr {
    /// What a Linux host sends by default: TTL 64, don't fragment (path MTU discovery),
    /// identification 0; unspecified addresses, protocol 0, no payload.
    fn default() -> Self {
        Repr {
            src_addr: Ipv4Addr::UNSPECIFIED,
            dst_addr: Ipv4Addr::UNSPECIFIED,
            protocol: IpProtocol(0),
            payload_len: 0,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            options: Options::NONE,
        }
    }
}

impl Repr {
    /// The header of `packet`, a whole datagram (the checksum is not verified: see
    /// [`Packet::verify_checksum`]).
    ///
    /// # Errors
    /// As [`Packet::check_len`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            dscp_ecn: packet.dscp_ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
            options: Options::new(packet.options())?,
        })
    }

    /// Bytes of the header, options included.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Bytes of the datagram.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// The addresses for the checksum of the payload.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V4 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// Writes the header, with its checksum; the payload is the next layer's to write
    /// (through [`Packet::payload_mut`]).
    ///
    /// # Panics
    /// When `packet` is shorter than [`Repr::header_len`], or the datagram longer than
    /// 65535 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version(4);
        packet.set_header_len(self.header_len());
        packet.set_dscp_ecn(self.dscp_ecn);
        packet.set_total_len(len16(self.buffer_len()));
        packet.set_ident(self.ident);
        packet.set_fragment(self.dont_frag, self.more_frags, self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet
            .options_mut()
            .copy_from_slice(self.options.as_bytes());
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram with 4 bytes of options (three no-operations and an end of list),
    /// identification 0x1234, don't fragment, TTL 64, TCP, and 4 bytes of payload.
    const WITH_OPTIONS: [u8; 28] = [
        0x46, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0xac, 0xa4, // ..checksum
        10, 0, 1, 2, 10, 0, 100, 1, // addresses
        0x01, 0x01, 0x01, 0x00, // options
        0xde, 0xad, 0xbe, 0xef, // payload
    ];

    fn with_options() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(10, 0, 1, 2),
            dst_addr: Ipv4Addr::new(10, 0, 100, 1),
            protocol: IpProtocol::TCP,
            payload_len: 4,
            ident: 0x1234,
            options: Options::new(&[1, 1, 1, 0]).unwrap(),
            ..Repr::default()
        }
    }

    #[test]
    fn parses_fields_and_verifies_the_checksum() {
        let packet = Packet::new_checked(&WITH_OPTIONS[..]).unwrap();
        assert_eq!((packet.version(), packet.header_len()), (4, 24));
        assert_eq!(packet.total_len(), 28);
        assert!(packet.dont_frag() && !packet.more_frags());
        assert_eq!(packet.frag_offset(), 0);
        assert_eq!(packet.protocol(), IpProtocol::TCP);
        assert_eq!(packet.checksum(), 0xaca4);
        assert!(packet.verify_checksum());
        assert_eq!(packet.options(), &[1, 1, 1, 0]);
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Repr::parse(&packet), Ok(with_options()));

        let mut corrupt = WITH_OPTIONS;
        corrupt[8] = 63;
        assert!(!Packet::new_checked(&corrupt[..]).unwrap().verify_checksum());
    }

    #[test]
    fn emits_the_same_bytes() {
        let repr = with_options();
        assert_eq!(repr.buffer_len(), 28);
        let mut bytes = [0u8; 28];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet
            .payload_mut()
            .copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(bytes, WITH_OPTIONS);
    }

    #[test]
    fn padding_after_the_datagram_is_not_payload() {
        let mut padded = WITH_OPTIONS.to_vec();
        padded.extend_from_slice(&[0; 18]);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn fragments_are_read_and_written() {
        let repr = Repr {
            dont_frag: false,
            more_frags: true,
            frag_offset: 1480,
            ..with_options()
        };
        let mut bytes = [0u8; 28];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[6..8], &[0x20, 0xb9], "MF, 185 units of 8 bytes");
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum());
        assert_eq!(Repr::parse(&packet), Ok(repr));
    }

    #[test]
    fn truncated_and_malformed_headers_are_refused() {
        for len in 0..WITH_OPTIONS.len() {
            assert!(
                Packet::new_checked(&WITH_OPTIONS[..len]).is_err(),
                "{len} bytes"
            );
        }
        // The header alone is enough where only the header is needed (a quote).
        for len in 24..WITH_OPTIONS.len() {
            let start = Packet::new_header_checked(&WITH_OPTIONS[..len]).unwrap();
            assert_eq!(start.payload(), &WITH_OPTIONS[24..len]);
        }
        assert!(Packet::new_header_checked(&WITH_OPTIONS[..23]).is_err());

        let cases: [(usize, u8, &str); 3] = [
            (0, 0x65, "version is not 4"),
            (0, 0x44, "header length below 20 bytes"),
            (3, 20, "total length below the header length"),
        ];
        for (at, value, reason) in cases {
            let mut bad = WITH_OPTIONS;
            bad[at] = value;
            assert_eq!(
                Packet::new_checked(&bad[..]),
                Err(Error::Malformed {
                    layer: "IPv4",
                    reason
                })
            );
        }
        let mut long = WITH_OPTIONS;
        long[2..4].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&long[..]),
            Err(Error::Truncated {
                layer: "IPv4",
                needed: 2000,
                len: 28
            })
        );
    }
}
