//! The configuration of VRRP instances (`[[vrrp]]`) and sync groups (`[[vrrp_sync_group]]`)
//! as the agent runs them: what the socket, address and notify layers need besides the state
//! machine's [`Config`] (the interface, the virtual addresses, the unicast peers, the v3
//! checksum, what each track watches, the notify command), and what the host must provide,
//! which only the agent can check at start ([`HostRequirement`]).
//!
//! The configuration file's validator builds these; this module knows nothing of the file.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::events::NotifyState;
use super::group::SyncGroup;
use super::params::{Config, ConfigError, Version};
use crate::spelling::config_words;

/// Where adverts go without unicast peers (RFC 9568 sections 5.1.1.2 and 5.1.2.2).
pub use balancer_wire::vrrp::{MULTICAST_V4, MULTICAST_V6};

/// One `[[vrrp]]` instance, validated, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// The state machine's parameters ([`Machine::new`](super::Machine::new) accepts them).
    /// `primary_address` is `unicast_source` when one is set; otherwise it is the unspecified
    /// address of the instance's family, a placeholder the agent replaces with the
    /// interface's primary address at start ([`HostCheck::PrimaryAddress`]).
    pub params: Config,
    /// The interface adverts are sent and received on and the addresses are added to.
    pub interface: String,
    /// The virtual addresses (keepalived's `virtual_ipaddress`): at least one, all of one
    /// family, in the order written (the order adverts list them in).
    pub addresses: Vec<VirtualAddress>,
    /// keepalived's `unicast_src_ip`: the source of unicast adverts (set only with peers).
    pub unicast_source: Option<IpAddr>,
    /// keepalived's `unicast_peer`: adverts go to each of these instead of the multicast
    /// group; empty for multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// How a v3 IPv4 advert's checksum is computed; see [`InstanceConfig::pseudo_header_checksum`].
    pub v3_checksum: V3Checksum,
    /// What each of `params.tracks` watches, in the same order: the index of
    /// [`Input::Track`](super::Input::Track) is an index into both.
    pub tracks: Vec<TrackTarget>,
    /// Run on every transition with keepalived's arguments (`INSTANCE name STATE priority`).
    pub notify: Option<NotifyCommand>,
    /// What the host must provide for this instance to run, which only the agent can check
    /// (at start; an error names the setting that needs it, as configuration errors do).
    pub host_requirements: Vec<HostRequirement>,
}

impl InstanceConfig {
    /// The instance's name (`params.name`).
    pub fn name(&self) -> &str {
        &self.params.name
    }

    /// Whether the instance is IPv6 (its addresses, and so its primary address, are).
    pub fn is_ipv6(&self) -> bool {
        self.params.primary_address.is_ipv6()
    }

    /// Where adverts are sent: each unicast peer, or the family's multicast group.
    pub fn destinations(&self) -> Vec<IpAddr> {
        if !self.unicast_peers.is_empty() {
            self.unicast_peers.clone()
        } else if self.is_ipv6() {
            vec![IpAddr::V6(MULTICAST_V6)]
        } else {
            vec![IpAddr::V4(MULTICAST_V4)]
        }
    }

    /// Whether the advert checksum covers the IP pseudo-header: never for v2 (RFC 3768
    /// section 5.3.8), always for v3 over IPv6 (RFC 9568 section 5.2.8), and for v3 over
    /// IPv4 as `v3_checksum` says. On receipt both v3 IPv4 forms are accepted whatever this
    /// says.
    pub fn pseudo_header_checksum(&self) -> bool {
        match self.params.version {
            Version::V2 => false,
            Version::V3 => self.is_ipv6() || self.v3_checksum == V3Checksum::PseudoHeader,
        }
    }
}

/// One `[[vrrp_sync_group]]`, validated: its members exist, and belong to no other group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupConfig {
    pub name: String,
    /// The names of its members, instances of the configuration, in the order written;
    /// member `i` of the [`SyncGroup`] that [`SyncGroupConfig::build`] returns is `instances[i]`.
    pub instances: Vec<String>,
    /// Run on every transition of the group with keepalived's arguments (`GROUP name STATE 0`).
    pub notify: Option<NotifyCommand>,
    /// keepalived's `sync_group_tracking_weight`: members may have weighted tracks (without
    /// it keepalived ignores them, so that the members keep equal priorities, and a weighted
    /// track of a member is refused here).
    pub tracking_weight: bool,
    /// What the host must provide for the group's own settings (its notify program).
    pub host_requirements: Vec<HostRequirement>,
}

impl SyncGroupConfig {
    /// The group's coordinator over the parameters of its members, found by name in
    /// `instances` (with their primary addresses as the agent resolved them), which must hold
    /// every member, as the validated configuration's do: a member it lacks is left out.
    ///
    /// # Errors
    /// What [`SyncGroup::new`] refuses (for a group left with no member, too).
    pub fn build(&self, instances: &[InstanceConfig]) -> Result<SyncGroup, ConfigError> {
        let members = self
            .instances
            .iter()
            .filter_map(|name| instances.iter().find(|i| i.name() == name))
            .map(|i| i.params.clone())
            .collect();
        SyncGroup::new(self.name.clone(), members, self.tracking_weight)
    }
}

/// A virtual address with its prefix length, as `ip addr add ADDRESS/PREFIX` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtualAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for VirtualAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// Why a string is not `ADDRESS/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtualAddressError {
    #[error("expected ADDRESS/PREFIX, e.g. \"10.0.1.100/24\" (/32 for a lone IPv4 address, /128 for IPv6)")]
    NoPrefix,
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    Address(String),
    #[error("prefix length {prefix:?} is not a number from 1 to {max}")]
    Prefix { prefix: String, max: u8 },
}

impl FromStr for VirtualAddress {
    type Err = VirtualAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = s.split_once('/').ok_or(VirtualAddressError::NoPrefix)?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| VirtualAddressError::Address(address.to_owned()))?;
        let max = if address.is_ipv6() { 128 } else { 32 };
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            // Only digits: u8's parser also takes a leading '+'.
            .filter(|p| (1..=max).contains(p) && prefix.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| VirtualAddressError::Prefix {
                prefix: prefix.to_owned(),
                max,
            })?;
        Ok(Self {
            address,
            prefix_len,
        })
    }
}

/// How a version 3 IPv4 advert's checksum is computed when sent (`v3_checksum`). keepalived
/// 2.2.7 and FRR include the IPv4 pseudo-header; RFC 9568 section 5.2.8 and Cisco do not
/// (keepalived 2.2.8's `v3_checksum_as_v2`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum V3Checksum {
    /// Over the pseudo-header and the VRRP message, as keepalived 2.2.7 does.
    #[default]
    PseudoHeader,
    /// Over the VRRP message only, as RFC 9568 and Cisco do.
    Plain,
}

config_words!(V3Checksum, "v3_checksum", "\"pseudo-header\" or \"plain\"", { PseudoHeader => "pseudo-header", Plain => "plain" });

/// What a track watches (an entry of `track`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrackTarget {
    /// Down while every backend of the VIP with this name is down (the health checks' view).
    Vip(String),
    /// Down while this interface's link is down (keepalived's `track_interface`).
    Interface(String),
    /// Down while the XDP program is not attached.
    DataPlane,
}

/// The track's name in transition reasons and status: `vip web`, `interface eth1`,
/// `data_plane`.
impl fmt::Display for TrackTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vip(name) => write!(f, "vip {name}"),
            Self::Interface(name) => write!(f, "interface {name}"),
            Self::DataPlane => f.write_str("data_plane"),
        }
    }
}

/// A notify command as keepalived runs one (`notify_script_init`, `alloc_strvec_quoted_escaped`
/// in keepalived 2.2.7): the string is split into words at whitespace, `'...'` and `"..."`
/// keep whitespace inside a word, a backslash takes the next character as it is; the first
/// word is the program, run directly (no shell) with the other words and then keepalived's
/// four arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyCommand {
    command: String,
    argv: Vec<String>,
}

/// Why a notify command cannot be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyCommandError {
    #[error("names no program: write the program to run and its arguments, e.g. \"/etc/balancer/notify.sh eth0\"")]
    Empty,
    #[error("has an opening {0} without its closing one")]
    UnmatchedQuote(char),
    #[error("ends with a backslash that escapes nothing")]
    TrailingBackslash,
    #[error("contains a NUL character, which no argument can hold")]
    Nul,
}

/// Whose transition a notify command reports: keepalived's first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifySubject {
    /// `INSTANCE name STATE priority`.
    Instance,
    /// `GROUP name STATE 0`: a group has no priority (`vrrp_notify.c`).
    Group,
}

impl NotifyCommand {
    /// Splits `command` into words.
    ///
    /// # Errors
    /// An empty command, an unclosed quote, a trailing backslash or a NUL.
    pub fn parse(command: &str) -> Result<Self, NotifyCommandError> {
        if command.contains('\0') {
            return Err(NotifyCommandError::Nul);
        }
        let mut argv = Vec::new();
        let mut word: Option<String> = None;
        let mut quote = None;
        let mut chars = command.chars();
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => {
                    let escaped = chars.next().ok_or(NotifyCommandError::TrailingBackslash)?;
                    word.get_or_insert_with(String::new).push(escaped);
                }
                (c, Some(q)) if c == q => quote = None,
                (c, None) if c.is_whitespace() => argv.extend(word.take()),
                ('"' | '\'', None) => {
                    quote = Some(c);
                    word.get_or_insert_with(String::new);
                }
                (c, _) => word.get_or_insert_with(String::new).push(c),
            }
        }
        if let Some(q) = quote {
            return Err(NotifyCommandError::UnmatchedQuote(q));
        }
        argv.extend(word);
        if argv.first().is_none_or(String::is_empty) {
            return Err(NotifyCommandError::Empty);
        }
        Ok(Self {
            command: command.to_owned(),
            argv,
        })
    }

    /// The command as written.
    pub fn as_str(&self) -> &str {
        &self.command
    }

    /// The program to run: the first word.
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// The words, the program first.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The full argument vector for one transition: the words, then keepalived's
    /// `INSTANCE|GROUP name STATE priority`.
    pub fn invocation(
        &self,
        subject: NotifySubject,
        name: &str,
        state: NotifyState,
        priority: u8,
    ) -> Vec<String> {
        let subject = match subject {
            NotifySubject::Instance => "INSTANCE",
            NotifySubject::Group => "GROUP",
        };
        let mut argv = self.argv.clone();
        argv.extend([
            subject.to_owned(),
            name.to_owned(),
            state.as_str().to_owned(),
            priority.to_string(),
        ]);
        argv
    }
}

/// Something the host must provide that the configuration file alone cannot show, with the
/// setting that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRequirement {
    /// `FILE:LINE:COLUMN: FIELD` of the setting, the prefix of the agent's error, as
    /// configuration errors show it (`balancer.toml:14:13: vrrp[0] ("vi_1").interface`).
    pub location: String,
    pub check: HostCheck,
}

/// The agent's checks at start, each saying what must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCheck {
    /// The interface exists.
    Interface { interface: String },
    /// The interface has an address to send adverts from, which the agent puts in
    /// `params.primary_address`: for IPv4 its primary address (keepalived's choice), for
    /// IPv6 its link-local address (RFC 9568 section 5.1.2.1). Only without `unicast_source`.
    PrimaryAddress { interface: String, ipv6: bool },
    /// `unicast_source` is an address of the interface.
    UnicastSource { interface: String, address: IpAddr },
    /// Priority 255 claims the address owner's role (RFC 9568 section 1.2): the interface
    /// already holds every virtual address as its own. Adding them on becoming Master then
    /// finds them present, which is not an error.
    Owner {
        interface: String,
        addresses: Vec<VirtualAddress>,
    },
    /// The notify program exists and is executable (keepalived checks it at load).
    Executable { program: String },
}

impl fmt::Display for HostRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.check)
    }
}

impl fmt::Display for HostCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interface { interface } => write!(f, "interface {interface:?} must exist"),
            Self::PrimaryAddress { interface, ipv6 } => write!(
                f,
                "interface {interface:?} needs {} to send adverts from (or set unicast_source)",
                if *ipv6 {
                    "an IPv6 link-local address"
                } else {
                    "an IPv4 address"
                }
            ),
            Self::UnicastSource { interface, address } => {
                write!(
                    f,
                    "unicast_source {address} must be an address of interface {interface:?}"
                )
            }
            Self::Owner {
                interface,
                addresses,
            } => {
                let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "priority 255 (the address owner) needs interface {interface:?} to hold {} \
                     already (use 254 or less otherwise)",
                    list.join(", ")
                )
            }
            Self::Executable { program } => {
                write!(f, "notify program {program:?} must exist and be executable")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::vrrp::Track;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn virtual_addresses_parse() {
        let a: VirtualAddress = "10.0.1.100/24".parse().unwrap();
        assert_eq!((a.address, a.prefix_len), (v4("10.0.1.100"), 24));
        assert_eq!(a.to_string(), "10.0.1.100/24");
        let b: VirtualAddress = "fd00::1/128".parse().unwrap();
        assert_eq!(b.to_string(), "fd00::1/128");
        for (text, err) in [
            ("10.0.1.100", VirtualAddressError::NoPrefix),
            ("10.0.1/24", VirtualAddressError::Address("10.0.1".into())),
            (
                "10.0.1.1/33",
                VirtualAddressError::Prefix {
                    prefix: "33".into(),
                    max: 32,
                },
            ),
            (
                "10.0.1.1/0",
                VirtualAddressError::Prefix {
                    prefix: "0".into(),
                    max: 32,
                },
            ),
            (
                "10.0.1.1/+8",
                VirtualAddressError::Prefix {
                    prefix: "+8".into(),
                    max: 32,
                },
            ),
            (
                "fd00::1/129",
                VirtualAddressError::Prefix {
                    prefix: "129".into(),
                    max: 128,
                },
            ),
        ] {
            assert_eq!(text.parse::<VirtualAddress>(), Err(err), "{text}");
        }
    }

    #[test]
    fn notify_commands_split_like_keepalived() {
        let words = |s: &str| NotifyCommand::parse(s).map(|c| c.argv().to_vec());
        assert_eq!(words("/bin/notify").unwrap(), ["/bin/notify"]);
        assert_eq!(
            words("  /bin/notify  a\t'b c' \"d 'e'\" f\\ g h\"i j\"k ''").unwrap(),
            ["/bin/notify", "a", "b c", "d 'e'", "f g", "hi jk", ""]
        );
        assert_eq!(words("/bin/x \\\"q").unwrap(), ["/bin/x", "\"q"]);
        assert_eq!(words(""), Err(NotifyCommandError::Empty));
        assert_eq!(words("   "), Err(NotifyCommandError::Empty));
        assert_eq!(words("'' x"), Err(NotifyCommandError::Empty));
        assert_eq!(
            words("/bin/x 'a"),
            Err(NotifyCommandError::UnmatchedQuote('\''))
        );
        assert_eq!(
            words("/bin/x a\\"),
            Err(NotifyCommandError::TrailingBackslash)
        );
        assert_eq!(words("/bin/x\0"), Err(NotifyCommandError::Nul));
        let command = NotifyCommand::parse("/etc/notify.sh 'lb pair'").unwrap();
        assert_eq!(command.as_str(), "/etc/notify.sh 'lb pair'");
        assert_eq!(command.program(), "/etc/notify.sh");
        assert_eq!(
            command.invocation(NotifySubject::Instance, "vi_1", NotifyState::Master, 150),
            [
                "/etc/notify.sh",
                "lb pair",
                "INSTANCE",
                "vi_1",
                "MASTER",
                "150"
            ]
        );
        assert_eq!(
            command.invocation(NotifySubject::Group, "g", NotifyState::Stop, 0),
            ["/etc/notify.sh", "lb pair", "GROUP", "g", "STOP", "0"]
        );
    }

    fn instance(primary: &str, version: Version) -> InstanceConfig {
        let mut params = Config::new("vi_1", 51, v4(primary));
        params.version = version;
        InstanceConfig {
            params,
            interface: "eth0".into(),
            addresses: vec![],
            unicast_source: None,
            unicast_peers: vec![],
            v3_checksum: V3Checksum::PseudoHeader,
            tracks: vec![],
            notify: None,
            host_requirements: vec![],
        }
    }

    #[test]
    fn destinations_and_checksums() {
        let mut i = instance("0.0.0.0", Version::V2);
        assert_eq!(i.destinations(), [IpAddr::V4(MULTICAST_V4)]);
        assert!(!i.pseudo_header_checksum());
        i.params.version = Version::V3;
        assert!(i.pseudo_header_checksum());
        i.v3_checksum = V3Checksum::Plain;
        assert!(!i.pseudo_header_checksum());
        i.unicast_peers = vec![v4("10.0.0.2"), v4("10.0.0.3")];
        assert_eq!(i.destinations(), [v4("10.0.0.2"), v4("10.0.0.3")]);

        let mut i6 = instance("::", Version::V3);
        i6.v3_checksum = V3Checksum::Plain;
        assert!(i6.is_ipv6());
        assert_eq!(i6.destinations(), [IpAddr::V6(MULTICAST_V6)]);
        assert!(i6.pseudo_header_checksum(), "IPv6 always has one");
        assert_eq!("PLAIN".parse(), Ok(V3Checksum::Plain));
        assert_eq!(V3Checksum::default().to_string(), "pseudo-header");
    }

    #[test]
    fn sync_groups_build_from_their_members() {
        let mut a = instance("10.0.0.1", Version::V2);
        a.params.name = "a".into();
        let mut b = a.clone();
        b.params.name = "b".into();
        b.params.tracks = vec![Track::weighted("vip web", -50)];
        let mut group = SyncGroupConfig {
            name: "g".into(),
            instances: vec!["b".into(), "a".into()],
            notify: None,
            tracking_weight: true,
            host_requirements: vec![],
        };
        let instances = [a, b];
        let built = group.build(&instances).unwrap();
        let names: Vec<&str> = built.members().iter().map(|m| &*m.config().name).collect();
        assert_eq!(names, ["b", "a"]);
        group.tracking_weight = false;
        assert!(matches!(
            group.build(&instances),
            Err(ConfigError::SyncGroupTrackWeight { .. })
        ));
        group.instances = vec!["c".into()];
        assert_eq!(
            group.build(&instances).unwrap_err(),
            ConfigError::EmptySyncGroup("g".into())
        );
        assert_eq!(instances[0].params.advert_interval, Duration::from_secs(1));
    }

    #[test]
    fn host_requirements_say_what_must_hold() {
        let requirement = HostRequirement {
            location: "balancer.toml:5:13: vrrp[0] (\"a\").priority".into(),
            check: HostCheck::Owner {
                interface: "eth0".into(),
                addresses: vec!["10.0.1.100/24".parse().unwrap()],
            },
        };
        assert_eq!(
            requirement.to_string(),
            "balancer.toml:5:13: vrrp[0] (\"a\").priority: priority 255 (the address owner) \
             needs interface \"eth0\" to hold 10.0.1.100/24 already (use 254 or less otherwise)"
        );
        let checks = [
            (
                HostCheck::Interface {
                    interface: "eth0".into(),
                },
                "interface \"eth0\" must exist",
            ),
            (
                HostCheck::PrimaryAddress {
                    interface: "eth0".into(),
                    ipv6: true,
                },
                "interface \"eth0\" needs an IPv6 link-local address to send adverts from",
            ),
            (
                HostCheck::UnicastSource {
                    interface: "eth0".into(),
                    address: v4("10.0.0.1"),
                },
                "unicast_source 10.0.0.1 must be an address of interface \"eth0\"",
            ),
            (
                HostCheck::Executable {
                    program: "/bin/n".into(),
                },
                "notify program \"/bin/n\" must exist and be executable",
            ),
        ];
        for (check, text) in checks {
            assert!(check.to_string().starts_with(text), "{check}");
        }
    }
}
