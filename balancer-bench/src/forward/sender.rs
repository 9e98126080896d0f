//! The traffic of the forwarder-bound bench: prebuilt frames of many flows sent from an
//! `AF_PACKET` socket that bypasses the qdisc, in batches of `sendmmsg`, from a thread
//! pinned to its own CPU.
//!
//! Flow `i`'s frame differs from the template in its client address and port only, so each
//! frame is the template with those written in and both checksums updated (ones'
//! complement sums are linear): no frame is built per packet.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use balancer_tests::frame::{self, Spec, L4};
use balancer_wire::{tcp::Flags, MacAddr};

/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// Flow `i` comes from `CLIENTS + i / PORTS_PER_ADDR`, port `FIRST_PORT + i % PORTS_PER_ADDR`.
const PORTS_PER_ADDR: u32 = 50_000;
const FIRST_PORT: u16 = 10_000;

// Offsets in an untagged Ethernet frame with a 20-byte IPv4 header.
const IP_CSUM: usize = 14 + 10;
const IP_SRC: usize = 14 + 12;
const L4_SPORT: usize = 34;

/// A frame of flow 0 with the sums its checksums are made of, less the client's part.
#[derive(Clone)]
pub struct Template {
    bytes: Vec<u8>,
    /// Offset of the L4 checksum.
    l4_csum: usize,
    /// The ones' complement sums of the IPv4 header and of the L4 checksum's coverage with
    /// the client address and port zero.
    ip_sum: u32,
    l4_sum: u32,
    /// The client addresses start here.
    clients: Ipv4Addr,
}

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// UDP datagrams (18 bytes of payload) of flows `0..flows`, round-robin.
    Udp { flows: u32 },
    /// TCP SYNs, each of a flow never sent before (from flow `first` on).
    Syns { first: u32 },
}

impl Template {
    /// `spec` (its addresses, ports and L4 as given, the client's address and port
    /// replaced per flow); `clients`: flow 0's client address.
    pub fn new(spec: &Spec, clients: Ipv4Addr) -> Template {
        let bytes = frame::build(&Spec {
            src: Ipv4Addr::UNSPECIFIED,
            sport: 0,
            ..spec.clone()
        });
        let l4_csum = match spec.l4 {
            L4::Udp { .. } => L4_SPORT + 6,
            L4::Tcp { .. } => L4_SPORT + 16,
        };
        let field = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        Template {
            ip_sum: u32::from(!field(IP_CSUM)),
            l4_sum: u32::from(!field(l4_csum)),
            bytes,
            l4_csum,
            clients,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Flow `i`'s frame into `out` (of the template's length).
    pub fn write(&self, i: u32, out: &mut [u8]) {
        out.copy_from_slice(&self.bytes);
        let src = u32::from(self.clients) + i / PORTS_PER_ADDR;
        let sport = FIRST_PORT + (i % PORTS_PER_ADDR) as u16;
        out[IP_SRC..IP_SRC + 4].copy_from_slice(&src.to_be_bytes());
        out[L4_SPORT..L4_SPORT + 2].copy_from_slice(&sport.to_be_bytes());
        let client = (src >> 16) + (src & 0xffff);
        let ip = !fold(self.ip_sum + client);
        out[IP_CSUM..IP_CSUM + 2].copy_from_slice(&ip.to_be_bytes());
        let mut l4 = !fold(self.l4_sum + client + u32::from(sport));
        if l4 == 0 && self.l4_csum == L4_SPORT + 6 {
            l4 = 0xffff; // UDP: 0 means "no checksum"
        }
        out[self.l4_csum..self.l4_csum + 2].copy_from_slice(&l4.to_be_bytes());
    }
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The frame of `traffic` from `src_mac` to `dst_mac`, towards `dst` (UDP port `udp_port`,
/// TCP port `tcp_port`), clients from `clients`.
pub fn template(
    traffic: Traffic,
    macs: (MacAddr, MacAddr),
    dst: Ipv4Addr,
    ports: (u16, u16),
    clients: Ipv4Addr,
) -> Template {
    Template::new(&spec(traffic, macs, dst, ports), clients)
}

/// What [`template`] builds, before the client's address and port.
fn spec(
    traffic: Traffic,
    (src_mac, dst_mac): (MacAddr, MacAddr),
    dst: Ipv4Addr,
    (udp_port, tcp_port): (u16, u16),
) -> Spec {
    let spec = Spec {
        src_mac,
        dst_mac,
        dst,
        ..Spec::default()
    };
    match traffic {
        Traffic::Udp { .. } => Spec {
            dport: udp_port,
            l4: L4::Udp { checksum: true },
            payload: vec![b'u'; 18],
            ..spec
        },
        Traffic::Syns { .. } => Spec {
            dport: tcp_port,
            l4: L4::Tcp {
                flags: Flags::SYN,
                seq: 1000,
                ack: 0,
            },
            ..spec
        },
    }
}

/// An `AF_PACKET` socket bound to one interface, sending past its qdisc.
pub struct Sender {
    fd: OwnedFd,
}

/// What one send run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub frames: u64,
    /// Frames the socket refused (the device's queue full).
    pub refused: u64,
}

impl Sender {
    /// On `ifindex` of the calling thread's namespace.
    pub fn new(ifindex: u32) -> Result<Sender> {
        // SAFETY: plain socket(2); protocol 0: this socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: a valid int option of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "PACKET_QDISC_BYPASS: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are what bind reads.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            rc == 0,
            "bind(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        Ok(Sender { fd })
    }

    /// Sends `traffic` for `duration` as fast as the socket takes it, or at most `rate`
    /// frames per second when given. Returns the frames sent and where the next run's flows
    /// continue (for `Syns`: never a flow twice).
    pub fn send(
        &self,
        template: &Template,
        traffic: Traffic,
        duration: Duration,
        rate: Option<f64>,
    ) -> Result<(Sent, Traffic)> {
        let len = template.len();
        let mut buf = vec![0u8; len * BATCH];
        let mut iov: Vec<libc::iovec> = buf
            .chunks_mut(len)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: len,
            })
            .collect();
        // SAFETY: a zeroed mmsghdr is valid (no name, no control); the iovec is set below.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = std::ptr::from_mut(v);
            m.msg_hdr.msg_iovlen = 1;
        }
        let (mut next, flows) = match traffic {
            Traffic::Udp { flows } => (0u32, flows.max(1)),
            Traffic::Syns { first } => (first, u32::MAX),
        };
        let mut sent = Sent::default();
        let started = Instant::now();
        while started.elapsed() < duration {
            if let Some(rate) = rate {
                while sent.frames as f64 > rate * started.elapsed().as_secs_f64() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            // Rewritten in place: the iovecs point into `buf` (read by the kernel only
            // during sendmmsg below).
            for out in buf.chunks_mut(len) {
                let flow = if flows == u32::MAX {
                    next
                } else {
                    next % flows
                };
                template.write(flow, out);
                next = next.wrapping_add(1);
            }
            let mut at = 0;
            while at < BATCH {
                // SAFETY: `msgs[at..]` are valid mmsghdrs whose iovecs point into `buf`.
                let n = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        msgs[at..].as_mut_ptr(),
                        (BATCH - at) as libc::c_uint,
                        0,
                    )
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::ENOBUFS | libc::EAGAIN | libc::EBUSY) => {
                            // One frame refused: skip it.
                            sent.refused += 1;
                            at += 1;
                        }
                        Some(libc::EINTR) => {}
                        _ => bail!("sendmmsg: {e}"),
                    }
                } else {
                    sent.frames += n as u64;
                    at += n as usize;
                }
            }
        }
        let traffic = match traffic {
            Traffic::Syns { .. } => Traffic::Syns { first: next },
            udp @ Traffic::Udp { .. } => udp,
        };
        Ok((sent, traffic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow's frame from the template is the frame built for that flow, checksums included.
    #[test]
    fn template_frames_are_the_built_frames() {
        let macs = (MacAddr([2, 0, 0, 0, 1, 2]), MacAddr([2, 0, 0, 0, 1, 1]));
        let dst = Ipv4Addr::new(10, 0, 100, 1);
        let clients = Ipv4Addr::new(10, 64, 0, 0);
        for traffic in [Traffic::Udp { flows: 10 }, Traffic::Syns { first: 0 }] {
            let t = template(traffic, macs, dst, (5300, 80), clients);
            for i in [0, 1, 49_999, 50_000, 123_457, 999_999] {
                let mut out = vec![0u8; t.len()];
                t.write(i, &mut out);
                let src = Ipv4Addr::from(u32::from(clients) + i / PORTS_PER_ADDR);
                let sport = FIRST_PORT + (i % PORTS_PER_ADDR) as u16;
                let built = frame::build(&Spec {
                    src,
                    sport,
                    ..spec(traffic, macs, dst, (5300, 80))
                });
                assert_eq!(out, built, "{traffic:?}, flow {i}");
            }
        }
    }
}
