//! What the IP layers share: the protocol numbers of their payloads, and the options an
//! IPv4 or TCP header carries.

use std::fmt;

use crate::{Error, Result};

/// The protocol of an IP payload (IPv4's protocol field, IPv6's next header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    pub const ICMP: IpProtocol = IpProtocol(1);
    pub const TCP: IpProtocol = IpProtocol(6);
    pub const UDP: IpProtocol = IpProtocol(17);
    pub const ICMPV6: IpProtocol = IpProtocol(58);
    /// VRRP (RFC 9568).
    pub const VRRP: IpProtocol = IpProtocol(112);
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            IpProtocol::ICMP => "ICMP",
            IpProtocol::TCP => "TCP",
            IpProtocol::UDP => "UDP",
            IpProtocol::ICMPV6 => "ICMPv6",
            IpProtocol::VRRP => "VRRP",
            IpProtocol(other) => return write!(f, "protocol {other}"),
        };
        f.write_str(name)
    }
}

/// The options of an IPv4 or a TCP header: at most 40 bytes, a multiple of 4 (both headers
/// count their length in 32-bit words, so the sender pads them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Options {
    len: usize,
    bytes: [u8; Options::MAX_LEN],
}

impl Options {
    /// The longest options: a header of 15 32-bit words, 5 of them fixed.
    pub const MAX_LEN: usize = 40;
    pub const NONE: Options = Options {
        len: 0,
        bytes: [0; Options::MAX_LEN],
    };

    /// Options of these bytes (padding included).
    ///
    /// # Errors
    /// [`Error::Malformed`] for more than [`Options::MAX_LEN`] bytes or a length that is
    /// not a multiple of 4.
    pub fn new(bytes: &[u8]) -> Result<Options> {
        let reason = if bytes.len() > Options::MAX_LEN {
            "longer than 40 bytes"
        } else if !bytes.len().is_multiple_of(4) {
            "not padded to a multiple of 4 bytes"
        } else {
            let mut options = Options::NONE;
            options.bytes[..bytes.len()].copy_from_slice(bytes);
            options.len = bytes.len();
            return Ok(options);
        };
        Err(Error::Malformed {
            layer: "options",
            reason,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::NONE
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Options").field(&self.as_bytes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_whole_words_up_to_40_bytes() {
        let options = Options::new(&[1, 1, 1, 0]).unwrap();
        assert_eq!(options.as_bytes(), &[1, 1, 1, 0]);
        assert_eq!(options.len(), 4);
        assert!(Options::new(&[]).unwrap().is_empty());
        assert_eq!(Options::new(&[1; 40]).unwrap().len(), 40);
        assert!(Options::new(&[1; 3]).is_err());
        assert!(Options::new(&[1; 44]).is_err());
        assert_eq!(Options::default(), Options::NONE);
    }

    #[test]
    fn protocols_have_names() {
        assert_eq!(IpProtocol::VRRP.to_string(), "VRRP");
        assert_eq!(IpProtocol(250).to_string(), "protocol 250");
    }
}
