//! keepalived's `vrrp_sync_group`: instances that fail over together, e.g. a client-facing
//! VIP and the backend-facing address full NAT uses as its source. The rules are
//! keepalived 2.2.7's (`keepalived/vrrp/vrrp_sync.c`, keepalived.conf(5) "VRRP synchronization
//! group(s)"):
//! - a member becomes Master only when every member wants to (their down timers fired) or
//!   already is, and then they all do (`vrrp_sync_can_goto_master`, `vrrp_sync_master`);
//! - a Master that steps down to Backup takes the other Masters with it (`vrrp_sync_backup`);
//! - a member in Fault puts every member in Fault (`vrrp_sync_fault`), and they come back up
//!   together when no member is faulty any more (`try_up_instance`).

use super::events::{Action, Input, NotifyState, Reason, State};
use super::machine::Machine;
use super::params::{Config, ConfigError, PRIORITY_OWNER};
use super::Instant;

/// What happens to the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupInput {
    /// Start every member.
    Startup,
    /// Shut every member down.
    Shutdown,
    /// The clock reached [`SyncGroup::poll_timeout`]: every member whose timer is due.
    Timeout,
    /// An input for one member (an advert on its socket, one of its tracks).
    Member { index: usize, input: Input },
}

/// What to do, member by member, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    /// Perform `action` for member `index` (its addresses, its socket, its notify command).
    Member { index: usize, action: Action },
    /// Run the group's notify command: keepalived's `GROUP name STATE 0` (a group has no
    /// priority, `vrrp_notify.c`).
    Notify { state: NotifyState },
}

/// A pure coordinator over the machines of one sync group.
#[derive(Debug, Clone)]
pub struct SyncGroup {
    name: String,
    members: Vec<Machine>,
    /// The state last notified.
    state: State,
}

impl SyncGroup {
    /// A group of machines built from `members`, in Initialize.
    ///
    /// keepalived ignores the weighted tracks of a sync group member, so that all members
    /// keep consistent priorities, unless `sync_group_tracking_weight` is set
    /// (keepalived.conf(5)); here such a track is refused instead of silently ignored.
    ///
    /// # Errors
    /// An empty group, a member's invalid configuration, or a weighted track without
    /// `tracking_weight`.
    pub fn new(
        name: impl Into<String>,
        members: Vec<Config>,
        tracking_weight: bool,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        if members.is_empty() {
            return Err(ConfigError::EmptySyncGroup(name));
        }
        if !tracking_weight {
            for config in &members {
                if let Some(track) = config.tracks.iter().find(|t| t.weight != 0) {
                    return Err(ConfigError::SyncGroupTrackWeight {
                        group: name,
                        member: config.name.clone(),
                        track: track.name.clone(),
                    });
                }
            }
        }
        // keepalived starts a group of address owners as MASTER (vrrp_sync_set_group): they
        // need not wait for each other.
        let gated = !members.iter().all(|c| c.priority == PRIORITY_OWNER);
        let members = members
            .into_iter()
            .map(|config| {
                let mut machine = Machine::new(config)?;
                machine.set_gated(gated);
                Ok(machine)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Self {
            name,
            members,
            state: State::Initialize,
        })
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn members(&self) -> &[Machine] {
        &self.members
    }

    /// The group's state as last notified: Fault if a member is, Master if all are, Backup
    /// otherwise, Initialize before startup and after shutdown.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// The earliest timer of any member.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.members.iter().filter_map(Machine::poll_timeout).min()
    }

    /// Processes one input at time `now` and returns what to do. An input for a member that
    /// does not exist does nothing.
    pub fn handle(&mut self, now: Instant, input: GroupInput) -> Vec<GroupAction> {
        let before: Vec<State> = self.members.iter().map(Machine::state).collect();
        let mut out = Vec::new();
        let trigger = match input {
            // Every member takes these: no single member causes what follows.
            GroupInput::Startup => {
                self.broadcast(now, Input::Startup, &mut out);
                None
            }
            GroupInput::Shutdown => {
                self.broadcast(now, Input::Shutdown, &mut out);
                None
            }
            GroupInput::Timeout => {
                self.broadcast(now, Input::Timeout, &mut out);
                None
            }
            GroupInput::Member { index, input } => {
                let Some(member) = self.members.get_mut(index) else {
                    return out;
                };
                push(&mut out, index, member.handle(now, input));
                Some(index)
            }
        };
        self.spread_fault(now, trigger, &mut out);
        self.spread_backup(now, &before, &mut out);
        self.spread_master(now, &mut out);
        let state = self.derived_state();
        if state != self.state {
            self.state = state;
            out.push(GroupAction::Notify {
                state: NotifyState::of(state),
            });
        }
        out
    }

    /// Gives `input` to every member.
    fn broadcast(&mut self, now: Instant, input: Input, out: &mut Vec<GroupAction>) {
        for (index, member) in self.members.iter_mut().enumerate() {
            push(out, index, member.handle(now, input));
        }
    }

    /// `vrrp_sync_fault` and its end: every running member is in Fault while any member has a
    /// fault of its own.
    fn spread_fault(&mut self, now: Instant, trigger: Option<usize>, out: &mut Vec<GroupAction>) {
        let running = |m: &Machine| m.state() != State::Initialize;
        let faulty = self
            .members
            .iter()
            .position(|m| running(m) && m.own_fault());
        let reason = match faulty {
            Some(index) => self.reason(Some(index), State::Fault),
            None => self.reason(trigger, State::Backup),
        };
        for (index, machine) in self.members.iter_mut().enumerate() {
            if running(machine) && machine.group_fault() != faulty.is_some() {
                let actions = machine.set_group_fault(now, faulty.is_some(), reason.clone());
                push(out, index, actions);
            }
        }
    }

    /// `vrrp_sync_backup`: a member that left Master for Backup takes the other Masters along.
    fn spread_backup(&mut self, now: Instant, before: &[State], out: &mut Vec<GroupAction>) {
        let stepped_down = self
            .members
            .iter()
            .zip(before)
            .position(|(m, was)| *was == State::Master && m.state() == State::Backup);
        let Some(cause) = stepped_down else {
            return;
        };
        let reason = self.reason(Some(cause), State::Backup);
        for (index, machine) in self.members.iter_mut().enumerate() {
            if machine.state() == State::Master {
                push(out, index, machine.demote(now, reason.clone()));
            }
        }
    }

    /// `vrrp_sync_can_goto_master` and `vrrp_sync_master`: once every member is Master or
    /// wants to be, the Backups all become Master.
    fn spread_master(&mut self, now: Instant, out: &mut Vec<GroupAction>) {
        let ready = self
            .members
            .iter()
            .all(|m| m.state() == State::Master || m.wants_master());
        let Some(cause) = self.members.iter().position(Machine::wants_master) else {
            return;
        };
        if !ready {
            return;
        }
        let reason = self.reason(Some(cause), State::Master);
        for (index, machine) in self.members.iter_mut().enumerate() {
            push(out, index, machine.promote(now, reason.clone()));
        }
    }

    /// Why the group moved its members: `cause` (if one member caused it) went to `state`.
    fn reason(&self, cause: Option<usize>, state: State) -> Reason {
        let member = cause
            .and_then(|i| self.members.get(i))
            .map(|m| m.config().name.clone())
            .unwrap_or_default();
        Reason::SyncGroup {
            group: self.name.clone(),
            member,
            state,
        }
    }

    fn derived_state(&self) -> State {
        let all = |state| self.members.iter().all(|m| m.state() == state);
        if all(State::Initialize) {
            State::Initialize
        } else if self.members.iter().any(|m| m.state() == State::Fault) {
            State::Fault
        } else if all(State::Master) {
            State::Master
        } else {
            State::Backup
        }
    }
}

fn push(out: &mut Vec<GroupAction>, index: usize, actions: Vec<Action>) {
    out.extend(
        actions
            .into_iter()
            .map(|action| GroupAction::Member { index, action }),
    );
}

#[cfg(test)]
mod tests;
