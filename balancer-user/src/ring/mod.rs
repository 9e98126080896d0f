//! Lookup-table builders for the agent: quota-balanced, minimal-disruption Maglev
//! consistent hashing ([`maglev`]) and smooth weighted round-robin sequences
//! ([`round_robin`]). The kernel only indexes the tables these build.

mod maglev;
mod round_robin;
#[cfg(test)]
mod testing;

use std::net::IpAddr;

pub use balancer_common::{MAX_RING_SIZE, NO_BACKEND};
pub use maglev::{maglev, ENDGAME_FRACTION};
pub use round_robin::round_robin;

/// One backend as the ring builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBackend {
    /// Backend id written into the ring slots (< 4096 in practice, any u32 allowed except `NO_BACKEND`).
    pub id: u32,
    /// Stable identity used to derive the backend's Maglev permutation, e.g. a hash of "addr:port".
    /// Two backends with the same key get the same permutation; callers make keys unique.
    pub key: u64,
    /// Weight; 0 = takes no slots (drained).
    pub weight: u32,
}

/// Whether `n` is prime (trial division; 0 and 1 are not prime).
#[must_use]
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut i = 5u64;
    while i * i <= n {
        if n.is_multiple_of(i) || n.is_multiple_of(i + 2) {
            return false;
        }
        i += 6;
    }
    true
}

/// SplitMix64 output function (Steele, Lea, Flood 2014) applied to `x`.
pub(crate) const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// MurmurHash3's 64-bit finalizer.
const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    k ^= k >> 33;
    k = k.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    k ^ (k >> 33)
}

/// Stable 64-bit key for a backend address+port: for IPv4
/// `splitmix64((u32::from(addr) as u64) << 16 | port)`; for IPv6 the same over the
/// address's two halves chained (`splitmix64(high ^ splitmix64(low << 16 | port))`).
///
/// Deterministic across runs, machines and endianness (the address is taken in
/// network order as a number, e.g. 10.0.0.1 -> `0x0A00_0001`).
#[must_use]
pub fn backend_key(addr: impl Into<IpAddr>, port: u16) -> u64 {
    match addr.into() {
        IpAddr::V4(v4) => splitmix64((u64::from(u32::from(v4)) << 16) | u64::from(port)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let (high, low) = ((bits >> 64) as u64, bits as u64);
            splitmix64(high ^ splitmix64((low << 16) | u64::from(port)))
        }
    }
}

/// Greatest common divisor.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn is_prime_known_values() {
        assert!(is_prime(65537));
        assert!(is_prime(655_373));
        assert!(is_prime(2));
        assert!(is_prime(3));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
        assert!(!is_prime(0));
        assert!(!is_prime(4));
        assert!(!is_prime(25));
        assert!(!is_prime(65535));
        assert!(!is_prime(u32::MAX));
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    }

    #[test]
    fn backend_key_of_ipv6_is_stable_and_distinct() {
        let a: Ipv6Addr = "fd00::2:11".parse().unwrap();
        let b: Ipv6Addr = "fd00:0:0:1::2:11".parse().unwrap();
        // high = 0xfd00 << 48, low = 0x0002_0011.
        assert_eq!(
            backend_key(a, 80),
            splitmix64(0xfd00_0000_0000_0000 ^ splitmix64(0x0002_0011_0050))
        );
        assert_ne!(backend_key(a, 80), backend_key(b, 80));
        assert_ne!(backend_key(a, 80), backend_key(a, 81));
        // An IPv4-mapped address is another backend than the IPv4 one.
        assert_ne!(
            backend_key(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(), 80),
            backend_key(Ipv4Addr::new(10, 0, 0, 1), 80)
        );
    }

    #[test]
    fn backend_key_is_stable() {
        // splitmix64(0x0A00_0001 << 16 | 80), fixed forever: changing it reshuffles rings.
        assert_eq!(
            backend_key(Ipv4Addr::new(10, 0, 0, 1), 80),
            splitmix64(0x0A00_0001_0050)
        );
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_ne!(
            backend_key(Ipv4Addr::new(10, 0, 0, 1), 80),
            backend_key(Ipv4Addr::new(10, 0, 0, 1), 81)
        );
        assert_ne!(
            backend_key(Ipv4Addr::new(10, 0, 0, 1), 80),
            backend_key(Ipv4Addr::new(10, 0, 0, 2), 80)
        );
    }
}
