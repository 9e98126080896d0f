//! rtnetlink, as far as the agent needs it: link messages (`RTM_NEWLINK`, `RTM_DELLINK`)
//! read down to what concerns an interface's XDP program (index, name, whether it runs,
//! the program it holds), a socket that receives the kernel's link events
//! (`RTNLGRP_LINK`), and one query: the XDP program an interface holds. The parsing is
//! separate from the socket and tested on bytes.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
/// `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
/// An attribute's type without the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `ifinfomsg.ifi_flags`: up with a carrier (operationally up).
const IFF_RUNNING: u32 = 0x40;
/// `RTMGRP_LINK`: the link events.
const RTMGRP_LINK: u32 = 1;
/// Large enough for any one link message (a few KiB) and a batch of them.
const RECV_BUFFER: usize = 64 * 1024;

/// What happened to a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// Created, or changed (flags, name, XDP, ...): `RTM_NEWLINK`.
    New,
    /// Deleted: `RTM_DELLINK`.
    Del,
}

/// The XDP program an interface holds, as the kernel reports it (`IFLA_XDP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    /// The program's id (`bpftool prog show id ID`).
    pub id: u32,
    /// `XDP_ATTACHED_*`: 1 driver, 2 skb (generic), 3 hardware, 4 several.
    pub attached: u8,
}

impl XdpProgram {
    /// The mode's name, as `ip link` shows it.
    #[must_use]
    pub fn mode_name(self) -> &'static str {
        match self.attached {
            1 => "driver",
            2 => "skb",
            3 => "hardware",
            4 => "several modes",
            _ => "unknown mode",
        }
    }
}

/// One link message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkMessage {
    pub change: LinkChange,
    pub ifindex: u32,
    pub name: Option<String>,
    /// Operationally up (`IFF_RUNNING`).
    pub running: bool,
    /// `None`: no XDP program, or the message does not say.
    pub xdp: Option<XdpProgram>,
}

/// One netlink message, as far as the agent reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Link(LinkMessage),
    /// `NLMSG_ERROR`: 0 acknowledges, else a negative errno.
    Error(i32),
    Done,
    /// Any other type.
    Other(u16),
}

/// A datagram that is not netlink as the kernel writes it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink message at byte {offset}: {what}")]
pub struct ParseError {
    pub offset: usize,
    pub what: &'static str,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Netlink's 4-byte alignment.
const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The messages of one datagram, in order.
///
/// # Errors
/// A header whose length does not fit the datagram, or a link message too short for its
/// fixed part.
pub fn parse(datagram: &[u8]) -> Result<Vec<Message>, ParseError> {
    let mut messages = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let error = |what| ParseError { offset: at, what };
        let len = u32_at(datagram, at).ok_or(error("truncated header"))? as usize;
        let kind = u16_at(datagram, at + 4).ok_or(error("truncated header"))?;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            return Err(error("length out of bounds"));
        }
        let payload = &datagram[at + NLMSG_HDRLEN..at + len];
        messages.push(match kind {
            RTM_NEWLINK | RTM_DELLINK => {
                let change = if kind == RTM_NEWLINK {
                    LinkChange::New
                } else {
                    LinkChange::Del
                };
                Message::Link(link(change, payload).ok_or(error("short link message"))?)
            }
            NLMSG_ERROR => Message::Error(
                u32_at(payload, 0)
                    .ok_or(error("short error message"))?
                    .cast_signed(),
            ),
            NLMSG_DONE => Message::Done,
            other => Message::Other(other),
        });
        at += align(len);
    }
    Ok(messages)
}

/// An `ifinfomsg` and its attributes.
fn link(change: LinkChange, payload: &[u8]) -> Option<LinkMessage> {
    let ifindex = u32_at(payload, 4)?;
    let flags = u32_at(payload, 8)?;
    let mut message = LinkMessage {
        change,
        ifindex,
        name: None,
        running: flags & IFF_RUNNING != 0,
        xdp: None,
    };
    for (kind, value) in attributes(payload.get(IFINFOMSG_LEN..)?) {
        match kind {
            IFLA_IFNAME => {
                let name = value.split(|&b| b == 0).next().unwrap_or_default();
                message.name = Some(String::from_utf8_lossy(name).into_owned());
            }
            IFLA_XDP => message.xdp = xdp(value),
            _ => {}
        }
    }
    Some(message)
}

/// `IFLA_XDP`'s nested attributes: the program, if one is attached.
fn xdp(nested: &[u8]) -> Option<XdpProgram> {
    let (mut attached, mut id) = (0, 0);
    for (kind, value) in attributes(nested) {
        match kind {
            IFLA_XDP_ATTACHED => attached = *value.first()?,
            IFLA_XDP_PROG_ID => id = u32_at(value, 0)?,
            _ => {}
        }
    }
    (attached != 0 && id != 0).then_some(XdpProgram { id, attached })
}

/// The attributes (`struct rtattr`: length, type, value) in `b`: (type, value). A
/// malformed one ends the list.
fn attributes(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, at)?);
        let kind = u16_at(b, at + 2)? & NLA_TYPE_MASK;
        let value = b.get(at + 4..at.checked_add(len)?).filter(|_| len >= 4)?;
        at += align(len);
        Some((kind, value))
    })
}

/// `RTM_GETLINK` for interface `ifindex`.
fn getlink_request(ifindex: u32, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_ne_bytes());
    b.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change.
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&ifindex.to_ne_bytes());
    b.extend_from_slice(&[0; 8]);
    b
}

/// A `NETLINK_ROUTE` socket, non-blocking, that receives the link events when `events`.
///
/// # Errors
/// The socket cannot be created or bound.
pub fn socket(events: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = if events { RTMGRP_LINK } else { 0 };
    // SAFETY: a valid address of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One datagram from `fd` into `buf` (non-blocking: `WouldBlock` when none waits;
/// `ENOBUFS` when the kernel dropped events because the socket's buffer was full).
///
/// # Errors
/// As recv(2).
pub fn receive<'b>(fd: &OwnedFd, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(&buf[..n.cast_unsigned()])
}

/// A receive buffer for [`receive`].
#[must_use]
pub fn buffer() -> Vec<u8> {
    vec![0; RECV_BUFFER]
}

/// The XDP program interface `ifindex` holds, if any, as the kernel says now.
///
/// # Errors
/// The kernel cannot be asked, or does not know the interface.
pub fn xdp_program(ifindex: u32) -> io::Result<Option<XdpProgram>> {
    let fd = socket(false)?;
    let request = getlink_request(ifindex, 1);
    // SAFETY: send reads `request.len()` bytes of `request`.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = buffer();
    // The answer comes at once; wait for it at most a second.
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&raw mut poll, 1, 1000) } <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel did not answer RTM_GETLINK",
        ));
    }
    let datagram = receive(&fd, &mut buf)?;
    for message in parse(datagram).map_err(io::Error::other)? {
        match message {
            Message::Link(link) if link.ifindex == ifindex => return Ok(link.xdp),
            Message::Error(errno) if errno != 0 => {
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => {}
        }
    }
    Err(io::Error::other("no answer about the interface"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` around `payload`.
    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut b = Vec::new();
        b.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(payload);
        b.resize(align(b.len()), 0);
        b
    }

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value);
        b.resize(align(b.len()), 0);
        b
    }

    /// An `ifinfomsg` for `ifindex` with `flags`, then `attributes`.
    fn ifinfo(ifindex: u32, flags: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![0, 0, 1, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for a in attributes {
            b.extend_from_slice(a);
        }
        b
    }

    #[test]
    fn link_messages_give_index_name_running_and_xdp_program() {
        let xdp = [
            attribute(IFLA_XDP_ATTACHED, &[1]),
            attribute(IFLA_XDP_PROG_ID, &42u32.to_ne_bytes()),
        ]
        .concat();
        let new = ifinfo(
            12,
            0x1 | IFF_RUNNING | 0x1_0000,
            &[
                attribute(4, &1500u32.to_ne_bytes()),
                attribute(IFLA_IFNAME, b"lbs0\0"),
                // Nested: the kernel sets NLA_F_NESTED on IFLA_XDP.
                attribute(IFLA_XDP | 0x8000, &xdp),
            ],
        );
        let del = ifinfo(7, 0, &[attribute(IFLA_IFNAME, b"lbc0\0")]);
        let datagram = [message(RTM_NEWLINK, &new), message(RTM_DELLINK, &del)].concat();
        assert_eq!(
            parse(&datagram).unwrap(),
            [
                Message::Link(LinkMessage {
                    change: LinkChange::New,
                    ifindex: 12,
                    name: Some("lbs0".into()),
                    running: true,
                    xdp: Some(XdpProgram {
                        id: 42,
                        attached: 1
                    }),
                }),
                Message::Link(LinkMessage {
                    change: LinkChange::Del,
                    ifindex: 7,
                    name: Some("lbc0".into()),
                    running: false,
                    xdp: None,
                }),
            ]
        );
        assert_eq!(
            XdpProgram {
                id: 42,
                attached: 2
            }
            .mode_name(),
            "skb"
        );
    }

    #[test]
    fn no_program_errors_and_other_messages() {
        // IFLA_XDP saying "none attached".
        let none = ifinfo(
            3,
            0,
            &[attribute(IFLA_XDP, &attribute(IFLA_XDP_ATTACHED, &[0]))],
        );
        let enodev = (-libc::ENODEV).to_ne_bytes();
        let datagram = [
            message(RTM_NEWLINK, &none),
            message(NLMSG_ERROR, &enodev),
            message(NLMSG_DONE, &[0; 4]),
            message(20, &[]),
        ]
        .concat();
        let messages = parse(&datagram).unwrap();
        assert!(matches!(&messages[0], Message::Link(l) if l.xdp.is_none() && l.name.is_none()));
        assert_eq!(
            messages[1..],
            [
                Message::Error(-libc::ENODEV),
                Message::Done,
                Message::Other(20)
            ]
        );
    }

    #[test]
    fn malformed_datagrams_are_errors_and_bad_attributes_end_the_list() {
        let good = message(RTM_NEWLINK, &ifinfo(3, 0, &[]));
        // A length beyond the datagram.
        let mut long = good.clone();
        long[0] = 200;
        assert_eq!(parse(&long).unwrap_err().what, "length out of bounds");
        // A link message without its ifinfomsg.
        let short = message(RTM_DELLINK, &[0; 8]);
        assert_eq!(parse(&short).unwrap_err().what, "short link message");
        // Every truncation of a link message is an error or a shorter list, never a panic.
        let full = message(
            RTM_NEWLINK,
            &ifinfo(3, 0, &[attribute(IFLA_IFNAME, b"eth0\0")]),
        );
        for cut in 0..full.len() {
            let _ = parse(&full[..cut]);
        }
        // An attribute longer than what is left is ignored.
        let mut bad_attr = ifinfo(3, 0, &[attribute(IFLA_IFNAME, b"eth0\0")]);
        bad_attr[IFINFOMSG_LEN] = 0xff;
        let Message::Link(link) = &parse(&message(RTM_NEWLINK, &bad_attr)).unwrap()[0] else {
            panic!("a link message");
        };
        assert_eq!(link.name, None);
    }

    #[test]
    fn getlink_request_asks_for_one_interface() {
        let request = getlink_request(9, 5);
        assert_eq!(request.len(), 32);
        assert_eq!(u32_at(&request, 0), Some(32));
        assert_eq!(u16_at(&request, 4), Some(RTM_GETLINK));
        assert_eq!(u16_at(&request, 6), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&request, 8), Some(5));
        assert_eq!(u32_at(&request, NLMSG_HDRLEN + 4), Some(9));
    }
}
