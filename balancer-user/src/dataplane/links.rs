//! The configured interfaces and the XDP program on each: which are attached (at which
//! index, in which mode), which are gone or not there yet, and what to do when the kernel
//! says one changed: an interface deleted loses its link, one created again (under the
//! same name, with a new index) gets the program attached again. The decisions are here;
//! the attaching is behind [`Attach`] (the agent's data plane, a fake in tests). (Nothing
//! else keeps an interface's index: the data plane's cached next hops name one for at most
//! `NEXT_HOP_TTL_NS` before the FIB is asked again.)

use std::time::Instant;

use super::{
    pins::LinkMode,
    rtnetlink::{LinkChange, LinkMessage},
};
use crate::api::{InterfaceState, InterfaceStatus};

/// What [`Links`] needs of the host.
pub trait Attach {
    /// The index of interface `name` now, if it exists.
    fn ifindex(&self, name: &str) -> Option<u32>;
    /// Attaches the program to `name` (with the mode rules of the start); the mode it got
    /// (`None`: a link taken over from an agent that did not record it).
    ///
    /// # Errors
    /// Why it could not.
    fn attach(&mut self, name: &str) -> anyhow::Result<Option<LinkMode>>;
    /// Lets go of the link on `name`: its interface is gone, or was replaced.
    fn release(&mut self, name: &str);
}

/// Where one configured interface stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Attached {
        ifindex: u32,
        mode: Option<LinkMode>,
    },
    /// It was there (at `ifindex`) and is gone.
    Missing { ifindex: u32 },
    /// It has not existed since the start (`agent.wait_for_interfaces`).
    Waiting,
    /// It is there, and attaching to it failed.
    Failed { ifindex: u32, error: String },
}

struct Interface {
    name: String,
    state: State,
    since: Instant,
    /// Operationally up, as the last event said (`None`: no event yet).
    running: Option<bool>,
}

impl Interface {
    fn set(&mut self, state: State) {
        if self.state != state {
            self.state = state;
            self.since = Instant::now();
        }
    }

    fn ifindex(&self) -> Option<u32> {
        match &self.state {
            State::Attached { ifindex, .. }
            | State::Missing { ifindex }
            | State::Failed { ifindex, .. } => Some(*ifindex),
            State::Waiting => None,
        }
    }
}

/// The configured interfaces, in the configuration's order.
pub struct Links {
    attach: Box<dyn Attach>,
    interfaces: Vec<Interface>,
}

impl Links {
    /// Attaches the program to every interface of `names` that exists; one that does not
    /// is waited for with `wait`, else an error (as is a failed attach: the agent does not
    /// start half attached).
    ///
    /// # Errors
    /// The first interface that is missing (without `wait`) or cannot be attached.
    pub fn start(
        mut attach: Box<dyn Attach>,
        names: &[String],
        wait: bool,
    ) -> anyhow::Result<Links> {
        let mut interfaces = Vec::with_capacity(names.len());
        for name in names {
            let state = match attach.ifindex(name) {
                Some(ifindex) => {
                    let mode = attach.attach(name)?;
                    State::Attached { ifindex, mode }
                }
                None if wait => {
                    log::warn!(
                        "interface {name} does not exist (yet): waiting for it \
                         (agent.wait_for_interfaces); traffic for its VIPs is not balanced \
                         until it appears"
                    );
                    State::Waiting
                }
                None => anyhow::bail!("interface {name:?} does not exist"),
            };
            interfaces.push(Interface {
                name: name.clone(),
                state,
                since: Instant::now(),
                running: None,
            });
        }
        Ok(Links { attach, interfaces })
    }

    /// The kernel said `message`: brings every interface it concerns (by name, or by
    /// the index it had) up to date. Returns whether any changed state.
    pub fn changed(&mut self, message: &LinkMessage) -> bool {
        let mut any = false;
        for i in 0..self.interfaces.len() {
            let iface = &self.interfaces[i];
            let concerned = message.name.as_deref() == Some(iface.name.as_str())
                || iface.ifindex() == Some(message.ifindex);
            if concerned {
                any |= self.reconcile(i, Some(message));
            }
        }
        any
    }

    /// The kernel dropped events (its socket buffer was full): looks at every interface.
    pub fn resync(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.interfaces.len() {
            any |= self.reconcile(i, None);
        }
        any
    }

    /// Compares what is known of interface `i` with the host now, and acts on the
    /// difference. Returns whether its state changed.
    fn reconcile(&mut self, i: usize, message: Option<&LinkMessage>) -> bool {
        let now = self.attach.ifindex(&self.interfaces[i].name);
        let before = self.interfaces[i].state.clone();
        let iface = &mut self.interfaces[i];
        let name = iface.name.clone();
        match (&before, now) {
            (State::Attached { ifindex, .. }, Some(now)) if *ifindex == now => {
                if let Some(m) = message.filter(|m| m.ifindex == now) {
                    if m.change == LinkChange::New {
                        say_running(iface, m.running);
                    }
                }
            }
            (State::Attached { ifindex, .. }, None) => {
                self.attach.release(&name);
                log::warn!(
                    "interface {name} disappeared (ifindex {ifindex}): XDP detached, traffic \
                     for its VIPs is not balanced"
                );
                iface.set(State::Missing { ifindex: *ifindex });
                iface.running = None;
            }
            (State::Attached { ifindex, .. }, Some(now)) => {
                self.attach.release(&name);
                log::warn!(
                    "interface {name} was replaced (ifindex {ifindex} is gone, {now} has its \
                     name): XDP detached from the old one"
                );
                self.attach_again(i, now, "is back");
            }
            (State::Failed { ifindex, .. }, None) => {
                log::warn!("interface {name} disappeared (ifindex {ifindex})");
                iface.set(State::Missing { ifindex: *ifindex });
            }
            (State::Missing { .. } | State::Waiting, None) => {}
            (State::Waiting, Some(now)) => self.attach_again(i, now, "appeared"),
            // (A failed one is tried again at each event: what held it may have let go.)
            (State::Missing { .. } | State::Failed { .. }, Some(now)) => {
                self.attach_again(i, now, "is back");
            }
        }
        self.interfaces[i].state != before
    }

    /// Attaches to interface `i`, which now has index `ifindex`; `how` it came ("is back",
    /// "appeared") is logged.
    fn attach_again(&mut self, i: usize, ifindex: u32, how: &str) {
        let name = self.interfaces[i].name.clone();
        let state = match self.attach.attach(&name) {
            Ok(mode) => {
                let mode_name = mode.map_or("an unrecorded", LinkMode::name);
                log::info!(
                    "interface {name} {how} (ifindex {ifindex}): XDP attached in {mode_name} \
                     mode"
                );
                State::Attached { ifindex, mode }
            }
            Err(e) => {
                let error = format!("{e:#}");
                let said = matches!(&self.interfaces[i].state,
                    State::Failed { error: old, .. } if *old == error);
                if !said {
                    log::error!(
                        "interface {name} {how} (ifindex {ifindex}), but XDP cannot be \
                         attached: {error}; traffic for its VIPs is not balanced"
                    );
                }
                State::Failed { ifindex, error }
            }
        };
        let iface = &mut self.interfaces[i];
        iface.set(state);
        iface.running = None;
    }

    /// Whether the program is attached to every configured interface.
    #[must_use]
    pub fn all_attached(&self) -> bool {
        self.interfaces
            .iter()
            .all(|i| matches!(i.state, State::Attached { .. }))
    }

    /// The interfaces that were there and are gone or down (not those never seen): while
    /// one is, checks through it fail for the balancer's sake.
    #[must_use]
    pub fn lost(&self) -> Vec<&str> {
        self.interfaces
            .iter()
            .filter(|i| {
                matches!(i.state, State::Missing { .. })
                    || (matches!(i.state, State::Attached { .. }) && i.running == Some(false))
            })
            .map(|i| i.name.as_str())
            .collect()
    }

    /// The interfaces the program is not attached to.
    #[must_use]
    pub fn not_attached(&self) -> Vec<&str> {
        self.interfaces
            .iter()
            .filter(|i| !matches!(i.state, State::Attached { .. }))
            .map(|i| i.name.as_str())
            .collect()
    }

    /// What `balancer status` shows of each interface.
    #[must_use]
    pub fn status(&self) -> Vec<InterfaceStatus> {
        self.interfaces
            .iter()
            .map(|i| {
                let (state, mode, error) = match &i.state {
                    State::Attached { mode, .. } => (
                        InterfaceState::Attached,
                        Some(mode.map_or("unrecorded", LinkMode::name).to_owned()),
                        None,
                    ),
                    State::Missing { .. } => (
                        InterfaceState::Missing,
                        None,
                        Some("the interface is gone: XDP detached".to_owned()),
                    ),
                    State::Waiting => (InterfaceState::Waiting, None, None),
                    State::Failed { error, .. } => {
                        (InterfaceState::Failed, None, Some(error.clone()))
                    }
                };
                InterfaceStatus {
                    name: i.name.clone(),
                    state,
                    ifindex: i.ifindex(),
                    mode,
                    since_change_secs: i.since.elapsed().as_secs_f64(),
                    error,
                }
            })
            .collect()
    }
}

/// Logs a change of an attached interface's operational state (the first event only
/// records it).
fn say_running(iface: &mut Interface, running: bool) {
    let name = &iface.name;
    match iface.running {
        Some(was) if was != running => {
            if running {
                log::info!(event = "interface", interface = name.as_str(), up = true; "interface {name} is up (XDP attached)");
            } else {
                log::warn!(
                    event = "interface",
                    interface = name.as_str(),
                    up = false;
                    "interface {name} is down: no traffic passes it (XDP stays attached)"
                );
            }
        }
        _ => {}
    }
    iface.running = Some(running);
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        collections::{HashMap, HashSet},
        rc::Rc,
    };

    use super::*;

    /// The host: interfaces by name, the calls made, and interfaces attaching refuses.
    #[derive(Default)]
    struct Host {
        ifindex: HashMap<String, u32>,
        calls: Vec<String>,
        refuse: HashSet<String>,
    }

    #[derive(Clone, Default)]
    struct FakeAttach(Rc<RefCell<Host>>);

    impl Attach for FakeAttach {
        fn ifindex(&self, name: &str) -> Option<u32> {
            self.0.borrow().ifindex.get(name).copied()
        }
        fn attach(&mut self, name: &str) -> anyhow::Result<Option<LinkMode>> {
            let mut host = self.0.borrow_mut();
            host.calls.push(format!("attach {name}"));
            if host.refuse.contains(name) {
                anyhow::bail!("{name} already has an XDP program attached (id 42, name other)");
            }
            Ok(Some(LinkMode::Driver))
        }
        fn release(&mut self, name: &str) {
            self.0.borrow_mut().calls.push(format!("release {name}"));
        }
    }

    impl FakeAttach {
        fn set(&self, name: &str, ifindex: Option<u32>) {
            let mut host = self.0.borrow_mut();
            match ifindex {
                Some(i) => host.ifindex.insert(name.to_owned(), i),
                None => host.ifindex.remove(name),
            };
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut self.0.borrow_mut().calls)
        }
    }

    fn message(change: LinkChange, ifindex: u32, name: &str) -> LinkMessage {
        LinkMessage {
            change,
            ifindex,
            name: Some(name.to_owned()),
            running: true,
            xdp: None,
        }
    }

    fn states(links: &Links) -> Vec<(String, InterfaceState, Option<u32>)> {
        links
            .status()
            .into_iter()
            .map(|s| (s.name, s.state, s.ifindex))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|&n| n.to_owned()).collect()
    }

    #[test]
    fn a_missing_interface_is_an_error_unless_waited_for() {
        let host = FakeAttach::default();
        host.set("eth0", Some(2));
        let refused = Links::start(Box::new(host.clone()), &names(&["eth0", "eth1"]), false);
        assert!(refused.is_err_and(|e| e.to_string().contains("\"eth1\" does not exist")));
        host.calls();

        let links = Links::start(Box::new(host.clone()), &names(&["eth0", "eth1"]), true).unwrap();
        assert_eq!(host.calls(), ["attach eth0"]);
        assert_eq!(
            states(&links),
            [
                ("eth0".into(), InterfaceState::Attached, Some(2)),
                ("eth1".into(), InterfaceState::Waiting, None)
            ]
        );
        assert!(!links.all_attached());
        assert_eq!(links.not_attached(), ["eth1"]);
        assert!(links.lost().is_empty(), "never there is not lost");
    }

    #[test]
    fn a_deleted_interface_created_again_is_attached_again() {
        let host = FakeAttach::default();
        host.set("eth0", Some(2));
        host.set("eth1", Some(3));
        let mut links =
            Links::start(Box::new(host.clone()), &names(&["eth0", "eth1"]), false).unwrap();
        host.calls();

        // Another interface's events concern nothing.
        assert!(!links.changed(&message(LinkChange::Del, 9, "veth9")));
        // A change of an attached interface (it went down) keeps it attached.
        let mut down = message(LinkChange::New, 3, "eth1");
        down.running = false;
        assert!(!links.changed(&down));
        assert!(host.calls().is_empty());
        assert_eq!(links.lost(), ["eth1"], "down is lost");
        let mut up = down.clone();
        up.running = true;
        assert!(!links.changed(&up));
        assert!(links.lost().is_empty());

        // Deleted: its link is released. (The message of a deleted link may lack its name.)
        host.set("eth1", None);
        let mut del = message(LinkChange::Del, 3, "eth1");
        del.name = None;
        assert!(links.changed(&del));
        assert_eq!(host.calls(), ["release eth1"]);
        assert_eq!(states(&links)[1].1, InterfaceState::Missing);
        assert_eq!(links.lost(), ["eth1"], "missing is lost");
        let status = &links.status()[1];
        assert!(
            status.state.is_error() && status.error.is_some(),
            "{status:?}"
        );

        // Created again with another index: attached again.
        host.set("eth1", Some(12));
        assert!(links.changed(&message(LinkChange::New, 12, "eth1")));
        assert_eq!(host.calls(), ["attach eth1"]);
        assert_eq!(
            states(&links)[1],
            ("eth1".into(), InterfaceState::Attached, Some(12))
        );
        assert!(links.all_attached());
        assert!(links.lost().is_empty());
        assert_eq!(links.status()[1].mode.as_deref(), Some("driver"));
    }

    #[test]
    fn an_interface_replaced_before_its_deletion_was_seen_is_attached_again() {
        let host = FakeAttach::default();
        host.set("eth0", Some(2));
        let mut links = Links::start(Box::new(host.clone()), &names(&["eth0"]), false).unwrap();
        host.calls();
        // The old interface's deletion arrives when the new one already has the name.
        host.set("eth0", Some(20));
        assert!(links.changed(&message(LinkChange::Del, 2, "eth0")));
        assert_eq!(host.calls(), ["release eth0", "attach eth0"]);
        assert_eq!(
            states(&links),
            [("eth0".into(), InterfaceState::Attached, Some(20))]
        );
        // The new one's own event then changes nothing.
        assert!(!links.changed(&message(LinkChange::New, 20, "eth0")));
        assert!(host.calls().is_empty());
    }

    #[test]
    fn a_waited_for_interface_is_attached_when_it_appears_and_failures_are_retried() {
        let host = FakeAttach::default();
        let mut links = Links::start(Box::new(host.clone()), &names(&["eth0"]), true).unwrap();
        assert!(host.calls().is_empty());
        // Something else holds it when it appears.
        host.0.borrow_mut().refuse.insert("eth0".into());
        host.set("eth0", Some(5));
        assert!(links.changed(&message(LinkChange::New, 5, "eth0")));
        let status = &links.status()[0];
        assert_eq!(status.state, InterfaceState::Failed);
        assert!(
            status.error.as_deref().unwrap().contains("id 42"),
            "{status:?}"
        );
        // Tried again at its next event; it let go.
        host.0.borrow_mut().refuse.clear();
        assert!(links.changed(&message(LinkChange::New, 5, "eth0")));
        assert_eq!(host.calls(), ["attach eth0", "attach eth0"]);
        assert!(links.all_attached());
        // Events lost: everything is looked at again.
        host.set("eth0", None);
        assert!(links.resync());
        assert_eq!(states(&links)[0].1, InterfaceState::Missing);
    }
}
