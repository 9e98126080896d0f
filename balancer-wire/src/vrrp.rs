//! VRRP advertisements: version 2 (RFC 3768 section 5) and version 3 (RFC 9568 section 5.2,
//! which obsoletes RFC 5798), as keepalived 2.2.7 sends and accepts them.
//!
//! Unlike this crate's other protocols, [`Repr::parse`] verifies the checksum and every
//! field a receiver must check without configuration (RFC 9568 section 7.1, RFC 3768
//! section 7.1), and fails with the reason a caller counts ([`Error`]): a VRRP receiver
//! drops what fails them, and no kernel verifies a VRRP checksum over IPv4.
//!
//! What needs the instance's configuration or the IP layer is the caller's to check, before
//! an advertisement reaches the state machine:
//! - the IPv4 TTL or IPv6 hop limit is [`TTL`] (a router beyond the link cannot forge it);
//! - the VRID is configured on the receiving interface;
//! - the receiver is not the address owner (priority 255), which ignores advertisements;
//! - v2: the interval is the configured one (RFC 3768 drops the advertisement, v3 learns
//!   it), and the version is the instance's;
//! - optionally, that the addresses are the configured ones (keepalived only counts a
//!   mismatch).
//!
//! The address family is the IP layer's (RFC 9568 section 5.2: a Backup infers it from the
//! IP version), so a [`Packet`] is made with its [`Family`].

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::{checksum, read_u16, write_u16, Field, IpProtocol, MacAddr, PseudoHeader};

pub mod field {
    use crate::Field;

    /// Version (high 4 bits) and type (low 4 bits).
    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    /// How many addresses follow the header.
    pub const COUNT: usize = 3;
    /// v2: the authentication type.
    pub const AUTH_TYPE: usize = 4;
    /// v2: the advertisement interval in whole seconds.
    pub const ADVER_INT: usize = 5;
    /// v3: 4 reserved bits, then the maximum advertisement interval in centiseconds.
    pub const MAX_ADVER_INT: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    /// Where the addresses start; v2's authentication data follows them.
    pub const ADDRESSES: usize = 8;
}

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = field::ADDRESSES;
/// Bytes of v2's authentication data, after the addresses; zeros without authentication.
pub const AUTH_DATA_LEN: usize = 8;
/// The one message type (RFC 9568 section 5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// v2's authentication type 0, "no authentication", the only one RFC 3768 keeps.
pub const AUTH_NONE: u8 = 0;
/// v3's largest interval: a 12-bit count of centiseconds (40.95 s).
pub const MAX_ADVERT_INT_V3: u16 = 0x0fff;
/// The IPv4 destination of advertisements (RFC 9568 section 5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 destination of advertisements (RFC 9568 section 5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// VRRP's IP protocol number.
pub const IP_PROTOCOL: IpProtocol = IpProtocol::VRRP;
/// The IPv4 TTL or IPv6 hop limit advertisements are sent with, and must arrive with.
pub const TTL: u8 = 255;

/// The bits of the version and type byte.
const VERSION_SHIFT: u8 = 4;
const TYPE_MASK: u8 = 0x0f;

/// The IP version an advertisement travels on, which decides its addresses' width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// Bytes of one address.
    pub fn addr_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }

    /// Where advertisements go without unicast peers: [`MULTICAST_V4`] or [`MULTICAST_V6`].
    pub fn multicast_addr(self) -> IpAddr {
        match self {
            Family::Ipv4 => IpAddr::V4(MULTICAST_V4),
            Family::Ipv6 => IpAddr::V6(MULTICAST_V6),
        }
    }
}

impl From<&PseudoHeader> for Family {
    fn from(pseudo: &PseudoHeader) -> Family {
        match pseudo {
            PseudoHeader::V4 { .. } => Family::Ipv4,
            PseudoHeader::V6 { .. } => Family::Ipv6,
        }
    }
}

/// The virtual router's MAC address (RFC 9568 section 7.3): 00-00-5E-00-01-{VRID} for
/// IPv4, 00-00-5E-00-02-{VRID} for IPv6. keepalived uses it only with `use_vmac`.
pub fn virtual_mac(vrid: u8, family: Family) -> MacAddr {
    let kind = match family {
        Family::Ipv4 => 0x01,
        Family::Ipv6 => 0x02,
    };
    MacAddr([0x00, 0x00, 0x5e, 0x00, kind, vrid])
}

/// The protocol version: the two do not interoperate on one VRID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768: IPv4 only, the interval in whole seconds, 8 bytes of authentication
    /// data after the addresses, a checksum over the message only.
    V2,
    /// RFC 9568: IPv4 or IPv6, the interval in centiseconds, no authentication.
    V3,
}

impl Version {
    /// The version field's value.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }

    fn from_number(number: u8) -> Option<Version> {
        match number {
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }

    /// The interval field's unit.
    fn interval_unit(self) -> Duration {
        match self {
            Version::V2 => Duration::from_secs(1),
            Version::V3 => Duration::from_millis(10),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VRRPv{}", self.number())
    }
}

/// What a version 3 checksum over IPv4 covers. Over IPv6 it always covers the pseudo-header
/// (RFC 8200 section 8.1), and a v2 checksum never does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum V3Checksum {
    /// The IPv4 pseudo-header (source, the packet's own destination, protocol 112, the
    /// VRRP length) and the message: keepalived 2.2.7, which has no other way, and FRR 8.4.
    /// The default, for keepalived.
    #[default]
    PseudoHeader,
    /// The message only, as v2: RFC 9568, Cisco, Juniper, and keepalived's later
    /// `v3_checksum_as_v2`.
    Plain,
}

/// Why an advertisement is refused: one variant per reason a receiver counts (RFC 9568
/// section 7.1, RFC 3768 section 7.1; [`Error::reason`] names each for counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the fixed header, or before the addresses (and v2's
    /// authentication data) its count announces.
    #[error("VRRP: {len} bytes, {needed} needed")]
    Truncated { len: usize, needed: usize },
    /// Neither 2 nor 3, or 2 over IPv6 (version 2 carries IPv4 only).
    #[error("VRRP: version {0} is not 2 or 3 (v2 over IPv4 only)")]
    BadVersion(u8),
    /// Not an advertisement, the only type.
    #[error("VRRP: type {0} is not 1 (advertisement)")]
    BadType(u8),
    /// More bytes than the address count accounts for: the count is wrong or the IP
    /// layer's length is.
    #[error("VRRP: {len} bytes where {count} addresses make {expected}")]
    BadLength {
        len: usize,
        count: u8,
        expected: usize,
    },
    /// The checksum is wrong (for v3 over IPv4: with and without the pseudo-header).
    #[error("VRRP: bad checksum")]
    BadChecksum,
    /// v2 with an authentication type other than 0, "no authentication". keepalived's
    /// PASS (1) and AH (2) are refused: RFC 3768 removed authentication (it protected
    /// nothing), and a keepalived configured with either refuses unauthenticated adverts
    /// anyway, so counting this reason shows the mismatch.
    #[error("VRRP: authentication type {0} (only 0, none, is accepted)")]
    BadAuthType(u8),
    /// An interval of 0 seconds (v2) or centiseconds (v3): no router sends it.
    #[error("VRRP: advertisement interval 0")]
    ZeroInterval,
}

impl Error {
    /// A short, stable name per variant, for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Truncated { .. } => "truncated",
            Error::BadVersion(_) => "bad_version",
            Error::BadType(_) => "bad_type",
            Error::BadLength { .. } => "bad_length",
            Error::BadChecksum => "bad_checksum",
            Error::BadAuthType(_) => "bad_auth_type",
            Error::ZeroInterval => "zero_interval",
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The bytes of address `index` for `family`.
fn address_field(family: Family, index: usize) -> Field {
    let start = field::ADDRESSES + index * family.addr_len();
    start..start + family.addr_len()
}

/// Bytes of a message of `version` with `count` addresses of `family`.
fn message_len(version: Version, family: Family, count: usize) -> usize {
    let auth = match version {
        Version::V2 => AUTH_DATA_LEN,
        Version::V3 => 0,
    };
    HEADER_LEN + count * family.addr_len() + auth
}

/// A VRRP advertisement in a buffer (the IP payload), for the IP version it came on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    family: Family,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of `buffer`, unchecked: the getters panic where it is too short.
    pub fn new_unchecked(buffer: T, family: Family) -> Packet<T> {
        Packet { buffer, family }
    }

    /// A view of `buffer`, which [`Packet::check_len`] accepts.
    ///
    /// # Errors
    /// As [`Packet::check_len`].
    pub fn new_checked(buffer: T, family: Family) -> Result<Packet<T>> {
        let packet = Packet::new_unchecked(buffer, family);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The family the packet was made for.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether the buffer is exactly one message of a version this family carries.
    ///
    /// # Errors
    /// [`Error::Truncated`] when it ends before the fixed header or before the addresses
    /// (and v2's authentication data), [`Error::BadVersion`] for a version other than 3
    /// (or 2, over IPv4), [`Error::BadLength`] when it goes on after them.
    pub fn check_len(&self) -> Result<()> {
        self.checked_version_and_len().map(|_| ())
    }

    /// [`Packet::check_len`], which yields the version.
    fn checked_version_and_len(&self) -> Result<Version> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated {
                len,
                needed: HEADER_LEN,
            });
        }
        let version = self.checked_version()?;
        let expected = message_len(version, self.family, usize::from(self.addr_count()));
        match len.cmp(&expected) {
            Ordering::Less => Err(Error::Truncated {
                len,
                needed: expected,
            }),
            Ordering::Greater => Err(Error::BadLength {
                len,
                count: self.addr_count(),
                expected,
            }),
            Ordering::Equal => Ok(version),
        }
    }

    /// The version, if this family carries it.
    fn checked_version(&self) -> Result<Version> {
        let number = self.version();
        match Version::from_number(number) {
            Some(Version::V2) if self.family == Family::Ipv6 => Err(Error::BadVersion(number)),
            Some(version) => Ok(version),
            None => Err(Error::BadVersion(number)),
        }
    }

    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] >> VERSION_SHIFT
    }

    /// The type field.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] & TYPE_MASK
    }

    /// The virtual router identifier.
    pub fn vrid(&self) -> u8 {
        self.buffer.as_ref()[field::VRID]
    }

    pub fn priority(&self) -> u8 {
        self.buffer.as_ref()[field::PRIORITY]
    }

    /// The address count field.
    pub fn addr_count(&self) -> u8 {
        self.buffer.as_ref()[field::COUNT]
    }

    /// v2: the authentication type.
    pub fn auth_type(&self) -> u8 {
        self.buffer.as_ref()[field::AUTH_TYPE]
    }

    /// v2: the advertisement interval in whole seconds.
    pub fn advert_int_secs(&self) -> u8 {
        self.buffer.as_ref()[field::ADVER_INT]
    }

    /// v3: the maximum advertisement interval in centiseconds (the low 12 bits).
    pub fn max_advert_int(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::MAX_ADVER_INT) & MAX_ADVERT_INT_V3
    }

    /// v3: the 4 reserved bits before the interval (sent as 0, ignored on receipt).
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::MAX_ADVER_INT.start] >> 4
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Address `index` (below [`Packet::addr_count`]).
    pub fn address(&self, index: usize) -> IpAddr {
        let bytes = &self.buffer.as_ref()[address_field(self.family, index)];
        match self.family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::from(crate::array::<4>(bytes))),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(crate::array::<16>(bytes))),
        }
    }

    /// The addresses, as many as the count says.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        (0..usize::from(self.addr_count())).map(|index| self.address(index))
    }

    /// v2: the authentication data after the addresses.
    pub fn auth_data(&self) -> &[u8] {
        let start = address_field(self.family, usize::from(self.addr_count())).start;
        &self.buffer.as_ref()[start..start + AUTH_DATA_LEN]
    }

    /// Which checksum is right for the message sent with `pseudo`'s addresses, if one is:
    /// v2's is [`V3Checksum::Plain`], v3 over IPv6 [`V3Checksum::PseudoHeader`], v3 over
    /// IPv4 either, the pseudo-header tried first. Call it after [`Packet::check_len`].
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> Option<V3Checksum> {
        let message = self.buffer.as_ref();
        let covers = |kind: V3Checksum| match kind {
            V3Checksum::PseudoHeader => pseudo.checksum(IP_PROTOCOL, message) == 0,
            V3Checksum::Plain => checksum::checksum(message) == 0,
        };
        // Accepting both halves what the checksum catches on v3 over IPv4, which is the
        // price of talking to both camps.
        self.checksum_kinds()
            .iter()
            .copied()
            .find(|&kind| covers(kind))
    }

    /// The checksums this packet's version and family may carry, preferred first.
    fn checksum_kinds(&self) -> &'static [V3Checksum] {
        match (Version::from_number(self.version()), self.family) {
            (Some(Version::V3), Family::Ipv4) => &[V3Checksum::PseudoHeader, V3Checksum::Plain],
            (Some(Version::V3), Family::Ipv6) => &[V3Checksum::PseudoHeader],
            _ => &[V3Checksum::Plain],
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version_type(&mut self, version: Version, msg_type: u8) {
        self.buffer.as_mut()[field::VER_TYPE] =
            (version.number() << VERSION_SHIFT) | (msg_type & TYPE_MASK);
    }

    pub fn set_vrid(&mut self, value: u8) {
        self.buffer.as_mut()[field::VRID] = value;
    }

    pub fn set_priority(&mut self, value: u8) {
        self.buffer.as_mut()[field::PRIORITY] = value;
    }

    pub fn set_addr_count(&mut self, value: u8) {
        self.buffer.as_mut()[field::COUNT] = value;
    }

    /// v2: sets the authentication type.
    pub fn set_auth_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::AUTH_TYPE] = value;
    }

    /// v2: sets the advertisement interval in whole seconds.
    pub fn set_advert_int_secs(&mut self, value: u8) {
        self.buffer.as_mut()[field::ADVER_INT] = value;
    }

    /// v3: sets the maximum advertisement interval in centiseconds, and the reserved bits
    /// to 0.
    ///
    /// # Panics
    /// When `value` is beyond [`MAX_ADVERT_INT_V3`].
    pub fn set_max_advert_int(&mut self, value: u16) {
        assert!(
            value <= MAX_ADVERT_INT_V3,
            "a v3 interval of {value} cs is beyond 12 bits"
        );
        write_u16(self.buffer.as_mut(), field::MAX_ADVER_INT, value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets address `index`.
    ///
    /// # Panics
    /// When `value` is not of the packet's family.
    pub fn set_address(&mut self, index: usize, value: IpAddr) {
        let range = address_field(self.family, index);
        let bytes = &mut self.buffer.as_mut()[range];
        match value {
            IpAddr::V4(addr) if bytes.len() == 4 => bytes.copy_from_slice(&addr.octets()),
            IpAddr::V6(addr) if bytes.len() == 16 => bytes.copy_from_slice(&addr.octets()),
            _ => panic!("address {value} in a packet of the other family"),
        }
    }

    /// v2: the authentication data after the addresses, once the count is set.
    pub fn auth_data_mut(&mut self) -> &mut [u8] {
        let start = address_field(self.family, usize::from(self.addr_count())).start;
        &mut self.buffer.as_mut()[start..start + AUTH_DATA_LEN]
    }

    /// Computes the checksum over the whole buffer, the message, and writes it: `kind`
    /// for v3 over IPv4, whatever the version and family require otherwise.
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader, kind: V3Checksum) {
        let kind = match self.checksum_kinds() {
            [only] => *only,
            _ => kind,
        };
        self.set_checksum(0);
        let message = self.buffer.as_ref();
        let sum = match kind {
            V3Checksum::PseudoHeader => pseudo.checksum(IP_PROTOCOL, message),
            V3Checksum::Plain => checksum::checksum(message),
        };
        self.set_checksum(sum);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The virtual addresses an advertisement carries, all of one family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Addresses {
    V4(Vec<Ipv4Addr>),
    V6(Vec<Ipv6Addr>),
}

impl Addresses {
    /// `addrs` as addresses of `family`, or the first that is not of it.
    ///
    /// # Errors
    /// The first address of the other family.
    pub fn of_family(
        family: Family,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) -> std::result::Result<Addresses, IpAddr> {
        let mut addresses = match family {
            Family::Ipv4 => Addresses::V4(Vec::new()),
            Family::Ipv6 => Addresses::V6(Vec::new()),
        };
        for addr in addrs {
            match (&mut addresses, addr) {
                (Addresses::V4(list), IpAddr::V4(addr)) => list.push(addr),
                (Addresses::V6(list), IpAddr::V6(addr)) => list.push(addr),
                _ => return Err(addr),
            }
        }
        Ok(addresses)
    }

    pub fn family(&self) -> Family {
        match self {
            Addresses::V4(_) => Family::Ipv4,
            Addresses::V6(_) => Family::Ipv6,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Addresses::V4(list) => list.len(),
            Addresses::V6(list) => list.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        (0..self.len()).map(move |index| match self {
            Addresses::V4(list) => IpAddr::V4(list[index]),
            Addresses::V6(list) => IpAddr::V6(list[index]),
        })
    }
}

impl From<Vec<Ipv4Addr>> for Addresses {
    fn from(list: Vec<Ipv4Addr>) -> Self {
        Addresses::V4(list)
    }
}

impl From<Vec<Ipv6Addr>> for Addresses {
    fn from(list: Vec<Ipv6Addr>) -> Self {
        Addresses::V6(list)
    }
}

/// A valid advertisement.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub version: Version,
    pub vrid: u8,
    /// 0 (the Master resigns), 1..=254, or 255 (the address owner).
    pub priority: u8,
    /// The interval in the version's unit, as [`Packet`] carries it: v2 whole seconds
    /// (1..=255), v3 centiseconds (1..=[`MAX_ADVERT_INT_V3`]). [`Repr::interval`] is the
    /// duration.
    pub advert_int: u16,
    /// Their family is the packet's. keepalived sends none under `no_virtual_ipaddress`,
    /// which RFC 9568's minimum of one does not allow but receivers accept.
    pub addresses: Addresses,
}

impl Repr {
    /// The advertisement in `packet`, which came with `pseudo`'s addresses (of the
    /// packet's family: the IP header's source and destination), and which checksum it
    /// carries.
    ///
    /// # Errors
    /// As [`Packet::check_len`]; then [`Error::BadChecksum`], [`Error::BadType`],
    /// [`Error::BadAuthType`] (v2) and [`Error::ZeroInterval`], checked in that order (the
    /// checksum first, so that a corrupted byte is reported as such).
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        pseudo: &PseudoHeader,
    ) -> Result<(Repr, V3Checksum)> {
        let version = packet.checked_version_and_len()?;
        let kind = packet.verify_checksum(pseudo).ok_or(Error::BadChecksum)?;
        if packet.msg_type() != TYPE_ADVERTISEMENT {
            return Err(Error::BadType(packet.msg_type()));
        }
        let advert_int = match version {
            Version::V2 if packet.auth_type() != AUTH_NONE => {
                return Err(Error::BadAuthType(packet.auth_type()));
            }
            Version::V2 => u16::from(packet.advert_int_secs()),
            Version::V3 => packet.max_advert_int(),
        };
        if advert_int == 0 {
            return Err(Error::ZeroInterval);
        }
        let addresses = Addresses::of_family(packet.family(), packet.addresses())
            .expect("a packet's addresses are of its family");
        let repr = Repr {
            version,
            vrid: packet.vrid(),
            priority: packet.priority(),
            advert_int,
            addresses,
        };
        Ok((repr, kind))
    }

    /// The interval as a duration.
    pub fn interval(&self) -> Duration {
        self.version.interval_unit() * u32::from(self.advert_int)
    }

    /// Bytes of the message.
    pub fn buffer_len(&self) -> usize {
        message_len(self.version, self.addresses.family(), self.addresses.len())
    }

    /// Writes the message, with the checksum for `pseudo`'s addresses (the IP header's
    /// source and destination, unicast peer or group): `checksum` for v3 over IPv4, what
    /// the version and family require otherwise. `packet` must be exactly
    /// [`Repr::buffer_len`] bytes (the checksum covers all) of the addresses' family.
    ///
    /// # Panics
    /// When `packet` is not [`Repr::buffer_len`] bytes, it or `pseudo` is not of the
    /// addresses' family, for v2 over IPv6, more than 255 addresses, or an interval beyond
    /// the version's field (255 s for v2, [`MAX_ADVERT_INT_V3`] cs for v3).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        pseudo: &PseudoHeader,
        checksum: V3Checksum,
    ) {
        let family = self.addresses.family();
        assert_eq!(packet.family(), family, "a packet of the addresses' family");
        assert_eq!(
            Family::from(pseudo),
            family,
            "IP addresses of the addresses' family"
        );
        assert!(
            !(self.version == Version::V2 && family == Family::Ipv6),
            "VRRPv2 carries IPv4 only"
        );
        assert_eq!(
            packet.as_ref().len(),
            self.buffer_len(),
            "a buffer of the message's length"
        );
        let count = u8::try_from(self.addresses.len()).expect("at most 255 addresses");
        packet.set_version_type(self.version, TYPE_ADVERTISEMENT);
        packet.set_vrid(self.vrid);
        packet.set_priority(self.priority);
        packet.set_addr_count(count);
        match self.version {
            Version::V2 => {
                packet.set_auth_type(AUTH_NONE);
                packet.set_advert_int_secs(
                    u8::try_from(self.advert_int).expect("a v2 interval of at most 255 s"),
                );
            }
            Version::V3 => packet.set_max_advert_int(self.advert_int),
        }
        for (index, addr) in self.addresses.iter().enumerate() {
            packet.set_address(index, addr);
        }
        if self.version == Version::V2 {
            packet.auth_data_mut().fill(0);
        }
        packet.fill_checksum(pseudo, checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ipv4, ipv6};

    // Advertisements keepalived 2.2.7 (Debian 12) sent from a veth in a private namespace,
    // captured with `tcpdump -xx`, Ethernet headers left out: each is the IP packet as
    // received. The sender is 10.0.0.1 (or fe80::3468:7cff:fe07:1ff1), the unicast peer
    // 10.0.0.2; each run ended with SIGTERM, whose priority 0 advert is the second of a pair.

    /// `vrrp_version 2`, VRID 51, priority 150, `advert_int 1`, 10.0.0.100 and .101.
    const V2_MULTICAST: [u8; 44] = [
        0x45, 0xc0, 0x00, 0x2c, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x8d, // IPv4..
        0x0a, 0x00, 0x00, 0x01, 0xe0, 0x00, 0x00, 0x12, // ..10.0.0.1 > 224.0.0.18
        0x21, 0x33, 0x96, 0x02, 0x00, 0x01, 0x34, 0x00, // v2, VRID, prio, count, auth, int
        0x0a, 0x00, 0x00, 0x64, 0x0a, 0x00, 0x00, 0x65, // addresses
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // authentication data
    ];
    /// The same instance stopping: priority 0.
    const V2_MULTICAST_RESIGN: [u8; 44] = [
        0x45, 0xc0, 0x00, 0x2c, 0x00, 0x04, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x8a, //
        0x0a, 0x00, 0x00, 0x01, 0xe0, 0x00, 0x00, 0x12, //
        0x21, 0x33, 0x00, 0x02, 0x00, 0x01, 0xca, 0x00, //
        0x0a, 0x00, 0x00, 0x64, 0x0a, 0x00, 0x00, 0x65, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    /// `vrrp_version 3`, VRID 52, priority 200, `advert_int 1` (100 cs), 10.0.0.100 and
    /// .101; the checksum covers the IPv4 pseudo-header.
    const V3_MULTICAST: [u8; 36] = [
        0x45, 0xc0, 0x00, 0x24, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x95, //
        0x0a, 0x00, 0x00, 0x01, 0xe0, 0x00, 0x00, 0x12, //
        0x31, 0x34, 0xc8, 0x02, 0x00, 0x64, 0x07, 0x08, // v3, VRID, prio, count, int, sum
        0x0a, 0x00, 0x00, 0x64, 0x0a, 0x00, 0x00, 0x65,
    ];
    const V3_MULTICAST_RESIGN: [u8; 36] = [
        0x45, 0xc0, 0x00, 0x24, 0x00, 0x04, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x92, //
        0x0a, 0x00, 0x00, 0x01, 0xe0, 0x00, 0x00, 0x12, //
        0x31, 0x34, 0x00, 0x02, 0x00, 0x64, 0xcf, 0x08, //
        0x0a, 0x00, 0x00, 0x64, 0x0a, 0x00, 0x00, 0x65,
    ];
    /// `vrrp_version 3`, VRID 53, priority 120, `advert_int 0.5` (50 cs), `unicast_peer
    /// 10.0.0.2`: the pseudo-header names the peer.
    const V3_UNICAST: [u8; 32] = [
        0x45, 0xc0, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xa6, 0xaa, //
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, // 10.0.0.1 > 10.0.0.2
        0x31, 0x35, 0x78, 0x01, 0x00, 0x32, 0x37, 0xb4, //
        0x0a, 0x00, 0x00, 0x64,
    ];
    const V3_UNICAST_RESIGN: [u8; 32] = [
        0x45, 0xc0, 0x00, 0x20, 0x00, 0x0c, 0x00, 0x00, 0xff, 0x70, 0xa6, 0x9f, //
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, //
        0x31, 0x35, 0x00, 0x01, 0x00, 0x32, 0xaf, 0xb4, //
        0x0a, 0x00, 0x00, 0x64,
    ];
    /// `vrrp_version 2`, VRID 54, priority 100, `advert_int 2`, `unicast_peer 10.0.0.2`.
    const V2_UNICAST: [u8; 40] = [
        0x45, 0xc0, 0x00, 0x28, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xa6, 0xa2, //
        0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, //
        0x21, 0x36, 0x64, 0x01, 0x00, 0x02, 0x70, 0x62, //
        0x0a, 0x00, 0x00, 0x64, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    /// IPv6 (so version 3), VRID 55, priority 254, `advert_int 1`, `fd00::100` and
    /// `fd00::101`, from the link-local address to `ff02::12`.
    const V3_IPV6: [u8; 80] = [
        0x6c, 0x01, 0xcf, 0xd4, 0x00, 0x28, 0x70, 0xff, // IPv6, 40 bytes, VRRP, hop limit
        0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x34, 0x68, 0x7c, 0xff, 0xfe, 0x07, 0x1f, 0xf1, //
        0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, //
        0x31, 0x37, 0xfe, 0x02, 0x00, 0x64, 0x06, 0xd0, //
        0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, //
        0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01,
    ];
    const V3_IPV6_RESIGN: [u8; 80] = [
        0x6c, 0x01, 0xcf, 0xd4, 0x00, 0x28, 0x70, 0xff, //
        0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x34, 0x68, 0x7c, 0xff, 0xfe, 0x07, 0x1f, 0xf1, //
        0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, //
        0x31, 0x37, 0x00, 0x02, 0x00, 0x64, 0x04, 0xd1, //
        0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, //
        0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01,
    ];
    /// `vrrp_version 2` with `auth_type PASS`, `auth_pass secret1`: VRID 56, priority 200,
    /// refused for its authentication type.
    const V2_PASS: [u8; 40] = [
        0x45, 0xc0, 0x00, 0x28, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x91, //
        0x0a, 0x00, 0x00, 0x01, 0xe0, 0x00, 0x00, 0x12, //
        0x21, 0x38, 0xc8, 0x01, 0x01, 0x01, 0x9e, 0x14, // auth type 1 (PASS)
        0x0a, 0x00, 0x00, 0x64, //
        b's', b'e', b'c', b'r', b'e', b't', b'1', 0x00,
    ];

    /// A captured advertisement and what it must parse to.
    struct Fixture {
        what: &'static str,
        ip: &'static [u8],
        repr: Repr,
        checksum: V3Checksum,
    }

    fn v4(last: &[u8]) -> Addresses {
        Addresses::V4(last.iter().map(|&b| Ipv4Addr::new(10, 0, 0, b)).collect())
    }

    fn fixture(
        what: &'static str,
        ip: &'static [u8],
        version: Version,
        (vrid, priority, advert_int): (u8, u8, u16),
        addresses: Addresses,
    ) -> Fixture {
        let checksum = match version {
            Version::V2 => V3Checksum::Plain,
            Version::V3 => V3Checksum::PseudoHeader,
        };
        Fixture {
            what,
            ip,
            repr: Repr {
                version,
                vrid,
                priority,
                advert_int,
                addresses,
            },
            checksum,
        }
    }

    #[rustfmt::skip] // one fixture a line
    fn fixtures() -> Vec<Fixture> {
        use Version::{V2, V3};
        let both = || v4(&[100, 101]);
        let v6 = || Addresses::V6(vec!["fd00::100".parse().unwrap(), "fd00::101".parse().unwrap()]);
        vec![
            fixture("v2 multicast", &V2_MULTICAST, V2, (51, 150, 1), both()),
            fixture("v2 multicast, resign", &V2_MULTICAST_RESIGN, V2, (51, 0, 1), both()),
            fixture("v3 multicast", &V3_MULTICAST, V3, (52, 200, 100), both()),
            fixture("v3 multicast, resign", &V3_MULTICAST_RESIGN, V3, (52, 0, 100), both()),
            fixture("v3 unicast", &V3_UNICAST, V3, (53, 120, 50), v4(&[100])),
            fixture("v3 unicast, resign", &V3_UNICAST_RESIGN, V3, (53, 0, 50), v4(&[100])),
            fixture("v2 unicast", &V2_UNICAST, V2, (54, 100, 2), v4(&[100])),
            fixture("v3 IPv6", &V3_IPV6, V3, (55, 254, 100), v6()),
            fixture("v3 IPv6, resign", &V3_IPV6_RESIGN, V3, (55, 0, 100), v6()),
        ]
    }

    /// The VRRP message of an IP packet, its family, its pseudo-header and its TTL or hop
    /// limit, as the socket layer finds them.
    fn unwrap_ip(ip: &[u8]) -> (&[u8], Family, PseudoHeader, u8) {
        if ip[0] >> 4 == 4 {
            let packet = ipv4::Packet::new_checked(ip).unwrap();
            assert_eq!(packet.protocol(), IP_PROTOCOL);
            assert!(packet.verify_checksum());
            (
                packet.payload(),
                Family::Ipv4,
                packet.pseudo_header(),
                packet.ttl(),
            )
        } else {
            let packet = ipv6::Packet::new_checked(ip).unwrap();
            assert_eq!(packet.next_header(), IP_PROTOCOL);
            (
                packet.payload(),
                Family::Ipv6,
                packet.pseudo_header(),
                packet.hop_limit(),
            )
        }
    }

    fn parse(message: &[u8], family: Family, pseudo: &PseudoHeader) -> Result<(Repr, V3Checksum)> {
        Repr::parse(&Packet::new_checked(message, family)?, pseudo)
    }

    fn emit(repr: &Repr, pseudo: &PseudoHeader, checksum: V3Checksum) -> Vec<u8> {
        let mut bytes = vec![0xa5; repr.buffer_len()];
        let mut packet = Packet::new_unchecked(&mut bytes[..], repr.addresses.family());
        repr.emit(&mut packet, pseudo, checksum);
        bytes
    }

    /// Rewrites the checksum of `message` after a test changed a field.
    fn refill(message: &mut [u8], family: Family, pseudo: &PseudoHeader, kind: V3Checksum) {
        Packet::new_unchecked(message, family).fill_checksum(pseudo, kind);
    }

    #[test]
    fn keepalived_adverts_parse_to_their_fields() {
        for fixture in fixtures() {
            let what = fixture.what;
            let (message, family, pseudo, ttl) = unwrap_ip(fixture.ip);
            assert_eq!(ttl, TTL, "{what}");
            let packet = Packet::new_checked(message, family).unwrap();
            assert_eq!(packet.version(), fixture.repr.version.number(), "{what}");
            assert_eq!(packet.msg_type(), TYPE_ADVERTISEMENT, "{what}");
            assert_eq!(packet.vrid(), fixture.repr.vrid, "{what}");
            assert_eq!(
                packet.verify_checksum(&pseudo),
                Some(fixture.checksum),
                "{what}"
            );
            assert!(
                packet.addresses().eq(fixture.repr.addresses.iter()),
                "{what}"
            );
            if fixture.repr.version == Version::V2 {
                assert_eq!(packet.auth_type(), AUTH_NONE, "{what}");
                assert_eq!(packet.auth_data(), &[0; AUTH_DATA_LEN], "{what}");
            } else {
                assert_eq!(packet.reserved(), 0, "{what}");
            }
            let parsed = Repr::parse(&packet, &pseudo);
            assert_eq!(parsed, Ok((fixture.repr, fixture.checksum)), "{what}");
        }
    }

    #[test]
    fn intervals_are_durations_in_the_versions_unit() {
        let [v2, _, v3, _, v3_unicast, ..] = &fixtures()[..] else {
            unreachable!("the fixtures are listed above")
        };
        assert_eq!(v2.repr.interval(), Duration::from_secs(1));
        assert_eq!(v3.repr.interval(), Duration::from_secs(1));
        assert_eq!(v3_unicast.repr.interval(), Duration::from_millis(500));
    }

    #[test]
    fn keepalived_adverts_are_emitted_byte_for_byte() {
        for fixture in fixtures() {
            let (message, _, pseudo, _) = unwrap_ip(fixture.ip);
            assert_eq!(fixture.repr.buffer_len(), message.len(), "{}", fixture.what);
            let bytes = emit(&fixture.repr, &pseudo, fixture.checksum);
            assert_eq!(bytes, message, "{}", fixture.what);
        }
    }

    #[test]
    fn truncated_or_padded_adverts_are_refused() {
        for fixture in fixtures() {
            let what = fixture.what;
            let (message, family, pseudo, _) = unwrap_ip(fixture.ip);
            for len in 0..message.len() {
                let needed = if len < HEADER_LEN {
                    HEADER_LEN
                } else {
                    message.len()
                };
                assert_eq!(
                    parse(&message[..len], family, &pseudo),
                    Err(Error::Truncated { len, needed }),
                    "{what}: {len} bytes"
                );
            }
            let mut longer = message.to_vec();
            longer.push(0);
            assert_eq!(
                parse(&longer, family, &pseudo),
                Err(Error::BadLength {
                    len: message.len() + 1,
                    count: u8::try_from(fixture.repr.addresses.len()).unwrap(),
                    expected: message.len(),
                }),
                "{what}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_refused_and_most_fail_the_checksum() {
        for fixture in fixtures() {
            let (message, family, pseudo, _) = unwrap_ip(fixture.ip);
            for bit in 0..message.len() * 8 {
                let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
                let mut flipped = message.to_vec();
                flipped[byte] ^= mask;
                let result = parse(&flipped, family, &pseudo);
                // The version and the count decide the length, so they fail before it.
                let structural =
                    (byte == field::VER_TYPE && mask > TYPE_MASK) || byte == field::COUNT;
                if structural {
                    assert!(result.is_err(), "{}: bit {bit}", fixture.what);
                } else {
                    assert_eq!(
                        result,
                        Err(Error::BadChecksum),
                        "{}: bit {bit}",
                        fixture.what
                    );
                }
            }
        }
    }

    #[test]
    fn keepalived_password_authentication_is_refused() {
        let (message, family, pseudo, _) = unwrap_ip(&V2_PASS);
        let packet = Packet::new_checked(message, family).unwrap();
        assert_eq!(packet.verify_checksum(&pseudo), Some(V3Checksum::Plain));
        assert_eq!(packet.auth_data(), b"secret1\0");
        assert_eq!(Repr::parse(&packet, &pseudo), Err(Error::BadAuthType(1)));
    }

    fn pseudo_v4(dst: Ipv4Addr) -> PseudoHeader {
        PseudoHeader::from((Ipv4Addr::new(10, 0, 1, 11), dst))
    }

    fn pseudo_v6() -> PseudoHeader {
        PseudoHeader::from(("fe80::1".parse::<Ipv6Addr>().unwrap(), MULTICAST_V6))
    }

    #[test]
    fn reprs_round_trip_in_every_version_family_and_checksum() {
        let v4_addresses = Addresses::V4(vec![
            Ipv4Addr::new(10, 0, 1, 100),
            Ipv4Addr::new(10, 0, 2, 1),
        ]);
        let v6_addresses = Addresses::V6(vec!["fd00::100".parse().unwrap()]);
        let unicast = pseudo_v4(Ipv4Addr::new(10, 0, 1, 12));
        let multicast = pseudo_v4(MULTICAST_V4);
        let cases = [
            (
                Version::V2,
                1,
                v4_addresses.clone(),
                multicast,
                V3Checksum::Plain,
                V3Checksum::Plain,
            ),
            // v2 has one checksum whatever is asked.
            (
                Version::V2,
                255,
                v4_addresses.clone(),
                unicast,
                V3Checksum::PseudoHeader,
                V3Checksum::Plain,
            ),
            (
                Version::V3,
                100,
                v4_addresses.clone(),
                multicast,
                V3Checksum::PseudoHeader,
                V3Checksum::PseudoHeader,
            ),
            (
                Version::V3,
                1,
                v4_addresses.clone(),
                unicast,
                V3Checksum::PseudoHeader,
                V3Checksum::PseudoHeader,
            ),
            (
                Version::V3,
                MAX_ADVERT_INT_V3,
                v4_addresses.clone(),
                multicast,
                V3Checksum::Plain,
                V3Checksum::Plain,
            ),
            (
                Version::V3,
                7,
                v4_addresses,
                unicast,
                V3Checksum::Plain,
                V3Checksum::Plain,
            ),
            (
                Version::V3,
                100,
                v6_addresses.clone(),
                pseudo_v6(),
                V3Checksum::PseudoHeader,
                V3Checksum::PseudoHeader,
            ),
            // IPv6 always has the pseudo-header.
            (
                Version::V3,
                100,
                v6_addresses,
                pseudo_v6(),
                V3Checksum::Plain,
                V3Checksum::PseudoHeader,
            ),
        ];
        for (version, advert_int, addresses, pseudo, asked, written) in cases {
            let repr = Repr {
                version,
                vrid: 7,
                priority: 100,
                advert_int,
                addresses,
            };
            let bytes = emit(&repr, &pseudo, asked);
            let case = format!("{version} {asked:?} {pseudo:?}");
            assert_eq!(
                parse(&bytes, repr.addresses.family(), &pseudo),
                Ok((repr, written)),
                "{case}"
            );
            // What was written is what verifies: the plain sum of a pseudo-header checksum
            // is off by the pseudo-header's sum, which none of these is zero.
            assert_eq!(
                checksum::checksum(&bytes) == 0,
                written == V3Checksum::Plain,
                "{case}"
            );
        }
    }

    #[test]
    fn a_v3_checksum_needs_the_addresses_it_was_sent_with() {
        let repr = Repr {
            version: Version::V3,
            vrid: 1,
            priority: 100,
            advert_int: 100,
            addresses: v4(&[100]),
        };
        let sent = pseudo_v4(Ipv4Addr::new(10, 0, 1, 12));
        let bytes = emit(&repr, &sent, V3Checksum::PseudoHeader);
        // keepalived before its unicast checksum fix used the group in the pseudo-header.
        let group = pseudo_v4(MULTICAST_V4);
        assert_eq!(parse(&bytes, Family::Ipv4, &group), Err(Error::BadChecksum));
        // A plain checksum does not depend on them.
        let bytes = emit(&repr, &sent, V3Checksum::Plain);
        assert_eq!(
            parse(&bytes, Family::Ipv4, &group),
            Ok((repr, V3Checksum::Plain))
        );
    }

    #[test]
    fn fields_a_receiver_must_check_are_refused() {
        // Each field changed in a keepalived advert of the version, its checksum rewritten.
        type Change = fn(&mut [u8]);
        let changed = |version: Version, change: Change| {
            let ip: &[u8] = match version {
                Version::V2 => &V2_MULTICAST,
                Version::V3 => &V3_MULTICAST,
            };
            let (message, family, pseudo, _) = unwrap_ip(ip);
            let mut bytes = message.to_vec();
            change(&mut bytes);
            refill(&mut bytes, family, &pseudo, V3Checksum::PseudoHeader);
            parse(&bytes, family, &pseudo)
        };
        let cases: [(Version, Change, Error); 7] = [
            (Version::V3, |b| b[0] = 0x32, Error::BadType(2)),
            (Version::V3, |b| b[0] = 0x30, Error::BadType(0)),
            (Version::V3, |b| b[0] = 0x41, Error::BadVersion(4)),
            (Version::V3, |b| b[0] = 0x11, Error::BadVersion(1)),
            (Version::V3, |b| b[4..6].fill(0), Error::ZeroInterval),
            (Version::V2, |b| b[5] = 0, Error::ZeroInterval),
            (Version::V2, |b| b[4] = 2, Error::BadAuthType(2)),
        ];
        for (index, (version, change, error)) in cases.into_iter().enumerate() {
            assert_eq!(changed(version, change), Err(error), "case {index}");
        }
        // Reserved bits are ignored on receipt.
        let (repr, _) = changed(Version::V3, |b| b[4] |= 0xf0).unwrap();
        assert_eq!(repr.advert_int, 100);
        // v2 cannot travel on IPv6.
        let mut v2_on_v6 = unwrap_ip(&V2_MULTICAST).0.to_vec();
        v2_on_v6.resize(HEADER_LEN + 2 * 16 + AUTH_DATA_LEN, 0);
        assert_eq!(
            Packet::new_checked(&v2_on_v6[..], Family::Ipv6).map(|_| ()),
            Err(Error::BadVersion(2))
        );
    }

    #[test]
    fn an_advert_without_addresses_is_accepted() {
        // keepalived sends these under `no_virtual_ipaddress`, and accepts them.
        let repr = Repr {
            version: Version::V3,
            vrid: 9,
            priority: 100,
            advert_int: 100,
            addresses: Addresses::V4(Vec::new()),
        };
        let pseudo = pseudo_v4(MULTICAST_V4);
        let bytes = emit(&repr, &pseudo, V3Checksum::PseudoHeader);
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(
            parse(&bytes, Family::Ipv4, &pseudo),
            Ok((repr, V3Checksum::PseudoHeader))
        );
    }

    #[test]
    fn constants_and_virtual_macs() {
        assert_eq!(IP_PROTOCOL, IpProtocol(112));
        assert_eq!(MULTICAST_V4.to_string(), "224.0.0.18");
        assert_eq!(MULTICAST_V6.to_string(), "ff02::12");
        assert_eq!(Family::Ipv6.multicast_addr(), IpAddr::V6(MULTICAST_V6));
        assert_eq!(Family::of(IpAddr::V4(MULTICAST_V4)), Family::Ipv4);
        assert_eq!(
            virtual_mac(51, Family::Ipv4).to_string(),
            "00:00:5e:00:01:33"
        );
        assert_eq!(
            virtual_mac(255, Family::Ipv6).to_string(),
            "00:00:5e:00:02:ff"
        );
        assert_eq!(V3Checksum::default(), V3Checksum::PseudoHeader);
    }

    #[test]
    fn addresses_are_of_one_family() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let v6 = IpAddr::V6(MULTICAST_V6);
        let addresses = Addresses::of_family(Family::Ipv4, [v4, v4]).unwrap();
        assert_eq!((addresses.family(), addresses.len()), (Family::Ipv4, 2));
        assert!(addresses.iter().all(|addr| addr == v4));
        assert_eq!(Addresses::of_family(Family::Ipv4, [v4, v6]), Err(v6));
        assert!(Addresses::of_family(Family::Ipv6, []).unwrap().is_empty());
    }

    #[test]
    fn every_reason_has_its_own_name() {
        let errors = [
            Error::Truncated { len: 0, needed: 8 },
            Error::BadVersion(4),
            Error::BadType(2),
            Error::BadLength {
                len: 9,
                count: 0,
                expected: 8,
            },
            Error::BadChecksum,
            Error::BadAuthType(1),
            Error::ZeroInterval,
        ];
        let mut names: Vec<_> = errors.iter().map(Error::reason).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), errors.len());
        assert_eq!(
            Error::BadAuthType(1).to_string(),
            "VRRP: authentication type 1 (only 0, none, is accepted)"
        );
    }

    /// xorshift64: reproducible noise without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    /// Parses `bytes` as both families; whatever parses must emit and parse back the same.
    fn parse_never_panics(bytes: &[u8], pseudos: &[PseudoHeader; 2]) -> usize {
        let mut parsed = 0;
        for (family, pseudo) in [Family::Ipv4, Family::Ipv6].into_iter().zip(pseudos) {
            let packet = Packet::new_unchecked(bytes, family);
            if let Ok((repr, kind)) = Repr::parse(&packet, pseudo) {
                let again = emit(&repr, pseudo, kind);
                assert_eq!(
                    parse(&again, family, pseudo),
                    Ok((repr, kind)),
                    "{bytes:02x?}"
                );
                parsed += 1;
            }
        }
        parsed
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let pseudos = [pseudo_v4(MULTICAST_V4), pseudo_v6()];
        let mut parsed = 0;
        for _ in 0..20_000 {
            let mut bytes: Vec<u8> = (0..noise.below(72)).map(|_| noise.byte()).collect();
            // Half of them look like an advertisement up to the checksum, so that the
            // checks past the length are reached too.
            if bytes.len() >= HEADER_LEN && noise.below(2) == 0 {
                let family = [Family::Ipv4, Family::Ipv6][noise.below(2)];
                let version = [Version::V2, Version::V3][noise.below(2)];
                bytes[field::VER_TYPE] = (version.number() << 4) | [1, 1, 1, 2][noise.below(4)];
                let count = noise.below(4);
                bytes[field::COUNT] = u8::try_from(count).unwrap();
                bytes.resize(message_len(version, family, count), 0);
                let kind = [V3Checksum::PseudoHeader, V3Checksum::Plain][noise.below(2)];
                let pseudo = &pseudos[usize::from(family == Family::Ipv6)];
                refill(&mut bytes, family, pseudo, kind);
            }
            parsed += parse_never_panics(&bytes, &pseudos);
        }
        assert!(
            parsed > 1000,
            "only {parsed} random advertisements were valid"
        );
    }

    #[test]
    fn mangled_keepalived_adverts_never_panic() {
        let mut noise = Noise(0x2545_f491_4f6c_dd1d);
        for fixture in fixtures() {
            let (message, _, pseudo, _) = unwrap_ip(fixture.ip);
            let pseudos = match pseudo {
                PseudoHeader::V4 { .. } => [pseudo, pseudo_v6()],
                PseudoHeader::V6 { .. } => [pseudo_v4(MULTICAST_V4), pseudo],
            };
            for _ in 0..2_000 {
                let mut bytes = message.to_vec();
                for _ in 0..=noise.below(3) {
                    let at = noise.below(bytes.len());
                    bytes[at] = noise.byte();
                }
                bytes.truncate(bytes.len() - noise.below(3));
                parse_never_panics(&bytes, &pseudos);
            }
        }
    }
}
