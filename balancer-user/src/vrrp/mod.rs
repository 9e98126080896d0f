//! VRRP (RFC 9568 for v3, RFC 3768 for v2) as a sans-IO state machine, interoperable with
//! keepalived 2.2.7.
//!
//! Nothing here reads a clock, opens a socket or parses bytes: a [`Machine`] takes
//! [`Input`]s (an already validated advertisement, a timeout, a tracked condition) with the
//! current [`Instant`] and returns [`Action`]s (send an advertisement, add or remove the
//! addresses, send gratuitous ARPs, run the notify command), and says through
//! [`Machine::poll_timeout`] when it next wants [`Input::Timeout`]. The socket layer, the
//! packet codec and the configuration are wired around it, and the unit tests drive it with
//! a fake clock. A [`SyncGroup`] coordinates several machines that fail over together
//! (keepalived's `vrrp_sync_group`). [`InstanceConfig`] and [`SyncGroupConfig`] are what the
//! configuration file gives the agent for each instance and group.

mod advert;
mod config;
mod events;
mod group;
mod machine;
mod net;
mod params;
mod service;
mod start;

pub use config::{
    HostCheck, HostRequirement, InstanceConfig, NotifyCommand, NotifyCommandError, NotifySubject,
    SyncGroupConfig, TrackTarget, V3Checksum, VirtualAddress, VirtualAddressError, MULTICAST_V4,
    MULTICAST_V6,
};
pub use events::{Action, Input, NotifyState, Reason, State, Stats};
pub use group::{GroupAction, GroupInput, SyncGroup};
pub use machine::Machine;
pub use params::{Config, ConfigError, Track, Version};
pub use service::{Snapshot, Tracker, Vrrp};
pub use start::{check_host, StartError};

use std::ops::Add;
use std::time::Duration;

/// A point in time, as a duration since an origin the caller chooses (e.g. when the agent
/// started), so that the machine never reads the system clock and tests can use a fake one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The origin.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The instant `since_origin` after the origin.
    #[must_use]
    pub const fn from_duration(since_origin: Duration) -> Self {
        Self(since_origin)
    }

    /// How long after the origin this instant is.
    #[must_use]
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `rhs` earlier, or the origin.
    #[must_use]
    pub fn saturating_sub(self, rhs: Duration) -> Self {
        Self(self.0.saturating_sub(rhs))
    }
}

/// Saturating, so that no configured duration can make the machine panic.
impl Add<Duration> for Instant {
    type Output = Self;

    fn add(self, rhs: Duration) -> Self {
        Self(self.0.saturating_add(rhs))
    }
}
