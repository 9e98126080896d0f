//! The configured interfaces at run time: the kernel's link events become
//! [`Event::Link`]s ([`watch`], a subsystem that only sends events), and [`DataPlane`] is
//! what the agent's [`Links`] attach with: the program, the pins, and the host settings
//! an interface needs each time the program is attached to it.

use std::os::fd::OwnedFd;

use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::{host, Event};
use crate::{
    config::XdpMode,
    dataplane::{
        links::Attach,
        loader::Program,
        pins::{LinkMode, Pins},
        rtnetlink::{self, LinkMessage, Message},
    },
    sys,
};

/// What the kernel said about links.
#[derive(Debug)]
pub enum LinkEvent {
    Changed(LinkMessage),
    /// Events were lost (the socket's buffer overflowed): look at every interface again.
    Lost,
}

/// The socket of the kernel's link events, open before the program is attached so that
/// no change after that is missed.
///
/// # Errors
/// The socket cannot be opened.
pub fn subscribe() -> anyhow::Result<OwnedFd> {
    rtnetlink::socket(true).map_err(|e| anyhow::anyhow!("watching link events (rtnetlink): {e}"))
}

/// Sends each link event the kernel reports on `socket` to the agent's loop, until the
/// loop is gone.
pub async fn watch(socket: OwnedFd, events: mpsc::Sender<Event>) {
    // SAFETY: the AsyncFd owns the socket, whose descriptor stays open and the same for
    // as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) };
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("cannot poll the link events socket: {e}; interfaces that go and come back are not followed");
            return;
        }
    };
    let mut buf = rtnetlink::buffer();
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        let received = match rtnetlink::receive(guard.get_inner(), &mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                guard.clear_ready();
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                log::warn!("link events were lost (the socket's buffer was full): looking at every interface again");
                vec![LinkEvent::Lost]
            }
            Err(e) => {
                log::error!("reading link events: {e}");
                // (Not a tight loop: a persistent error is unlikely, and waiting makes it
                // harmless.)
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Ok(datagram) => match rtnetlink::parse(datagram) {
                Ok(messages) => messages
                    .into_iter()
                    .filter_map(|m| match m {
                        Message::Link(link) => Some(LinkEvent::Changed(link)),
                        _ => None,
                    })
                    .collect(),
                Err(e) => {
                    log::warn!("link event: {e}; looking at every interface again");
                    vec![LinkEvent::Lost]
                }
            },
        };
        for event in received {
            if events.send(Event::Link(event)).await.is_err() {
                return;
            }
        }
    }
}

/// The program and what attaching it to an interface involves: the pins (links kept
/// for the next agent), the mode rules, and the host's settings for the interface.
/// Fields drop in order: the program (detached where its links are not pinned), then
/// `accept_local` put back, then the pin directory's lock.
pub struct DataPlane {
    program: Program,
    accept_local: host::AcceptLocal,
    pins: Option<Pins>,
    mode: XdpMode,
    keep: bool,
    /// `tunnel.mtu` when the configuration at start has a tunnel VIP: an interface below
    /// it is warned about when attached.
    tunnel_mtu: Option<u16>,
}

impl DataPlane {
    pub fn new(
        program: Program,
        accept_local: host::AcceptLocal,
        pins: Option<Pins>,
        (mode, keep): (XdpMode, bool),
        tunnel_mtu: Option<u16>,
    ) -> DataPlane {
        DataPlane {
            program,
            accept_local,
            pins,
            mode,
            keep,
            tunnel_mtu,
        }
    }
}

impl Attach for DataPlane {
    fn ifindex(&self, name: &str) -> Option<u32> {
        sys::ifindex(name).ok()
    }

    fn attach(&mut self, name: &str) -> anyhow::Result<Option<LinkMode>> {
        let mode = self
            .program
            .attach(name, self.pins.as_ref(), self.mode, self.keep)?;
        host::check_forwarding(name);
        host::check_tunnel_mtu(name, self.tunnel_mtu);
        self.accept_local.turn_on(name);
        Ok(mode)
    }

    fn release(&mut self, name: &str) {
        self.program.release(name, self.pins.as_ref());
    }
}
