//! `cargo xtask fuzz --packets N [--seed S]`: the long run of the differential packet
//! fuzzer (`balancer_tests::model`), with progress and the packets checked per second.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use balancer_tests::model;

fn main() -> ExitCode {
    let mut packets: u64 = 10_000_000;
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos() as u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--packets", Some(v)) => packets = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: fuzz [--packets N] [--seed S]");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("fuzz: {packets} packets from seed {seed}");
    let mut last = Instant::now();
    let result = model::fuzz(seed, packets, |report| {
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            eprintln!("fuzz: {report}");
        }
    });
    match result {
        Ok(report) => {
            println!("fuzz: {report}");
            ExitCode::SUCCESS
        }
        Err(finding) => {
            eprintln!("fuzz: FINDING: {finding}");
            ExitCode::FAILURE
        }
    }
}
