//! The vocabulary of a VRRP instance: its states, the inputs it takes, the actions it asks
//! for, why it moved, and what it counts.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::Instant;

/// The protocol states (RFC 9568 section 6.3, where Master is called Active) and
/// keepalived's FAULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or shut down.
    Initialize,
    Backup,
    Master,
    /// keepalived's FAULT: a tracked condition with weight 0 is down; no adverts, no
    /// addresses, adverts ignored.
    Fault,
}

impl State {
    /// keepalived's words, as `balancer status` shows them.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initialize => "INIT",
            Self::Backup => "BACKUP",
            Self::Master => "MASTER",
            Self::Fault => "FAULT",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state a notify command is told about: keepalived's third argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyState {
    Master,
    Backup,
    Fault,
    /// The instance was shut down (keepalived's `notify_stop`).
    Stop,
}

impl NotifyState {
    /// keepalived's argument: `MASTER`, `BACKUP`, `FAULT` or `STOP` (`vrrp_notify.c`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "MASTER",
            Self::Backup => "BACKUP",
            Self::Fault => "FAULT",
            Self::Stop => "STOP",
        }
    }

    pub(super) fn of(state: State) -> Self {
        match state {
            State::Initialize => Self::Stop,
            State::Backup => Self::Backup,
            State::Master => Self::Master,
            State::Fault => Self::Fault,
        }
    }
}

/// What happens to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// RFC 9568 section 6.4.1: leave Initialize.
    Startup,
    /// Stop: a Master resigns with priority 0 (RFC 9568 section 6.4.3).
    Shutdown,
    /// An advertisement for this VRID that passed the receive checks of RFC 9568 section
    /// 7.1 (version, length, checksum, TTL, VRID; for v2 also the interval and auth type).
    Advert {
        /// The sender's primary address (the packet's source).
        from: IpAddr,
        priority: u8,
        /// The advertised interval; v3 Backups learn it, v2 ignores it (the receive checks
        /// already dropped a v2 advert whose interval differs, RFC 3768 section 7.1).
        max_advert_int: Duration,
    },
    /// The clock reached [`Machine::poll_timeout`](super::Machine::poll_timeout); a Timeout
    /// before it does nothing.
    Timeout,
    /// The tracked condition `config.tracks[index]` went up or down.
    Track { index: usize, up: bool },
}

/// What the socket and address layers must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0: resign) and the configured interval.
    SendAdvert { priority: u8 },
    /// Add the instance's virtual addresses to its interface.
    AddAddresses,
    /// Remove them.
    RemoveAddresses,
    /// Send `count` gratuitous ARPs (unsolicited NAs for IPv6) per virtual address.
    SendGratuitous { count: u32 },
    /// Run the notify command with keepalived's arguments `INSTANCE name state priority`.
    Notify { state: NotifyState, priority: u8 },
}

/// Why the last transition happened, for `balancer status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Startup of a non-owner: Backup until the Master is heard or the down timer fires.
    Startup,
    /// Priority 255: Master at once (RFC 9568 section 6.4.1).
    AddressOwner,
    /// No advert for the `Master_Down_Interval` (RFC 9568 section 6.4.2).
    MasterDown {
        after: Duration,
    },
    /// The Master resigned; this Backup waited its `Skew_Time`.
    PriorityZero {
        from: IpAddr,
    },
    /// Preemption: adverts of a lower priority were discarded until the down timer fired.
    Preempting {
        from: IpAddr,
        theirs: u8,
        ours: u8,
    },
    /// A Master heard a higher priority (RFC 9568 section 6.4.3).
    HigherPriority {
        from: IpAddr,
        priority: u8,
    },
    /// A Master heard its own priority from a higher primary address.
    HigherAddress {
        from: IpAddr,
        priority: u8,
    },
    Shutdown,
    /// A tracked condition changed (into or out of Fault).
    Track {
        name: String,
        up: bool,
    },
    /// The sync group moved this member along with `member`.
    SyncGroup {
        group: String,
        member: String,
        state: State,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Startup => f.write_str("startup"),
            Self::AddressOwner => f.write_str("address owner (priority 255)"),
            Self::MasterDown { after } => write!(f, "master down after {}", Secs(*after)),
            Self::PriorityZero { from } => write!(f, "priority 0 from {from}"),
            Self::Preempting { from, theirs, ours } => {
                write!(f, "preempting priority {theirs} < {ours} from {from}")
            }
            Self::HigherPriority { from, priority } => {
                write!(f, "higher priority {priority} from {from}")
            }
            Self::HigherAddress { from, priority } => {
                write!(f, "equal priority {priority} from higher address {from}")
            }
            Self::Shutdown => f.write_str("shutdown"),
            Self::Track { name, up } => {
                write!(f, "track {name} {}", if *up { "up" } else { "down" })
            }
            Self::SyncGroup {
                group,
                member,
                state,
            } => {
                write!(f, "sync group {group} follows {member} to {state}")
            }
        }
    }
}

/// A duration as seconds with at most millisecond digits: "3.609s", "1s".
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.subsec_millis();
        if millis == 0 {
            write!(f, "{}s", self.0.as_secs())
        } else {
            let digits = format!("{millis:03}");
            write!(f, "{}.{}s", self.0.as_secs(), digits.trim_end_matches('0'))
        }
    }
}

/// Counters and facts for `balancer status`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub priority_zero_sent: u64,
    pub priority_zero_received: u64,
    pub became_master: u64,
    pub released_master: u64,
    pub last_transition: Option<Instant>,
    /// The current Master as known: this router while Master, the last advert's sender
    /// while Backup, unknown after a resignation, in Fault or Initialize.
    pub master: Option<IpAddr>,
}
