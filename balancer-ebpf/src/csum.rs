//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), and
//! the checks of a packet that would start a flow.
//!
//! All values are 16/32-bit words as they sit in the packet, read in host order: the
//! one's-complement sum is byte-order independent, so no swapping is needed.
use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext, EbpfContext};
use balancer_common::{Addr, PROTO_TCP};

use crate::{
    family::Family,
    maps::{CSUM_BUF, CSUM_BUF_WORDS},
    parse::Packet,
};

/// The longest IPv4 header, and the longest TCP segment whose checksum is checked (a SYN
/// with every option; longer segments carry data, and only start a flow picked up
/// mid-stream).
pub const MAX_CHECKED: usize = 60;

/// Whether `pkt`'s IPv4 header checksum (IPv6 has none), and its TCP checksum if the segment is at most
/// [`MAX_CHECKED`] bytes, are right: a packet that would start a flow must be, or it takes
/// a SNAT port and a table entry for a packet its backend will drop. (Established flows'
/// packets are rewritten incrementally: a corrupt one stays corrupt and its receiver
/// drops it.)
#[inline(always)]
pub fn verify<A: Family>(ctx: &XdpContext, pkt: &Packet<A>) -> bool {
    if !A::header_checksum_ok(ctx, pkt) {
        return false;
    }
    let len = usize::from(pkt.ip_len).saturating_sub(pkt.l4_off - pkt.ip_off);
    if pkt.key.proto != PROTO_TCP || len > MAX_CHECKED {
        return true;
    }
    // The pseudo-header: addresses, protocol and length (RFC 793; RFC 8200 8.1, where
    // the length is 32 bits, the same sum).
    let pseudo = addr_sum(&pkt.key.src_addr)
        + addr_sum(&pkt.key.dst_addr)
        + u64::from(u16::from(PROTO_TCP).to_be())
        + u64::from((len as u16).to_be());
    sum_of(ctx, pkt.l4_off, len).is_some_and(|sum| fold(pseudo + sum) == 0xffff)
}

/// The one's-complement sum (unfolded) of the `len` bytes at `off` (at most
/// [`MAX_CHECKED`]; an odd last byte counts as padded with a zero), `None` when they are
/// not in the packet. Copied out with `bpf_xdp_load_bytes` and summed over a fixed
/// length: a loop over the packet itself, bounded by `len`, leaves the verifier one state
/// per way out of it, and the new-flow path after it then took more than its limit.
#[inline(always)]
pub fn sum_of(ctx: &XdpContext, off: usize, len: usize) -> Option<u64> {
    // `black_box`: the compiler knows `len` is in range and would drop this check, and
    // the verifier, which does not, must see it on the register passed to the helper.
    let len = core::hint::black_box(len as u32);
    if len == 0 || len > MAX_CHECKED as u32 {
        return None;
    }
    // In this CPU's scratch buffer, not on the stack (no room on IPv6's way), zeroed by
    // eight 8-byte stores (a zeroing loop becomes a memset call on BPF).
    let buffer = CSUM_BUF.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; no other user while the program runs here.
    let words = unsafe { &mut *buffer };
    let mut i = 0;
    while i < CSUM_BUF_WORDS {
        // SAFETY: in bounds of the slot.
        unsafe { (&raw mut words[i]).write_volatile(0) };
        i += 1;
    }
    // SAFETY: the slot holds CSUM_BUF_WORDS * 8 >= MAX_CHECKED >= len bytes; the helper
    // checks the packet's bounds.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.as_ptr().cast(),
            off as u32,
            words.as_mut_ptr().cast(),
            len,
        )
    };
    if loaded != 0 {
        return None;
    }
    let halves = words.as_ptr().cast::<u16>();
    let mut sum = 0u64;
    let mut i = 0;
    while i < MAX_CHECKED / 2 {
        // SAFETY: within the slot's MAX_CHECKED first bytes.
        sum += u64::from(unsafe { *halves.add(i) });
        i += 1;
    }
    Some(sum)
}

/// The one's-complement sum (unfolded) of an address's 16-bit words.
#[inline(always)]
fn addr_sum<A: Addr>(addr: &A) -> u64 {
    let mut sum = 0;
    let mut i = 0;
    while i < A::WORDS {
        let word = addr.word(i);
        sum += u64::from(word & 0xffff) + u64::from(word >> 16);
        i += 1;
    }
    sum
}

/// Accumulated changes to one checksum.
#[derive(Clone, Copy, Default)]
pub struct Diff(u64);

impl Diff {
    /// A 32-bit field changes from `old` to `new`.
    #[inline(always)]
    pub fn u32(self, old: u32, new: u32) -> Self {
        let not_old = !old;
        Diff(
            self.0
                + u64::from(not_old & 0xffff)
                + u64::from(not_old >> 16)
                + u64::from(new & 0xffff)
                + u64::from(new >> 16),
        )
    }

    /// An address (in the IP header and the TCP/UDP pseudo-header) changes from `old` to
    /// `new`.
    #[inline(always)]
    pub fn addr<A: Addr>(self, old: &A, new: &A) -> Self {
        let mut diff = self;
        let mut i = 0;
        while i < A::WORDS {
            diff = diff.u32(old.word(i), new.word(i));
            i += 1;
        }
        diff
    }

    /// A 16-bit field changes from `old` to `new`.
    #[inline(always)]
    pub fn u16(self, old: u16, new: u16) -> Self {
        Diff(self.0 + u64::from(!old) + u64::from(new))
    }

    /// The changes as one 16-bit one's-complement word, to keep (see [`Diff::from_folded`]).
    #[inline(always)]
    pub fn folded(self) -> u16 {
        fold(self.0)
    }

    /// Changes kept by [`Diff::folded`]: applying them gives the same checksum.
    #[inline(always)]
    pub fn from_folded(word: u16) -> Self {
        Diff(u64::from(word))
    }

    /// The checksum `check` with the changes applied.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u64::from(!check) + self.0)
    }
}

/// The checksum of an IPv4 header without options and with id 0; addresses in network
/// byte order, the rest in host order; to be stored big-endian.
#[inline(always)]
pub fn ipv4_header(
    tos: u8,
    tot_len: u16,
    frags: u16,
    ttl: u8,
    proto: u8,
    src: u32,
    dst: u32,
) -> u16 {
    let (src, dst) = (u32::from_be(src), u32::from_be(dst));
    let sum = (0x4500 | u64::from(tos))
        + u64::from(tot_len)
        + u64::from(frags)
        + ((u64::from(ttl) << 8) | u64::from(proto))
        + u64::from(src >> 16)
        + u64::from(src & 0xffff)
        + u64::from(dst >> 16)
        + u64::from(dst & 0xffff);
    !fold(sum)
}

/// `sum` folded to 16 bits (one's complement).
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
