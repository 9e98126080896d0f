//! The configuration of a health check (`[pool.check]`, or a backend's `check` merged over
//! it) with its defaults and limits. The configuration file's validator builds these; the
//! checks only read them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use super::state::{Health, Tracker};
use crate::spelling::config_words;

/// Health check interval used when `[pool.check]` gives no `interval` (HAProxy's `inter`).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Consecutive successes that bring a down backend up, by default (HAProxy's `rise`).
pub const DEFAULT_RISE: u32 = 2;
/// Consecutive failures that take an up backend down, by default (HAProxy's `fall`).
pub const DEFAULT_FALL: u32 = 3;
/// Largest `rise` and `fall`.
pub const MAX_RISE_FALL: u32 = 100;
/// Shortest allowed health check interval or timeout.
pub const MIN_CHECK_DURATION: Duration = Duration::from_millis(10);
/// Longest allowed health check interval or timeout.
pub const MAX_CHECK_DURATION: Duration = Duration::from_hours(1);
/// HTTP check method used when none is given.
pub const DEFAULT_HTTP_METHOD: &str = "GET";
/// HTTP check path used when none is given.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// HTTP statuses a check accepts when `expect_status` is absent.
pub const DEFAULT_EXPECT_STATUS: &str = "200-399";
/// Longest `method` of an HTTP check.
pub const MAX_HTTP_METHOD_LEN: usize = 32;
/// Longest `path` or `host` of an HTTP check, in bytes.
pub const MAX_HTTP_FIELD_LEN: usize = 2048;
/// Longest `expect_body` (HTTP) or `expect` (UDP) substring, in bytes.
pub const MAX_EXPECT_LEN: usize = 4096;
/// Longest UDP check `payload` in bytes (the largest UDP payload over IPv4).
pub const MAX_UDP_PAYLOAD: usize = 65507;

/// The `type` of a health check.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CheckType {
    /// No checks: the backend is always up (HAProxy without `check`).
    #[default]
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP request; the status (and optionally the body) decide.
    Http,
    /// A UDP datagram that must be answered.
    Udp,
}

config_words!(CheckType, "check type", "\"tcp\", \"http\", \"udp\" or \"none\"", { None => "none", Tcp => "tcp", Http => "http", Udp => "udp" });

/// A health check (`[pool.check]`, or a backend's `check` merged over it), defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// The check's `type`, with the fields that only that type has.
    pub kind: CheckKind,
    /// Time between checks while the backend is steadily up (HAProxy `inter`).
    pub interval: Duration,
    /// Longest a single check may take: connect, request and response (`timeout check`).
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Time between checks while a transition is pending (HAProxy `fastinter`).
    pub fastinter: Duration,
    /// Time between checks while the backend is down (HAProxy `downinter`).
    pub downinter: Duration,
    /// State before the first checks complete (HAProxy `init-state`).
    pub initial_state: Health,
    /// Port to check instead of the backend's.
    pub port: Option<u16>,
    /// Address to check instead of the backend's.
    pub address: Option<IpAddr>,
}

impl Default for CheckConfig {
    /// Type `none` (the backend is always up) with the default timings.
    fn default() -> Self {
        CheckConfig {
            kind: CheckKind::None,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_INTERVAL,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            fastinter: DEFAULT_CHECK_INTERVAL,
            downinter: DEFAULT_CHECK_INTERVAL,
            initial_state: Health::Up,
            port: None,
            address: None,
        }
    }
}

impl CheckConfig {
    /// The check's `type`.
    #[must_use]
    pub fn check_type(&self) -> CheckType {
        self.kind.check_type()
    }

    /// Whether the backend is checked at all (type is not `none`).
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.check_type() != CheckType::None
    }

    /// Where checks of `backend` go: its address and port unless `address` or
    /// `port` override them.
    #[must_use]
    pub fn target(&self, backend: SocketAddr) -> SocketAddr {
        SocketAddr::new(
            self.address.unwrap_or(backend.ip()),
            self.port.unwrap_or(backend.port()),
        )
    }

    /// Interval before the next check of a backend in `tracker`'s state: `fastinter` while
    /// in transition, `downinter` while down, else `interval`.
    #[must_use]
    pub fn next_interval(&self, tracker: &Tracker) -> Duration {
        if tracker.in_transition() {
            self.fastinter
        } else if tracker.health() == Health::Down {
            self.downinter
        } else {
            self.interval
        }
    }
}

/// A check's type and the fields that only that type has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckKind {
    #[default]
    None,
    Tcp,
    Http(HttpCheck),
    Udp(UdpCheck),
}

impl CheckKind {
    /// The `type` word of this kind.
    #[must_use]
    pub fn check_type(&self) -> CheckType {
        match self {
            CheckKind::None => CheckType::None,
            CheckKind::Tcp => CheckType::Tcp,
            CheckKind::Http(_) => CheckType::Http,
            CheckKind::Udp(_) => CheckType::Udp,
        }
    }
}

/// The fields of an HTTP check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request method, an uppercase token.
    pub method: String,
    /// Request target, starting with `/`.
    pub path: String,
    /// `Host` header; `None`: the checked address (and port, if not 80).
    pub host: Option<String>,
    /// Statuses that count as success.
    pub expect_status: StatusRanges,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        HttpCheck {
            method: DEFAULT_HTTP_METHOD.to_owned(),
            path: DEFAULT_HTTP_PATH.to_owned(),
            host: None,
            expect_status: StatusRanges::default(),
            expect_body: None,
        }
    }
}

/// The fields of a UDP check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpCheck {
    /// The datagram sent (may be empty).
    pub payload: String,
    /// A substring the reply must contain; `None`: any reply counts.
    pub expect: Option<String>,
}

/// A list of HTTP status codes and inclusive ranges, e.g. `200,204,301-302`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    /// Whether `status` is listed.
    #[must_use]
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// The listed `(first, last)` ranges; a single code is `(code, code)`.
    #[must_use]
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl Default for StatusRanges {
    /// `200-399`.
    fn default() -> Self {
        StatusRanges(vec![(200, 399)])
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Why an `expect_status` list is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusRangesError {
    #[error("must list at least one status code or range")]
    Empty,
    #[error("{0:?} is not a status code")]
    NotACode(String),
    #[error("code {0} is out of range 100..=599")]
    OutOfRange(u32),
    #[error("range {0}-{1} is not ordered ({0} > {1})")]
    Unordered(u16, u16),
}

impl FromStr for StatusRanges {
    type Err = StatusRangesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fn code(text: &str) -> Result<u16, StatusRangesError> {
            let text = text.trim();
            if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(StatusRangesError::NotACode(text.to_owned()));
            }
            let n: u32 = text
                .parse()
                .map_err(|_| StatusRangesError::NotACode(text.to_owned()))?;
            u16::try_from(n)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or(StatusRangesError::OutOfRange(n))
        }
        if s.trim().is_empty() {
            return Err(StatusRangesError::Empty);
        }
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let (lo, hi) = if let Some((lo, hi)) = item.split_once('-') {
                (code(lo)?, code(hi)?)
            } else {
                let c = code(item)?;
                (c, c)
            };
            if lo > hi {
                return Err(StatusRangesError::Unordered(lo, hi));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusRanges(ranges))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::ms;
    use super::*;

    #[test]
    fn tracker_next_interval() {
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: ms(2000),
            fastinter: ms(500),
            downinter: ms(5000),
            ..CheckConfig::default()
        };
        let mut t = Tracker::new(Health::Up, 2, 3);
        assert_eq!(check.next_interval(&t), ms(2000));
        t.record(false);
        assert_eq!(check.next_interval(&t), ms(500));
        t.record(false);
        t.record(false);
        assert_eq!(t.health(), Health::Down);
        assert_eq!(check.next_interval(&t), ms(5000));
        t.record(true);
        assert_eq!(check.next_interval(&t), ms(500));
        t.record(true);
        assert_eq!(t.health(), Health::Up);
        assert_eq!(check.next_interval(&t), ms(2000));
    }

    #[test]
    fn status_ranges() {
        let r: StatusRanges = " 200 , 204,301-302 ".parse().unwrap();
        assert_eq!(r.ranges(), &[(200, 200), (204, 204), (301, 302)]);
        assert_eq!(r.to_string(), "200,204,301-302");
        for (code, listed) in [
            (200, true),
            (201, false),
            (204, true),
            (301, true),
            (302, true),
            (303, false),
        ] {
            assert_eq!(r.contains(code), listed, "{code}");
        }
        assert!(StatusRanges::default().contains(399));
        assert!(!StatusRanges::default().contains(400));
        assert_eq!(
            "200,".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode(String::new()))
        );
        assert_eq!(
            "99999999999".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode("99999999999".into()))
        );
        assert_eq!(
            "-".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode(String::new()))
        );
        assert_eq!(
            "200-300-400".parse::<StatusRanges>(),
            Err(StatusRangesError::NotACode("300-400".into()))
        );
    }

    #[test]
    fn check_type_words() {
        for t in [
            CheckType::None,
            CheckType::Tcp,
            CheckType::Http,
            CheckType::Udp,
        ] {
            assert_eq!(t.to_string().parse::<CheckType>(), Ok(t));
        }
    }
}
