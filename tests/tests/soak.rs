//! The soak with faults, one minute of it (`cargo xtask soak --minutes N` runs it longer):
//! no request fails once its fault is detected, no long-lived flow breaks except with its
//! own backend, and the agent does not leak descriptors.

use std::time::Duration;

use balancer_tests::soak::{self, Options};

#[test]
fn a_minute_of_faults_fails_no_request_after_detection_and_breaks_no_flow() {
    let report = soak::run(&Options::lasting(Duration::from_mins(1)), |fault| {
        eprintln!("soak: {fault:?}");
    })
    .unwrap_or_else(|e| panic!("the soak could not run: {e:#}"));
    println!("{report}");
    let misses = report.misses();
    assert!(
        misses.is_empty(),
        "the soak missed its targets:\n{}\n\n{report}\n===== agent logs =====\n{}",
        misses.join("\n"),
        report.agent_logs
    );
    let answered = report
        .traffic
        .requests
        .iter()
        .filter(|r| r.error.is_none())
        .count();
    assert!(
        answered > 1000,
        "only {answered} requests were answered in a minute:\n{report}"
    );
}
