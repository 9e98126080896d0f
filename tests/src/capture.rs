//! A packet capture of VRRP adverts and ARP (tcpdump in a namespace), the adverts' fields, and the check that exactly one Master advertises at a time.

use crate::netns::Netns;
use crate::util::{terminate, TempDir};
use anyhow::{bail, Context, Result};
use balancer_wire::{arp, ipv4, vrrp, EtherType, IpProtocol, MacAddr};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What tcpdump keeps: VRRP (IP protocol 112) and ARP.
const FILTER: &str = "ip proto 112 or arp";
/// pcap's link type for Linux "cooked" captures v2 (`-i any -y LINUX_SLL2`).
const LINKTYPE_LINUX_SLL2: u32 = 276;
/// How long tcpdump may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Where VRRP adverts go unless sent to unicast peers (RFC 9568 5.1.1.2).
pub const VRRP_MULTICAST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The transition window [`assert_one_master`] callers use by default: two Masters may
/// overlap this long while one takes over from the other.
pub const TRANSITION_WINDOW: Duration = Duration::from_millis(500);

/// How a captured advert's checksum checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpChecksum {
    /// Version 2: right over the VRRP message.
    V2,
    /// Version 3: right with the IPv4 pseudo-header in the sum (keepalived 2.2.7, FRR).
    WithPseudoHeader,
    /// Version 3: right over the message alone (RFC 9568 for IPv4, Cisco).
    WithoutPseudoHeader,
    Invalid,
}

/// One VRRP packet as it entered a port of the captured namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// The capture's timestamp.
    pub at: SystemTime,
    /// The interface it came in on.
    pub iface: String,
    /// The sender's MAC address.
    pub src_mac: Option<MacAddr>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// VRRP version (high nibble of the first byte).
    pub version: u8,
    /// VRRP type (low nibble; 1 is an advertisement).
    pub kind: u8,
    pub vrid: u8,
    pub priority: u8,
    /// The address count field.
    pub count: u8,
    /// The advertisement interval: v2's seconds, v3's centiseconds.
    pub interval: Duration,
    /// v2's auth type (0 for v3).
    pub auth_type: u8,
    /// The addresses the message holds (as many as fit, whatever the count says).
    pub addresses: Vec<Ipv4Addr>,
    /// Length of the VRRP message (the IPv4 payload).
    pub len: usize,
    /// The checksum field as sent.
    pub checksum_field: u16,
    pub checksum: VrrpChecksum,
    /// The VRRP message's bytes (the IPv4 payload, at most tcpdump's snap length), for
    /// byte-level assertions.
    pub raw: Vec<u8>,
}

/// One ARP packet as it entered a port of the captured namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpSeen {
    pub at: SystemTime,
    pub iface: String,
    pub arp: arp::Repr,
}

impl ArpSeen {
    /// A gratuitous ARP: the sender announces its own address (sender and target address
    /// are the same).
    pub fn is_gratuitous(&self) -> bool {
        self.arp.source_protocol_addr == self.arp.target_protocol_addr
    }
}

/// What a capture holds so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub adverts: Vec<Advert>,
    pub arps: Vec<ArpSeen>,
}

/// `tcpdump -i any -Q in` of VRRP and ARP in a namespace, written to a pcap file and read
/// back (while it runs, too). Dropping it stops tcpdump.
pub struct Capture {
    ns_name: String,
    child: Option<Child>,
    /// Interface names by index, read when the capture started.
    interfaces: BTreeMap<u32, String>,
    /// Interfaces whose frames are left out (a bridge device sees again what its ports got).
    ignore: Vec<String>,
    dir: TempDir,
}

impl Capture {
    /// Starts tcpdump in `ns` on every interface, incoming frames only (so a frame is seen
    /// once, on the port it entered), leaving out frames on the `ignore` interfaces; returns
    /// once tcpdump listens.
    pub fn start(ns: &Netns, ignore: &[&str]) -> Result<Capture> {
        let dir = TempDir::new(&format!("{}-capture", ns.name()))?;
        let interfaces = interface_names(&ns.ip(&["-o", "link", "show"])?);
        let pcap = dir.path().join("capture.pcap");
        let stderr_path = dir.path().join("tcpdump.log");
        let stderr = File::create(&stderr_path)?;
        let child = ns
            .command("tcpdump")
            .args(["-i", "any", "-Q", "in", "-n", "-U", "--immediate-mode"])
            // Root keeps writing the file in our root-only directory.
            .args(["-Z", "root", "-y", "LINUX_SLL2", "-s", "512", "-w"])
            .arg(&pcap)
            .arg(FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning tcpdump in namespace {}", ns.name()))?;
        let mut capture = Capture {
            ns_name: ns.name().to_string(),
            child: Some(child),
            interfaces,
            ignore: ignore.iter().map(|s| (*s).to_string()).collect(),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            if log.contains("listening on") {
                return Ok(capture);
            }
            if let Some(child) = capture.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    capture.child = None;
                    bail!(
                        "tcpdump in {} exited ({status}): {}",
                        capture.ns_name,
                        log.trim()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "tcpdump in {} did not start listening within {START_TIMEOUT:?}: {}",
                    capture.ns_name,
                    log.trim()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pcap file (complete once [`Capture::stop`] returned).
    pub fn pcap_path(&self) -> PathBuf {
        self.dir.path().join("capture.pcap")
    }

    /// Everything captured so far (a record tcpdump is still writing is left out).
    pub fn read(&self) -> Result<Captured> {
        let path = self.pcap_path();
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        self.decode(&bytes)
            .with_context(|| format!("decoding {}", path.display()))
    }

    /// The VRRP packets captured so far, in capture order.
    pub fn adverts(&self) -> Result<Vec<Advert>> {
        Ok(self.read()?.adverts)
    }

    /// The ARP packets captured so far, in capture order.
    pub fn arps(&self) -> Result<Vec<ArpSeen>> {
        Ok(self.read()?.arps)
    }

    /// Stops tcpdump (it writes what it holds first).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(2));
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Captured> {
        let (linktype, records) = pcap_records(bytes)?;
        if linktype != LINKTYPE_LINUX_SLL2 {
            bail!("link type {linktype}, not LINUX_SLL2 ({LINKTYPE_LINUX_SLL2})");
        }
        let mut captured = Captured::default();
        for (at, frame) in records {
            let Some(cooked) = Sll2::parse(frame) else {
                continue;
            };
            let iface = self
                .interfaces
                .get(&cooked.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", cooked.ifindex));
            if self.ignore.contains(&iface) {
                continue;
            }
            match cooked.protocol {
                EtherType::IPV4 => {
                    if let Some(mut advert) = parse_advert(cooked.payload) {
                        advert.at = at;
                        advert.iface = iface;
                        advert.src_mac = cooked.src_mac;
                        captured.adverts.push(advert);
                    }
                }
                EtherType::ARP => {
                    let packet = arp::Packet::new_unchecked(cooked.payload);
                    if let Ok(repr) = arp::Repr::parse(&packet) {
                        captured.arps.push(ArpSeen {
                            at,
                            iface,
                            arp: repr,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(captured)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Interface names by index from `ip -o link show` (`3: fcli@if2: <...> ...`).
fn interface_names(out: &str) -> BTreeMap<u32, String> {
    out.lines()
        .filter_map(|line| {
            let (index, rest) = line.split_once(": ")?;
            let name = rest.split([':', '@']).next()?.trim();
            Some((index.trim().parse().ok()?, name.to_string()))
        })
        .collect()
}

/// A pcap record: its timestamp and bytes.
type Record<'a> = (SystemTime, &'a [u8]);

/// The link type and the records of a pcap file; a last record cut short (still being
/// written) is left out.
fn pcap_records(bytes: &[u8]) -> Result<(u32, Vec<Record<'_>>)> {
    if bytes.len() < 24 {
        bail!("{} bytes, shorter than a pcap header", bytes.len());
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let (big_endian, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        _ => bail!("not a pcap file (magic {magic:02x?})"),
    };
    let u32_at = |at: usize| -> u32 {
        let word = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if big_endian {
            u32::from_be_bytes(word)
        } else {
            u32::from_le_bytes(word)
        }
    };
    let linktype = u32_at(20);
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let (secs, frac) = (u32_at(at), u32_at(at + 4));
        let len = usize::try_from(u32_at(at + 8)).context("a record length")?;
        let start = at + 16;
        let Some(data) = bytes.get(start..start + len) else {
            break;
        };
        let frac = if nanos {
            Duration::from_nanos(u64::from(frac))
        } else {
            Duration::from_micros(u64::from(frac))
        };
        records.push((
            UNIX_EPOCH + Duration::from_secs(u64::from(secs)) + frac,
            data,
        ));
        at = start + len;
    }
    Ok((linktype, records))
}

/// The header of a `LINUX_SLL2` record: what the packet carries, the interface it was seen
/// on and its sender's link-layer address.
struct Sll2<'a> {
    protocol: EtherType,
    ifindex: u32,
    src_mac: Option<MacAddr>,
    payload: &'a [u8],
}

impl Sll2<'_> {
    /// Protocol (2), reserved (2), interface index (4), ARPHRD type (2), packet type (1),
    /// address length (1), address (8), then the network-layer packet.
    const LEN: usize = 20;

    fn parse(frame: &[u8]) -> Option<Sll2<'_>> {
        let header = frame.get(..Sll2::LEN)?;
        let src_mac = (header[11] == 6).then(|| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&header[12..18]);
            MacAddr(mac)
        });
        Some(Sll2 {
            protocol: EtherType(u16::from_be_bytes([header[0], header[1]])),
            ifindex: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            src_mac,
            payload: &frame[Sll2::LEN..],
        })
    }
}

/// The VRRP fields of an IPv4 packet carrying VRRP, read by their offsets (RFC 3768 5.1,
/// RFC 9568 5.1): `None` for anything else or a message shorter than its fixed 8 bytes.
/// The capture's time, interface and MAC are left for the caller to fill in.
pub fn parse_advert(ip_packet: &[u8]) -> Option<Advert> {
    let packet = ipv4::Packet::new_checked(ip_packet).ok()?;
    if packet.protocol() != IpProtocol::VRRP {
        return None;
    }
    let msg = packet.payload();
    if msg.len() < vrrp::HEADER_LEN {
        return None;
    }
    // The fields as sent, valid or not: the capture shows what went on the wire.
    let advert = vrrp::Packet::new_unchecked(msg, vrrp::Family::Ipv4);
    let version = advert.version();
    let (interval, auth_type) = if version == 2 {
        (
            Duration::from_secs(u64::from(advert.advert_int_secs())),
            advert.auth_type(),
        )
    } else {
        let centis = advert.max_advert_int();
        (Duration::from_millis(u64::from(centis) * 10), 0)
    };
    let whole = (msg.len() - vrrp::HEADER_LEN) / 4;
    let addresses = (0..usize::from(advert.addr_count()).min(whole))
        .filter_map(|i| match advert.address(i) {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    let checksum = match (version, advert.verify_checksum(&packet.pseudo_header())) {
        (_, None) => VrrpChecksum::Invalid,
        (2, Some(_)) => VrrpChecksum::V2,
        (_, Some(vrrp::V3Checksum::PseudoHeader)) => VrrpChecksum::WithPseudoHeader,
        (_, Some(vrrp::V3Checksum::Plain)) => VrrpChecksum::WithoutPseudoHeader,
    };
    Some(Advert {
        at: UNIX_EPOCH,
        iface: String::new(),
        src_mac: None,
        src,
        dst,
        ttl: packet.ttl(),
        version,
        kind: advert.msg_type(),
        vrid: advert.vrid(),
        priority: advert.priority(),
        count: advert.addr_count(),
        interval,
        auth_type,
        addresses,
        len: msg.len(),
        checksum_field: advert.checksum(),
        checksum,
        raw: msg.to_vec(),
    })
}

/// A stretch of time in which one router advertised a VRID as its Master: adverts with a
/// non-zero priority, each within three of its advertised intervals of the one before,
/// until it resigned (priority 0) or another router's advert superseded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterSpan {
    pub vrid: u8,
    pub src: Ipv4Addr,
    /// Its first and last advert.
    pub first: SystemTime,
    pub last: SystemTime,
    pub adverts: usize,
    /// The priority of its last advert.
    pub priority: u8,
    /// Whether it ended with a priority 0 advert (resigning).
    pub resigned: bool,
    /// When an advert from another router that a Master must yield to ended it (higher
    /// priority, or the same and a higher address: RFC 9568 6.4.3).
    pub superseded: Option<SystemTime>,
}

/// `later - earlier`, or zero when `later` is not later.
pub fn elapsed_between(earlier: SystemTime, later: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// Whether a Master advertising `(priority, src)` must yield to an advert of `other`.
fn yields_to(priority: u8, src: Ipv4Addr, other: &Advert) -> bool {
    other.priority > priority || (other.priority == priority && other.src > src)
}

/// The Master spans the adverts show, ordered by their first advert. An advert that comes
/// within `window` of its sender being superseded ends that span (the old Master had it
/// under way) rather than opening a new one.
pub fn master_spans(adverts: &[Advert], window: Duration) -> Vec<MasterSpan> {
    let mut open: BTreeMap<(u8, Ipv4Addr), MasterSpan> = BTreeMap::new();
    let mut closed: Vec<MasterSpan> = Vec::new();
    let mut sorted: Vec<&Advert> = adverts.iter().collect();
    sorted.sort_by_key(|a| a.at);
    for a in sorted {
        let key = (a.vrid, a.src);
        if a.priority == 0 {
            if let Some(mut span) = open.remove(&key) {
                span.resigned = true;
                closed.push(span);
            }
            continue;
        }
        let superseded: Vec<(u8, Ipv4Addr)> = open
            .iter()
            .filter(|(k, span)| {
                k.0 == a.vrid && k.1 != a.src && yields_to(span.priority, span.src, a)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in superseded {
            if let Some(mut span) = open.remove(&k) {
                span.superseded = Some(a.at);
                closed.push(span);
            }
        }
        let limit = a.interval.max(Duration::from_millis(10)) * 3;
        if let Some(span) = open.get_mut(&key) {
            if elapsed_between(span.last, a.at) <= limit {
                span.last = a.at;
                span.adverts += 1;
                span.priority = a.priority;
                continue;
            }
            closed.extend(open.remove(&key));
        }
        let straggler = closed.iter_mut().rev().find(|s| {
            (s.vrid, s.src) == key
                && s.superseded
                    .is_some_and(|at| elapsed_between(at, a.at) <= window)
        });
        if let Some(span) = straggler {
            span.last = a.at;
            span.adverts += 1;
            continue;
        }
        open.insert(
            key,
            MasterSpan {
                vrid: a.vrid,
                src: a.src,
                first: a.at,
                last: a.at,
                adverts: 1,
                priority: a.priority,
                resigned: false,
                superseded: None,
            },
        );
    }
    closed.extend(open.into_values());
    closed.sort_by_key(|s| s.first);
    closed
}

/// Adverts (non-zero priority) sent while another router of the same VRID was Master,
/// later than `window` after that router's span began, with that span: two Masters at once.
pub fn two_masters(adverts: &[Advert], window: Duration) -> Vec<(Advert, MasterSpan)> {
    let spans = master_spans(adverts, window);
    let mut found = Vec::new();
    for a in adverts.iter().filter(|a| a.priority != 0) {
        for span in &spans {
            // A superseded Master's straggler does not extend its reign.
            let end = span.superseded.map_or(span.last, |at| at.min(span.last));
            if span.vrid == a.vrid && span.src != a.src && a.at > span.first + window && a.at < end
            {
                found.push((a.clone(), span.clone()));
            }
        }
    }
    found
}

/// The Master spans of `adverts`, one line each, times from the first advert.
pub fn timeline(adverts: &[Advert]) -> String {
    let Some(origin) = adverts.iter().map(|a| a.at).min() else {
        return "no VRRP adverts captured".to_string();
    };
    let mut text = String::new();
    for s in &master_spans(adverts, TRANSITION_WINDOW) {
        let _ = writeln!(
            text,
            "  VRID {} {}: {:.2}-{:.2} s, {} adverts, priority {}{}",
            s.vrid,
            s.src,
            elapsed_between(origin, s.first).as_secs_f64(),
            elapsed_between(origin, s.last).as_secs_f64(),
            s.adverts,
            s.priority,
            if s.resigned {
                ", then priority 0"
            } else if s.superseded.is_some() {
                ", then superseded"
            } else {
                ""
            }
        );
    }
    text
}

/// Panics unless, per VRID, one router at a time advertised as Master (the old Master may
/// go on for `window` after a takeover); returns the Master spans.
pub fn assert_one_master(adverts: &[Advert], window: Duration) -> Vec<MasterSpan> {
    let found = two_masters(adverts, window);
    assert!(
        found.is_empty(),
        "two Masters at once (beyond {window:?}): {}\nMaster spans:\n{}",
        found
            .iter()
            .take(5)
            .map(|(a, span)| format!(
                "{} advertised {} ms into {}'s span",
                a.src,
                elapsed_between(span.first, a.at).as_millis(),
                span.src
            ))
            .collect::<Vec<_>>()
            .join("; "),
        timeline(adverts)
    );
    master_spans(adverts, window)
}

impl fmt::Display for Advert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VRRPv{} type {} VRID {} priority {} from {} to {} (TTL {}, {:?} interval, {} \
             addresses, checksum {:?}) on {}",
            self.version,
            self.kind,
            self.vrid,
            self.priority,
            self.src,
            self.dst,
            self.ttl,
            self.interval,
            self.count,
            self.checksum,
            self.iface
        )
    }
}

/// Writes `records` (timestamp, `LINUX_SLL2` frame) as a pcap file: for tests of the reader.
#[cfg(test)]
fn pcap_bytes(records: &[(SystemTime, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&512u32.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_LINUX_SLL2.to_le_bytes());
    for (at, frame) in records {
        let since = at.duration_since(UNIX_EPOCH).unwrap();
        let len = u32::try_from(frame.len()).unwrap();
        out.extend_from_slice(&u32::try_from(since.as_secs()).unwrap().to_le_bytes());
        out.extend_from_slice(&since.subsec_micros().to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
    const LB2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 12);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);

    /// A VRRP message (checksum right: with the pseudo-header for v3 when `pseudo`).
    fn vrrp(
        version: u8,
        vrid: u8,
        priority: u8,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        pseudo: bool,
    ) -> Vec<u8> {
        let repr = vrrp::Repr {
            version: if version == 2 {
                vrrp::Version::V2
            } else {
                vrrp::Version::V3
            },
            vrid,
            priority,
            advert_int: if version == 2 { 1 } else { 100 },
            addresses: vec![VIP].into(),
        };
        let mut msg = vec![0; repr.buffer_len()];
        let kind = if pseudo {
            vrrp::V3Checksum::PseudoHeader
        } else {
            vrrp::V3Checksum::Plain
        };
        repr.emit(
            &mut vrrp::Packet::new_unchecked(&mut msg[..], vrrp::Family::Ipv4),
            &balancer_wire::PseudoHeader::from((src, dst)),
            kind,
        );
        msg
    }

    fn ip(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let repr = ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: IpProtocol::VRRP,
            payload_len: payload.len(),
            ttl: 255,
            ..ipv4::Repr::default()
        };
        let mut bytes = vec![0; repr.buffer_len()];
        let mut packet = ipv4::Packet::new_unchecked(&mut bytes[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(payload);
        bytes
    }

    fn sll2(protocol: EtherType, ifindex: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&protocol.0.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&ifindex.to_be_bytes());
        frame.extend_from_slice(&1u16.to_be_bytes());
        frame.push(2);
        frame.push(6);
        frame.extend_from_slice(&[2, 0, 0, 0, 0, u8::try_from(ifindex).unwrap(), 0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_001) + Duration::from_millis(ms)
    }

    fn advert(ms: u64, src: Ipv4Addr, priority: u8) -> Advert {
        let dst = VRRP_MULTICAST;
        let mut a = parse_advert(&ip(src, dst, &vrrp(2, 51, priority, src, dst, false))).unwrap();
        a.at = at(ms);
        a
    }

    #[test]
    fn adverts_are_read_by_their_offsets() {
        let dst = VRRP_MULTICAST;
        let v2 = parse_advert(&ip(LB1, dst, &vrrp(2, 51, 150, LB1, dst, false))).unwrap();
        assert_eq!(
            (v2.version, v2.kind, v2.vrid, v2.priority, v2.count, v2.ttl),
            (2, 1, 51, 150, 1, 255)
        );
        assert_eq!((v2.src, v2.dst, v2.len), (LB1, dst, 20));
        assert_eq!(v2.interval, Duration::from_secs(1));
        assert_eq!(v2.addresses, vec![VIP]);
        assert_eq!(v2.checksum, VrrpChecksum::V2);
        assert_eq!(v2.raw, vrrp(2, 51, 150, LB1, dst, false));
        assert_eq!(v2.checksum_field.to_be_bytes(), [v2.raw[6], v2.raw[7]]);
        assert_ne!(v2.checksum_field, 0);

        let v3 = parse_advert(&ip(LB2, dst, &vrrp(3, 7, 100, LB2, dst, true))).unwrap();
        assert_eq!((v3.version, v3.vrid, v3.priority, v3.len), (3, 7, 100, 12));
        assert_eq!(v3.interval, Duration::from_secs(1));
        assert_eq!(v3.checksum, VrrpChecksum::WithPseudoHeader);
        let rfc = parse_advert(&ip(LB2, dst, &vrrp(3, 7, 100, LB2, dst, false))).unwrap();
        assert_eq!(rfc.checksum, VrrpChecksum::WithoutPseudoHeader);

        let mut bad = vrrp(3, 7, 100, LB2, dst, true);
        bad[2] = 101;
        let bad = parse_advert(&ip(LB2, dst, &bad)).unwrap();
        assert_eq!(bad.checksum, VrrpChecksum::Invalid);

        assert!(parse_advert(&ip(LB1, dst, &[0x21, 51, 100])).is_none());
        assert!(parse_advert(&[0x45, 0]).is_none());
    }

    #[test]
    fn a_pcap_file_of_cooked_frames_is_decoded() {
        let dst = VRRP_MULTICAST;
        let advert = ip(LB1, dst, &vrrp(2, 51, 150, LB1, dst, false));
        let garp = arp::Repr::gratuitous(MacAddr([2, 0, 0, 0, 0, 4]), VIP);
        let mut arp_bytes = vec![0; garp.buffer_len()];
        garp.emit(&mut arp::Packet::new_unchecked(&mut arp_bytes[..]));
        let mut file = pcap_bytes(&[
            (at(0), sll2(EtherType::IPV4, 4, &advert)),
            (at(1), sll2(EtherType::IPV4, 1, &advert)),
            (at(2), sll2(EtherType::ARP, 4, &arp_bytes)),
        ]);
        // A record tcpdump is still writing.
        file.extend_from_slice(&[1, 2, 3]);
        let capture_of = |records: &[u8]| {
            let dir = TempDir::new("capture-test").unwrap();
            let capture = Capture {
                ns_name: "test".to_string(),
                child: None,
                interfaces: interface_names(
                    "1: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n\
                     4: flb1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master br0\n",
                ),
                ignore: vec!["br0".to_string()],
                dir,
            };
            capture.decode(records).unwrap()
        };
        let captured = capture_of(&file);
        assert_eq!(captured.adverts.len(), 1, "{captured:#?}");
        let a = &captured.adverts[0];
        assert_eq!((a.iface.as_str(), a.at, a.priority), ("flb1", at(0), 150));
        assert_eq!(a.src_mac, Some(MacAddr([2, 0, 0, 0, 0, 4])));
        assert_eq!(captured.arps.len(), 1);
        assert!(captured.arps[0].is_gratuitous());
        assert_eq!(captured.arps[0].arp.source_protocol_addr, VIP);
        assert!(pcap_records(&file[..10]).is_err());
    }

    #[test]
    fn one_master_after_another_passes() {
        // lb1 Master for 3 s, killed; lb2 Master after its master-down interval; lb1
        // back, preempting, and lb2's advert under way when it yielded.
        let mut adverts: Vec<Advert> = (0..3).map(|s| advert(s * 1000, LB1, 150)).collect();
        adverts.extend((0..4).map(|s| advert(5600 + s * 1000, LB2, 100)));
        adverts.push(advert(8650, LB1, 150));
        adverts.push(advert(8660, LB2, 100));
        adverts.push(advert(9650, LB1, 150));
        let spans = assert_one_master(&adverts, TRANSITION_WINDOW);
        let order: Vec<Ipv4Addr> = spans.iter().map(|s| s.src).collect();
        assert_eq!(order, vec![LB1, LB2, LB1], "{}", timeline(&adverts));
        assert_eq!((spans[1].adverts, spans[1].last), (5, at(8660)));
        assert_eq!(spans[1].superseded, Some(at(8650)));
    }

    #[test]
    fn a_master_that_resigns_and_returns_makes_two_spans() {
        // lb2 Master; lb1 preempts at 7.09 s and stops at 7.7 s; lb2 again from 8.05 s,
        // its adverts 1.44 s apart across lb1's short reign.
        let mut adverts: Vec<Advert> = (0..4).map(|s| advert(3610 + s * 1000, LB2, 100)).collect();
        adverts.push(advert(7090, LB1, 150));
        adverts.push(advert(7700, LB1, 0));
        adverts.push(advert(8050, LB2, 100));
        adverts.push(advert(9050, LB2, 100));
        let spans = assert_one_master(&adverts, TRANSITION_WINDOW);
        let order: Vec<Ipv4Addr> = spans.iter().map(|s| s.src).collect();
        assert_eq!(order, vec![LB2, LB1, LB2], "{}", timeline(&adverts));
        assert!(spans[1].resigned);
    }

    #[test]
    fn two_masters_at_once_are_found() {
        // lb2 advertises while lb1 is Master, and the reverse.
        let mut adverts: Vec<Advert> = (0..5).map(|s| advert(s * 1000, LB1, 150)).collect();
        adverts.extend((0..3).map(|s| advert(1500 + s * 1000, LB2, 100)));
        let found = two_masters(&adverts, TRANSITION_WINDOW);
        assert_eq!(found.len(), 3, "{}", timeline(&adverts));
        assert!(found
            .iter()
            .all(|(a, span)| a.src == LB2 && span.src == LB1));
        let caught = std::panic::catch_unwind(|| assert_one_master(&adverts, TRANSITION_WINDOW));
        assert!(caught.is_err());

        let mut adverts: Vec<Advert> = (0..5).map(|s| advert(s * 1000, LB2, 100)).collect();
        adverts.extend((0..3).map(|s| advert(1500 + s * 1000, LB1, 150)));
        adverts.push(advert(4600, LB2, 100));
        let found = two_masters(&adverts, TRANSITION_WINDOW);
        assert!(!found.is_empty(), "{}", timeline(&adverts));
    }

    #[test]
    fn priority_zero_ends_a_span_and_silence_splits_one() {
        let adverts = vec![
            advert(0, LB1, 150),
            advert(1000, LB1, 150),
            advert(1200, LB1, 0),
            advert(1500, LB2, 100),
            advert(2500, LB2, 100),
            // Silent for more than three intervals: a new span.
            advert(6000, LB2, 100),
        ];
        let spans = master_spans(&adverts, TRANSITION_WINDOW);
        assert_eq!(spans.len(), 3, "{spans:#?}");
        assert!(spans[0].resigned && spans[0].last == at(1000));
        assert_eq!((spans[1].first, spans[1].last), (at(1500), at(2500)));
        assert_eq!(spans[2].first, at(6000));
        assert!(timeline(&adverts).contains("then priority 0"));
        assert_eq!(timeline(&[]), "no VRRP adverts captured");
    }
}
