//! The parameters of one virtual router (RFC 9568 section 6.1, RFC 3768 section 6.1), their
//! validation, and the timer arithmetic derived from them.

use std::net::IpAddr;
use std::time::Duration;

/// The VRRP version an instance speaks; the two do not interoperate on one VRID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768: IPv4 only, advertisement interval in whole seconds. keepalived's default
    /// (`vrrp_version 2`).
    V2,
    /// RFC 9568: IPv4 and IPv6, interval in centiseconds, learnt by Backups from the Master.
    V3,
}

/// A tracked condition (a VIP's backends, an interface, the XDP program), with keepalived's
/// `track_interface`/`track_script` weight semantics (keepalived.conf(5), "`track_interface`";
/// `keepalived/vrrp/vrrp_track.c`, `initialise_interface_tracking_priorities`):
/// - weight 0: the instance goes to Fault while the condition is down;
/// - weight > 0: the weight is added to the priority while the condition is up;
/// - weight < 0: its absolute value is subtracted while the condition is down;
/// - `reverse` swaps up and down for all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Shown in transition reasons ("track backends-web down").
    pub name: String,
    /// -253..=253, as keepalived accepts.
    pub weight: i16,
    /// keepalived's `reverse`.
    pub reverse: bool,
}

impl Track {
    /// A track that puts the instance in Fault while `name` is down (keepalived's unweighted
    /// track).
    #[must_use]
    pub fn fault(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            weight: 0,
            reverse: false,
        }
    }

    /// A weighted track; see the type's documentation for the sign.
    #[must_use]
    pub fn weighted(name: impl Into<String>, weight: i16) -> Self {
        Self {
            name: name.into(),
            weight,
            reverse: false,
        }
    }

    /// Whether this track, in state `up`, puts the instance in Fault.
    pub(super) fn faults(&self, up: bool) -> bool {
        self.weight == 0 && up == self.reverse
    }

    /// What this track, in state `up`, adds to the configured priority (`vrrp_track.c`: a
    /// positive weight counts while up, a negative one while down; `reverse` negates).
    pub(super) fn adjustment(&self, up: bool) -> i32 {
        let weight = i32::from(self.weight);
        let sign = if self.reverse { -1 } else { 1 };
        if (weight > 0 && up) || (weight < 0 && !up) {
            weight * sign
        } else {
            0
        }
    }
}

/// One VRRP instance's configuration (keepalived's `vrrp_instance`), in keepalived's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The instance name, passed to notify commands (`INSTANCE name STATE priority`).
    pub name: String,
    /// Virtual Router Identifier, 1..=255 (RFC 9568 section 5.2.3).
    pub vrid: u8,
    pub version: Version,
    /// 1..=255; 255 means this router owns the addresses (RFC 9568 section 5.2.4).
    pub priority: u8,
    /// `Advertisement_Interval`: v3 in centiseconds up to 40.95 s (section 5.2.7); v2 in
    /// whole seconds up to 255 s (RFC 3768 section 5.3.7).
    pub advert_interval: Duration,
    /// `Preempt_Mode` (RFC 9568 section 6.1), on by default; keepalived's `nopreempt` clears it.
    pub preempt: bool,
    /// keepalived's `preempt_delay` (0..=1000 s): how long a Backup keeps accepting a lower
    /// priority Master after first hearing it, before it starts discarding its adverts.
    pub preempt_delay: Duration,
    /// The primary address adverts are sent from, compared on equal priority (RFC 9568
    /// section 6.4.3).
    pub primary_address: IpAddr,
    /// keepalived's `garp_master_delay`: when the second burst of gratuitous ARPs follows
    /// the first after becoming Master; zero for no second burst.
    pub garp_master_delay: Duration,
    /// keepalived's `garp_master_repeat`: gratuitous ARPs per burst.
    pub garp_master_repeat: u32,
    pub tracks: Vec<Track>,
}

/// keepalived's defaults (keepalived.conf(5): `vrrp_garp_master_delay`,
/// `vrrp_garp_master_repeat`).
const GARP_MASTER_DELAY: Duration = Duration::from_secs(5);
const GARP_MASTER_REPEAT: u32 = 5;
/// RFC 9568 section 5.2.7: a 12-bit count of centiseconds.
const V3_MAX_INTERVAL: Duration = Duration::from_millis(40_950);
const CENTISECOND: Duration = Duration::from_millis(10);
/// RFC 3768 section 5.3.7: an 8-bit count of seconds.
const V2_MAX_INTERVAL: Duration = Duration::from_secs(255);
/// keepalived.conf(5), `preempt_delay`: "Range: 0 (default) to 1000".
const MAX_PREEMPT_DELAY: Duration = Duration::from_secs(1000);
/// keepalived's accepted track weights (`vrrp_track.c` clamps ±254 to ±253).
const MAX_TRACK_WEIGHT: i16 = 253;
/// RFC 9568 section 5.2.4.
pub(super) const PRIORITY_OWNER: u8 = 255;

impl Config {
    /// keepalived's defaults: priority 100, 1 s interval, preempt on, no preempt delay,
    /// 5 GARPs then 5 more after 5 s; version 2 for IPv4 (`vrrp_version` defaults to 2) and
    /// 3 for IPv6 (the only version that carries it).
    #[must_use]
    pub fn new(name: impl Into<String>, vrid: u8, primary_address: IpAddr) -> Self {
        Self {
            name: name.into(),
            vrid,
            version: if primary_address.is_ipv6() {
                Version::V3
            } else {
                Version::V2
            },
            priority: 100,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary_address,
            garp_master_delay: GARP_MASTER_DELAY,
            garp_master_repeat: GARP_MASTER_REPEAT,
            tracks: Vec::new(),
        }
    }

    /// Checks every field against the RFCs and keepalived's limits.
    ///
    /// # Errors
    /// The first field that is out of range; [`ConfigError::field`] names it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vrid == 0 {
            return Err(ConfigError::Vrid);
        }
        if self.priority == 0 {
            return Err(ConfigError::Priority);
        }
        let interval = self.advert_interval;
        let interval_ok = match self.version {
            Version::V2 => {
                interval.subsec_nanos() == 0 && !interval.is_zero() && interval <= V2_MAX_INTERVAL
            }
            Version::V3 => {
                interval.as_nanos().is_multiple_of(CENTISECOND.as_nanos())
                    && !interval.is_zero()
                    && interval <= V3_MAX_INTERVAL
            }
        };
        if !interval_ok {
            return Err(ConfigError::AdvertInterval {
                version: self.version,
                interval,
            });
        }
        if self.version == Version::V2 && self.primary_address.is_ipv6() {
            return Err(ConfigError::V2Ipv6);
        }
        // keepalived (vrrp.c, vrrp_complete_instance) reports both as configuration errors
        // and drops the option; refusing them keeps the operator's intent visible.
        if !self.preempt && self.priority == PRIORITY_OWNER {
            return Err(ConfigError::NopreemptOwner);
        }
        if !self.preempt && !self.preempt_delay.is_zero() {
            return Err(ConfigError::PreemptDelayWithNopreempt);
        }
        if self.preempt_delay > MAX_PREEMPT_DELAY {
            return Err(ConfigError::PreemptDelay(self.preempt_delay));
        }
        if let Some(track) = self
            .tracks
            .iter()
            .find(|t| t.weight.abs() > MAX_TRACK_WEIGHT)
        {
            return Err(ConfigError::TrackWeight {
                track: track.name.clone(),
                weight: track.weight,
            });
        }
        Ok(())
    }

    /// The advert interval as carried in the packet: seconds for v2, centiseconds for v3
    /// (valid after [`Config::validate`], saturating otherwise).
    #[must_use]
    pub fn advert_interval_field(&self) -> u16 {
        let units = match self.version {
            Version::V2 => u128::from(self.advert_interval.as_secs()),
            Version::V3 => self.advert_interval.as_millis() / 10,
        };
        u16::try_from(units).unwrap_or(u16::MAX)
    }
}

/// A configuration field out of range; [`ConfigError::field`] names the field for the
/// configuration layer's "file, line, field" message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("vrid must be 1..=255")]
    Vrid,
    #[error("priority must be 1..=255 (0 is reserved for a Master that resigns)")]
    Priority,
    #[error(
        "advert_interval {interval:?} is not valid for VRRP{}: v2 takes whole seconds up to \
         255 s, v3 centiseconds up to 40.95 s",
        match version { Version::V2 => "v2", Version::V3 => "v3" }
    )]
    AdvertInterval {
        version: Version,
        interval: Duration,
    },
    #[error("VRRPv2 carries IPv4 only: an IPv6 instance needs version 3")]
    V2Ipv6,
    #[error("nopreempt is incompatible with priority 255 (the address owner always preempts)")]
    NopreemptOwner,
    #[error("preempt_delay is incompatible with nopreempt")]
    PreemptDelayWithNopreempt,
    #[error("preempt_delay {0:?} is over 1000 s")]
    PreemptDelay(Duration),
    #[error("track {track}: weight {weight} is outside -253..=253")]
    TrackWeight { track: String, weight: i16 },
    #[error("sync group {group}: member {member} has a weighted track {track}; keepalived ignores it unless sync_group_tracking_weight is set")]
    SyncGroupTrackWeight {
        group: String,
        member: String,
        track: String,
    },
    #[error("sync group {0} has no member")]
    EmptySyncGroup(String),
}

impl ConfigError {
    /// The configuration field at fault, in keepalived's vocabulary.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::Vrid => "vrid",
            Self::Priority | Self::NopreemptOwner => "priority",
            Self::AdvertInterval { .. } => "advert_interval",
            Self::V2Ipv6 => "version",
            Self::PreemptDelayWithNopreempt | Self::PreemptDelay(_) => "preempt_delay",
            Self::TrackWeight { .. } | Self::SyncGroupTrackWeight { .. } => "track",
            Self::EmptySyncGroup(_) => "group",
        }
    }
}

/// `Skew_Time` for `priority`: v2 (RFC 3768 section 6.1) `(256 - Priority) / 256` seconds;
/// v3 (RFC 9568 section 6.1) `((256 - Priority) * Active_Adver_Interval) / 256`. Computed in
/// whole microseconds, truncating, exactly as keepalived's `VRRP_TIMER_SKEW` (`vrrp.h`) does.
pub(super) fn skew_time(
    version: Version,
    priority: u8,
    master_adver_interval: Duration,
) -> Duration {
    let factor = 256 - u64::from(priority);
    let base = match version {
        Version::V2 => Duration::from_secs(1),
        Version::V3 => master_adver_interval.min(V3_MAX_INTERVAL),
    };
    // At most 256 * 40_950_000: no overflow.
    let base_micros = u64::try_from(base.as_micros()).unwrap_or(u64::MAX / 256);
    Duration::from_micros(factor * base_micros / 256)
}

/// `Master_Down_Interval` (RFC 3768 section 6.1) / `Active_Down_Interval` (RFC 9568 section
/// 6.1): `3 * Master_Adver_Interval + Skew_Time`.
pub(super) fn master_down_interval(
    version: Version,
    priority: u8,
    master_adver_interval: Duration,
) -> Duration {
    master_adver_interval
        .saturating_mul(3)
        .saturating_add(skew_time(version, priority, master_adver_interval))
}

/// The `Master_Adver_Interval` a v3 Backup learns from an advert (RFC 9568 section 6.4.2):
/// zero is refused by the receive checks (section 7.1), and is kept out here too so that a
/// bad packet cannot make the down timer fire at once.
pub(super) fn learnt_interval(advertised: Duration) -> Option<Duration> {
    (!advertised.is_zero()).then(|| advertised.min(V3_MAX_INTERVAL))
}
