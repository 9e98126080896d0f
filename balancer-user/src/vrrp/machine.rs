//! One VRRP instance: the state machine of RFC 9568 section 6 (RFC 3768 section 6 for v2),
//! with keepalived 2.2.7's additions: the Fault state and tracking, `preempt_delay`, the
//! second burst of gratuitous ARPs, and advertisements sent back to a lower-priority Master.

use std::cmp::Ordering;
use std::net::IpAddr;
use std::time::Duration;

use super::events::{Action, Input, NotifyState, Reason, State, Stats};
use super::params::{self, Config, ConfigError, Version, PRIORITY_OWNER};
use super::Instant;

/// One VRRP instance. Feed it [`Input`]s with the current time through [`Machine::handle`],
/// perform the returned [`Action`]s in order, and deliver [`Input::Timeout`] when the clock
/// reaches [`Machine::poll_timeout`].
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    state: State,
    track_up: Vec<bool>,
    /// The effective priority: configured, adjusted by weighted tracks.
    priority: u8,
    /// `Master_Adver_Interval` (RFC 9568 section 6.1): the configured interval, or for a v3
    /// Backup the one learnt from the Master.
    master_adver_interval: Duration,
    /// `Master_Down_Timer` (Backup only) and when it was last set.
    down_at: Option<Instant>,
    down_armed_at: Instant,
    /// The Master that resigned, if the down timer is only `Skew_Time`.
    resigned_by: Option<IpAddr>,
    /// The last lower-priority advert discarded since the down timer was set.
    discarded: Option<(IpAddr, u8)>,
    /// keepalived's `preempt_time`: when a lower-priority Master stops being accepted.
    preempt_at: Option<Instant>,
    /// `Adver_Timer` and the second GARP burst (Master only).
    advert_at: Option<Instant>,
    garp_at: Option<Instant>,
    /// In a sync group, the group decides when a Backup becomes Master.
    gated: bool,
    /// A gated Backup whose down timer fired, and why (keepalived's wantstate MASTER).
    wants_master: Option<Reason>,
    /// A sync group member is in Fault.
    group_fault: bool,
    stats: Stats,
    reason: Option<Reason>,
    out: Vec<Action>,
}

impl Machine {
    /// A machine in Initialize; every track starts up.
    ///
    /// # Errors
    /// The configuration is invalid ([`Config::validate`]).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut machine = Self {
            track_up: vec![true; config.tracks.len()],
            priority: config.priority,
            master_adver_interval: config.advert_interval,
            config,
            state: State::Initialize,
            down_at: None,
            down_armed_at: Instant::ZERO,
            resigned_by: None,
            discarded: None,
            preempt_at: None,
            advert_at: None,
            garp_at: None,
            gated: false,
            wants_master: None,
            group_fault: false,
            stats: Stats::default(),
            reason: None,
            out: Vec::new(),
        };
        machine.priority = machine.computed_priority();
        Ok(machine)
    }

    /// Processes one input at time `now` and returns what to do.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        match input {
            Input::Startup => self.startup(now),
            Input::Shutdown => self.shutdown(now),
            Input::Advert {
                from,
                priority,
                max_advert_int,
            } => {
                self.stats.adverts_received += 1;
                if priority == 0 {
                    self.stats.priority_zero_received += 1;
                }
                match self.state {
                    State::Backup => self.backup_advert(now, from, priority, max_advert_int),
                    State::Master => self.master_advert(now, from, priority, max_advert_int),
                    // RFC 9568 section 6.4.1 has no advert event in Initialize; keepalived
                    // ignores adverts in FAULT.
                    State::Initialize | State::Fault => {}
                }
            }
            Input::Timeout => self.timeout(now),
            Input::Track { index, up } => self.track(now, index, up),
        }
        std::mem::take(&mut self.out)
    }

    /// When the machine next wants [`Input::Timeout`]: the `Master_Down_Timer` in Backup, the
    /// `Adver_Timer` or the second GARP burst in Master; never in Initialize or Fault.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Backup => self.down_at,
            State::Master => [self.advert_at, self.garp_at].into_iter().flatten().min(),
            State::Initialize | State::Fault => None,
        }
    }

    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The effective priority advertised: the configured one adjusted by weighted tracks,
    /// within 1..=254, or 255 for the owner.
    #[must_use]
    pub fn priority(&self) -> u8 {
        self.priority
    }

    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Why the last transition happened; `None` before the first.
    #[must_use]
    pub fn last_reason(&self) -> Option<&Reason> {
        self.reason.as_ref()
    }

    /// How long the machine has been in its state (since the origin if it never moved).
    #[must_use]
    pub fn time_in_state(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stats.last_transition.unwrap_or(Instant::ZERO))
    }

    /// Each track with its current state.
    pub fn tracks(&self) -> impl Iterator<Item = (&params::Track, bool)> {
        self.config.tracks.iter().zip(self.track_up.iter().copied())
    }

    /// `Master_Adver_Interval`: the interval a Backup expects from the Master.
    #[must_use]
    pub fn master_adver_interval(&self) -> Duration {
        self.master_adver_interval
    }

    /// `Skew_Time` at the effective priority (RFC 9568 section 6.1).
    #[must_use]
    pub fn skew_time(&self) -> Duration {
        params::skew_time(
            self.config.version,
            self.priority,
            self.master_adver_interval,
        )
    }

    /// `Master_Down_Interval` at the effective priority (RFC 9568 section 6.1).
    #[must_use]
    pub fn master_down_interval(&self) -> Duration {
        params::master_down_interval(
            self.config.version,
            self.priority,
            self.master_adver_interval,
        )
    }

    /// RFC 9568 section 6.4.1. keepalived starts in FAULT when a weight-0 track is down.
    fn startup(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        self.master_adver_interval = self.config.advert_interval;
        if let Some(reason) = self.fault_reason() {
            self.enter_non_master(now, State::Fault, reason);
        } else {
            self.come_up(now, Reason::Startup);
        }
    }

    /// Out of Initialize or Fault: the owner becomes Master at once (RFC 9568 section
    /// 6.4.1; keepalived's `try_up_instance` does the same when a fault clears), anyone else
    /// Backup with a full `Master_Down_Interval`.
    fn come_up(&mut self, now: Instant, reason: Reason) {
        self.master_adver_interval = self.config.advert_interval;
        if self.config.priority != PRIORITY_OWNER {
            self.enter_non_master(now, State::Backup, reason);
        } else if self.gated {
            self.enter_non_master(now, State::Backup, reason);
            self.wants_master = Some(Reason::AddressOwner);
        } else {
            self.enter_master(now, Reason::AddressOwner);
        }
    }

    /// RFC 9568 sections 6.4.2 and 6.4.3: Shutdown goes to Initialize; a Master first sends
    /// priority 0 so that a Backup takes over after its `Skew_Time`.
    fn shutdown(&mut self, now: Instant) {
        if self.state != State::Initialize {
            self.enter_non_master(now, State::Initialize, Reason::Shutdown);
        }
    }

    fn timeout(&mut self, now: Instant) {
        match self.state {
            // RFC 9568 section 6.4.2: the Master_Down_Timer fired.
            State::Backup if self.down_at.is_some_and(|at| at <= now) => {
                let reason = if let Some(from) = self.resigned_by {
                    Reason::PriorityZero { from }
                } else if let Some((from, theirs)) = self.discarded {
                    Reason::Preempting {
                        from,
                        theirs,
                        ours: self.priority,
                    }
                } else {
                    Reason::MasterDown {
                        after: now.saturating_duration_since(self.down_armed_at),
                    }
                };
                if self.gated {
                    // keepalived's vrrp_sync_can_goto_master: wait, with the timer re-armed,
                    // until every member of the group wants to be Master.
                    self.wants_master = Some(reason);
                    self.arm_down_timer(now);
                } else {
                    self.enter_master(now, reason);
                }
            }
            State::Master => {
                // RFC 9568 section 6.4.3: the Adver_Timer fired.
                if self.advert_at.is_some_and(|at| at <= now) {
                    self.send_advert(self.priority);
                    self.advert_at = Some(now + self.config.advert_interval);
                }
                // keepalived's vrrp_gratuitous_arp_thread, garp_master_delay after the first.
                if self.garp_at.is_some_and(|at| at <= now) {
                    self.garp_at = None;
                    self.out.push(Action::SendGratuitous {
                        count: self.config.garp_master_repeat,
                    });
                }
            }
            State::Backup | State::Initialize | State::Fault => {}
        }
    }

    /// RFC 9568 section 6.4.2 (RFC 3768 section 6.4.2), with keepalived's `preempt_delay`
    /// (`vrrp.c`, `vrrp_state_backup`): the first lower-priority advert starts the delay, and
    /// until it has passed lower-priority adverts are accepted as if preemption were off.
    fn backup_advert(&mut self, now: Instant, from: IpAddr, priority: u8, interval: Duration) {
        if priority == 0 {
            self.down_at = Some(now + self.skew_time());
            self.down_armed_at = now;
            self.resigned_by = Some(from);
            self.stats.master = None;
            return;
        }
        self.stats.master = Some(from);
        let delay = self.config.preempt_delay;
        let delaying = !delay.is_zero() && self.preempt_at.is_none_or(|at| at > now);
        if !self.config.preempt || priority >= self.priority || delaying {
            self.learn_interval(interval);
            self.arm_down_timer(now);
            self.wants_master = None;
            if !delay.is_zero() {
                if priority >= self.priority {
                    self.preempt_at = None;
                } else if self.preempt_at.is_none() {
                    self.preempt_at = Some(now + delay);
                }
            }
        } else {
            // Discarded: the down timer keeps running, and this Backup preempts when it fires.
            self.discarded = Some((from, priority));
        }
    }

    /// RFC 9568 section 6.4.3 (RFC 3768 section 6.4.3).
    fn master_advert(&mut self, now: Instant, from: IpAddr, priority: u8, interval: Duration) {
        if priority == 0 {
            // The Backups that heard the resignation set their down timers to Skew_Time:
            // advertise now, before one of them takes over.
            self.send_advert(self.priority);
            self.advert_at = Some(now + self.config.advert_interval);
            return;
        }
        let order = priority
            .cmp(&self.priority)
            .then_with(|| address_order(from, self.config.primary_address));
        match order {
            Ordering::Greater => {
                let reason = if priority > self.priority {
                    Reason::HigherPriority { from, priority }
                } else {
                    Reason::HigherAddress { from, priority }
                };
                self.learn_interval(interval);
                self.enter_non_master(now, State::Backup, reason);
                self.stats.master = Some(from);
            }
            // RFC 9568's "new Active Router logic" (RFC 3768 only discarded it): assert
            // ourselves at once. keepalived does the same unless `lower_prio_no_advert`.
            Ordering::Less => self.send_advert(self.priority),
            // Our own priority and address: our own advert looped back, or a twin with our
            // address; keepalived logs it and ignores it.
            Ordering::Equal => {}
        }
    }

    /// keepalived's tracking: a weighted track moves the effective priority, a weight-0 one
    /// moves the instance into or out of Fault.
    fn track(&mut self, now: Instant, index: usize, up: bool) {
        let Some(slot) = self.track_up.get_mut(index) else {
            return;
        };
        if *slot == up {
            return;
        }
        *slot = up;
        let name = self
            .config
            .tracks
            .get(index)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        self.set_priority(self.computed_priority());
        self.update_fault(now, Reason::Track { name, up });
    }

    /// keepalived's `vrrp_set_effective_priority`: the owner's 255 never moves, anyone
    /// else's stays within 1..=254 (RFC 9568 section 5.2.4 keeps 255 for the owner).
    fn computed_priority(&self) -> u8 {
        if self.config.priority == PRIORITY_OWNER {
            return PRIORITY_OWNER;
        }
        let total = self
            .tracks()
            .fold(i32::from(self.config.priority), |total, (track, up)| {
                total.saturating_add(track.adjustment(up))
            })
            .clamp(1, 254);
        u8::try_from(total).unwrap_or(1)
    }

    /// keepalived moves a running down timer by the change of `Master_Down_Interval`, since
    /// the `Skew_Time` depends on the priority.
    fn set_priority(&mut self, priority: u8) {
        if priority == self.priority {
            return;
        }
        let before = self.master_down_interval();
        self.priority = priority;
        let after = self.master_down_interval();
        if let (Some(at), None) = (self.down_at, self.resigned_by) {
            self.down_at = Some(match after.checked_sub(before) {
                Some(longer) => at + longer,
                None => at.saturating_sub(before.saturating_sub(after)),
            });
        }
    }

    /// The first weight-0 track that is down, as the reason for Fault.
    fn fault_reason(&self) -> Option<Reason> {
        self.tracks()
            .find(|(track, up)| track.faults(*up))
            .map(|(track, up)| Reason::Track {
                name: track.name.clone(),
                up,
            })
    }

    pub(super) fn own_fault(&self) -> bool {
        self.fault_reason().is_some()
    }

    /// Enters Fault when the instance or its sync group is faulty, leaves it when neither is.
    fn update_fault(&mut self, now: Instant, reason: Reason) {
        let faulty = self.own_fault() || self.group_fault;
        match self.state {
            State::Backup | State::Master if faulty => {
                self.enter_non_master(now, State::Fault, reason);
            }
            State::Fault if !faulty => self.come_up(now, reason),
            State::Initialize | State::Backup | State::Master | State::Fault => {}
        }
    }

    fn enter_master(&mut self, now: Instant, reason: Reason) {
        self.clear_timers();
        self.state = State::Master;
        // keepalived's vrrp_state_become_master: a Master advertises its own interval.
        self.master_adver_interval = self.config.advert_interval;
        // RFC 9568 section 6.4.2: advertise first, so that the old Master (if any) removes
        // the addresses before our gratuitous ARPs; keepalived does the same.
        self.send_advert(self.priority);
        self.advert_at = Some(now + self.config.advert_interval);
        self.out.push(Action::AddAddresses);
        let repeat = self.config.garp_master_repeat;
        if repeat > 0 {
            self.out.push(Action::SendGratuitous { count: repeat });
            if !self.config.garp_master_delay.is_zero() {
                self.garp_at = Some(now + self.config.garp_master_delay);
            }
        }
        self.stats.became_master += 1;
        self.stats.master = Some(self.config.primary_address);
        self.transitioned(now, reason);
    }

    /// Into Backup, Fault or Initialize. A Master leaving for Fault (keepalived's
    /// `vrrp_state_leave_master`) or on Shutdown (RFC 9568 section 6.4.3) resigns with
    /// priority 0, so that a Backup takes over after its `Skew_Time` rather than a full
    /// `Master_Down_Interval`; one that heard a better Master just leaves. For Backup, the
    /// caller sets `Master_Adver_Interval` first (learnt from that Master, or reset).
    fn enter_non_master(&mut self, now: Instant, state: State, reason: Reason) {
        self.leave_master(state != State::Backup);
        self.clear_timers();
        self.state = state;
        self.stats.master = None;
        if state == State::Backup {
            self.arm_down_timer(now);
        }
        self.transitioned(now, reason);
    }

    fn leave_master(&mut self, resign: bool) {
        if self.state != State::Master {
            return;
        }
        if resign {
            self.send_advert(0);
        }
        self.out.push(Action::RemoveAddresses);
        self.stats.released_master += 1;
    }

    /// Cancels every timer and forgets what the last down timer was waiting for.
    fn clear_timers(&mut self) {
        self.down_at = None;
        self.resigned_by = None;
        self.discarded = None;
        self.preempt_at = None;
        self.advert_at = None;
        self.garp_at = None;
        self.wants_master = None;
    }

    /// Sets the `Master_Down_Timer` to `Master_Down_Interval` (RFC 9568 section 6.4.2).
    fn arm_down_timer(&mut self, now: Instant) {
        self.down_at = Some(now + self.master_down_interval());
        self.down_armed_at = now;
        self.resigned_by = None;
        self.discarded = None;
    }

    /// A v3 Backup takes the Master's interval (RFC 9568 section 6.4.2); v2 has no field
    /// to learn from.
    fn learn_interval(&mut self, advertised: Duration) {
        if self.config.version == Version::V3 {
            if let Some(interval) = params::learnt_interval(advertised) {
                self.master_adver_interval = interval;
            }
        }
    }

    fn send_advert(&mut self, priority: u8) {
        self.stats.adverts_sent += 1;
        if priority == 0 {
            self.stats.priority_zero_sent += 1;
        }
        self.out.push(Action::SendAdvert { priority });
    }

    fn transitioned(&mut self, now: Instant, reason: Reason) {
        self.reason = Some(reason);
        self.stats.last_transition = Some(now);
        self.out.push(Action::Notify {
            state: NotifyState::of(self.state),
            priority: self.priority,
        });
    }

    /// In a sync group, Backup does not become Master on its own.
    pub(super) fn set_gated(&mut self, gated: bool) {
        self.gated = gated;
    }

    /// A gated Backup whose down timer fired.
    pub(super) fn wants_master(&self) -> bool {
        self.state == State::Backup && self.wants_master.is_some()
    }

    /// The sync group makes this Backup Master; it keeps its own reason if it wanted to.
    pub(super) fn promote(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        if self.state == State::Backup {
            let reason = self.wants_master.take().unwrap_or(reason);
            self.enter_master(now, reason);
        }
        std::mem::take(&mut self.out)
    }

    /// The sync group makes this Master a Backup (keepalived's `vrrp_sync_backup`: addresses
    /// removed, no priority 0 sent).
    pub(super) fn demote(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        if self.state == State::Master {
            self.master_adver_interval = self.config.advert_interval;
            self.enter_non_master(now, State::Backup, reason);
        }
        std::mem::take(&mut self.out)
    }

    /// The sync group's Fault (keepalived's `vrrp_sync_fault`) starts or ends.
    pub(super) fn set_group_fault(
        &mut self,
        now: Instant,
        on: bool,
        reason: Reason,
    ) -> Vec<Action> {
        self.group_fault = on;
        self.update_fault(now, reason);
        std::mem::take(&mut self.out)
    }

    pub(super) fn group_fault(&self) -> bool {
        self.group_fault
    }
}

/// RFC 9568 section 6.4.3: "an unsigned integer comparison of the `IPvX` addresses in network
/// byte order"; an address of the other family never wins (keepalived's `vrrp_saddr_cmp`
/// returns 0 for it).
fn address_order(theirs: IpAddr, ours: IpAddr) -> Ordering {
    match (theirs, ours) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.cmp(&b),
        (IpAddr::V6(a), IpAddr::V6(b)) => a.cmp(&b),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests;
