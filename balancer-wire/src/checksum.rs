//! The Internet checksum (RFC 1071), and the IPv4 and IPv6 pseudo-headers that TCP, UDP
//! (and VRRP) add to it.
//!
//! A header's checksum field holds the complement of the one's-complement sum of the bytes
//! it covers, computed with the field zero; over the same bytes with the field in place,
//! [`checksum`] is then zero, which is how a receiver verifies it.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::IpProtocol;

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last byte padded
/// with a zero byte), folded to 16 bits.
pub fn sum(data: &[u8]) -> u16 {
    let mut words = data.chunks_exact(2);
    // 64 bits: no carry is lost before the fold, whatever the length.
    let mut acc: u64 = (&mut words)
        .map(|word| u64::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

/// The one's-complement sum of partial sums, each of a part starting at an even offset.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().copied().map(u64::from).sum())
}

/// The Internet checksum of `data`: what a checksum field holds, or zero when `data`
/// holds a valid checksum field.
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).expect("folded to 16 bits")
}

/// The addresses of the IP header a transport checksum covers, with the protocol and
/// length of its payload (RFC 9293 3.1 for IPv4, RFC 8200 8.1 for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PseudoHeader {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl PseudoHeader {
    /// The sum of the pseudo-header of a `protocol` payload of `len` bytes.
    ///
    /// # Panics
    /// When `len` does not fit the pseudo-header's length field (16 bits for IPv4, 32 for
    /// IPv6): no datagram is that long.
    pub fn sum(&self, protocol: IpProtocol, len: usize) -> u16 {
        match self {
            PseudoHeader::V4 { src, dst } => {
                let mut header = [0u8; 12];
                header[..4].copy_from_slice(&src.octets());
                header[4..8].copy_from_slice(&dst.octets());
                header[9] = protocol.0;
                header[10..].copy_from_slice(&crate::len16(len).to_be_bytes());
                sum(&header)
            }
            PseudoHeader::V6 { src, dst } => {
                let len = u32::try_from(len).expect("an IPv6 payload below 4 GiB");
                let mut header = [0u8; 40];
                header[..16].copy_from_slice(&src.octets());
                header[16..32].copy_from_slice(&dst.octets());
                header[32..36].copy_from_slice(&len.to_be_bytes());
                header[39] = protocol.0;
                sum(&header)
            }
        }
    }

    /// The checksum of `segment` of `protocol` under this pseudo-header: what its checksum
    /// field holds (computed with the field zero), or zero when the field is right.
    pub fn checksum(&self, protocol: IpProtocol, segment: &[u8]) -> u16 {
        !combine(&[self.sum(protocol, segment.len()), sum(segment)])
    }
}

impl From<(Ipv4Addr, Ipv4Addr)> for PseudoHeader {
    fn from((src, dst): (Ipv4Addr, Ipv4Addr)) -> Self {
        PseudoHeader::V4 { src, dst }
    }
}

impl From<(Ipv6Addr, Ipv6Addr)> for PseudoHeader {
    fn from((src, dst): (Ipv6Addr, Ipv6Addr)) -> Self {
        PseudoHeader::V6 { src, dst }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: these bytes sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        // The sum does not depend on how the data is split at even offsets.
        assert_eq!(combine(&[sum(&data[..2]), sum(&data[2..])]), 0xddf2);
        // An odd last byte is padded with a zero byte.
        assert_eq!(sum(&[0x01]), 0x0100);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn carries_wrap_around() {
        assert_eq!(sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        // More words than a 32-bit accumulator of 16-bit words could hold without a fold.
        assert_eq!(sum(&vec![0xff; 1 << 18]), 0xffff);
    }

    #[test]
    fn a_header_with_its_checksum_sums_to_zero() {
        // An IPv4 header (20 bytes) with its checksum, b861, in place.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0);
        let mut zeroed = header;
        zeroed[10..12].fill(0);
        assert_eq!(checksum(&zeroed), 0xb861);
    }

    #[test]
    fn pseudo_headers() {
        let v4 = PseudoHeader::from((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 2, 11)));
        // 0a00 + 0001 + 0a00 + 020b + 0006 + 0018.
        assert_eq!(v4.sum(IpProtocol::TCP, 24), 0x162a);
        let v6 = PseudoHeader::from((
            "fd00::1".parse::<Ipv6Addr>().unwrap(),
            "fd00::2".parse::<Ipv6Addr>().unwrap(),
        ));
        // fd00 + 0001 + fd00 + 0002, then the length's two words and the next header.
        assert_eq!(v6.sum(IpProtocol::UDP, 0x1_0008), 0xfa1e);
    }
}
