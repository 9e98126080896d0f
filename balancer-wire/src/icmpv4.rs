//! ICMP for IPv4 (RFC 792): echo messages and errors, whose data quotes the start of the
//! datagram they are about (its IPv4 header and at least 8 bytes: ports, for TCP and UDP).

use crate::{check_room, checksum, ipv4, read_u16, read_u32, write_u32, Error, Result};

pub mod field {
    use crate::Field;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    /// The rest of the header: its meaning depends on the type.
    pub const REST: Field = 4..8;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ_NO: Field = 6..8;
    /// The next hop's MTU in a "fragmentation needed" (RFC 1191).
    pub const NEXT_HOP_MTU: Field = 6..8;
}

/// Bytes of the header.
pub const HEADER_LEN: usize = field::REST.end;
/// Bytes of the datagram after its IPv4 header that an error quotes at least.
pub const QUOTED_PAYLOAD_LEN: usize = 8;

/// A message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Message(pub u8);

impl Message {
    pub const ECHO_REPLY: Message = Message(0);
    pub const DST_UNREACHABLE: Message = Message(3);
    pub const REDIRECT: Message = Message(5);
    pub const ECHO_REQUEST: Message = Message(8);
    pub const TIME_EXCEEDED: Message = Message(11);
    pub const PARAM_PROBLEM: Message = Message(12);

    /// Whether the message is an error about a datagram, which it quotes.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Message::DST_UNREACHABLE
                | Message::REDIRECT
                | Message::TIME_EXCEEDED
                | Message::PARAM_PROBLEM
        )
    }
}

/// Codes of [`Message::DST_UNREACHABLE`] (RFC 792, RFC 1122 3.2.2.1, RFC 1812 5.2.7.1).
pub mod unreachable {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    pub const FRAG_NEEDED: u8 = 4;
    pub const SOURCE_ROUTE_FAILED: u8 = 5;
    pub const NET_UNKNOWN: u8 = 6;
    pub const HOST_UNKNOWN: u8 = 7;
    pub const SOURCE_HOST_ISOLATED: u8 = 8;
    pub const NET_PROHIBITED: u8 = 9;
    pub const HOST_PROHIBITED: u8 = 10;
    pub const NET_TOS: u8 = 11;
    pub const HOST_TOS: u8 = 12;
    pub const COMM_PROHIBITED: u8 = 13;
    pub const HOST_PRECEDENCE: u8 = 14;
    pub const PRECEDENCE_CUTOFF: u8 = 15;
}

/// Codes of [`Message::TIME_EXCEEDED`].
pub mod time_exceeded {
    pub const TTL: u8 = 0;
    pub const REASSEMBLY: u8 = 1;
}

crate::buffer_view! {
    /// An ICMP message in a buffer (the whole buffer: the checksum covers it).
    Packet
}

/// What an error quotes: the datagram's IPv4 header, and what followed it (at least
/// [`QUOTED_PAYLOAD_LEN`] bytes: a TCP or UDP header's ports, TCP's sequence number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote<'a> {
    pub header: ipv4::Packet<&'a [u8]>,
    pub payload: &'a [u8],
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds the whole header.
    ///
    /// # Errors
    /// [`Error::Truncated`] when it does not.
    pub fn check_len(&self) -> Result<()> {
        check_room("ICMP", self.buffer.as_ref().len(), HEADER_LEN)
    }

    pub fn msg_type(&self) -> Message {
        Message(self.buffer.as_ref()[field::TYPE])
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The header's last four bytes, whatever the type makes of them.
    pub fn rest(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::REST)
    }

    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQ_NO)
    }

    /// The next hop's MTU, in a "fragmentation needed" (0 from routers older than RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// Whether the checksum (over the whole message) is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// What follows the header: an echo's data, or an error's quote.
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// An error's quote.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the message is not an error, or as
    /// [`ipv4::Packet::check_header`] when the quote has no whole IPv4 header, and
    /// [`Error::Truncated`] when fewer than [`QUOTED_PAYLOAD_LEN`] bytes follow it (within
    /// the quoted datagram's total length).
    pub fn quote(&self) -> Result<Quote<'a>> {
        if !self.msg_type().is_error() {
            return Err(Error::Malformed {
                layer: "ICMP",
                reason: "not an error message",
            });
        }
        let header = ipv4::Packet::new_header_checked(self.data())?;
        let payload = header.payload();
        check_room("ICMP quote", payload.len(), QUOTED_PAYLOAD_LEN)?;
        Ok(Quote { header, payload })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, value: Message) {
        self.buffer.as_mut()[field::TYPE] = value.0;
    }

    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        crate::write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    pub fn set_rest(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::REST, value);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes the checksum over the whole message and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(sum);
    }
}

/// An ICMP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr<'a> {
    pub msg_type: Message,
    pub code: u8,
    /// The header's last four bytes: an echo's identifier and sequence number, the next
    /// hop's MTU of a "fragmentation needed" (low 16 bits), a parameter problem's pointer
    /// (high 8 bits), or unused (0).
    pub rest: u32,
    /// An echo's data, or an error's quote.
    pub data: &'a [u8],
}

impl<'a> Repr<'a> {
    /// The message `packet` (the checksum is not verified: see
    /// [`Packet::verify_checksum`]).
    ///
    /// # Errors
    /// [`Error::Truncated`] when the header is cut short, and for an error, as
    /// [`Packet::quote`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        if packet.msg_type().is_error() {
            packet.quote()?;
        }
        Ok(Repr {
            msg_type: packet.msg_type(),
            code: packet.code(),
            rest: packet.rest(),
            data: packet.data(),
        })
    }

    /// Bytes of the message.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }

    /// Writes the message, with its checksum, into `packet`, which must be exactly
    /// [`Repr::buffer_len`] bytes (the checksum covers all).
    ///
    /// # Panics
    /// When `packet` is not [`Repr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_msg_type(self.msg_type);
        packet.set_code(self.code);
        packet.set_rest(self.rest);
        packet.data_mut().copy_from_slice(self.data);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::IpProtocol;

    /// A "fragmentation needed" (MTU 1400) quoting a TCP SYN's IPv4 header and 8 bytes.
    const FRAG_NEEDED: [u8; 36] = [
        0x03, 0x04, 0xbd, 0x55, 0x00, 0x00, 0x05, 0x78, // type, code, checksum, MTU
        0x45, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x24, 0xc1, // quoted..
        10, 0, 0, 1, 10, 0, 2, 11, // ..IPv4 header
        0x9c, 0x40, 0x00, 0x50, 0xde, 0xad, 0xbe, 0xef, // ports, sequence number
    ];

    /// An echo request, identifier 0x1234, sequence number 1, "ping".
    const ECHO: [u8; 12] = [
        0x08, 0x00, 0x06, 0xfa, 0x12, 0x34, 0x00, 0x01, b'p', b'i', b'n', b'g',
    ];

    #[test]
    fn an_error_parses_with_its_quote() {
        let packet = Packet::new_checked(&FRAG_NEEDED[..]).unwrap();
        assert_eq!(packet.msg_type(), Message::DST_UNREACHABLE);
        assert_eq!(packet.code(), unreachable::FRAG_NEEDED);
        assert_eq!(packet.next_hop_mtu(), 1400);
        assert!(packet.verify_checksum());
        let quote = packet.quote().unwrap();
        assert_eq!(quote.header.protocol(), IpProtocol::TCP);
        assert_eq!(quote.header.dst_addr(), Ipv4Addr::new(10, 0, 2, 11));
        assert_eq!(quote.payload, &FRAG_NEEDED[28..]);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr {
                msg_type: Message::DST_UNREACHABLE,
                code: unreachable::FRAG_NEEDED,
                rest: 1400,
                data: &FRAG_NEEDED[8..],
            }
        );
        let mut bytes = [0u8; 36];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, FRAG_NEEDED);
    }

    #[test]
    fn an_echo_parses_and_emits() {
        let packet = Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!((packet.echo_ident(), packet.echo_seq_no()), (0x1234, 1));
        assert!(packet.verify_checksum());
        assert!(packet.quote().is_err(), "an echo quotes nothing");
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            (repr.msg_type, repr.data),
            (Message::ECHO_REQUEST, &b"ping"[..])
        );
        let mut bytes = [0u8; 12];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, ECHO);
    }

    #[test]
    fn short_messages_and_quotes_are_refused() {
        for len in 0..HEADER_LEN {
            assert!(Packet::new_checked(&ECHO[..len]).is_err(), "{len} bytes");
        }
        // A quote must hold the IPv4 header and 8 bytes after it.
        for len in HEADER_LEN..FRAG_NEEDED.len() {
            let packet = Packet::new_checked(&FRAG_NEEDED[..len]).unwrap();
            assert!(packet.quote().is_err(), "{len} bytes");
            assert!(Repr::parse(&packet).is_err(), "{len} bytes");
        }
        let mut bad_checksum = ECHO;
        bad_checksum[11] ^= 1;
        assert!(!Packet::new_checked(&bad_checksum[..])
            .unwrap()
            .verify_checksum());
    }
}
