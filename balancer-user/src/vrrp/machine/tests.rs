//! The instance state machine driven by a fake clock: every transition of RFC 9568 section 6
//! (RFC 3768 section 6 for v2), the timer arithmetic, preemption, tracking and Fault.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::Machine;
use crate::vrrp::params::{master_down_interval, skew_time};
use crate::vrrp::{
    Action, Config, ConfigError, Input, Instant, NotifyState, Reason, State, Track, Version,
};

const SECOND: Duration = Duration::from_secs(1);
/// `Master_Down_Interval` at priority 100 and a 1 s interval: 3 s + 156/256 s.
const DOWN_100: Duration = Duration::from_micros(3_609_375);

fn at(since_origin: Duration) -> Instant {
    Instant::from_duration(since_origin)
}

fn ms(millis: u64) -> Instant {
    at(Duration::from_millis(millis))
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// This router is 10.0.0.2; peers are .1 (lower) and .3 (higher).
fn config(version: Version, priority: u8) -> Config {
    let mut config = Config::new("vi_1", 51, ip(2));
    config.version = version;
    config.priority = priority;
    config
}

fn machine(config: Config) -> Machine {
    Machine::new(config).expect("valid configuration")
}

fn started(config: Config) -> Machine {
    let mut machine = machine(config);
    machine.handle(Instant::ZERO, Input::Startup);
    machine
}

fn advert(from: IpAddr, priority: u8) -> Input {
    Input::Advert {
        from,
        priority,
        max_advert_int: SECOND,
    }
}

fn notify(state: NotifyState, priority: u8) -> Action {
    Action::Notify { state, priority }
}

fn becoming_master(priority: u8) -> Vec<Action> {
    vec![
        Action::SendAdvert { priority },
        Action::AddAddresses,
        Action::SendGratuitous { count: 5 },
        notify(NotifyState::Master, priority),
    ]
}

/// A Master reached through its down timer at `now` (priority 100, 1 s interval).
fn master_at(version: Version, priority: u8) -> (Machine, Instant) {
    let mut m = started(config(version, priority));
    let now = m.poll_timeout().expect("a Backup has a down timer");
    assert_eq!(m.handle(now, Input::Timeout), becoming_master(priority));
    (m, now)
}

#[test]
fn skew_and_master_down_interval() {
    // (version, priority, Master_Adver_Interval, Skew_Time, Master_Down_Interval), in µs,
    // truncated as keepalived's VRRP_TIMER_SKEW does.
    let cases: &[(Version, u8, u64, u64, u64)] = &[
        (Version::V2, 0, 1_000_000, 1_000_000, 4_000_000),
        (Version::V2, 1, 1_000_000, 996_093, 3_996_093),
        (Version::V2, 100, 1_000_000, 609_375, 3_609_375),
        (Version::V2, 254, 1_000_000, 7_812, 3_007_812),
        (Version::V2, 255, 1_000_000, 3_906, 3_003_906),
        // v2's skew does not scale with the interval (RFC 3768 section 6.1).
        (Version::V2, 100, 3_000_000, 609_375, 9_609_375),
        (Version::V3, 0, 2_000_000, 2_000_000, 8_000_000),
        (Version::V3, 1, 100_000, 99_609, 399_609),
        (Version::V3, 100, 1_000_000, 609_375, 3_609_375),
        (Version::V3, 100, 500_000, 304_687, 1_804_687),
        (Version::V3, 254, 40_950_000, 319_921, 123_169_921),
        (Version::V3, 255, 1_000_000, 3_906, 3_003_906),
    ];
    for &(version, priority, interval, skew, down) in cases {
        let interval = Duration::from_micros(interval);
        let what = format!("{version:?} priority {priority} interval {interval:?}");
        assert_eq!(
            skew_time(version, priority, interval),
            Duration::from_micros(skew),
            "{what}"
        );
        assert_eq!(
            master_down_interval(version, priority, interval),
            Duration::from_micros(down),
            "{what}"
        );
    }
}

#[test]
fn timer_arithmetic_saturates() {
    let huge = Duration::MAX;
    assert_eq!(
        skew_time(Version::V3, 1, huge),
        skew_time(Version::V3, 1, Duration::from_millis(40_950))
    );
    let _ = master_down_interval(Version::V3, 1, huge);
    assert_eq!(at(huge) + huge, at(huge));
    assert_eq!(Instant::ZERO.saturating_sub(SECOND), Instant::ZERO);
    assert_eq!(
        Instant::ZERO.saturating_duration_since(at(SECOND)),
        Duration::ZERO
    );
}

#[test]
fn config_defaults_follow_keepalived() {
    let v4 = Config::new("vi", 1, ip(2));
    assert_eq!(
        (v4.version, v4.priority, v4.preempt),
        (Version::V2, 100, true)
    );
    assert_eq!(
        (v4.garp_master_delay, v4.garp_master_repeat),
        (Duration::from_secs(5), 5)
    );
    assert_eq!(v4.advert_interval_field(), 1);
    let v6 = Config::new("vi", 1, IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(v6.version, Version::V3);
    assert_eq!(v6.advert_interval_field(), 100);
    let mut max = config(Version::V3, 100);
    max.advert_interval = Duration::from_millis(40_950);
    assert_eq!(max.advert_interval_field(), 4095);
}

/// The field [`Config::validate`] refuses after `edit`, checked against [`Machine::new`].
fn refused_field(edit: impl FnOnce(&mut Config)) -> Option<&'static str> {
    let mut config = Config::new("vi", 51, ip(2));
    edit(&mut config);
    let result = config.validate();
    assert_eq!(Machine::new(config).err(), result.clone().err());
    result.err().as_ref().map(ConfigError::field)
}

#[test]
fn advert_interval_validation() {
    // v2: whole seconds in 8 bits (RFC 3768 section 5.3.7); v3: centiseconds in 12 bits
    // (RFC 9568 section 5.2.7).
    let cases = [
        (Version::V2, 0, false),
        (Version::V2, 1_000, true),
        (Version::V2, 1_500, false),
        (Version::V2, 255_000, true),
        (Version::V2, 256_000, false),
        (Version::V3, 0, false),
        (Version::V3, 10, true),
        (Version::V3, 15, false),
        (Version::V3, 500, true),
        (Version::V3, 40_950, true),
        (Version::V3, 41_000, false),
    ];
    for (version, millis, valid) in cases {
        let field = refused_field(|c| {
            c.version = version;
            c.advert_interval = Duration::from_millis(millis);
        });
        let expected = (!valid).then_some("advert_interval");
        assert_eq!(field, expected, "{version:?} {millis} ms");
    }
}

#[test]
fn config_validation() {
    assert_eq!(refused_field(|_| {}), None);
    assert_eq!(refused_field(|c| c.vrid = 0), Some("vrid"));
    assert_eq!(refused_field(|c| c.priority = 0), Some("priority"));
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(refused_field(|c| c.primary_address = v6), Some("version"));
    let nopreempt_owner = |c: &mut Config| {
        c.preempt = false;
        c.priority = 255;
    };
    assert_eq!(refused_field(nopreempt_owner), Some("priority"));
    let nopreempt_delay = |c: &mut Config| {
        c.preempt = false;
        c.preempt_delay = SECOND;
    };
    assert_eq!(refused_field(nopreempt_delay), Some("preempt_delay"));
    assert_eq!(
        refused_field(|c| c.preempt_delay = Duration::from_secs(1000)),
        None
    );
    let too_long = Duration::from_secs(1001);
    assert_eq!(
        refused_field(|c| c.preempt_delay = too_long),
        Some("preempt_delay")
    );
    assert_eq!(
        refused_field(|c| c.tracks = vec![Track::weighted("t", -253)]),
        None
    );
    assert_eq!(
        refused_field(|c| c.tracks = vec![Track::weighted("t", 254)]),
        Some("track")
    );
}

#[test]
fn startup_non_owner_is_backup_with_a_down_timer() {
    // RFC 9568 section 6.4.1: Master_Adver_Interval = Advertisement_Interval, the
    // Master_Down_Timer set to Master_Down_Interval.
    for version in [Version::V2, Version::V3] {
        let mut m = machine(config(version, 100));
        assert_eq!(m.state(), State::Initialize);
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(
            m.handle(Instant::ZERO, Input::Startup),
            vec![notify(NotifyState::Backup, 100)]
        );
        assert_eq!(m.state(), State::Backup);
        assert_eq!(m.poll_timeout(), Some(at(DOWN_100)));
        assert_eq!(m.last_reason(), Some(&Reason::Startup));
        // A second Startup is not an event of the Backup state.
        assert_eq!(m.handle(ms(10), Input::Startup), vec![]);
    }
}

#[test]
fn startup_owner_is_master_at_once() {
    // RFC 9568 section 6.4.1: priority 255 sends an advert, GARPs and becomes Master.
    let mut m = machine(config(Version::V3, 255));
    assert_eq!(
        m.handle(Instant::ZERO, Input::Startup),
        becoming_master(255)
    );
    assert_eq!(m.state(), State::Master);
    assert_eq!(m.last_reason(), Some(&Reason::AddressOwner));
    assert_eq!(m.poll_timeout(), Some(at(SECOND)));
    assert_eq!(m.stats().master, Some(ip(2)));
}

#[test]
fn backup_becomes_master_when_the_down_timer_fires() {
    let mut m = started(config(Version::V2, 100));
    // An early Timeout (a spurious wake-up) changes nothing.
    assert_eq!(m.handle(ms(3_000), Input::Timeout), vec![]);
    assert_eq!(m.state(), State::Backup);
    assert_eq!(m.handle(at(DOWN_100), Input::Timeout), becoming_master(100));
    assert_eq!(m.state(), State::Master);
    assert_eq!(
        m.last_reason().map(ToString::to_string).as_deref(),
        Some("master down after 3.609s")
    );
    assert_eq!(m.stats().became_master, 1);
    assert_eq!(m.stats().last_transition, Some(at(DOWN_100)));
}

#[test]
fn backup_advert_resets_the_down_timer() {
    // RFC 9568 section 6.4.2: an advert of a higher or equal priority sets the
    // Master_Down_Timer to Master_Down_Interval again.
    for priority in [100, 150, 254, 255] {
        let mut m = started(config(Version::V2, 100));
        assert_eq!(m.handle(ms(3_000), advert(ip(3), priority)), vec![]);
        assert_eq!(
            m.poll_timeout(),
            Some(ms(3_000) + DOWN_100),
            "priority {priority}"
        );
        assert_eq!(m.stats().master, Some(ip(3)));
        assert_eq!(m.handle(ms(6_000), Input::Timeout), vec![]);
        assert_eq!(m.state(), State::Backup);
    }
}

#[test]
fn v3_backup_learns_the_masters_interval_and_v2_does_not() {
    let slow = Input::Advert {
        from: ip(3),
        priority: 150,
        max_advert_int: Duration::from_secs(2),
    };
    let mut v3 = started(config(Version::V3, 100));
    v3.handle(ms(500), slow);
    assert_eq!(v3.master_adver_interval(), Duration::from_secs(2));
    // 3 * 2 s + 156 * 2 s / 256.
    assert_eq!(
        v3.poll_timeout(),
        Some(ms(500) + Duration::from_micros(7_218_750))
    );
    let mut v2 = started(config(Version::V2, 100));
    v2.handle(ms(500), slow);
    assert_eq!(v2.master_adver_interval(), SECOND);
    assert_eq!(v2.poll_timeout(), Some(ms(500) + DOWN_100));
    // An interval of zero (refused by the receive checks) is not learnt either.
    v3.handle(
        ms(600),
        Input::Advert {
            from: ip(3),
            priority: 150,
            max_advert_int: Duration::ZERO,
        },
    );
    assert_eq!(v3.master_adver_interval(), Duration::from_secs(2));
}

#[test]
fn backup_hearing_priority_zero_takes_over_after_its_skew_time() {
    // RFC 9568 section 6.4.2: "If the Priority in the ADVERTISEMENT is zero, then: Set the
    // Active_Down_Timer to Skew_Time".
    for (version, priority, skew_us) in [
        (Version::V2, 100, 609_375),
        (Version::V3, 1, 996_093),
        (Version::V3, 254, 7_812),
    ] {
        let mut m = started(config(version, priority));
        m.handle(ms(1_000), advert(ip(3), 200));
        assert_eq!(m.handle(ms(2_000), advert(ip(3), 0)), vec![]);
        let due = ms(2_000) + Duration::from_micros(skew_us);
        assert_eq!(m.poll_timeout(), Some(due));
        assert_eq!(m.stats().master, None);
        assert_eq!(m.handle(due, Input::Timeout), becoming_master(priority));
        assert_eq!(
            m.last_reason().map(ToString::to_string).as_deref(),
            Some("priority 0 from 10.0.0.3")
        );
        assert_eq!(m.stats().priority_zero_received, 1);
    }
}

#[test]
fn backup_preempts_a_lower_priority_master() {
    // RFC 9568 section 6.4.2: with Preempt_Mode, a lower-priority advert is discarded, so
    // the down timer set at startup runs out.
    let mut m = started(config(Version::V3, 100));
    for second in 1..=3 {
        assert_eq!(m.handle(ms(second * 1_000), advert(ip(3), 90)), vec![]);
        assert_eq!(
            m.poll_timeout(),
            Some(at(DOWN_100)),
            "not reset by a lower priority"
        );
    }
    assert_eq!(m.stats().master, Some(ip(3)));
    assert_eq!(m.handle(at(DOWN_100), Input::Timeout), becoming_master(100));
    assert_eq!(
        m.last_reason().map(ToString::to_string).as_deref(),
        Some("preempting priority 90 < 100 from 10.0.0.3")
    );
}

#[test]
fn nopreempt_backup_keeps_a_lower_priority_master() {
    let mut c = config(Version::V3, 100);
    c.preempt = false;
    let mut m = started(c);
    for second in 1..=10 {
        let now = ms(second * 1_000);
        m.handle(now, Input::Timeout);
        m.handle(now, advert(ip(3), 50));
        assert_eq!(m.poll_timeout(), Some(now + DOWN_100));
    }
    assert_eq!(m.state(), State::Backup);
}

#[test]
fn preempt_delay_accepts_a_lower_master_for_the_delay_first() {
    // keepalived's vrrp_state_backup: the first lower-priority advert starts the delay; the
    // adverts are accepted until it has passed, discarded after.
    let mut c = config(Version::V2, 100);
    c.preempt_delay = Duration::from_secs(10);
    let mut m = started(c);
    let mut now = ms(1_000);
    while m.state() == State::Backup {
        if m.poll_timeout().is_some_and(|due| due <= now) {
            m.handle(m.poll_timeout().unwrap_or(now), Input::Timeout);
        } else {
            m.handle(now, advert(ip(3), 90));
            now = now + SECOND;
        }
        assert!(now < ms(30_000), "never preempted");
    }
    // Delay from 1 s to 11 s; the last advert accepted at 10 s.
    assert_eq!(m.stats().last_transition, Some(ms(10_000) + DOWN_100));
    assert!(matches!(
        m.last_reason(),
        Some(Reason::Preempting {
            theirs: 90,
            ours: 100,
            ..
        })
    ));
}

#[test]
fn preempt_delay_restarts_after_a_higher_priority_advert() {
    let mut c = config(Version::V2, 100);
    c.preempt_delay = Duration::from_secs(10);
    let mut m = started(c);
    m.handle(ms(1_000), advert(ip(3), 90)); // delay until 11 s
    m.handle(ms(2_000), advert(ip(3), 150)); // cancels it
    m.handle(ms(3_000), advert(ip(3), 90)); // delay until 13 s
    m.handle(ms(12_000), advert(ip(3), 90));
    assert_eq!(
        m.poll_timeout(),
        Some(ms(12_000) + DOWN_100),
        "still accepted at 12 s"
    );
    m.handle(ms(13_000), advert(ip(3), 90));
    assert_eq!(
        m.poll_timeout(),
        Some(ms(12_000) + DOWN_100),
        "discarded from 13 s"
    );
}

#[test]
fn master_advertises_every_interval_and_repeats_its_gratuitous_arps() {
    let (mut m, start) = master_at(Version::V3, 100);
    let mut sent = Vec::new();
    let mut now = start;
    while now < start + Duration::from_secs(6) {
        now = m.poll_timeout().expect("a Master has timers");
        sent.push((
            now.saturating_duration_since(start),
            m.handle(now, Input::Timeout),
        ));
    }
    let advert = vec![Action::SendAdvert { priority: 100 }];
    let expected = vec![
        (Duration::from_secs(1), advert.clone()),
        (Duration::from_secs(2), advert.clone()),
        (Duration::from_secs(3), advert.clone()),
        (Duration::from_secs(4), advert.clone()),
        (
            Duration::from_secs(5),
            vec![
                Action::SendAdvert { priority: 100 },
                Action::SendGratuitous { count: 5 },
            ],
        ),
        (Duration::from_secs(6), advert),
    ];
    assert_eq!(sent, expected);
    assert_eq!(m.stats().adverts_sent, 7);
}

#[test]
fn gratuitous_arp_settings() {
    let mut c = config(Version::V3, 255);
    c.garp_master_delay = Duration::ZERO;
    let mut m = machine(c.clone());
    assert_eq!(
        m.handle(Instant::ZERO, Input::Startup),
        becoming_master(255)
    );
    assert_eq!(m.poll_timeout(), Some(at(SECOND)), "no second burst");
    c.garp_master_repeat = 0;
    let mut m = machine(c);
    let actions = m.handle(Instant::ZERO, Input::Startup);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SendGratuitous { .. })),
        "{actions:?}"
    );
}

#[test]
fn master_answers_priority_zero_at_once() {
    // RFC 9568 section 6.4.3: send an ADVERTISEMENT, reset the Adver_Timer.
    let (mut m, start) = master_at(Version::V3, 100);
    let now = start + Duration::from_millis(300);
    assert_eq!(
        m.handle(now, advert(ip(3), 0)),
        vec![Action::SendAdvert { priority: 100 }]
    );
    assert_eq!(m.poll_timeout(), Some(now + SECOND));
    assert_eq!(m.state(), State::Master);
}

#[test]
fn master_meeting_another_master() {
    // RFC 9568 section 6.4.3: step down for a higher priority, or the same priority from a
    // higher address; assert ourselves to a lower one ("new Active Router logic").
    let leaves = vec![Action::RemoveAddresses, notify(NotifyState::Backup, 100)];
    let cases: &[(&str, IpAddr, u8, Option<&str>)] = &[
        (
            "higher priority",
            ip(1),
            101,
            Some("higher priority 101 from 10.0.0.1"),
        ),
        (
            "equal, higher address",
            ip(3),
            100,
            Some("equal priority 100 from higher address 10.0.0.3"),
        ),
        ("equal, lower address", ip(1), 100, None),
        ("lower priority", ip(3), 99, None),
    ];
    let versions = [Version::V2, Version::V3];
    for (version, (what, from, priority, stepped_down)) in versions
        .into_iter()
        .flat_map(|v| cases.iter().map(move |c| (v, c)))
    {
        let what = format!("{version:?} {what}");
        let (mut m, start) = master_at(version, 100);
        let now = start + Duration::from_millis(100);
        let actions = m.handle(now, advert(*from, *priority));
        if let Some(reason) = stepped_down {
            assert_eq!(actions, leaves, "{what}");
            assert_eq!(m.state(), State::Backup, "{what}");
            assert_eq!(
                m.last_reason().map(ToString::to_string).as_deref(),
                Some(*reason)
            );
            assert_eq!(m.poll_timeout(), Some(now + DOWN_100), "{what}");
            assert_eq!(m.stats().master, Some(*from), "{what}");
            assert_eq!(m.stats().released_master, 1, "{what}");
        } else {
            assert_eq!(
                actions,
                vec![Action::SendAdvert { priority: 100 }],
                "{what}"
            );
            assert_eq!(m.state(), State::Master, "{what}");
        }
    }
}

#[test]
fn master_ignores_its_own_address_and_the_other_family() {
    let (mut m, start) = master_at(Version::V3, 100);
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9));
    assert_eq!(m.handle(start, advert(ip(2), 100)), vec![]);
    assert_eq!(m.handle(start, advert(v6, 100)), vec![]);
    assert_eq!(m.state(), State::Master);
}

#[test]
fn master_stepping_down_learns_the_v3_interval() {
    let (mut m, start) = master_at(Version::V3, 100);
    let fast = Input::Advert {
        from: ip(3),
        priority: 200,
        max_advert_int: Duration::from_millis(200),
    };
    m.handle(start, fast);
    assert_eq!(m.master_adver_interval(), Duration::from_millis(200));
    // 3 * 0.2 s + 156 * 0.2 s / 256.
    assert_eq!(
        m.poll_timeout(),
        Some(start + Duration::from_micros(721_875))
    );
    // Back to Master, it advertises its own interval again.
    let due = m.poll_timeout().expect("down timer");
    m.handle(due, Input::Timeout);
    assert_eq!(m.master_adver_interval(), SECOND);
}

#[test]
fn shutdown_from_every_state() {
    // RFC 9568 sections 6.4.2 and 6.4.3; keepalived notifies STOP.
    let mut init = machine(config(Version::V3, 100));
    assert_eq!(init.handle(Instant::ZERO, Input::Shutdown), vec![]);

    let mut backup = started(config(Version::V3, 100));
    assert_eq!(
        backup.handle(ms(1), Input::Shutdown),
        vec![notify(NotifyState::Stop, 100)]
    );
    assert_eq!(
        (backup.state(), backup.poll_timeout()),
        (State::Initialize, None)
    );

    let (mut master, start) = master_at(Version::V3, 100);
    assert_eq!(
        master.handle(start, Input::Shutdown),
        vec![
            Action::SendAdvert { priority: 0 },
            Action::RemoveAddresses,
            notify(NotifyState::Stop, 100)
        ]
    );
    assert_eq!(
        (master.state(), master.poll_timeout()),
        (State::Initialize, None)
    );
    assert_eq!(master.stats().priority_zero_sent, 1);
    assert_eq!(master.last_reason(), Some(&Reason::Shutdown));

    let mut c = config(Version::V3, 100);
    c.tracks = vec![Track::fault("link")];
    let mut fault = started(c);
    fault.handle(
        ms(1),
        Input::Track {
            index: 0,
            up: false,
        },
    );
    assert_eq!(
        fault.handle(ms(2), Input::Shutdown),
        vec![notify(NotifyState::Stop, 100)]
    );

    // And it can start again.
    assert_eq!(
        master.handle(start, Input::Startup),
        vec![notify(NotifyState::Backup, 100)]
    );
}

#[test]
fn weighted_tracks_move_the_effective_priority() {
    // keepalived: a negative weight counts while down, a positive one while up, reverse
    // swaps them; the result stays within 1..=254 and an owner's 255 never moves.
    let cases: &[(u8, i16, bool, u8, u8)] = &[
        // configured, weight, reverse, priority while up, while down
        (100, -30, false, 100, 70),
        (100, 20, false, 120, 100),
        (100, -30, true, 100, 130),
        (100, 20, true, 80, 100),
        (10, -30, false, 10, 1),
        (250, 20, false, 254, 250),
        (255, -30, false, 255, 255),
    ];
    for &(configured, weight, reverse, up, down) in cases {
        let mut c = config(Version::V3, configured);
        c.tracks = vec![Track {
            name: "t".into(),
            weight,
            reverse,
        }];
        let mut m = machine(c);
        let what = format!("{configured} {weight} reverse {reverse}");
        assert_eq!(m.priority(), up, "{what}");
        m.handle(
            Instant::ZERO,
            Input::Track {
                index: 0,
                up: false,
            },
        );
        assert_eq!(m.priority(), down, "{what}");
        m.handle(Instant::ZERO, Input::Track { index: 0, up: true });
        assert_eq!(m.priority(), up, "{what}");
    }
}

#[test]
fn priority_change_moves_a_running_down_timer() {
    let mut c = config(Version::V2, 100);
    c.tracks = vec![Track::weighted("backends", -50)];
    let mut m = started(c);
    m.handle(
        ms(1_000),
        Input::Track {
            index: 0,
            up: false,
        },
    );
    // Skew at 50: 206/256 s; the timer started at 0 now ends at 3 s + 804.687 ms.
    assert_eq!(m.priority(), 50);
    assert_eq!(m.poll_timeout(), Some(at(Duration::from_micros(3_804_687))));
    assert_eq!(m.state(), State::Backup);
    // A Master simply advertises its new priority.
    let due = m.poll_timeout().expect("down timer");
    assert_eq!(m.handle(due, Input::Timeout), becoming_master(50));
    m.handle(due, Input::Track { index: 0, up: true });
    assert_eq!(
        m.handle(due + SECOND, Input::Timeout),
        vec![Action::SendAdvert { priority: 100 }]
    );
}

#[test]
fn fault_tracks() {
    // keepalived: a weight-0 track down means FAULT (no adverts, addresses removed, adverts
    // ignored); when it comes back the instance is a Backup again.
    let mut c = config(Version::V3, 100);
    c.tracks = vec![
        Track::fault("eth0"),
        Track {
            name: "xdp".into(),
            weight: 0,
            reverse: true,
        },
    ];
    let mut m = machine(c);
    // Every track starts up: report the reversed one down before startup.
    m.handle(
        Instant::ZERO,
        Input::Track {
            index: 1,
            up: false,
        },
    );
    assert_eq!(
        m.handle(Instant::ZERO, Input::Startup),
        vec![notify(NotifyState::Backup, 100)]
    );
    assert_eq!(
        m.handle(
            ms(1_000),
            Input::Track {
                index: 0,
                up: false
            }
        ),
        vec![notify(NotifyState::Fault, 100)]
    );
    assert_eq!((m.state(), m.poll_timeout()), (State::Fault, None));
    assert_eq!(
        m.last_reason().map(ToString::to_string).as_deref(),
        Some("track eth0 down")
    );
    assert_eq!(m.handle(ms(2_000), advert(ip(3), 0)), vec![]);
    assert_eq!(m.handle(ms(2_000), Input::Timeout), vec![]);
    assert_eq!(
        m.handle(ms(3_000), Input::Track { index: 0, up: true }),
        vec![notify(NotifyState::Backup, 100)]
    );
    assert_eq!(m.poll_timeout(), Some(ms(3_000) + DOWN_100));
    // reverse: Fault while the condition is up.
    assert_eq!(
        m.handle(
            ms(4_000),
            Input::Track {
                index: 1,
                up: false
            }
        ),
        vec![]
    );
    assert_eq!(
        m.handle(ms(4_000), Input::Track { index: 1, up: true }),
        vec![notify(NotifyState::Fault, 100)]
    );

    // A Master going to Fault resigns (keepalived's vrrp_state_leave_master).
    let mut c = config(Version::V3, 100);
    c.tracks = vec![Track::fault("eth0")];
    let mut master = started(c);
    let due = master.poll_timeout().expect("down timer");
    master.handle(due, Input::Timeout);
    assert_eq!(
        master.handle(
            due,
            Input::Track {
                index: 0,
                up: false
            }
        ),
        vec![
            Action::SendAdvert { priority: 0 },
            Action::RemoveAddresses,
            notify(NotifyState::Fault, 100)
        ]
    );
    assert_eq!(master.stats().released_master, 1);
    // An unknown track index is ignored.
    assert_eq!(
        master.handle(due, Input::Track { index: 7, up: true }),
        vec![]
    );
    assert_eq!(master.state(), State::Fault);
}

#[test]
fn startup_with_a_failed_track_enters_fault() {
    let mut c = config(Version::V3, 255);
    c.tracks = vec![Track::fault("eth0")];
    let mut m = machine(c);
    // Tracks reported before startup only record the state.
    assert_eq!(
        m.handle(
            Instant::ZERO,
            Input::Track {
                index: 0,
                up: false
            }
        ),
        vec![]
    );
    assert_eq!(
        m.handle(Instant::ZERO, Input::Startup),
        vec![notify(NotifyState::Fault, 255)]
    );
    // The owner leaves Fault straight to Master (keepalived's try_up_instance).
    assert_eq!(
        m.handle(ms(500), Input::Track { index: 0, up: true }),
        becoming_master(255)
    );
}

#[test]
fn adverts_are_ignored_before_startup_but_counted() {
    let mut m = machine(config(Version::V3, 100));
    assert_eq!(m.handle(Instant::ZERO, advert(ip(3), 100)), vec![]);
    assert_eq!(m.handle(Instant::ZERO, Input::Timeout), vec![]);
    assert_eq!(m.state(), State::Initialize);
    assert_eq!(m.stats().adverts_received, 1);
}

#[test]
fn two_masters_tie_break_on_the_higher_address() {
    // Both start at once with the same priority; both time out and become Master; the
    // lower address steps down when it hears the higher one (RFC 9568 section 6.4.3).
    let mut low = started(config(Version::V3, 100));
    let mut high_config = config(Version::V3, 100);
    high_config.primary_address = ip(3);
    let mut high = started(high_config);
    let due = low.poll_timeout().expect("down timer");
    low.handle(due, Input::Timeout);
    high.handle(due, Input::Timeout);
    assert_eq!((low.state(), high.state()), (State::Master, State::Master));
    assert_eq!(
        high.handle(due, advert(ip(2), 100)),
        vec![Action::SendAdvert { priority: 100 }]
    );
    assert_eq!(
        low.handle(due, advert(ip(3), 100))[0],
        Action::RemoveAddresses
    );
    assert_eq!((low.state(), high.state()), (State::Backup, State::Master));
}

#[test]
fn time_in_state_and_reasons() {
    let mut m = started(config(Version::V3, 100));
    assert_eq!(m.time_in_state(ms(1_500)), Duration::from_millis(1_500));
    m.handle(ms(2_000), advert(ip(3), 100));
    assert_eq!(
        m.time_in_state(ms(2_500)),
        Duration::from_millis(2_500),
        "no transition"
    );
    let reasons = [
        (
            Reason::MasterDown {
                after: Duration::from_secs(3),
            },
            "master down after 3s",
        ),
        (
            Reason::MasterDown {
                after: Duration::from_millis(3_600),
            },
            "master down after 3.6s",
        ),
        (
            Reason::Track {
                name: "web".into(),
                up: false,
            },
            "track web down",
        ),
        (
            Reason::SyncGroup {
                group: "g".into(),
                member: "vi_2".into(),
                state: State::Fault,
            },
            "sync group g follows vi_2 to FAULT",
        ),
        (Reason::AddressOwner, "address owner (priority 255)"),
    ];
    for (reason, text) in reasons {
        assert_eq!(reason.to_string(), text);
    }
}
