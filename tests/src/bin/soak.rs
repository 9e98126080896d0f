//! `cargo xtask soak --minutes N`: the soak with faults (`balancer_tests::soak`) at length;
//! prints its report and exits non-zero when a target is missed.

use std::{process::ExitCode, time::Duration};

use balancer_tests::soak::{self, Options};

fn main() -> ExitCode {
    let mut minutes: u64 = 10;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (
            arg.as_str(),
            args.next().and_then(|v| v.parse::<u64>().ok()),
        ) {
            ("--minutes", Some(v)) if v > 0 => minutes = v,
            _ => {
                eprintln!("usage: soak [--minutes N] (N at least 1)");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("soak: {minutes} minute(s)");
    let options = Options::lasting(Duration::from_secs(minutes * 60));
    let report = soak::run(&options, |fault| {
        eprintln!(
            "soak: {:>7.1} s  {} ({}), detected after {:.2} s",
            fault.start.as_secs_f64(),
            fault.kind,
            fault.target,
            fault.detected_after().as_secs_f64()
        );
    });
    match report {
        Ok(report) => {
            println!("{report}");
            if report.misses().is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("===== agent logs =====\n{}", report.agent_logs);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}
