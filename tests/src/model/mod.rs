//! Differential packet fuzzing: generated frames ([`gen`]) through the real XDP program
//! in the packet fixture ([`crate::fixtures::Fixture`]: VIPs with and without backends),
//! each verdict and output checked against a reference model ([`reference`], [`check`]):
//! the verdict class, every checksum of a forwarded packet or translated ICMP error, never
//! forwarded when malformed, never sent to an address that is not the flow's backend or
//! client, every byte the translation does not own unchanged.
//!
//! Frames go in batches: a batch is generated from what the model knew when it began (the
//! live flows, for replies and ICMP errors about them), then run through the program one
//! `BPF_PROG_TEST_RUN` each (the only way to give each run its own frame) and checked in
//! order, each output teaching the model the flows opened.
//!
//! Tagged frames and TCP/UDP packets with TTL 0 or 1 must pass untouched; a packet that
//! would start a flow must have a right IPv4 header checksum (and TCP checksum, for
//! segments of up to 60 bytes) or be dropped. Two things the model cannot know exactly are
//! allowed either way, and counted ([`Report::lenient`]): a packet with a bad checksum on a
//! flow the model knows may be dropped (its entry may have idled out, and it would then
//! start a flow), and an ICMP error with TTL 0 or 1 or a bad checksum may be dropped,
//! passed or translated.

mod check;
pub mod gen;
pub mod reference;
pub mod rng;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use balancer_common::stat;

use crate::fixtures::{Fixture, XDP_DROP, XDP_PASS, XDP_REDIRECT};
use gen::{Generated, Generator};
use reference::{Expect, Model, Parsed};

/// `XDP_TX`: sent back out of the ingress interface.
const XDP_TX: u32 = 3;
/// Frames generated at once.
const BATCH: usize = 1024;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub packets: u64,
    pub elapsed: Duration,
    pub dropped: u64,
    pub passed: u64,
    pub forwarded: u64,
    pub icmp_translated: u64,
    /// Packets the model let the program handle either way (see the module's doc).
    pub lenient: Lenient,
    /// Flows the model learnt.
    pub flows: usize,
}

/// Packets the model allowed more than one fate (a packet, or counts of them).
#[derive(Debug, Default)]
pub struct Lenient {
    /// On a flow the model knows, with a bad checksum: forwarded, or dropped.
    pub known_flow_checksum: u64,
    /// ICMP errors with TTL 0 or 1 or a bad checksum: dropped, passed or translated.
    pub icmp: u64,
}

impl Lenient {
    fn add(&mut self, packet: &Lenient) {
        self.known_flow_checksum += packet.known_flow_checksum;
        self.icmp += packet.icmp;
    }
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} packets checked in {:.1} s ({:.0} packets/s): {} forwarded, {} ICMP \
             errors translated, {} passed, {} dropped; {} flows; allowed either way: {} \
             packets of known flows with a bad checksum, {} ICMP errors with TTL 0 or 1 or a \
             bad checksum",
            self.seed,
            self.packets,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.forwarded,
            self.icmp_translated,
            self.passed,
            self.dropped,
            self.flows,
            self.lenient.known_flow_checksum,
            self.lenient.icmp
        )
    }
}

/// Runs `packets` generated frames from `seed` through the program, checking each;
/// `progress` is called after each batch. `Err`: the first finding, with what reproduces it.
///
/// # Panics
/// When the fixture cannot be set up (see [`Fixture::new`]).
pub fn fuzz(seed: u64, packets: u64, mut progress: impl FnMut(&Report)) -> Result<Report, String> {
    let mut fx = Fixture::new();
    let mut generator = Generator::new(seed);
    let mut model = Model::default();
    let mut report = Report {
        seed,
        ..Report::default()
    };
    let started = Instant::now();
    while report.packets < packets {
        let before = counters(&fx);
        let flows = model.flows();
        let n = BATCH.min(usize::try_from(packets - report.packets).unwrap_or(BATCH));
        let batch: Vec<Generated> = (0..n).map(|_| generator.next(&flows)).collect();
        for g in &batch {
            let (verdict, output) = fx.run(&g.frame, g.side);
            if let Err(finding) = judge(&mut model, &mut report, g, verdict, &output) {
                let finding = format!("{finding}\n  {}", counted(&before, &counters(&fx)));
                return Err(describe(
                    seed,
                    report.packets,
                    g,
                    verdict,
                    &output,
                    &finding,
                ));
            }
            report.packets += 1;
        }
        report.elapsed = started.elapsed();
        report.flows = model.flow_count();
        progress(&report);
    }
    Ok(report)
}

/// Checks one run against the model, which learns from it.
fn judge(
    model: &mut Model,
    report: &mut Report,
    g: &Generated,
    verdict: u32,
    output: &[u8],
) -> Result<(), String> {
    let input = &g.frame[..];
    let unchanged = output == input;
    let parsed = reference::parse(input);
    let (mut expect, lenient) = match &parsed {
        Parsed::Malformed(why) => (
            Expect {
                drop: true,
                why: format!("malformed: {why}"),
                ..Expect::default()
            },
            Lenient::default(),
        ),
        Parsed::Other(why) => (
            Expect {
                pass: true,
                why: (*why).into(),
                ..Expect::default()
            },
            Lenient::default(),
        ),
        Parsed::Ipv6(why) => (
            Expect {
                pass: true,
                drop: true,
                why: (*why).into(),
                ..Expect::default()
            },
            Lenient::default(),
        ),
        Parsed::Flow(flow) => (
            model.expect_flow(flow, check::new_flow_checksums_ok(input, flow)),
            Lenient {
                known_flow_checksum: u64::from(
                    model.knows(flow) && !check::flow_checksums_ok(input, flow),
                ),
                ..Lenient::default()
            },
        ),
        Parsed::IcmpError(e) => (
            model.expect_icmp(e),
            Lenient {
                icmp: u64::from(e.ttl <= 1 || !check::icmp_checksums_ok(input, e)),
                ..Lenient::default()
            },
        ),
    };
    report.lenient.add(&lenient);
    if lenient.known_flow_checksum > 0 {
        expect.drop = true;
    }
    if lenient.icmp > 0 {
        expect.drop = true;
        expect.pass = true;
    }
    match verdict {
        XDP_DROP if expect.drop => report.dropped += 1,
        XDP_PASS if unchanged && expect.pass => report.passed += 1,
        XDP_PASS | XDP_TX | XDP_REDIRECT if !unchanged || verdict != XDP_PASS => {
            match (&parsed, expect.forward, expect.icmp) {
                (Parsed::Flow(flow), Some(leaves), _) => {
                    if let Some((client, reply)) = check::forwarded(input, flow, output, leaves)? {
                        model.opened(client, reply);
                    }
                    report.forwarded += 1;
                }
                (Parsed::IcmpError(e), _, Some(to)) if verdict == XDP_PASS => {
                    check::translated(input, e, output, to)?;
                    report.icmp_translated += 1;
                }
                _ => {
                    return Err(format!(
                        "translated or sent, which the model does not allow: {}",
                        expect.why
                    ))
                }
            }
        }
        _ => {
            return Err(format!(
                "verdict {verdict} (output {}) not allowed: drop {}, pass unchanged {}, forward {:?}, ICMP translated {:?}: {}",
                if unchanged { "unchanged" } else { "changed" },
                expect.drop,
                expect.pass,
                expect.forward,
                expect.icmp,
                expect.why
            ))
        }
    }
    Ok(())
}

/// The program's global counters.
fn counters(fx: &Fixture) -> Vec<u64> {
    (0..stat::COUNT).map(|i| fx.global(i)).collect()
}

/// The counters that moved between two readings, by name.
fn counted(before: &[u64], after: &[u64]) -> String {
    let moved: Vec<String> = stat::NAMES
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a > b)
        .map(|(name, (b, a))| format!("{name} +{}", a - b))
        .collect();
    format!("counters during this batch: {}", moved.join(", "))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn describe(
    seed: u64,
    index: u64,
    g: &Generated,
    verdict: u32,
    output: &[u8],
    finding: &str,
) -> String {
    format!(
        "packet {index} of seed {seed} (FUZZ_SEED={seed} reproduces it): {finding}\n  frame: {}\n  \
         arrives on the {:?} side, verdict {verdict}\n  input:  {}\n  output: {}",
        g.what.trim(),
        g.side,
        hex(&g.frame),
        hex(output)
    )
}
