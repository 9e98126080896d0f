//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! All values are 16/32-bit words as they sit in the packet, read in host order: the
//! one's-complement sum is byte-order independent, so no swapping is needed.

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

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
