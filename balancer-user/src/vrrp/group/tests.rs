//! The sync group coordinator against keepalived's `vrrp_sync.c` rules, with a fake clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{GroupAction, GroupInput, SyncGroup};
use crate::vrrp::{
    Action, Config, ConfigError, Input, Instant, NotifyState, Reason, State, Track, Version,
};

/// `Master_Down_Interval` at priority 100 and a 1 s interval.
const DOWN_100: Duration = Duration::from_micros(3_609_375);

fn ms(millis: u64) -> Instant {
    Instant::from_duration(Duration::from_millis(millis))
}

fn at(since_origin: Duration) -> Instant {
    Instant::from_duration(since_origin)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn member(name: &str, priority: u8) -> Config {
    let mut config = Config::new(name, 51, ip(2));
    config.version = Version::V3;
    config.priority = priority;
    config.tracks = vec![Track::fault(format!("{name}-link"))];
    config
}

/// Members "vip" (priority 100) and "snat" (priority 200, so a shorter down timer).
fn group() -> SyncGroup {
    SyncGroup::new("g", vec![member("vip", 100), member("snat", 200)], false).expect("valid group")
}

fn started() -> SyncGroup {
    let mut g = group();
    let actions = g.handle(Instant::ZERO, GroupInput::Startup);
    assert_eq!(
        actions,
        vec![
            GroupAction::Member {
                index: 0,
                action: Action::Notify {
                    state: NotifyState::Backup,
                    priority: 100
                }
            },
            GroupAction::Member {
                index: 1,
                action: Action::Notify {
                    state: NotifyState::Backup,
                    priority: 200
                }
            },
            GroupAction::Notify {
                state: NotifyState::Backup
            },
        ]
    );
    g
}

fn states(g: &SyncGroup) -> Vec<State> {
    g.members()
        .iter()
        .map(crate::vrrp::Machine::state)
        .collect()
}

fn to(index: usize, input: Input) -> GroupInput {
    GroupInput::Member { index, input }
}

fn advert(priority: u8) -> Input {
    Input::Advert {
        from: ip(3),
        priority,
        max_advert_int: Duration::from_secs(1),
    }
}

/// Delivers every timeout up to `until`.
fn run_until(g: &mut SyncGroup, until: Instant) -> Vec<GroupAction> {
    let mut out = Vec::new();
    while let Some(due) = g.poll_timeout().filter(|due| *due <= until) {
        out.extend(g.handle(due, GroupInput::Timeout));
    }
    out
}

fn master_group() -> SyncGroup {
    let mut g = started();
    run_until(&mut g, at(DOWN_100));
    assert_eq!(states(&g), vec![State::Master, State::Master]);
    g
}

fn member_actions(actions: &[GroupAction], index: usize) -> Vec<Action> {
    actions
        .iter()
        .filter_map(|a| match a {
            GroupAction::Member { index: i, action } if *i == index => Some(action.clone()),
            _ => None,
        })
        .collect()
}

/// Why member `index` last moved.
fn reason(g: &SyncGroup, index: usize) -> Option<String> {
    g.members()
        .get(index)?
        .last_reason()
        .map(ToString::to_string)
}

/// The priority of each member's first action, if it is an advert.
fn first_adverts(actions: &[GroupAction]) -> [Option<u8>; 2] {
    [0, 1].map(|index| match member_actions(actions, index).first() {
        Some(Action::SendAdvert { priority }) => Some(*priority),
        _ => None,
    })
}

/// The group's notify, which comes last.
fn group_notified(actions: &[GroupAction]) -> Option<NotifyState> {
    match actions.last() {
        Some(GroupAction::Notify { state }) => Some(*state),
        _ => None,
    }
}

#[test]
fn construction() {
    assert_eq!(
        SyncGroup::new("g", vec![], false).err(),
        Some(ConfigError::EmptySyncGroup("g".into()))
    );
    let mut weighted = member("vip", 100);
    weighted.tracks.push(Track::weighted("backends", -20));
    let refused = SyncGroup::new("g", vec![weighted.clone()], false).err();
    assert_eq!(refused.as_ref().map(ConfigError::field), Some("track"));
    assert!(
        SyncGroup::new("g", vec![weighted], true).is_ok(),
        "sync_group_tracking_weight"
    );
    let mut bad = member("vip", 100);
    bad.vrid = 0;
    assert_eq!(
        SyncGroup::new("g", vec![bad], false).err(),
        Some(ConfigError::Vrid)
    );
    let g = group();
    assert_eq!(
        (g.name(), g.state(), g.poll_timeout()),
        ("g", State::Initialize, None)
    );
}

#[test]
fn a_member_waits_until_every_member_wants_to_be_master() {
    // vrrp_sync_can_goto_master: "Only sync to master if everyone wants to".
    let mut g = started();
    let snat_down = g.poll_timeout().expect("timers");
    assert!(
        snat_down < at(DOWN_100),
        "the higher priority has the shorter skew"
    );
    assert_eq!(g.handle(snat_down, GroupInput::Timeout), vec![]);
    assert_eq!(states(&g), vec![State::Backup, State::Backup]);
    // Held, with its timer re-armed; then "vip" times out too and both become Master.
    let actions = g.handle(at(DOWN_100), GroupInput::Timeout);
    assert_eq!(states(&g), vec![State::Master, State::Master]);
    assert_eq!(first_adverts(&actions), [Some(100), Some(200)]);
    assert_eq!(group_notified(&actions), Some(NotifyState::Master));
    for m in g.members() {
        assert!(
            matches!(m.last_reason(), Some(Reason::MasterDown { .. })),
            "{:?}",
            m.last_reason()
        );
    }
}

#[test]
fn an_advert_cancels_a_members_wish_to_be_master() {
    let mut g = started();
    let snat_down = g.poll_timeout().expect("timers");
    g.handle(snat_down, GroupInput::Timeout);
    // The Master is heard on "snat" after all: it no longer wants Master.
    g.handle(snat_down, to(1, advert(250)));
    assert_eq!(g.handle(at(DOWN_100), GroupInput::Timeout), vec![]);
    assert_eq!(states(&g), vec![State::Backup, State::Backup]);
}

#[test]
fn a_member_stepping_down_takes_the_group_to_backup() {
    // vrrp_sync_backup.
    let mut g = master_group();
    let now = at(DOWN_100) + Duration::from_millis(100);
    let actions = g.handle(now, to(0, advert(150)));
    assert_eq!(states(&g), vec![State::Backup, State::Backup]);
    assert_eq!(
        member_actions(&actions, 1),
        vec![
            Action::RemoveAddresses,
            Action::Notify {
                state: NotifyState::Backup,
                priority: 200
            }
        ]
    );
    assert_eq!(group_notified(&actions), Some(NotifyState::Backup));
    let follows = "sync group g follows vip to BACKUP";
    assert_eq!(reason(&g, 1).as_deref(), Some(follows));
}

#[test]
fn a_member_in_fault_takes_the_group_to_fault_until_no_member_is() {
    // vrrp_sync_fault, then try_up_instance once num_member_fault is back to 0.
    let mut g = master_group();
    let now = at(DOWN_100) + Duration::from_millis(100);
    let actions = g.handle(
        now,
        to(
            1,
            Input::Track {
                index: 0,
                up: false,
            },
        ),
    );
    assert_eq!(states(&g), vec![State::Fault, State::Fault]);
    let resign = vec![
        Action::SendAdvert { priority: 0 },
        Action::RemoveAddresses,
        Action::Notify {
            state: NotifyState::Fault,
            priority: 100,
        },
    ];
    assert_eq!(member_actions(&actions, 0), resign);
    assert_eq!(group_notified(&actions), Some(NotifyState::Fault));
    assert_eq!(g.poll_timeout(), None);

    // A second member fault; clearing the first keeps the group in Fault.
    assert_eq!(
        g.handle(
            now,
            to(
                0,
                Input::Track {
                    index: 0,
                    up: false
                }
            )
        ),
        vec![]
    );
    assert_eq!(
        g.handle(now, to(1, Input::Track { index: 0, up: true })),
        vec![]
    );
    assert_eq!(states(&g), vec![State::Fault, State::Fault]);

    let later = now + Duration::from_secs(1);
    let actions = g.handle(later, to(0, Input::Track { index: 0, up: true }));
    assert_eq!(states(&g), vec![State::Backup, State::Backup]);
    assert_eq!(group_notified(&actions), Some(NotifyState::Backup));
    let follows = "sync group g follows vip to BACKUP";
    assert_eq!(reason(&g, 1).as_deref(), Some(follows));
    // Both come back as Backups with a full down timer, then fail over together again.
    run_until(&mut g, later + DOWN_100);
    assert_eq!(states(&g), vec![State::Master, State::Master]);
}

#[test]
fn shutdown_stops_every_member() {
    let mut g = master_group();
    let actions = g.handle(at(DOWN_100), GroupInput::Shutdown);
    assert_eq!(states(&g), vec![State::Initialize, State::Initialize]);
    assert_eq!(first_adverts(&actions), [Some(0), Some(0)]);
    assert_eq!(group_notified(&actions), Some(NotifyState::Stop));
    assert_eq!(g.poll_timeout(), None);
}

#[test]
fn owners_become_master_together_at_startup() {
    let mut g =
        SyncGroup::new("g", vec![member("a", 255), member("b", 255)], false).expect("valid");
    let actions = g.handle(Instant::ZERO, GroupInput::Startup);
    assert_eq!(states(&g), vec![State::Master, State::Master]);
    let notifies = actions.iter().filter(|a| {
        matches!(
            a,
            GroupAction::Notify { .. }
                | GroupAction::Member {
                    action: Action::Notify { .. },
                    ..
                }
        )
    });
    assert_eq!(
        notifies.count(),
        3,
        "each member's MASTER and the group's: {actions:?}"
    );
    assert_eq!(group_notified(&actions), Some(NotifyState::Master));
    assert_eq!(g.members()[0].last_reason(), Some(&Reason::AddressOwner));
}

#[test]
fn inputs_for_unknown_members_do_nothing() {
    let mut g = started();
    assert_eq!(g.handle(ms(1), to(9, advert(0))), vec![]);
    assert_eq!(g.handle(ms(1), to(9, Input::Shutdown)), vec![]);
    assert_eq!(g.state(), State::Backup);
}
