//! ARP (RFC 826) for IPv4 over Ethernet, the only kind this crate reads: requests, replies
//! and the gratuitous announcements a new owner of an address sends.

use std::net::Ipv4Addr;

use crate::{check_room, read_u16, write_u16, Error, EtherType, MacAddr, Result};

pub mod field {
    use crate::Field;

    pub const HARDWARE_TYPE: Field = 0..2;
    pub const PROTOCOL_TYPE: Field = 2..4;
    pub const HARDWARE_LEN: usize = 4;
    pub const PROTOCOL_LEN: usize = 5;
    pub const OPERATION: Field = 6..8;
    pub const SOURCE_HARDWARE_ADDR: Field = 8..14;
    pub const SOURCE_PROTOCOL_ADDR: Field = 14..18;
    pub const TARGET_HARDWARE_ADDR: Field = 18..24;
    pub const TARGET_PROTOCOL_ADDR: Field = 24..28;
}

/// Bytes of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TARGET_PROTOCOL_ADDR.end;
/// The hardware type of Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

/// What an ARP packet asks or tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation(pub u16);

impl Operation {
    pub const REQUEST: Operation = Operation(1);
    pub const REPLY: Operation = Operation(2);
}

crate::buffer_view! {
    /// An ARP packet in a buffer.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the buffer holds a whole Ethernet/IPv4 ARP packet.
    ///
    /// # Errors
    /// [`Error::Truncated`] when it does not.
    pub fn check_len(&self) -> Result<()> {
        check_room("ARP", self.buffer.as_ref().len(), PACKET_LEN)
    }

    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HARDWARE_TYPE)
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::PROTOCOL_TYPE))
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HARDWARE_LEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL_LEN]
    }

    pub fn operation(&self) -> Operation {
        Operation(read_u16(self.buffer.as_ref(), field::OPERATION))
    }

    pub fn source_hardware_addr(&self) -> MacAddr {
        MacAddr(crate::array(
            &self.buffer.as_ref()[field::SOURCE_HARDWARE_ADDR],
        ))
    }

    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(crate::read_u32(
            self.buffer.as_ref(),
            field::SOURCE_PROTOCOL_ADDR,
        ))
    }

    pub fn target_hardware_addr(&self) -> MacAddr {
        MacAddr(crate::array(
            &self.buffer.as_ref()[field::TARGET_HARDWARE_ADDR],
        ))
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(crate::read_u32(
            self.buffer.as_ref(),
            field::TARGET_PROTOCOL_ADDR,
        ))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_hardware_type(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::HARDWARE_TYPE, value);
    }

    pub fn set_protocol_type(&mut self, value: EtherType) {
        write_u16(self.buffer.as_mut(), field::PROTOCOL_TYPE, value.0);
    }

    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HARDWARE_LEN] = value;
    }

    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL_LEN] = value;
    }

    pub fn set_operation(&mut self, value: Operation) {
        write_u16(self.buffer.as_mut(), field::OPERATION, value.0);
    }

    pub fn set_source_hardware_addr(&mut self, value: MacAddr) {
        self.buffer.as_mut()[field::SOURCE_HARDWARE_ADDR].copy_from_slice(&value.0);
    }

    pub fn set_source_protocol_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SOURCE_PROTOCOL_ADDR].copy_from_slice(&value.octets());
    }

    pub fn set_target_hardware_addr(&mut self, value: MacAddr) {
        self.buffer.as_mut()[field::TARGET_HARDWARE_ADDR].copy_from_slice(&value.0);
    }

    pub fn set_target_protocol_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::TARGET_PROTOCOL_ADDR].copy_from_slice(&value.octets());
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub operation: Operation,
    pub source_hardware_addr: MacAddr,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: MacAddr,
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// A gratuitous ARP request: `mac` announces that it now has `addr` (RFC 5227 3), so
    /// that neighbours update their caches.
    pub fn gratuitous(mac: MacAddr, addr: Ipv4Addr) -> Repr {
        Repr {
            operation: Operation::REQUEST,
            source_hardware_addr: mac,
            source_protocol_addr: addr,
            target_hardware_addr: MacAddr::default(),
            target_protocol_addr: addr,
        }
    }

    /// The ARP packet `packet`.
    ///
    /// # Errors
    /// [`Error::Truncated`] when it is cut short, [`Error::Malformed`] when it is not for
    /// IPv4 over Ethernet.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != EtherType::IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Malformed {
                layer: "ARP",
                reason: "not for IPv4 over Ethernet",
            });
        }
        Ok(Repr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    pub fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet.
    ///
    /// # Panics
    /// When `packet` is shorter than [`PACKET_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who has 10.0.100.1? Tell 10.0.1.2.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet, IPv4, request
        0x02, 0x00, 0x00, 0x00, 0x01, 0x02, 10, 0, 1, 2, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 100, 1, // target
    ];

    fn request() -> Repr {
        Repr {
            operation: Operation::REQUEST,
            source_hardware_addr: MacAddr([2, 0, 0, 0, 1, 2]),
            source_protocol_addr: Ipv4Addr::new(10, 0, 1, 2),
            target_hardware_addr: MacAddr::default(),
            target_protocol_addr: Ipv4Addr::new(10, 0, 100, 1),
        }
    }

    #[test]
    fn request_parses_and_emits() {
        let packet = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(packet.operation(), Operation::REQUEST);
        assert_eq!(packet.target_protocol_addr(), Ipv4Addr::new(10, 0, 100, 1));
        assert_eq!(Repr::parse(&packet), Ok(request()));
        let mut bytes = [0xffu8; PACKET_LEN];
        request().emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, REQUEST);
    }

    #[test]
    fn gratuitous_request_names_its_own_address_as_target() {
        let mac = MacAddr([2, 0, 0, 0, 1, 1]);
        let addr = Ipv4Addr::new(10, 0, 100, 1);
        let announce = Repr::gratuitous(mac, addr);
        let mut bytes = [0u8; PACKET_LEN];
        announce.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[14..18], &bytes[24..28], "sender and target address");
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bytes[..])),
            Ok(announce)
        );
    }

    #[test]
    fn truncated_or_foreign_packets_are_refused() {
        for len in 0..PACKET_LEN {
            assert!(Packet::new_checked(&REQUEST[..len]).is_err(), "{len} bytes");
        }
        let mut ipv6 = REQUEST;
        ipv6[2..4].copy_from_slice(&[0x86, 0xdd]);
        assert!(matches!(
            Repr::parse(&Packet::new_unchecked(&ipv6[..])),
            Err(Error::Malformed { .. })
        ));
    }
}
