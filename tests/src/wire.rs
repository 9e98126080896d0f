//! Host-side packet building and parsing for fixtures (in the spirit of smoltcp's `wire`):
//! Ethernet with an optional 802.1Q tag, IPv4 with options, TCP, UDP and ICMP, checksums
//! computed from scratch so a test catches any incremental-update mistake in the data plane.
use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_ARP: u16 = 0x0806;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const PROTO_ICMP: u8 = 1;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_ECHO_REQUEST: u8 = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `checksum: false` sends a zero ("no checksum") UDP checksum.
    Udp {
        checksum: bool,
    },
}

/// What to build; `Default` gives a TCP SYN with a small payload.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// IPv4 options (padded by the caller to a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            src_mac: [0x02, 0, 0, 0, 0xaa, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0xaa, 0x02],
            vlan: None,
            src: Ipv4Addr::new(10, 0, 1, 2),
            dst: Ipv4Addr::new(10, 0, 100, 1),
            ttl: 64,
            ip_options: Vec::new(),
            sport: 40000,
            dport: 80,
            l4: L4::Tcp {
                flags: TCP_SYN,
                seq: 1000,
                ack: 0,
            },
            payload: b"hello".to_vec(),
        }
    }
}

/// One's-complement sum of 16-bit big-endian words.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// TCP/UDP checksum over the IPv4 pseudo-header and `segment`.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    fold(sum16(segment, sum16(&pseudo, 0)))
}

pub fn build(spec: &Spec) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&spec.sport.to_be_bytes());
    l4.extend_from_slice(&spec.dport.to_be_bytes());
    let proto = match spec.l4 {
        L4::Tcp { flags, seq, ack } => {
            l4.extend_from_slice(&seq.to_be_bytes());
            l4.extend_from_slice(&ack.to_be_bytes());
            l4.push(5 << 4);
            l4.push(flags);
            l4.extend_from_slice(&64240u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            6
        }
        L4::Udp { .. } => {
            l4.extend_from_slice(&((8 + spec.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            17
        }
    };
    l4.extend_from_slice(&spec.payload);
    let csum_off = if proto == 6 { 16 } else { 6 };
    let want_csum = !matches!(spec.l4, L4::Udp { checksum: false });
    if want_csum {
        let mut c = l4_checksum(spec.src, spec.dst, proto, &l4);
        if c == 0 && proto == 17 {
            c = 0xffff;
        }
        l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    }
    ip_frame(spec, proto, &l4)
}

/// An ICMP message ([`build_icmp`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    /// The header's last four bytes: unused, or the next-hop MTU (RFC 1191) in the low
    /// 16 bits of a "fragmentation needed".
    pub rest: u32,
    /// What follows the header: for an error, the quoted start of a datagram
    /// ([`ip_datagram`]).
    pub body: Vec<u8>,
}

/// An Ethernet frame with an ICMP message; `spec` gives the Ethernet and IPv4 headers
/// (its ports, `l4` and payload are not used).
pub fn build_icmp(spec: &Spec, icmp: &Icmp) -> Vec<u8> {
    ip_frame(spec, PROTO_ICMP, &icmp_message(icmp))
}

/// The ICMP message alone, with its checksum (what a raw ICMP socket sends).
pub fn icmp_message(icmp: &Icmp) -> Vec<u8> {
    let mut msg = vec![icmp.kind, icmp.code, 0, 0];
    msg.extend_from_slice(&icmp.rest.to_be_bytes());
    msg.extend_from_slice(&icmp.body);
    let c = checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    msg
}

/// The IPv4 datagram in a frame: what an ICMP error quotes (the start of).
pub fn ip_datagram(frame: &[u8]) -> &[u8] {
    let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
    let ip_off = if ether_type == ETH_P_8021Q { 18 } else { 14 };
    &frame[ip_off..]
}

/// Ethernet and IPv4 headers from `spec` (id 0x1234, DF) around `l4` of protocol `proto`.
fn ip_frame(spec: &Spec, proto: u8, l4: &[u8]) -> Vec<u8> {
    let ihl = 20 + spec.ip_options.len();
    assert!(
        ihl.is_multiple_of(4) && ihl <= 60,
        "IPv4 options must pad to 4 bytes"
    );
    let mut ip = Vec::with_capacity(ihl);
    ip.push(0x40 | (ihl / 4) as u8);
    ip.push(0);
    ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00]); // id, DF
    ip.push(spec.ttl);
    ip.push(proto);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&spec.src.octets());
    ip.extend_from_slice(&spec.dst.octets());
    ip.extend_from_slice(&spec.ip_options);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut frame = Vec::new();
    frame.extend_from_slice(&spec.dst_mac);
    frame.extend_from_slice(&spec.src_mac);
    if let Some(tci) = spec.vlan {
        frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        frame.extend_from_slice(&tci.to_be_bytes());
    }
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(l4);
    frame
}

/// A parsed frame, with its checksums verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub ip_checksum_ok: bool,
    /// `None` for a UDP datagram without checksum.
    pub l4_checksum_ok: Option<bool>,
    pub payload: Vec<u8>,
}

/// The Ethernet and IPv4 headers of a frame, and the bytes after them.
struct Headers<'a> {
    src_mac: Mac,
    dst_mac: Mac,
    vlan: Option<u16>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    proto: u8,
    ip_checksum_ok: bool,
    l4: &'a [u8],
}

fn headers(frame: &[u8]) -> Result<Headers<'_>, String> {
    let get = |range: std::ops::Range<usize>| {
        frame
            .get(range.clone())
            .ok_or_else(|| format!("frame of {} bytes ends before {range:?}", frame.len()))
    };
    let mut off = 12;
    let mut ether_type = u16::from_be_bytes(get(off..off + 2)?.try_into().unwrap());
    let mut vlan = None;
    if ether_type == ETH_P_8021Q {
        vlan = Some(u16::from_be_bytes(get(14..16)?.try_into().unwrap()));
        off += 4;
        ether_type = u16::from_be_bytes(get(off..off + 2)?.try_into().unwrap());
    }
    if ether_type != ETH_P_IP {
        return Err(format!("ethertype {ether_type:#06x} is not IPv4"));
    }
    let ip_off = off + 2;
    let vihl = get(ip_off..ip_off + 1)?[0];
    let ihl = ((vihl & 0xf) as usize) * 4;
    let ip = get(ip_off..ip_off + ihl)?;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    Ok(Headers {
        src_mac: get(6..12)?.try_into().unwrap(),
        dst_mac: get(0..6)?.try_into().unwrap(),
        vlan,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        ttl: ip[8],
        proto: ip[9],
        ip_checksum_ok: checksum(ip) == 0,
        l4: get(ip_off + ihl..ip_off + tot_len)?,
    })
}

pub fn parse(frame: &[u8]) -> Result<Parsed, String> {
    let h = headers(frame)?;
    let (src, dst, l4) = (h.src, h.dst, h.l4);
    if l4.len() < 8 {
        return Err(format!("a TCP/UDP header of {} bytes", l4.len()));
    }
    let (hdr_len, tcp_flags, l4_checksum_ok) = match h.proto {
        6 => {
            let ok = l4_checksum(src, dst, 6, l4) == 0;
            (((l4[12] >> 4) as usize) * 4, l4[13], Some(ok))
        }
        17 => {
            let zero = l4[6] == 0 && l4[7] == 0;
            let ok = (!zero).then(|| l4_checksum(src, dst, 17, l4) == 0);
            (8, 0, ok)
        }
        p => return Err(format!("IP protocol {p} is neither TCP nor UDP")),
    };
    Ok(Parsed {
        src_mac: h.src_mac,
        dst_mac: h.dst_mac,
        vlan: h.vlan,
        src,
        dst,
        ttl: h.ttl,
        proto: h.proto,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        tcp_flags,
        ip_checksum_ok: h.ip_checksum_ok,
        l4_checksum_ok,
        payload: l4[hdr_len..].to_vec(),
    })
}

/// A parsed ICMP frame, with its checksums verified from scratch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedIcmp {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub ip_checksum_ok: bool,
    pub icmp: Icmp,
    pub icmp_checksum_ok: bool,
}

pub fn parse_icmp(frame: &[u8]) -> Result<ParsedIcmp, String> {
    let h = headers(frame)?;
    if h.proto != PROTO_ICMP {
        return Err(format!("IP protocol {} is not ICMP", h.proto));
    }
    let msg = h.l4;
    if msg.len() < 8 {
        return Err(format!("an ICMP message of {} bytes", msg.len()));
    }
    Ok(ParsedIcmp {
        src_mac: h.src_mac,
        dst_mac: h.dst_mac,
        src: h.src,
        dst: h.dst,
        ttl: h.ttl,
        ip_checksum_ok: h.ip_checksum_ok,
        icmp: Icmp {
            kind: msg[0],
            code: msg[1],
            rest: u32::from_be_bytes(msg[4..8].try_into().unwrap()),
            body: msg[8..].to_vec(),
        },
        icmp_checksum_ok: checksum(msg) == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        for spec in [
            Spec::default(),
            Spec {
                vlan: Some(100),
                ip_options: vec![1, 1, 1, 0],
                ..Spec::default()
            },
            Spec {
                l4: L4::Udp { checksum: true },
                payload: b"odd".to_vec(),
                ..Spec::default()
            },
        ] {
            let p = parse(&build(&spec)).unwrap();
            assert!(p.ip_checksum_ok);
            assert_eq!(p.l4_checksum_ok, Some(true));
            assert_eq!(
                (p.src, p.dst, p.sport, p.dport),
                (spec.src, spec.dst, spec.sport, spec.dport)
            );
            assert_eq!(p.vlan, spec.vlan);
            assert_eq!(p.payload, spec.payload);
        }
    }

    #[test]
    fn icmp_errors_parse_back_with_their_quote() {
        let quoted = build(&Spec::default());
        let icmp = Icmp {
            kind: ICMP_DEST_UNREACH,
            code: ICMP_FRAG_NEEDED,
            rest: 1200,
            body: ip_datagram(&quoted)[..28].to_vec(),
        };
        let spec = Spec {
            vlan: Some(7),
            ..Spec::default()
        };
        let p = parse_icmp(&build_icmp(&spec, &icmp)).unwrap();
        assert!(p.ip_checksum_ok && p.icmp_checksum_ok);
        assert_eq!((p.src, p.dst, p.ttl), (spec.src, spec.dst, spec.ttl));
        assert_eq!(p.icmp.body[..20], quoted[14..34]);
        assert_eq!((p.icmp.kind, p.icmp.code, p.icmp.rest), (3, 4, 1200));
        assert!(parse(&build_icmp(&spec, &icmp)).is_err());
    }

    #[test]
    fn corrupted_checksum_is_detected() {
        let mut frame = build(&Spec::default());
        let n = frame.len();
        frame[n - 1] ^= 0xff;
        assert_eq!(parse(&frame).unwrap().l4_checksum_ok, Some(false));
    }
}
