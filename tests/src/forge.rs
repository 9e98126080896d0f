//! Forged VRRP adverts, sent as whole Ethernet frames from a namespace: to test what a
//! receiver does with adverts that are wrong (TTL, checksum, length, VRID) or hostile.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use balancer_wire::vrrp::{self, Addresses, Family, Repr, V3Checksum, Version};
use balancer_wire::{ethernet, ipv4, EtherType, IpProtocol, MacAddr, PseudoHeader};

use crate::netns::Netns;

/// The Ethernet address of IPv4 multicast group 224.0.0.18 (RFC 1112 section 6.4).
const VRRP_GROUP_MAC: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x12]);

/// One advert to forge: a valid one by default, then spoiled by a test.
#[derive(Debug, Clone)]
pub struct Forged {
    pub src: Ipv4Addr,
    pub ttl: u8,
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Centiseconds for v3, seconds for v2.
    pub advert_int: u16,
    pub addresses: Vec<Ipv4Addr>,
}

impl Forged {
    /// A well-formed advert from `src` to 224.0.0.18 with TTL 255, interval 1 s.
    pub fn new(src: Ipv4Addr, version: Version, vrid: u8, priority: u8, address: Ipv4Addr) -> Self {
        Forged {
            src,
            ttl: 255,
            version,
            vrid,
            priority,
            advert_int: match version {
                Version::V2 => 1,
                Version::V3 => 100,
            },
            addresses: vec![address],
        }
    }

    /// The VRRP message (the checksum as keepalived 2.2.7 computes it).
    pub fn message(&self) -> Vec<u8> {
        let repr = Repr {
            version: self.version,
            vrid: self.vrid,
            priority: self.priority,
            advert_int: self.advert_int,
            addresses: Addresses::from(self.addresses.clone()),
        };
        let mut message = vec![0; repr.buffer_len()];
        let pseudo = PseudoHeader::from((self.src, vrrp::MULTICAST_V4));
        repr.emit(
            &mut vrrp::Packet::new_unchecked(&mut message[..], Family::Ipv4),
            &pseudo,
            V3Checksum::PseudoHeader,
        );
        message
    }

    /// The Ethernet frame carrying `message` (any bytes) as this advert's IP payload.
    pub fn frame_with(&self, src_mac: MacAddr, message: &[u8]) -> Vec<u8> {
        let ip = ipv4::Repr {
            src_addr: self.src,
            dst_addr: vrrp::MULTICAST_V4,
            protocol: IpProtocol::VRRP,
            payload_len: message.len(),
            ttl: self.ttl,
            ..ipv4::Repr::default()
        };
        let eth = ethernet::Repr {
            src_addr: src_mac,
            dst_addr: VRRP_GROUP_MAC,
            vlan: None,
            ethertype: EtherType::IPV4,
        };
        let mut frame = vec![0; eth.header_len() + ip.buffer_len() + message.len()];
        let mut view = ethernet::Frame::new_unchecked(&mut frame[..]);
        eth.emit(&mut view);
        let mut packet = ipv4::Packet::new_unchecked(view.payload_mut());
        ip.emit(&mut packet);
        packet.payload_mut().copy_from_slice(message);
        frame
    }

    /// The frame of the advert as it is.
    pub fn frame(&self, src_mac: MacAddr) -> Vec<u8> {
        self.frame_with(src_mac, &self.message())
    }
}

/// Sends `frames` out of `interface` in namespace `ns` with a packet socket, `gap` apart.
///
/// # Errors
/// When the namespace cannot be entered or a frame cannot be sent.
pub fn send_frames(ns: &Netns, interface: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    let interface = interface.to_owned();
    ns.in_thread(move || -> Result<()> {
        let socket = PacketSocket::open(&interface)?;
        for frame in frames {
            socket
                .send_all(std::slice::from_ref(frame))
                .with_context(|| format!("sending a frame out of {interface}"))?;
            std::thread::sleep(gap);
        }
        Ok(())
    })?
}

/// A packet socket bound to one interface, bypassing its qdisc.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    to: libc::sockaddr_ll,
}

impl PacketSocket {
    pub(crate) fn open(interface: &str) -> Result<PacketSocket> {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {interface}");
        }
        // SAFETY: plain socket creation; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a packet socket");
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: an int option of the right size. Failing only costs speed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                u32::try_from(size_of::<libc::c_int>())?,
            );
        }
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = i32::try_from(ifindex)?;
        to.sll_halen = 6;
        Ok(PacketSocket { fd, to })
    }

    /// Sends every frame, retrying what the kernel did not take (a full device queue).
    pub(crate) fn send_all(&self, frames: &[Vec<u8>]) -> Result<()> {
        let mut iovecs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero mmsghdr is valid; the pointers set below outlive it.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (&raw const self.to).cast_mut().cast();
                m.msg_hdr.msg_namelen =
                    u32::try_from(size_of::<libc::sockaddr_ll>()).expect("a small struct");
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut done = 0;
        while done < messages.len() {
            let rest = &mut messages[done..];
            // SAFETY: `rest` holds valid headers whose buffers outlive the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    rest.as_mut_ptr(),
                    u32::try_from(rest.len())?,
                    0,
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::ENOBUFS) {
                    std::thread::yield_now();
                    continue;
                }
                return Err(error).context("sending SYNs");
            }
            done += usize::try_from(n)?;
        }
        Ok(())
    }
}
