//! A flood of spoofed TCP SYNs, sent as whole Ethernet frames from a namespace as fast as
//! one packet socket can: to show that clients that do not exist cannot take a VIP's
//! capacity (connection table, SNAT ports) from clients that do.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Result;
use balancer_wire::tcp::Flags;
use balancer_wire::{ethernet, ipv4, tcp, MacAddr, PseudoHeader};

use crate::forge::PacketSocket;
use crate::frame::{self, Spec, L4};
use crate::netns::Netns;

/// The spoofed sources: 100.64.0.0/10 (shared address space, RFC 6598), which no test
/// namespace uses: 4M addresses, each with its own port.
const SPOOFED_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
const SPOOFED_ADDRESSES: u32 = 1 << 22;
/// Frames per `sendmmsg` call.
const BATCH: usize = 256;

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub sent: u64,
    pub elapsed: Duration,
}

impl Flood {
    /// Frames per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `count` TCP SYNs to `target` out of `interface` in namespace `ns`, from `macs`
/// (source, destination), each from another spoofed address and port (never a
/// retransmission: a spoofed client never sees the SYN-ACK).
///
/// # Errors
/// When the namespace or interface cannot be used or a send fails.
pub fn syn_flood(
    ns: &Netns,
    interface: &str,
    macs: (MacAddr, MacAddr),
    target: SocketAddrV4,
    count: u64,
) -> Result<Flood> {
    let interface = interface.to_owned();
    ns.in_thread(move || -> Result<Flood> {
        let socket = PacketSocket::open(&interface)?;
        let template = frame::build(&Spec {
            src_mac: macs.0,
            dst_mac: macs.1,
            src: Ipv4Addr::from(SPOOFED_BASE),
            dst: *target.ip(),
            sport: 1024,
            dport: target.port(),
            l4: L4::Tcp {
                flags: Flags::SYN,
                seq: 0,
                ack: 0,
            },
            ..Spec::default()
        });
        let mut frames = vec![template; BATCH];
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < count {
            let n = usize::try_from((count - sent).min(BATCH as u64))?;
            for (i, frame) in frames[..n].iter_mut().enumerate() {
                spoof(frame, sent + i as u64);
            }
            socket.send_all(&frames[..n])?;
            sent += n as u64;
        }
        Ok(Flood {
            sent,
            elapsed: started.elapsed(),
        })
    })?
}

/// Makes `frame` (a SYN built by [`frame::build`]) the `n`th of a flood: its own source
/// address, port and sequence number, checksums filled.
fn spoof(frame: &mut [u8], n: u64) {
    let offset = u32::try_from(n % u64::from(SPOOFED_ADDRESSES)).expect("below 2^22");
    let src = Ipv4Addr::from(SPOOFED_BASE + offset);
    let dst;
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..]);
        ip.set_src_addr(src);
        ip.fill_checksum();
        dst = ip.dst_addr();
    }
    let l4 = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    let mut segment = tcp::Packet::new_unchecked(&mut frame[l4..]);
    // Ports 1024..=65535, varied with the address so no two SYNs share a tuple.
    segment.set_src_port(1024 + (n % 64_512) as u16);
    segment.set_seq_number(offset.wrapping_mul(2_654_435_761));
    segment.fill_checksum(&PseudoHeader::from((src, dst)));
}
