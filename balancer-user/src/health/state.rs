//! The health of a backend and the rise/fall state machine ([`Tracker`]) that check results
//! drive: pure state, no clock and no I/O.

use crate::spelling::config_words;

/// Whether a backend takes new flows as far as health checks are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Up,
    Down,
}

config_words!(Health, "initial state", "\"up\" or \"down\"", { Up => "up", Down => "down" });

impl Health {
    /// `"UP"` or `"DOWN"`, as state changes are logged.
    #[must_use]
    pub const fn as_upper_str(self) -> &'static str {
        match self {
            Health::Up => "UP",
            Health::Down => "DOWN",
        }
    }
}

/// Rise/fall state machine of one backend (HAProxy's semantics: a backend that is Up goes
/// Down after `fall` consecutive failures; Down goes Up after `rise` consecutive successes;
/// a success while Up resets the failure count and vice versa).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    health: Health,
    rise: u32,
    fall: u32,
    /// Consecutive results that disagree with `health` (failures while up, successes
    /// while down).
    opposite: u32,
    /// No result yet, and the first one decides (see [`Tracker::unchecked`]).
    unchecked: bool,
}

impl Tracker {
    /// A tracker in state `initial`; `rise` and `fall` below 1 count as 1.
    #[must_use]
    pub fn new(initial: Health, rise: u32, fall: u32) -> Self {
        Tracker {
            health: initial,
            rise: rise.max(1),
            fall: fall.max(1),
            opposite: 0,
            unchecked: false,
        }
    }

    /// A tracker of a backend never checked yet (one added at run time): down, so that it
    /// takes no flow before a check has said it can, and the first result decides, as
    /// HAProxy's `init-state down`: a success brings it up at once, a failure leaves it
    /// down, to rise as usual.
    #[must_use]
    pub fn unchecked(rise: u32, fall: u32) -> Self {
        Tracker {
            unchecked: true,
            ..Tracker::new(Health::Down, rise, fall)
        }
    }

    /// Whether no result was recorded yet by a tracker made [`Tracker::unchecked`].
    #[must_use]
    pub fn is_unchecked(&self) -> bool {
        self.unchecked
    }

    /// The current state.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health
    }

    /// Consecutive successes needed to go up.
    #[must_use]
    pub fn rise(&self) -> u32 {
        self.rise
    }

    /// Consecutive failures needed to go down.
    #[must_use]
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Records one check result; returns `Some((old, new))` on a state change.
    pub fn record(&mut self, ok: bool) -> Option<(Health, Health)> {
        if std::mem::take(&mut self.unchecked) && ok {
            self.health = Health::Up;
            return Some((Health::Down, Health::Up));
        }
        let (agrees, needed, next) = match self.health {
            Health::Up => (ok, self.fall, Health::Down),
            Health::Down => (!ok, self.rise, Health::Up),
        };
        if agrees {
            self.opposite = 0;
            return None;
        }
        self.opposite = self.opposite.saturating_add(1);
        if self.opposite < needed {
            return None;
        }
        let old = self.health;
        self.health = next;
        self.opposite = 0;
        Some((old, next))
    }

    /// Whether a transition is pending (some opposite results seen but not enough).
    #[must_use]
    pub fn in_transition(&self) -> bool {
        self.opposite > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_falls_after_fall_failures_from_up() {
        let mut t = Tracker::new(Health::Up, 2, 3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert!(t.in_transition());
        assert_eq!(t.health(), Health::Up);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
        assert_eq!(t.health(), Health::Down);
        assert!(!t.in_transition());
        // More failures keep it down without further transitions.
        assert_eq!(t.record(false), None);
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn tracker_rises_after_rise_successes_from_down() {
        let mut t = Tracker::new(Health::Down, 2, 3);
        assert_eq!(t.record(true), None);
        assert!(t.in_transition());
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
        assert_eq!(t.health(), Health::Up);
        assert!(!t.in_transition());
        assert_eq!(t.record(true), None);
        // And back down after `fall` failures.
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
    }

    #[test]
    fn tracker_opposite_result_resets_the_count() {
        let mut t = Tracker::new(Health::Up, 2, 3);
        t.record(false);
        t.record(false);
        assert_eq!(t.record(true), None);
        assert!(!t.in_transition());
        // The count starts over: three more failures are needed.
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));

        let mut t = Tracker::new(Health::Down, 3, 3);
        t.record(true);
        t.record(true);
        assert_eq!(t.record(false), None);
        assert!(!t.in_transition());
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
    }

    #[test]
    fn tracker_flapping_never_transitions() {
        for initial in [Health::Up, Health::Down] {
            let mut t = Tracker::new(initial, 2, 3);
            for i in 0..100 {
                assert_eq!(t.record(i % 2 == 0), None, "check {i} from {initial}");
                assert_eq!(t.health(), initial);
            }
        }
    }

    #[test]
    fn tracker_rise_and_fall_of_one() {
        let mut t = Tracker::new(Health::Up, 1, 1);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
        assert!(!t.in_transition());
        // 0 counts as 1.
        let mut t = Tracker::new(Health::Up, 0, 0);
        assert_eq!((t.rise(), t.fall()), (1, 1));
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));
    }

    #[test]
    fn unchecked_tracker_goes_by_the_first_result() {
        let mut t = Tracker::unchecked(3, 2);
        assert_eq!((t.health(), t.is_unchecked()), (Health::Down, true));
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
        assert!(!t.is_unchecked());
        // Then the usual counts.
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some((Health::Up, Health::Down)));

        let mut t = Tracker::unchecked(3, 2);
        assert_eq!(t.record(false), None);
        assert_eq!((t.health(), t.is_unchecked()), (Health::Down, false));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some((Health::Down, Health::Up)));
    }

    #[test]
    fn health_words() {
        assert_eq!("UP".parse::<Health>(), Ok(Health::Up));
        assert_eq!("down".parse::<Health>(), Ok(Health::Down));
        assert_eq!(
            "sideways".parse::<Health>().unwrap_err().to_string(),
            "invalid initial state \"sideways\": expected \"up\" or \"down\""
        );
        assert_eq!(Health::Down.to_string(), "down");
        assert_eq!(serde_json::to_string(&Health::Up).unwrap(), "\"up\"");
    }
}
