//! The host side of VRRP: the raw socket advertisements go out and come in on, gratuitous
//! ARPs, the virtual addresses on the interface, and notify commands. Each is a thin
//! wrapper over the kernel; what to do and when is the state machine's.
//!
//! Addresses are set with iproute2's `ip`, as an operator would: one well-known tool, no
//! netlink code of our own to keep right, and a failover costs one short process per
//! instance, a few milliseconds next to the master-down interval.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use balancer_wire::vrrp::MULTICAST_V4;
pub use balancer_wire::vrrp::TTL;
use balancer_wire::{arp, ethernet, EtherType, MacAddr};
use tokio::io::unix::AsyncFd;

use crate::sys::{self, setsockopt, setsockopt_bytes, socket};

/// IP protocol number of VRRP.
const IPPROTO_VRRP: libc::c_int = 112;

/// The raw IPv4 socket of one interface's VRRP advertisements: bound to the interface,
/// member of 224.0.0.18 there, sending with TTL 255. Received packets come with their IPv4
/// header (the TTL and the addresses are the receive checks' to look at).
#[derive(Debug)]
pub struct AdvertSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
}

impl AdvertSocket {
    /// Opens the socket of `interface` (must run in a tokio runtime).
    pub fn open(interface: &str) -> io::Result<AdvertSocket> {
        let ifindex = sys::ifindex(interface)
            .map_err(|e| io::Error::new(e.kind(), format!("interface {interface}: {e}")))?;
        let fd = socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_VRRP)?;
        // Only this interface's adverts, and ours leave by it.
        setsockopt_bytes(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_bytes(),
        )?;
        let ttl = libc::c_int::from(TTL);
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl)?;
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &ttl)?;
        // Our own adverts must not come back as a peer's.
        setsockopt(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            &0 as &libc::c_int,
        )?;
        let mreq = libc::ip_mreqn {
            imr_multiaddr: sys::in_addr(MULTICAST_V4),
            imr_address: sys::in_addr(Ipv4Addr::UNSPECIFIED),
            imr_ifindex: ifindex as libc::c_int,
        };
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq)?;
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq)?;
        // SAFETY: the AsyncFd owns the descriptor, which stays open as long as it does.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(AdvertSocket { fd, ifindex })
    }

    /// The next packet (its IPv4 header included) into `buf`; its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                // SAFETY: `buf` is writable for its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// Sends the VRRP message `payload` from `source` to `destination` (the kernel writes
    /// the IPv4 header, with TTL 255).
    pub fn send(&self, payload: &[u8], source: Ipv4Addr, destination: Ipv4Addr) -> io::Result<()> {
        let to = sys::sockaddr_in(std::net::SocketAddrV4::new(destination, 0));
        let info = libc::in_pktinfo {
            ipi_ifindex: self.ifindex as libc::c_int,
            ipi_spec_dst: sys::in_addr(source),
            ipi_addr: sys::in_addr(Ipv4Addr::UNSPECIFIED),
        };
        // One IP_PKTINFO control message: it names the source address.
        let space = cmsg_space(size_of::<libc::in_pktinfo>());
        let mut control = vec![0u8; space];
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the fields set below point to live values.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_name = std::ptr::from_ref(&to).cast_mut().cast();
        message.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        // SAFETY: `message` has room for one control message of this size (cmsg_space).
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&raw const message);
            (*header).cmsg_level = libc::IPPROTO_IP;
            (*header).cmsg_type = libc::IP_PKTINFO;
            (*header).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            libc::CMSG_DATA(header)
                .cast::<libc::in_pktinfo>()
                .write_unaligned(info);
        }
        // SAFETY: every pointer in `message` is valid for the lengths given.
        let sent = unsafe { libc::sendmsg(self.fd.get_ref().as_raw_fd(), &raw const message, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

/// A packet socket that sends gratuitous ARPs out of one interface.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    ifindex: u32,
    mac: MacAddr,
}

impl ArpSocket {
    pub fn open(interface: &str) -> io::Result<ArpSocket> {
        let ifindex = sys::ifindex(interface)
            .map_err(|e| io::Error::new(e.kind(), format!("interface {interface}: {e}")))?;
        let mac = MacAddr(sys::mac_address(interface)?);
        // Protocol 0: the socket only sends.
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        Ok(ArpSocket { fd, ifindex, mac })
    }

    /// Broadcasts `count` gratuitous ARP requests for `address` (RFC 5227 section 3), as
    /// keepalived does when an instance becomes Master, so that neighbours send to this
    /// host's MAC address.
    pub fn announce(&self, address: Ipv4Addr, count: u32) -> io::Result<()> {
        let arp = arp::Repr::gratuitous(self.mac, address);
        let eth = ethernet::Repr {
            src_addr: self.mac,
            dst_addr: MacAddr::BROADCAST,
            vlan: None,
            ethertype: EtherType::ARP,
        };
        let mut frame = vec![0u8; eth.header_len() + arp.buffer_len()];
        let mut view = ethernet::Frame::new_unchecked(&mut frame[..]);
        eth.emit(&mut view);
        arp.emit(&mut arp::Packet::new_unchecked(view.payload_mut()));
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        to.sll_ifindex = self.ifindex as libc::c_int;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&MacAddr::BROADCAST.0);
        for _ in 0..count {
            // SAFETY: `frame` and `to` are valid for the lengths passed.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Runs a notify command's `argv` (the program first, keepalived's arguments last, e.g.
/// `INSTANCE vi_web MASTER 150`) without a shell, as keepalived does, and without waiting
/// for it: its exit status is logged when it comes.
pub fn notify(argv: &[String]) {
    let Some((program, arguments)) = argv.split_first() else {
        return;
    };
    let line = argv.join(" ");
    match tokio::process::Command::new(program)
        .args(arguments)
        .spawn()
    {
        Ok(mut child) => {
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(status) if !status.success() => {
                        log::warn!("vrrp notify `{line}` exited with {status}");
                    }
                    Ok(_) => log::debug!("vrrp notify `{line}` done"),
                    Err(e) => log::warn!("vrrp notify `{line}`: {e}"),
                }
            });
        }
        Err(e) => log::warn!("vrrp notify `{line}` did not start: {e}"),
    }
}
