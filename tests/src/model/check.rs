//! Checks of an output frame against its input: the tuple it must leave with, every
//! checksum verified from scratch (valid exactly when the input's was: an incremental
//! update cannot repair a wrong one, and must not break a right one), and every byte the
//! translation does not own left as it was.

use balancer_wire::checksum::{checksum, combine, PseudoHeader};
use balancer_wire::IpProtocol;

use super::reference::{self, Flow, IcmpError, Leaves, Parsed, Tuple, PROTO_TCP, SNAT_PORTS};
use crate::fixtures::frames::SNAT;

/// Whether the IPv4 header at `ip_off` has a valid checksum.
pub fn ip_checksum_ok(f: &[u8], ip_off: usize) -> bool {
    let ihl = usize::from(f[ip_off] & 0x0f) * 4;
    checksum(&f[ip_off..ip_off + ihl]) == 0
}

/// Whether the TCP or UDP checksum of `flow` is valid; `None` for a UDP datagram without.
pub fn l4_checksum_ok(f: &[u8], flow: &Flow) -> Option<bool> {
    let t = flow.tuple;
    let pseudo = PseudoHeader::from((t.src, t.dst));
    if t.proto == PROTO_TCP {
        return Some(pseudo.checksum(IpProtocol::TCP, &f[flow.l4_off..flow.ip_end]) == 0);
    }
    if f[flow.l4_off + 6..flow.l4_off + 8] == [0, 0] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([f[flow.l4_off + 4], f[flow.l4_off + 5]]));
    Some(pseudo.checksum(IpProtocol::UDP, &f[flow.l4_off..flow.l4_off + len]) == 0)
}

/// Whether the input's checksums are all valid (a UDP datagram without one counts as valid).
pub fn flow_checksums_ok(f: &[u8], flow: &Flow) -> bool {
    ip_checksum_ok(f, flow.ip_off) && l4_checksum_ok(f, flow) != Some(false)
}

/// Whether a packet that would start a flow passes the program's checks: its IPv4 header
/// checksum, and its TCP checksum if the segment is at most 60 bytes (a SYN with every
/// option; longer segments are not checked).
pub fn new_flow_checksums_ok(f: &[u8], flow: &Flow) -> bool {
    ip_checksum_ok(f, flow.ip_off)
        && (flow.tuple.proto != PROTO_TCP
            || flow.ip_end - flow.l4_off > 60
            || l4_checksum_ok(f, flow) == Some(true))
}

/// Whether the ICMP error's outer IPv4 header and ICMP checksums are valid.
pub fn icmp_checksums_ok(f: &[u8], e: &IcmpError) -> bool {
    ip_checksum_ok(f, e.ip_off) && checksum(&f[e.icmp_off..e.ip_end]) == 0
}

/// `frame` without its one VLAN tag, and the IPv4 offset then (so that a program that
/// strips a tag is compared byte for byte too).
fn untagged(frame: &[u8], tagged: bool) -> Vec<u8> {
    if tagged {
        [&frame[..12], &frame[16..]].concat()
    } else {
        frame.to_vec()
    }
}

/// Compares `input` and `output` (both untagged) except at `owned` byte ranges.
fn same_except(input: &[u8], output: &[u8], owned: &[(usize, usize)]) -> Result<(), String> {
    if input.len() != output.len() {
        return Err(format!("length {} became {}", input.len(), output.len()));
    }
    let differ = (0..input.len()).find(|&i| {
        input[i] != output[i] && !owned.iter().any(|&(from, to)| (from..to).contains(&i))
    });
    match differ {
        Some(i) => Err(format!(
            "byte {i} changed ({:#04x} -> {:#04x}) though the translation does not own it",
            input[i], output[i]
        )),
        None => Ok(()),
    }
}

/// The TTL left as it was, or decremented as a router does.
fn ttl_ok(input: u8, output: u8) -> Result<(), String> {
    if output == input || output == input.wrapping_sub(1) {
        Ok(())
    } else {
        Err(format!("TTL {input} became {output}"))
    }
}

/// Checks a translated TCP/UDP packet; the client and reply tuples of its flow when it
/// went to a backend.
pub fn forwarded(
    input: &[u8],
    flow: &Flow,
    output: &[u8],
    leaves: Leaves,
) -> Result<Option<(Tuple, Tuple)>, String> {
    let Parsed::Flow(out) = reference::parse(output) else {
        return Err("the output is no TCP/UDP packet".into());
    };
    let t = out.tuple;
    if t.proto != flow.tuple.proto {
        return Err(format!("protocol {} became {}", flow.tuple.proto, t.proto));
    }
    let opened = match leaves {
        Leaves::ToBackend { backend, port } => {
            if t.dst != backend
                || t.dport != port
                || t.src != SNAT
                || !SNAT_PORTS.contains(&t.sport)
            {
                return Err(format!(
                    "sent as {t}: not from a SNAT port to backend {backend}:{port}"
                ));
            }
            Some((flow.tuple, t.reversed()))
        }
        Leaves::ToClient(to) => {
            if t != to {
                return Err(format!("sent as {t}, not as {to} (the flow's client)"));
            }
            None
        }
    };
    let (ip_in, ip_out) = (
        ip_checksum_ok(input, flow.ip_off),
        ip_checksum_ok(output, out.ip_off),
    );
    if ip_in != ip_out {
        return Err(format!(
            "IPv4 header checksum valid {ip_in} became valid {ip_out}"
        ));
    }
    let (l4_in, l4_out) = (l4_checksum_ok(input, flow), l4_checksum_ok(output, &out));
    if l4_in != l4_out {
        return Err(format!(
            "TCP/UDP checksum valid {l4_in:?} became valid {l4_out:?}"
        ));
    }
    // A router's one hop less (a TTL of 0 or 1 is never forwarded).
    if out.ttl != flow.ttl.wrapping_sub(1) {
        return Err(format!("TTL {} became {}, not one less", flow.ttl, out.ttl));
    }
    let (input, output) = (untagged(input, flow.tagged), untagged(output, out.tagged));
    let (ip, l4) = (14, 14 + (out.l4_off - out.ip_off));
    let check = if t.proto == PROTO_TCP {
        l4 + 16
    } else {
        l4 + 6
    };
    // MACs, TTL, header checksum, addresses, ports, TCP/UDP checksum.
    let owned = [
        (0, 12),
        (ip + 8, ip + 9),
        (ip + 10, ip + 20),
        (l4, l4 + 4),
        (check, check + 2),
    ];
    same_except(&input, &output, &owned)?;
    Ok(opened)
}

/// The one's-complement sum of a checksum field and the tuple it covers: the field is the
/// complement of the sum of what it covers, so a right update of the tuple keeps this sum
/// (zero and 0xffff are the same number).
fn quoted_l4_sum(f: &[u8], e: &IcmpError, check_off: usize) -> u16 {
    let word = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let words = [
        word(check_off),
        word(e.quote_ip_off + 12),
        word(e.quote_ip_off + 14),
        word(e.quote_ip_off + 16),
        word(e.quote_ip_off + 18),
        word(e.quote_l4_off),
        word(e.quote_l4_off + 2),
    ];
    match combine(&words) {
        0xffff => 0,
        sum => sum,
    }
}

/// Checks a translated ICMP error: its addresses and quote as expected.
pub fn translated(
    input: &[u8],
    e: &IcmpError,
    output: &[u8],
    (src, dst, quoted): (std::net::Ipv4Addr, std::net::Ipv4Addr, Tuple),
) -> Result<(), String> {
    let Parsed::IcmpError(out) = reference::parse(output) else {
        return Err("the output is no ICMP error about TCP/UDP".into());
    };
    if (out.src, out.dst, out.quote) != (src, dst, quoted) {
        return Err(format!(
            "translated as {} -> {} quoting {}; expected {src} -> {dst} quoting {quoted}",
            out.src, out.dst, out.quote
        ));
    }
    let (in_ok, out_ok) = (icmp_checksums_ok(input, e), icmp_checksums_ok(output, &out));
    if in_ok != out_ok {
        return Err(format!(
            "IPv4/ICMP checksums valid {in_ok} became valid {out_ok}"
        ));
    }
    let quote_ihl = out.quote_l4_off - out.quote_ip_off;
    if out.quote_ip_off + quote_ihl <= out.ip_end {
        let (i, o) = (
            ip_checksum_ok(input, e.quote_ip_off),
            ip_checksum_ok(output, out.quote_ip_off),
        );
        if i != o {
            return Err(format!(
                "the quoted IPv4 header's checksum valid {i} became valid {o}"
            ));
        }
    }
    let check_off = e.quote_l4_off + if e.quote.proto == PROTO_TCP { 16 } else { 6 };
    let reaches = check_off + 2 <= e.ip_end;
    if reaches {
        let zero = |f: &[u8]| f[check_off..check_off + 2] == [0, 0];
        if e.quote.proto != PROTO_TCP && zero(input) {
            if !zero(output) {
                return Err("a quoted UDP datagram without checksum got one".into());
            }
        } else if quoted_l4_sum(input, e, check_off)
            != quoted_l4_sum(output, &out, check_off - e.quote_l4_off + out.quote_l4_off)
        {
            return Err("the quoted TCP/UDP checksum does not follow its tuple's change".into());
        }
    }
    ttl_ok(e.ttl, out.ttl)?;
    let (input, output) = (untagged(input, e.tagged), untagged(output, out.tagged));
    let shift = |at: usize| at - out.ip_off + 14;
    let (ip, icmp, qip, ql4) = (
        14,
        shift(out.icmp_off),
        shift(out.quote_ip_off),
        shift(out.quote_l4_off),
    );
    let qcheck = shift(check_off - e.quote_l4_off + out.quote_l4_off);
    let mut owned = vec![
        (ip + 8, ip + 9),
        (ip + 10, ip + 12),
        (ip + 12, ip + 20),
        (icmp + 2, icmp + 4),
        (qip + 10, qip + 20),
        (ql4, ql4 + 4),
    ];
    if reaches {
        owned.push((qcheck, qcheck + 2));
    }
    same_except(&input, &output, &owned)
}

#[cfg(test)]
mod tests {
    //! The checks catch what they are for: a right translation passes, each kind of
    //! wrong one fails.
    use super::*;
    use crate::fixtures::frames::{syn, WEB_BACKEND};
    use crate::frame;

    /// The SYN of `frames::syn` and its translation to the web backend from SNAT port
    /// 20001, one hop less, with checksums computed from scratch; the IPv4 and TCP offsets.
    fn syn_and_translation() -> (Vec<u8>, Vec<u8>, Flow) {
        let input = frame::build(&syn());
        let Parsed::Flow(flow) = reference::parse(&input) else {
            panic!("a SYN is a flow's packet")
        };
        let mut out = input.clone();
        let (ip, l4) = (flow.ip_off, flow.l4_off);
        out[ip + 12..ip + 16].copy_from_slice(&SNAT.octets());
        out[ip + 16..ip + 20].copy_from_slice(&WEB_BACKEND.octets());
        out[l4..l4 + 2].copy_from_slice(&20001u16.to_be_bytes());
        out[ip + 8] -= 1;
        out[ip + 10..ip + 12].fill(0);
        let check = checksum(&out[ip..l4]);
        out[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
        out[l4 + 16..l4 + 18].fill(0);
        let check = PseudoHeader::from((SNAT, WEB_BACKEND)).checksum(IpProtocol::TCP, &out[l4..]);
        out[l4 + 16..l4 + 18].copy_from_slice(&check.to_be_bytes());
        (input, out, flow)
    }

    /// Spoils an output frame, given its IPv4 and TCP offsets.
    type Spoil = fn(&mut Vec<u8>, usize, usize);

    const TO_WEB: Leaves = Leaves::ToBackend {
        backend: WEB_BACKEND,
        port: 80,
    };

    #[test]
    fn a_right_translation_passes_and_teaches_the_flow() {
        let (input, out, flow) = syn_and_translation();
        let (client, reply) = forwarded(&input, &flow, &out, TO_WEB).unwrap().unwrap();
        assert_eq!(client, flow.tuple);
        assert_eq!(
            (reply.src, reply.dst, reply.dport),
            (WEB_BACKEND, SNAT, 20001)
        );
    }

    #[test]
    fn each_wrong_translation_fails() {
        let (input, good, flow) = syn_and_translation();
        let l4 = flow.l4_off;
        let ip = flow.ip_off;
        let cases: [(&str, Spoil); 7] = [
            ("IPv4 checksum", |f, ip, _| f[ip + 10] ^= 1),
            ("TCP checksum", |f, _, l4| f[l4 + 17] ^= 1),
            ("payload", |f, _, _| *f.last_mut().unwrap() ^= 1),
            ("destination", |f, ip, _| f[ip + 19] = 99),
            ("SNAT port", |f, _, l4| {
                f[l4..l4 + 2].copy_from_slice(&80u16.to_be_bytes());
            }),
            ("TTL", |f, ip, _| f[ip + 8] = 1),
            ("TTL left as it was", |f, ip, _| f[ip + 8] += 1),
        ];
        for (what, spoil) in cases {
            let mut out = good.clone();
            spoil(&mut out, ip, l4);
            assert!(
                forwarded(&input, &flow, &out, TO_WEB).is_err(),
                "a wrong {what} passed"
            );
        }
        let other_client = Tuple {
            src: SNAT,
            ..flow.tuple
        };
        assert!(forwarded(&input, &flow, &good, Leaves::ToClient(other_client)).is_err());
    }
}
