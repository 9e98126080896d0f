//! TCP (RFC 9293) segments: header, flags, options and payload.

use std::fmt;
use std::ops::BitOr;

use crate::{
    check_room, read_u16, read_u32, write_u16, write_u32, Error, IpProtocol, Options, PseudoHeader,
    Result,
};

pub mod field {
    use crate::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Header length in 32-bit words (high nibble).
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Bytes of a header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// Option kinds (RFC 9293 3.2).
pub mod option {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
}

/// A maximum segment size option, as a SYN carries it.
pub fn mss_option(mss: u16) -> [u8; 4] {
    let [high, low] = mss.to_be_bytes();
    [option::MSS, 4, high, low]
}

/// The control bits of a segment.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: Flags = Flags(0x01);
    pub const SYN: Flags = Flags(0x02);
    pub const RST: Flags = Flags(0x04);
    pub const PSH: Flags = Flags(0x08);
    pub const ACK: Flags = Flags(0x10);
    pub const URG: Flags = Flags(0x20);
    pub const ECE: Flags = Flags(0x40);
    pub const CWR: Flags = Flags(0x80);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set.
    pub fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// Only the flags of `mask`.
    #[must_use]
    pub fn masked(self, mask: Flags) -> Flags {
        Flags(self.0 & mask.0)
    }
}

impl BitOr for Flags {
    type Output = Flags;

    fn bitor(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        let set: Vec<&str> = (0..8)
            .filter(|bit| self.0 & (1 << bit) != 0)
            .map(|bit| NAMES[bit])
            .collect();
        if set.is_empty() {
            f.write_str("Flags()")
        } else {
            write!(f, "Flags({})", set.join("|"))
        }
    }
}

crate::buffer_view! {
    /// A TCP segment in a buffer (the whole buffer: the checksum covers it).
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds the whole header, options included.
    ///
    /// # Errors
    /// [`Error::Truncated`] when it is cut short, [`Error::Malformed`] for a data offset
    /// below 5 words.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_room("TCP", len, HEADER_LEN)?;
        if self.header_len() < HEADER_LEN {
            return Err(Error::Malformed {
                layer: "TCP",
                reason: "data offset below 5 words",
            });
        }
        check_room("TCP", len, self.header_len())
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Bytes of the header, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }

    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn urgent_pointer(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// The options: the header's bytes after the fixed part.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Whether the checksum is right for the segment sent with `pseudo`'s addresses.
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> bool {
        pseudo.checksum(IpProtocol::TCP, self.buffer.as_ref()) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The data after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, value);
    }

    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, value);
    }

    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM, value);
    }

    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM, value);
    }

    /// Sets the header length, in bytes (a multiple of 4, from 20 to 60); the reserved
    /// bits are cleared.
    ///
    /// # Panics
    /// When `value` is beyond 60.
    pub fn set_header_len(&mut self, value: usize) {
        let words = crate::header_words(value);
        self.buffer.as_mut()[field::DATA_OFFSET] = words << 4;
    }

    pub fn set_flags(&mut self, value: Flags) {
        self.buffer.as_mut()[field::FLAGS] = value.0;
    }

    pub fn set_window_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    pub fn set_urgent_pointer(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, value);
    }

    /// The options, after the header length is set.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The data after the header, once its length is set.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes the checksum over the whole segment and `pseudo`, and writes it.
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader) {
        self.set_checksum(0);
        let sum = pseudo.checksum(IpProtocol::TCP, self.buffer.as_ref());
        self.set_checksum(sum);
    }
}

/// A TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: Flags,
    pub window_len: u16,
    pub urgent_pointer: u16,
    pub options: Options,
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// The segment `packet` (the checksum is not verified: see
    /// [`Packet::verify_checksum`]).
    ///
    /// # Errors
    /// As [`Packet::check_len`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_pointer: packet.urgent_pointer(),
            options: Options::new(packet.options())?,
            payload: packet.payload(),
        })
    }

    /// Bytes of the header, options included.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Bytes of the segment.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes the segment, payload and checksum (for `pseudo`'s addresses) included, into
    /// `packet`, which must be exactly [`Repr::buffer_len`] bytes (the checksum covers all).
    ///
    /// # Panics
    /// When `packet` is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        pseudo: &PseudoHeader,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(self.header_len());
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_pointer(self.urgent_pointer);
        packet
            .options_mut()
            .copy_from_slice(self.options.as_bytes());
        packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
        packet.fill_checksum(pseudo);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 11);
    const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

    /// 10.0.2.11:80 to 10.0.2.1:20000, PSH+ACK, "hello".
    const SEGMENT: [u8; 25] = [
        0x00, 0x50, 0x4e, 0x20, // ports
        0x00, 0x00, 0x13, 0x89, 0x00, 0x00, 0x03, 0xea, // sequence and acknowledgment
        0x50, 0x18, 0xfa, 0xf0, 0xf3, 0x15, 0x00, 0x00, // offset, flags, window, checksum
        b'h', b'e', b'l', b'l', b'o',
    ];

    fn pseudo() -> PseudoHeader {
        PseudoHeader::from((BACKEND, SNAT))
    }

    fn repr() -> Repr<'static> {
        Repr {
            src_port: 80,
            dst_port: 20000,
            seq_number: 5001,
            ack_number: 1002,
            flags: Flags::PSH | Flags::ACK,
            window_len: 64240,
            urgent_pointer: 0,
            options: Options::NONE,
            payload: b"hello",
        }
    }

    #[test]
    fn parses_fields_and_verifies_the_checksum() {
        let packet = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!((packet.src_port(), packet.dst_port()), (80, 20000));
        assert_eq!((packet.seq_number(), packet.ack_number()), (5001, 1002));
        assert_eq!(packet.header_len(), 20);
        assert!(packet.flags().contains(Flags::ACK));
        assert!(!packet
            .flags()
            .intersects(Flags::SYN | Flags::FIN | Flags::RST));
        assert_eq!(packet.checksum(), 0xf315);
        assert!(packet.verify_checksum(&pseudo()));
        assert!(!packet.verify_checksum(&PseudoHeader::from((BACKEND, BACKEND))));
        assert_eq!(packet.payload(), b"hello");
        assert_eq!(Repr::parse(&packet), Ok(repr()));
    }

    #[test]
    fn emits_the_same_bytes() {
        let mut bytes = [0xffu8; 25];
        repr().emit(&mut Packet::new_unchecked(&mut bytes[..]), &pseudo());
        assert_eq!(bytes, SEGMENT);
    }

    #[test]
    fn options_count_in_the_header_length() {
        let syn = Repr {
            flags: Flags::SYN,
            options: Options::new(&mss_option(1460)).unwrap(),
            payload: &[],
            ..repr()
        };
        assert_eq!(syn.buffer_len(), 24);
        let mut bytes = [0u8; 24];
        syn.emit(&mut Packet::new_unchecked(&mut bytes[..]), &pseudo());
        assert_eq!(bytes[12], 6 << 4, "data offset: 6 words");
        assert_eq!(&bytes[20..], &[2, 4, 0x05, 0xb4], "MSS 1460");
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum(&pseudo()));
        assert_eq!(Repr::parse(&packet), Ok(syn));
    }

    #[test]
    fn truncated_and_malformed_headers_are_refused() {
        for len in 0..HEADER_LEN {
            assert!(Packet::new_checked(&SEGMENT[..len]).is_err(), "{len} bytes");
        }
        let mut short_offset = SEGMENT;
        short_offset[12] = 0x40;
        assert!(matches!(
            Packet::new_checked(&short_offset[..]),
            Err(Error::Malformed { .. })
        ));
        let mut long_offset = SEGMENT;
        long_offset[12] = 0x70;
        assert_eq!(
            Packet::new_checked(&long_offset[..]),
            Err(Error::Truncated {
                layer: "TCP",
                needed: 28,
                len: 25
            })
        );
    }

    #[test]
    fn flags_print_by_name() {
        assert_eq!(format!("{:?}", Flags::SYN | Flags::ACK), "Flags(SYN|ACK)");
        assert_eq!(format!("{:?}", Flags::default()), "Flags()");
        assert_eq!(
            (Flags::FIN | Flags::ACK).masked(Flags::FIN | Flags::SYN),
            Flags::FIN
        );
    }
}
