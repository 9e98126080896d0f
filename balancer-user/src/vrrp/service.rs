//! The tokio side of VRRP: one task that owns every instance's state machine (and sync
//! group), its sockets and its timers. It feeds the machines the adverts that pass the
//! receive checks, their timeouts and their tracked conditions, performs the actions they
//! return, and publishes a status snapshot after each step. The agent talks to it through a
//! [`Vrrp`] handle: tracked conditions in, status out, shutdown.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as Clock;

use super::advert::{self, Received};
use super::net::{self, AdvertSocket, ArpSocket};
use super::params::PRIORITY_OWNER;
use super::start::{self, StartError};
use super::{
    Action, GroupAction, GroupInput, Input, InstanceConfig, Instant, Machine, NotifySubject,
    Reason, State, SyncGroup, SyncGroupConfig, TrackTarget, Version,
};
use crate::api::VrrpStatus;
use crate::sys;

/// What one instance looks like now, for `balancer status`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: Version,
    pub state: State,
    pub priority: u8,
    pub effective_priority: u8,
    pub source: Ipv4Addr,
    pub master: Option<IpAddr>,
    pub since: Clock,
    pub reason: String,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub became_master: u64,
    /// Adverts refused, by reason.
    pub errors: BTreeMap<&'static str, u64>,
    /// Accepted v3 adverts by the checksum that matched (with or without the pseudo-header).
    pub checksums: BTreeMap<&'static str, u64>,
    pub sync_group: Option<String>,
    pub addresses: Vec<String>,
}

impl Snapshot {
    /// The instance as the control protocol shows it.
    pub fn to_status(&self) -> VrrpStatus {
        VrrpStatus {
            name: self.name.clone(),
            interface: self.interface.clone(),
            vrid: self.vrid,
            version: match self.version {
                Version::V2 => 2,
                Version::V3 => 3,
            },
            state: self.state.as_str().to_owned(),
            priority: self.priority,
            effective_priority: self.effective_priority,
            source: IpAddr::V4(self.source),
            master: self.master,
            since_change_secs: self.since.elapsed().as_secs_f64(),
            reason: self.reason.clone(),
            adverts_sent: self.adverts_sent,
            adverts_received: self.adverts_received,
            became_master: self.became_master,
            errors: words(&self.errors),
            checksums: words(&self.checksums),
            sync_group: self.sync_group.clone(),
            addresses: self.addresses.clone(),
        }
    }
}

fn words(counts: &BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    counts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// What the agent tells the service.
#[derive(Debug)]
enum Command {
    /// A tracked condition is up or down, for every instance that tracks it.
    Track { target: TrackTarget, up: bool },
    /// Resign (priority 0), remove the addresses, stop.
    Shutdown(oneshot::Sender<()>),
}

/// The agent's handle on the running VRRP instances.
#[derive(Debug)]
pub struct Vrrp {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Arc<Vec<Snapshot>>>,
    /// The VIPs some instance tracks, each once.
    tracked_vips: Vec<String>,
    /// Everything some instance tracks.
    tracked: Vec<TrackTarget>,
}

/// Reports tracked conditions to the running instances ([`Vrrp::tracker`]).
#[derive(Debug, Clone)]
pub struct Tracker {
    commands: mpsc::UnboundedSender<Command>,
}

impl Tracker {
    /// As [`Vrrp::track`].
    pub fn track(&self, target: TrackTarget, up: bool) {
        if self.commands.send(Command::Track { target, up }).is_err() {
            log::warn!("vrrp: the service has stopped; a track change was lost");
        }
    }
}

/// How often tracked interfaces are looked at.
const LINK_POLL: Duration = Duration::from_millis(250);
/// The longest packet the service reads: an IPv4 header with options and 255 addresses.
const MAX_PACKET: usize = 2048;

impl Vrrp {
    /// Checks the host, opens the sockets and starts every instance (and sync group); must
    /// run in a tokio runtime. Nothing is started when one instance cannot be.
    ///
    /// # Errors
    /// The first instance or group that cannot start, and why.
    pub fn start(
        instances: Vec<InstanceConfig>,
        groups: &[SyncGroupConfig],
    ) -> Result<Vrrp, StartError> {
        let mut tracked_vips: Vec<String> = Vec::new();
        for target in instances.iter().flat_map(|i| &i.tracks) {
            if let TrackTarget::Vip(vip) = target {
                if !tracked_vips.contains(vip) {
                    tracked_vips.push(vip.clone());
                }
            }
        }
        let tracked = instances.iter().flat_map(|i| i.tracks.clone()).collect();
        let (effects, jobs) = mpsc::unbounded_channel();
        let mut service = Service::new(instances, groups, effects)?;
        tokio::spawn(effects_worker(jobs));
        let (packets_tx, packets) = mpsc::channel(1024);
        for (index, (_, socket)) in service.sockets.iter().enumerate() {
            tokio::spawn(read_adverts(index, Arc::clone(socket), packets_tx.clone()));
        }
        let (commands, rx) = mpsc::unbounded_channel();
        service.startup();
        let (status_tx, status) = watch::channel(Arc::new(service.snapshots()));
        tokio::spawn(service.run(rx, packets, status_tx));
        Ok(Vrrp {
            commands,
            status,
            tracked_vips,
            tracked,
        })
    }

    /// The VIPs whose state the agent must report with [`Vrrp::track`].
    pub fn tracked_vips(&self) -> &[String] {
        &self.tracked_vips
    }

    /// Tells every instance that tracks `target` that it is up or down; unchanged
    /// conditions change nothing, so the agent may repeat itself.
    pub fn track(&self, target: TrackTarget, up: bool) {
        self.tracker().track(target, up);
    }

    /// A handle that reports tracked conditions, for a task of its own.
    pub fn tracker(&self) -> Tracker {
        Tracker {
            commands: self.commands.clone(),
        }
    }

    /// Whether some instance tracks `target`.
    pub fn tracks(&self, target: &TrackTarget) -> bool {
        self.tracked.contains(target)
    }

    /// Every instance now.
    pub fn status(&self) -> Arc<Vec<Snapshot>> {
        Arc::clone(&self.status.borrow())
    }

    /// Resigns every Master (priority 0, so Backups take over after their skew time),
    /// removes the addresses and stops; waits at most `limit`.
    pub async fn shutdown(self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done)).is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }
}

/// One instance as the service runs it.
struct Instance {
    config: InstanceConfig,
    /// The address adverts leave from (and ties are broken with).
    source: Ipv4Addr,
    /// Which unit holds its machine, and its index there.
    unit: usize,
    member: usize,
    arp: Arc<ArpSocket>,
    errors: BTreeMap<&'static str, u64>,
    checksums: BTreeMap<&'static str, u64>,
    since: Clock,
    /// The last state logged, to log transitions once.
    logged: State,
    /// The last state of each track (`config.tracks`), to give the machine changes only.
    tracks: Vec<Option<bool>>,
}

/// A standalone machine or a sync group.
enum Unit {
    Single(Box<Machine>),
    Group {
        group: SyncGroup,
        members: Vec<usize>,
        config: SyncGroupConfig,
    },
}

impl Unit {
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Unit::Single(machine) => machine.poll_timeout(),
            Unit::Group { group, .. } => group.poll_timeout(),
        }
    }

    fn machine(&self, member: usize) -> &Machine {
        match self {
            Unit::Single(machine) => machine,
            Unit::Group { group, .. } => &group.members()[member],
        }
    }
}

struct Service {
    instances: Vec<Instance>,
    units: Vec<Unit>,
    /// One socket per interface, shared by its instances (and read by a task of its own).
    sockets: Vec<(String, Arc<AdvertSocket>)>,
    /// Address changes and gratuitous ARPs, done in order by [`effects_worker`].
    effects: mpsc::UnboundedSender<Effect>,
    origin: Clock,
}

impl Service {
    fn new(
        configs: Vec<InstanceConfig>,
        groups: &[SyncGroupConfig],
        effects: mpsc::UnboundedSender<Effect>,
    ) -> Result<Service, StartError> {
        let mut sockets: Vec<(String, Arc<AdvertSocket>)> = Vec::new();
        let mut instances = Vec::new();
        for mut config in configs {
            let source = start::prepare(&config)?;
            config.params.primary_address = IpAddr::V4(source);
            let io_error = |source| StartError::Interface {
                instance: config.name().to_owned(),
                interface: config.interface.clone(),
                source,
            };
            if !sockets.iter().any(|(i, _)| *i == config.interface) {
                let socket = AdvertSocket::open(&config.interface).map_err(io_error)?;
                sockets.push((config.interface.clone(), Arc::new(socket)));
            }
            let arp = Arc::new(ArpSocket::open(&config.interface).map_err(io_error)?);
            instances.push(Instance {
                tracks: vec![None; config.tracks.len()],
                config,
                source,
                unit: usize::MAX,
                member: 0,
                arp,
                errors: BTreeMap::new(),
                checksums: BTreeMap::new(),
                since: Clock::now(),
                logged: State::Initialize,
            });
        }
        let configs: Vec<InstanceConfig> = instances.iter().map(|i| i.config.clone()).collect();
        let mut units = Vec::new();
        for group in groups {
            let sync = group.build(&configs).map_err(|source| StartError::Group {
                group: group.name.clone(),
                source,
            })?;
            let members: Vec<usize> = group
                .instances
                .iter()
                .filter_map(|name| configs.iter().position(|c| c.name() == name))
                .collect();
            for (m, &i) in members.iter().enumerate() {
                instances[i].unit = units.len();
                instances[i].member = m;
            }
            units.push(Unit::Group {
                group: sync,
                members,
                config: group.clone(),
            });
        }
        for instance in instances.iter_mut().filter(|i| i.unit == usize::MAX) {
            let machine = Machine::new(instance.config.params.clone()).map_err(|source| {
                StartError::Config {
                    instance: instance.config.name().to_owned(),
                    source,
                }
            })?;
            instance.unit = units.len();
            units.push(Unit::Single(Box::new(machine)));
        }
        Ok(Service {
            instances,
            units,
            sockets,
            effects,
            origin: Clock::now(),
        })
    }

    fn now(&self) -> Instant {
        Instant::from_duration(self.origin.elapsed())
    }

    /// Stale addresses removed, tracked interfaces as they are now, then Startup for
    /// every unit.
    fn startup(&mut self) {
        self.remove_stale_addresses();
        self.poll_links();
        for unit in 0..self.units.len() {
            let now = self.now();
            match &mut self.units[unit] {
                Unit::Single(machine) => {
                    let actions = machine.handle(now, Input::Startup);
                    let instance = self.instance_of(unit, 0);
                    self.perform(instance, actions);
                }
                Unit::Group { group, .. } => {
                    let actions = group.handle(now, GroupInput::Startup);
                    self.perform_group(unit, actions);
                }
            }
        }
        self.log_transitions();
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut packets: mpsc::Receiver<(usize, Vec<u8>)>,
        status: watch::Sender<Arc<Vec<Snapshot>>>,
    ) {
        let mut links = tokio::time::interval(LINK_POLL);
        links.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .units
                .iter()
                .filter_map(Unit::poll_timeout)
                .min()
                .map(|at| self.origin + at.as_duration());
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => self.timeouts(),
                Some((socket, packet)) = packets.recv() => self.receive(socket, &packet),
                _ = links.tick() => self.poll_links(),
                command = commands.recv() => match command {
                    Some(Command::Track { target, up }) => self.track(&target, up),
                    Some(Command::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = status.send(Arc::new(self.snapshots()));
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
            }
            self.log_transitions();
            let _ = status.send(Arc::new(self.snapshots()));
        }
    }

    /// The index of the instance that is member `member` of unit `unit`.
    fn instance_of(&self, unit: usize, member: usize) -> usize {
        match &self.units[unit] {
            Unit::Single(_) => self
                .instances
                .iter()
                .position(|i| i.unit == unit)
                .expect("every unit has an instance"),
            Unit::Group { members, .. } => members[member],
        }
    }

    /// Gives one instance's machine an input and performs what it returns.
    fn input(&mut self, instance: usize, input: Input) {
        let now = self.now();
        let (unit, member) = (
            self.instances[instance].unit,
            self.instances[instance].member,
        );
        match &mut self.units[unit] {
            Unit::Single(machine) => {
                let actions = machine.handle(now, input);
                self.perform(instance, actions);
            }
            Unit::Group { group, .. } => {
                let actions = group.handle(
                    now,
                    GroupInput::Member {
                        index: member,
                        input,
                    },
                );
                self.perform_group(unit, actions);
            }
        }
    }

    fn timeouts(&mut self) {
        let now = self.now();
        for unit in 0..self.units.len() {
            if self.units[unit].poll_timeout().is_none_or(|at| at > now) {
                continue;
            }
            match &mut self.units[unit] {
                Unit::Single(machine) => {
                    let actions = machine.handle(now, Input::Timeout);
                    let instance = self.instance_of(unit, 0);
                    self.perform(instance, actions);
                }
                Unit::Group { group, .. } => {
                    let actions = group.handle(now, GroupInput::Timeout);
                    self.perform_group(unit, actions);
                }
            }
        }
    }

    /// Shutdown for every unit; returns once the addresses are removed.
    async fn shutdown(&mut self) {
        let now = self.now();
        for unit in 0..self.units.len() {
            match &mut self.units[unit] {
                Unit::Single(machine) => {
                    let actions = machine.handle(now, Input::Shutdown);
                    let instance = self.instance_of(unit, 0);
                    self.perform(instance, actions);
                }
                Unit::Group { group, .. } => {
                    let actions = group.handle(now, GroupInput::Shutdown);
                    self.perform_group(unit, actions);
                }
            }
        }
        self.log_transitions();
        let (done, flushed) = oneshot::channel();
        if self.effects.send(Effect::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Removes the virtual addresses a non-owner finds on its interface before it is
    /// Master, as keepalived does: left by an agent that was killed, they would answer ARP
    /// beside the real Master's.
    fn remove_stale_addresses(&self) {
        for instance in &self.instances {
            let config = &instance.config;
            if config.params.priority == PRIORITY_OWNER {
                continue;
            }
            let present = sys::ipv4_addresses(&config.interface).unwrap_or_default();
            let stale: Vec<String> = config
                .addresses
                .iter()
                .filter(|v| present.iter().any(|&(a, _)| IpAddr::V4(a) == v.address))
                .map(ToString::to_string)
                .collect();
            if stale.is_empty() {
                continue;
            }
            log::warn!(
                "vrrp {}: {} already on {} (left by an earlier run?): removed until this \
                 instance is Master",
                config.name(),
                stale.join(", "),
                config.interface
            );
            let _ = self.effects.send(Effect::Addresses {
                instance: config.name().to_owned(),
                interface: config.interface.clone(),
                addresses: stale,
                add: false,
            });
        }
    }

    /// Tells each instance tracking `target` its state, when it changed.
    fn track(&mut self, target: &TrackTarget, up: bool) {
        for i in 0..self.instances.len() {
            let changed: Vec<usize> = (0..self.instances[i].tracks.len())
                .filter(|&k| {
                    self.instances[i].config.tracks[k] == *target
                        && self.instances[i].tracks[k] != Some(up)
                })
                .collect();
            for k in changed {
                self.instances[i].tracks[k] = Some(up);
                self.input(i, Input::Track { index: k, up });
            }
        }
    }

    fn poll_links(&mut self) {
        let interfaces: Vec<String> = self
            .instances
            .iter()
            .flat_map(|i| &i.config.tracks)
            .filter_map(|t| match t {
                TrackTarget::Interface(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        for interface in interfaces {
            let up = sys::link_up(&interface);
            self.track(&TrackTarget::Interface(interface), up);
        }
    }

    /// One packet from the socket of `self.sockets[socket]`: the receive checks, then the
    /// advert goes to its instance's machine.
    fn receive(&mut self, socket: usize, packet: &[u8]) {
        let interface = self.sockets[socket].0.clone();
        let on = |i: &Instance, vrid: u8| {
            i.config.interface == interface && i.config.params.vrid == vrid
        };
        let advert: Received = match advert::decode(packet) {
            Ok(advert) => advert,
            Err(refused) => {
                let target = refused
                    .vrid
                    .and_then(|vrid| self.instances.iter().position(|i| on(i, vrid)));
                self.count_error(&interface, target, refused.reason);
                return;
            }
        };
        if self.instances.iter().any(|i| i.source == advert.from) {
            return; // our own, looped back
        }
        let Some(index) = self.instances.iter().position(|i| on(i, advert.vrid)) else {
            // RFC 9568 section 7.1: MUST discard. Counted (on the interface's instances), as
            // a VRID typed wrong on one side shows only so.
            self.count_error(&interface, None, "other_vrid");
            return;
        };
        let instance = &self.instances[index];
        let params = self.units[instance.unit].machine(instance.member).config();
        let refused = advert::refusal(&advert, params);
        if let Some(reason) = refused {
            self.count_error(&interface, Some(index), reason);
            return;
        }
        if !advert::same_addresses(&instance.config, &advert.addresses) {
            // RFC 9568 section 7.1: MAY check, MUST log; keepalived (not strict) goes on.
            *self.instances[index]
                .errors
                .entry("address_mismatch")
                .or_default() += 1;
            log::debug!(
                "vrrp {}: advert from {} lists other addresses than ours",
                self.instances[index].config.name(),
                advert.from
            );
        }
        if let Some(kind) = advert.checksum_kind {
            *self.instances[index].checksums.entry(kind).or_default() += 1;
        }
        self.input(
            index,
            Input::Advert {
                from: IpAddr::V4(advert.from),
                priority: advert.priority,
                max_advert_int: advert.interval,
            },
        );
    }

    fn count_error(&mut self, interface: &str, instance: Option<usize>, reason: &'static str) {
        match instance {
            Some(i) => *self.instances[i].errors.entry(reason).or_default() += 1,
            // Not any one instance's: counted on every instance of the interface.
            None => {
                for i in self
                    .instances
                    .iter_mut()
                    .filter(|i| i.config.interface == interface)
                {
                    *i.errors.entry(reason).or_default() += 1;
                }
            }
        }
        log::debug!("vrrp {interface}: advert refused: {reason}");
    }

    fn perform_group(&mut self, unit: usize, actions: Vec<GroupAction>) {
        for action in actions {
            match action {
                GroupAction::Member { index, action } => {
                    let instance = self.instance_of(unit, index);
                    self.perform(instance, vec![action]);
                }
                GroupAction::Notify { state } => {
                    if let Unit::Group { config, .. } = &self.units[unit] {
                        if let Some(command) = &config.notify {
                            net::notify(&command.invocation(
                                NotifySubject::Group,
                                &config.name,
                                state,
                                0,
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Performs a machine's actions for instance `index`, in order.
    fn perform(&mut self, index: usize, actions: Vec<Action>) {
        for action in actions {
            let instance = &self.instances[index];
            let config = &instance.config;
            match action {
                Action::SendAdvert { priority } => {
                    let socket = &self
                        .sockets
                        .iter()
                        .find(|(i, _)| *i == config.interface)
                        .expect("every instance's interface has a socket")
                        .1;
                    for to in config.destinations() {
                        let IpAddr::V4(to) = to else { continue };
                        let message = advert::encode(config, priority, instance.source, to);
                        if let Err(e) = socket.send(&message, instance.source, to) {
                            log::warn!("vrrp {}: sending an advert to {to}: {e}", config.name());
                        }
                    }
                }
                Action::AddAddresses | Action::RemoveAddresses => {
                    let _ = self.effects.send(Effect::Addresses {
                        instance: config.name().to_owned(),
                        interface: config.interface.clone(),
                        addresses: config.addresses.iter().map(ToString::to_string).collect(),
                        add: action == Action::AddAddresses,
                    });
                }
                Action::SendGratuitous { count } => {
                    let _ = self.effects.send(Effect::Announce {
                        instance: config.name().to_owned(),
                        arp: Arc::clone(&instance.arp),
                        addresses: config
                            .addresses
                            .iter()
                            .filter_map(|a| match a.address {
                                IpAddr::V4(v4) => Some(v4),
                                IpAddr::V6(_) => None,
                            })
                            .collect(),
                        count,
                    });
                }
                Action::Notify { state, priority } => {
                    if let Some(command) = &config.notify {
                        net::notify(&command.invocation(
                            NotifySubject::Instance,
                            config.name(),
                            state,
                            priority,
                        ));
                    }
                }
            }
        }
    }

    /// Logs each instance's state change once, with its reason.
    fn log_transitions(&mut self) {
        for instance in &mut self.instances {
            let machine = self.units[instance.unit].machine(instance.member);
            let state = machine.state();
            if state == instance.logged {
                continue;
            }
            let reason = machine
                .last_reason()
                .map_or_else(String::new, Reason::to_string);
            log::info!(
                event = "vrrp",
                instance = instance.config.name(),
                vrid = instance.config.params.vrid,
                interface = instance.config.interface.as_str(),
                from:% = instance.logged,
                to:% = state,
                reason = reason.as_str(),
                priority = machine.priority();
                "vrrp {} (VRID {} on {}): {} -> {} ({reason}), priority {}",
                instance.config.name(),
                instance.config.params.vrid,
                instance.config.interface,
                instance.logged,
                state,
                machine.priority()
            );
            instance.logged = state;
            instance.since = Clock::now();
        }
    }

    fn snapshots(&self) -> Vec<Snapshot> {
        self.instances
            .iter()
            .map(|instance| {
                let unit = &self.units[instance.unit];
                let machine = unit.machine(instance.member);
                let stats = machine.stats();
                let params = &instance.config.params;
                Snapshot {
                    name: params.name.clone(),
                    interface: instance.config.interface.clone(),
                    vrid: params.vrid,
                    version: params.version,
                    state: machine.state(),
                    priority: params.priority,
                    effective_priority: machine.priority(),
                    source: instance.source,
                    master: stats.master,
                    since: instance.since,
                    reason: machine
                        .last_reason()
                        .map_or_else(String::new, Reason::to_string),
                    adverts_sent: stats.adverts_sent,
                    adverts_received: stats.adverts_received,
                    became_master: stats.became_master,
                    errors: instance.errors.clone(),
                    checksums: instance.checksums.clone(),
                    sync_group: match unit {
                        Unit::Group { group, .. } => Some(group.name().to_owned()),
                        Unit::Single(_) => None,
                    },
                    addresses: instance
                        .config
                        .addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                }
            })
            .collect()
    }
}

/// Reads the adverts of socket `index` for the service.
async fn read_adverts(
    index: usize,
    socket: Arc<AdvertSocket>,
    packets: mpsc::Sender<(usize, Vec<u8>)>,
) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        match socket.recv(&mut buf).await {
            Ok(len) => {
                if packets.send((index, buf[..len].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                log::warn!("vrrp: receiving adverts: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What an instance's actions do to the host, in the order they were asked for.
enum Effect {
    Addresses {
        instance: String,
        interface: String,
        /// `ADDRESS/PREFIX`.
        addresses: Vec<String>,
        add: bool,
    },
    Announce {
        instance: String,
        arp: Arc<ArpSocket>,
        addresses: Vec<Ipv4Addr>,
        count: u32,
    },
    /// Everything before it is done.
    Flush(oneshot::Sender<()>),
}

/// Does the effects one after the other, so that an address is on the interface before its
/// gratuitous ARPs go out, and off before it is added again.
async fn effects_worker(mut jobs: mpsc::UnboundedReceiver<Effect>) {
    while let Some(job) = jobs.recv().await {
        match job {
            Effect::Addresses {
                instance,
                interface,
                addresses,
                add,
            } => {
                for address in addresses {
                    if let Err(e) = sys::set_address(&interface, &address, add).await {
                        log::error!("vrrp {instance}: {e}");
                    }
                }
            }
            Effect::Announce {
                instance,
                arp,
                addresses,
                count,
            } => {
                for address in addresses {
                    if let Err(e) = arp.announce(address, count) {
                        log::warn!("vrrp {instance}: gratuitous ARP for {address}: {e}");
                    }
                }
            }
            Effect::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
