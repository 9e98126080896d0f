//! Differential packet fuzzing in CI: a short run of generated frames through the XDP
//! program, each checked against the reference model (`balancer_tests::model`). Seeded by
//! the time unless `FUZZ_SEED` is set; `FUZZ_PACKETS` sets the count. The long run is
//! `cargo xtask fuzz`.

use std::time::{SystemTime, UNIX_EPOCH};

use balancer_tests::model;

#[test]
fn generated_packets_match_the_reference_model() {
    let seed = std::env::var("FUZZ_SEED").map_or_else(
        |_| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("a clock after 1970")
                .as_nanos() as u64
        },
        |s| s.parse().expect("FUZZ_SEED must be a number"),
    );
    let packets = std::env::var("FUZZ_PACKETS").map_or(200_000, |s| {
        s.parse().expect("FUZZ_PACKETS must be a number")
    });
    eprintln!("fuzz_packets: seed {seed} (set FUZZ_SEED={seed} to run it again)");
    match model::fuzz(seed, packets, |_| {}) {
        Ok(report) => {
            eprintln!("fuzz_packets: {report}");
            assert_eq!(report.packets, packets);
            // A run that never forwards, translates or drops proves nothing.
            assert!(
                report.forwarded > 0 && report.icmp_translated > 0 && report.dropped > 0,
                "{report}"
            );
        }
        Err(finding) => panic!("{finding}"),
    }
}
