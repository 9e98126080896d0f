//! The ABI of the backends' decapsulation program (`balancer decap`): its settings, the
//! most addresses it accepts, and its counters.

/// Most outer destinations one decapsulation program accepts (`DECAP_ADDRS`).
pub const MAX_DECAP_ADDRS: u32 = 64;

/// Value of `DECAP_SETTINGS` (an array of one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DecapSettings {
    /// GUE destination port, network byte order; 0: GUE is not decapsulated.
    pub gue_port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<DecapSettings>() == 4);

/// Index of `DECAP_STATS` (a per-CPU array of u64): what the decapsulation program did.
pub mod decap_stat {
    /// Decapsulated and passed to the stack: IPIP, GUE.
    pub const IPIP: u32 = 0;
    pub const GUE: u32 = 1;
    /// Passed untouched: a tunnel packet whose outer destination is not in `DECAP_ADDRS`.
    pub const NOT_OURS: u32 = 2;
    /// Passed untouched: a tunnel packet to one of ours whose inner packet is not a whole
    /// IPv4 header (or a fragment of the outer packet, which only the stack can join).
    pub const MALFORMED: u32 = 3;
    /// Passed untouched: anything else (not IPv4 IPIP or UDP to the GUE port).
    pub const OTHER: u32 = 4;
    pub const COUNT: u32 = 5;
    /// Human names, indexed like the constants.
    pub const NAMES: [&str; COUNT as usize] = [
        "decap_ipip",
        "decap_gue",
        "pass_not_ours",
        "pass_malformed",
        "pass_other",
    ];
}
