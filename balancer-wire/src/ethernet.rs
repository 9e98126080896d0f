//! Ethernet II frames, with at most one 802.1Q (or 802.1ad) tag.

use std::fmt;

use crate::{check_room, read_u16, write_u16, Result};

/// An Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }
}

/// The protocol of a frame's payload, or of the tag that follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const IPV4: EtherType = EtherType(0x0800);
    pub const ARP: EtherType = EtherType(0x0806);
    /// An 802.1Q (customer) VLAN tag follows.
    pub const VLAN: EtherType = EtherType(0x8100);
    pub const IPV6: EtherType = EtherType(0x86dd);
    /// An 802.1ad (service, "Q-in-Q") VLAN tag follows.
    pub const QINQ: EtherType = EtherType(0x88a8);

    /// Whether a VLAN tag follows rather than the payload.
    pub fn is_vlan_tag(self) -> bool {
        self == EtherType::VLAN || self == EtherType::QINQ
    }
}

pub mod field {
    use crate::Field;

    pub const DST_ADDR: Field = 0..6;
    pub const SRC_ADDR: Field = 6..12;
    /// The payload's ethertype, or a tag's protocol identifier (TPID).
    pub const ETHERTYPE: Field = 12..14;
    /// A tagged frame's tag control information: priority, drop eligibility, VLAN id.
    pub const TCI: Field = 14..16;
    /// A tagged frame's payload ethertype.
    pub const TAGGED_ETHERTYPE: Field = 16..18;
}

/// Bytes of an untagged header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;
/// Bytes of a header with one tag.
pub const TAGGED_HEADER_LEN: usize = field::TAGGED_ETHERTYPE.end;

/// One VLAN tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag {
    /// [`EtherType::VLAN`] or [`EtherType::QINQ`].
    pub tpid: EtherType,
    /// Tag control information.
    pub tci: u16,
}

impl VlanTag {
    /// An 802.1Q tag.
    pub fn dot1q(tci: u16) -> VlanTag {
        VlanTag {
            tpid: EtherType::VLAN,
            tci,
        }
    }

    /// The VLAN id: the TCI's low 12 bits.
    pub fn vid(self) -> u16 {
        self.tci & 0x0fff
    }

    /// The priority code point: the TCI's top 3 bits.
    pub fn pcp(self) -> u8 {
        self.tci.to_be_bytes()[0] >> 5
    }
}

crate::buffer_view! {
    /// An Ethernet frame in a buffer.
    Frame
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Whether the buffer holds the whole header (with its tag).
    ///
    /// # Errors
    /// [`crate::Error::Truncated`] when it does not.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        check_room("Ethernet", len, HEADER_LEN)?;
        check_room("Ethernet", len, self.header_len())
    }

    pub fn dst_addr(&self) -> MacAddr {
        MacAddr(crate::array(&self.buffer.as_ref()[field::DST_ADDR]))
    }

    pub fn src_addr(&self) -> MacAddr {
        MacAddr(crate::array(&self.buffer.as_ref()[field::SRC_ADDR]))
    }

    /// The ethertype field after the addresses: the payload's, or a tag's TPID.
    pub fn ethertype(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// The frame's VLAN tag, if it has one.
    pub fn vlan(&self) -> Option<VlanTag> {
        let tpid = self.ethertype();
        tpid.is_vlan_tag().then(|| VlanTag {
            tpid,
            tci: read_u16(self.buffer.as_ref(), field::TCI),
        })
    }

    /// The payload's ethertype (after the tag, if any).
    pub fn payload_ethertype(&self) -> EtherType {
        if self.ethertype().is_vlan_tag() {
            EtherType(read_u16(self.buffer.as_ref(), field::TAGGED_ETHERTYPE))
        } else {
            self.ethertype()
        }
    }

    pub fn header_len(&self) -> usize {
        if self.ethertype().is_vlan_tag() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// What follows the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, value: MacAddr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.0);
    }

    pub fn set_src_addr(&mut self, value: MacAddr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.0);
    }

    pub fn set_ethertype(&mut self, value: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, value.0);
    }

    /// Sets the tag's TCI (the ethertype field must name a tag).
    pub fn set_tci(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::TCI, value);
    }

    /// Sets the payload ethertype of a tagged frame.
    pub fn set_tagged_ethertype(&mut self, value: EtherType) {
        write_u16(self.buffer.as_mut(), field::TAGGED_ETHERTYPE, value.0);
    }

    /// What follows the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// An Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: MacAddr,
    pub dst_addr: MacAddr,
    pub vlan: Option<VlanTag>,
    /// The payload's ethertype.
    pub ethertype: EtherType,
}

impl Repr {
    /// The header of `frame`.
    ///
    /// # Errors
    /// [`crate::Error::Truncated`] when the header is cut short.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Repr> {
        frame.check_len()?;
        Ok(Repr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            vlan: frame.vlan(),
            ethertype: frame.payload_ethertype(),
        })
    }

    /// Bytes of the header.
    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Writes the header into `frame`, whose payload follows it.
    ///
    /// # Panics
    /// When `frame` is shorter than [`Repr::header_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        match self.vlan {
            Some(tag) => {
                frame.set_ethertype(tag.tpid);
                frame.set_tci(tag.tci);
                frame.set_tagged_ethertype(self.ethertype);
            }
            None => frame.set_ethertype(self.ethertype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// An untagged IPv4 frame's header and the first payload byte.
    const UNTAGGED: [u8; 15] = [
        0x02, 0x00, 0x00, 0x00, 0x02, 0x11, // destination
        0x02, 0x00, 0x00, 0x00, 0x02, 0x01, // source
        0x08, 0x00, // IPv4
        0x45,
    ];

    /// The same with an 802.1Q tag: priority 1, VLAN 100.
    const TAGGED: [u8; 19] = [
        0x02, 0x00, 0x00, 0x00, 0x02, 0x11, 0x02, 0x00, 0x00, 0x00, 0x02, 0x01, //
        0x81, 0x00, 0x20, 0x64, // 802.1Q, TCI
        0x08, 0x00, 0x45,
    ];

    fn repr(vlan: Option<VlanTag>) -> Repr {
        Repr {
            src_addr: MacAddr([2, 0, 0, 0, 2, 1]),
            dst_addr: MacAddr([2, 0, 0, 0, 2, 0x11]),
            vlan,
            ethertype: EtherType::IPV4,
        }
    }

    #[test]
    fn untagged_frame() {
        let frame = Frame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(frame.dst_addr().to_string(), "02:00:00:00:02:11");
        assert_eq!(frame.ethertype(), EtherType::IPV4);
        assert_eq!(frame.vlan(), None);
        assert_eq!(frame.payload(), &[0x45]);
        assert_eq!(Repr::parse(&frame), Ok(repr(None)));
        let mut bytes = [0u8; 15];
        bytes[14] = 0x45;
        repr(None).emit(&mut Frame::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, UNTAGGED);
    }

    #[test]
    fn tagged_frame() {
        let frame = Frame::new_checked(&TAGGED[..]).unwrap();
        let tag = frame.vlan().unwrap();
        assert_eq!((tag.tpid, tag.vid(), tag.pcp()), (EtherType::VLAN, 100, 1));
        assert_eq!(frame.payload_ethertype(), EtherType::IPV4);
        assert_eq!(frame.header_len(), TAGGED_HEADER_LEN);
        assert_eq!(frame.payload(), &[0x45]);
        let tagged = repr(Some(VlanTag::dot1q(0x2064)));
        assert_eq!(Repr::parse(&frame), Ok(tagged));
        let mut bytes = [0u8; 19];
        bytes[18] = 0x45;
        tagged.emit(&mut Frame::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, TAGGED);
        // 802.1ad tags are read the same way.
        let mut qinq = TAGGED;
        qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
        let tag = Frame::new_checked(&qinq[..]).unwrap().vlan().unwrap();
        assert_eq!(tag.tpid, EtherType::QINQ);
    }

    #[test]
    fn truncated_headers_are_refused() {
        for len in 0..HEADER_LEN {
            assert!(Frame::new_checked(&UNTAGGED[..len]).is_err(), "{len} bytes");
        }
        assert_eq!(
            Frame::new_checked(&TAGGED[..16]),
            Err(Error::Truncated {
                layer: "Ethernet",
                needed: 18,
                len: 16
            })
        );
    }
}
