//! The classic BPF filter of the packet socket the answers arrive on: it runs before a
//! packet is cloned to the socket, so other traffic costs almost nothing.

use balancer_wire::icmpv4::{self, Message};
use balancer_wire::tcp::{self, Flags};
use balancer_wire::{ipv4, IpProtocol};

use super::packets::{SNAP, SOURCE_PORTS};

/// A classic BPF instruction that does not jump.
fn op(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump at index `at` to index `yes` when true and `no` when false.
fn jump(at: usize, code: u32, k: u32, yes: usize, no: usize) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | code | libc::BPF_K) as u16,
        jt: (yes - at - 1) as u8,
        jf: (no - at - 1) as u8,
        k,
    }
}

/// A header offset as a load's operand.
fn at(offset: usize) -> u32 {
    u32::try_from(offset).expect("a header offset")
}

/// The packet socket's filter (offsets from the IPv4 header): TCP segments to the
/// [`SOURCE_PORTS`] from `first` on with SYN+ACK or RST set, and ICMP
/// destination-unreachable messages, of packets that are not a later fragment; everything
/// else is dropped before it is queued.
pub(super) fn answer_filter(first: u16) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JGT, BPF_JSET, BPF_K,
        BPF_LD, BPF_LDX, BPF_MSH, BPF_RET, BPF_SUB,
    };
    const ICMP: usize = 12;
    const ACCEPT: usize = 18;
    const DROP: usize = 19;
    let protocol = at(ipv4::field::PROTOCOL);
    let fragment = at(ipv4::field::FLG_OFF.start);
    let offset = u32::from(ipv4::FRAG_OFFSET);
    // BPF_MSH loads the header length from the low nibble of the byte at this offset.
    let header_len = at(ipv4::field::VER_IHL);
    let syn_ack = u32::from((Flags::SYN | Flags::ACK).0);
    vec![
        /* 0 */ op(BPF_LD | BPF_B | BPF_ABS, protocol),
        /* 1 */ jump(1, BPF_JEQ, u32::from(IpProtocol::TCP.0), 2, ICMP),
        /* 2 */ op(BPF_LD | BPF_H | BPF_ABS, fragment),
        /* 3 */ jump(3, BPF_JSET, offset, DROP, 4),
        /* 4 */ op(BPF_LDX | BPF_B | BPF_MSH, header_len),
        /* 5 */ op(BPF_LD | BPF_H | BPF_IND, at(tcp::field::DST_PORT.start)),
        // Destination port - first, as an unsigned 32-bit number: below the range wraps.
        /* 6 */
        op(BPF_ALU | BPF_SUB | BPF_K, u32::from(first)),
        /* 7 */ jump(7, BPF_JGT, u32::from(SOURCE_PORTS - 1), DROP, 8),
        /* 8 */ op(BPF_LD | BPF_B | BPF_IND, at(tcp::field::FLAGS)),
        /* 9 */ jump(9, BPF_JSET, u32::from(Flags::RST.0), ACCEPT, 10),
        /* 10 */ op(BPF_ALU | BPF_AND | BPF_K, syn_ack),
        /* 11 */ jump(11, BPF_JEQ, syn_ack, ACCEPT, DROP),
        /* 12 */ jump(ICMP, BPF_JEQ, u32::from(IpProtocol::ICMP.0), 13, DROP),
        /* 13 */ op(BPF_LD | BPF_H | BPF_ABS, fragment),
        /* 14 */ jump(14, BPF_JSET, offset, DROP, 15),
        /* 15 */ op(BPF_LDX | BPF_B | BPF_MSH, header_len),
        /* 16 */ op(BPF_LD | BPF_B | BPF_IND, at(icmpv4::field::TYPE)),
        /* 17 */
        jump(
            17,
            BPF_JEQ,
            u32::from(Message::DST_UNREACHABLE.0),
            ACCEPT,
            DROP,
        ),
        /* 18 */ op(BPF_RET | BPF_K, at(SNAP)),
        /* 19 */ op(BPF_RET | BPF_K, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_stay_inside_the_program() {
        let filter = answer_filter(40000);
        for (at, insn) in filter.iter().enumerate() {
            if insn.code & 0x07 == libc::BPF_JMP as u16 {
                assert!(at + 1 + usize::from(insn.jt) < filter.len(), "insn {at}");
                assert!(at + 1 + usize::from(insn.jf) < filter.len(), "insn {at}");
            }
        }
        assert_eq!(filter.last().map(|i| i.k), Some(0), "ends with drop");
    }
}
