//! Host-side packets: Ethernet (with one VLAN tag), ARP, IPv4, IPv6, TCP, UDP, ICMP for
//! IPv4, VRRP, the balancers' flow-sync datagrams (`sync`) and the Internet checksum, for
//! every part of the project but the XDP program.
//!
//! Modelled on smoltcp's `wire` module. Each protocol has
//!
//! * a `Packet<T: AsRef<[u8]>>` (a `Frame` for Ethernet) over a buffer: its field ranges
//!   are data (`field::SRC_ADDR` and so on), `new_checked` refuses a buffer shorter than
//!   what the header says it holds, getters read fields, setters (for `T: AsMut<[u8]>`)
//!   write them;
//! * a `Repr`, what the header means: `parse` validates a packet into one, `emit` writes
//!   one into a buffer of at least `buffer_len()` bytes (payloads of IP layers are written
//!   by the layer above, through `payload_mut`).
//!
//! `parse` checks structure, not checksums: a receiver behind the kernel's own checks does
//! not pay for them twice, and a test reports a wrong checksum as what it is. Every
//! checksum is computed by [`checksum`], the one implementation in the project (the XDP
//! program, `no_std` and BPF, keeps its own incremental updates).
//!
//! ```
//! use balancer_wire::{ipv4, tcp, IpProtocol, Options};
//! use std::net::Ipv4Addr;
//!
//! let segment = tcp::Repr {
//!     src_port: 40000,
//!     dst_port: 80,
//!     seq_number: 1000,
//!     ack_number: 0,
//!     flags: tcp::Flags::SYN,
//!     window_len: 64240,
//!     urgent_pointer: 0,
//!     options: Options::NONE,
//!     payload: &[],
//! };
//! let ip = ipv4::Repr {
//!     src_addr: Ipv4Addr::new(10, 0, 1, 2),
//!     dst_addr: Ipv4Addr::new(10, 0, 100, 1),
//!     protocol: IpProtocol::TCP,
//!     payload_len: segment.buffer_len(),
//!     ..ipv4::Repr::default()
//! };
//! let mut bytes = vec![0; ip.buffer_len()];
//! let mut packet = ipv4::Packet::new_unchecked(&mut bytes[..]);
//! ip.emit(&mut packet);
//! segment.emit(&mut tcp::Packet::new_unchecked(packet.payload_mut()), &ip.pseudo_header());
//!
//! let packet = ipv4::Packet::new_checked(&bytes[..]).unwrap();
//! assert!(packet.verify_checksum());
//! let parsed = tcp::Repr::parse(&tcp::Packet::new_checked(packet.payload()).unwrap()).unwrap();
//! assert_eq!(parsed, segment);
//! ```

/// Declares a protocol's view of a buffer, as smoltcp's are: the struct over `T:
/// AsRef<[u8]>`, `new_unchecked`, `new_checked` (by the protocol's own `check_len`),
/// `into_inner` and `AsRef<[u8]>`.
macro_rules! buffer_view {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// A view of `buffer`, unchecked: the getters panic where it is too short.
            pub fn new_unchecked(buffer: T) -> $name<T> {
                $name { buffer }
            }

            /// A view of `buffer`, which `check_len` accepts.
            ///
            /// # Errors
            /// As `check_len`.
            pub fn new_checked(buffer: T) -> crate::Result<$name<T>> {
                let view = $name::new_unchecked(buffer);
                view.check_len()?;
                Ok(view)
            }

            pub fn into_inner(self) -> T {
                self.buffer
            }
        }

        impl<T: AsRef<[u8]>> AsRef<[u8]> for $name<T> {
            fn as_ref(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }
    };
}
use buffer_view;

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod sync;
pub mod tcp;
pub mod udp;
pub mod vrrp;

pub use checksum::PseudoHeader;
pub use ethernet::{EtherType, MacAddr};
pub use ip::{IpProtocol, Options};

/// Why a buffer is not a packet of a protocol, or a packet not a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before what the header says it holds.
    #[error("{layer}: {len} bytes, {needed} needed")]
    Truncated {
        layer: &'static str,
        needed: usize,
        len: usize,
    },
    /// A field has a value the protocol does not allow (or this crate does not handle).
    #[error("{layer}: {reason}")]
    Malformed {
        layer: &'static str,
        reason: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The bytes of a field within its header.
type Field = std::ops::Range<usize>;

/// `Err(Truncated)` unless `len` bytes hold `needed`.
fn check_room(layer: &'static str, len: usize, needed: usize) -> Result<()> {
    if len < needed {
        Err(Error::Truncated { layer, needed, len })
    } else {
        Ok(())
    }
}

fn read_u16(data: &[u8], field: Field) -> u16 {
    u16::from_be_bytes(array(&data[field]))
}

fn read_u32(data: &[u8], field: Field) -> u32 {
    u32::from_be_bytes(array(&data[field]))
}

fn write_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

/// A field's bytes as an array (fields have their type's width by construction).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("a field of its type's width")
}

/// A header length in bytes as the 4-bit count of 32-bit words IPv4 and TCP headers hold.
///
/// # Panics
/// When `len` is beyond 60 bytes.
fn header_words(len: usize) -> u8 {
    u8::try_from(len / 4)
        .ok()
        .filter(|words| *words <= 0x0f)
        .expect("a header of at most 60 bytes")
}

/// A length for a 16-bit length field.
///
/// # Panics
/// When `len` does not fit: a datagram cannot be that long.
fn len16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or_else(|_| panic!("a length of {len} bytes in a 16-bit field"))
}
