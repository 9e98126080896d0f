//! The frames of the measured cases and their measurement: test runs in interleaved rounds,
//! each run's verdict checked.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::rc::Rc;

use anyhow::{bail, Context as _, Result};
use balancer_tests::{
    frame::{self, Spec, L4},
    HTTP_PORT, UDP_PORT, VIP,
};

use balancer_wire::tcp::Flags;

use super::syscall::{test_run, test_run_repeat, xdp_ctx, EmptyXdp};
use super::{CaseResult, Plan, CLIENT, CLIENT_MAC, LB_CLIENT_MAC, XDP_PASS};
use crate::replay::{Replay, VerdictCounters};
use crate::stats::summarize;
use crate::Stop;

pub(super) fn tcp(sport: u16, flags: Flags, payload: usize) -> Spec {
    Spec {
        src_mac: CLIENT_MAC,
        dst_mac: LB_CLIENT_MAC,
        src: CLIENT,
        dst: VIP,
        sport,
        dport: HTTP_PORT,
        l4: L4::Tcp {
            flags,
            seq: if flags.contains(Flags::SYN) {
                1000
            } else {
                1001
            },
            ack: if flags.contains(Flags::ACK) { 5001 } else { 0 },
        },
        payload: vec![b'x'; payload],
        ..Spec::default()
    }
}

/// The client address and port of flow `i` of the tuple space starting at `base`.
fn client_of(base: Ipv4Addr, i: u32) -> (Ipv4Addr, u16) {
    let src = Ipv4Addr::from(u32::from(base) + i / 50_000);
    (src, 10_000 + (i % 50_000) as u16)
}

/// A SYN of a flow nobody has seen: flow `i` of the tuple space starting at `base`.
pub(super) fn fresh_syn(base: Ipv4Addr, i: u32, dport: u16) -> Vec<u8> {
    let (src, sport) = client_of(base, i);
    frame::build(&Spec {
        src,
        dport,
        ..tcp(sport, Flags::SYN, 0)
    })
}

/// A datagram (18 bytes of payload) of UDP flow `i` to the UDP VIP, of the tuple space
/// starting at [`UDP_FLOWS`].
pub(super) fn udp_flow(i: u32) -> Vec<u8> {
    let (src, sport) = client_of(UDP_FLOWS, i);
    frame::build(&Spec {
        src,
        dport: UDP_PORT,
        l4: L4::Udp { checksum: true },
        payload: vec![b'q'; 18],
        ..tcp(sport, Flags::default(), 0)
    })
}

/// Where the client addresses of the many-flow cases begin.
pub(super) const UDP_FLOWS: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 0);

/// Where the frames of a case come from.
pub(super) enum Frames {
    /// The same frame every run.
    Fixed(Vec<u8>),
    /// A SYN of a new flow to port `dport` of the VIP every run.
    Fresh {
        base: Ipv4Addr,
        next: u32,
        dport: u16,
    },
    /// The flows of `order` in turn, flow `i`'s frame built by `frame(i)`.
    Cycle {
        order: Vec<u32>,
        next: usize,
        frame: fn(u32) -> Vec<u8>,
    },
}

pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) fd: RawFd,
    ingress: u32,
    expect: u32,
    pub(super) frames: Frames,
    /// Runs per test run (more than 1 only through a [`Replay`] wrapper).
    repeat: u32,
    /// The measured program's verdict counters: with them every run of a burst is
    /// checked, not only the last (the empty program of the floor has none).
    pub(super) verdicts: Option<Rc<VerdictCounters>>,
    samples: Vec<f64>,
    round_medians: Vec<f64>,
    pub(super) unexpected: usize,
}

impl Case {
    /// The empty program on `frame`: what every case's figure is net of.
    pub(super) fn floor(empty: &EmptyXdp, ingress: u32, frame: Vec<u8>) -> Case {
        Case::new(
            "empty XDP program (floor)",
            empty.raw_fd(),
            ingress,
            XDP_PASS,
            Frames::Fixed(frame),
        )
    }

    pub(super) fn new(
        name: &'static str,
        fd: RawFd,
        ingress: u32,
        expect: u32,
        frames: Frames,
    ) -> Case {
        Case {
            name,
            fd,
            ingress,
            expect,
            frames,
            repeat: 1,
            verdicts: None,
            samples: Vec::new(),
            round_medians: Vec::new(),
            unexpected: 0,
        }
    }

    /// This case's `frame` through `replay`, `repeat` runs per test run (each sample is
    /// their mean).
    pub(super) fn replayed(&self, replay: &Replay, frame: &[u8], repeat: u32) -> Case {
        Case {
            repeat,
            verdicts: self.verdicts.clone(),
            ..Case::new(
                self.name,
                replay.raw_fd(),
                self.ingress,
                self.expect,
                Frames::Fixed(frame.to_vec()),
            )
        }
    }

    /// `runs` test runs; returns their durations in ns.
    pub(super) fn run(&mut self, runs: usize) -> Result<Vec<f64>> {
        let frames: Vec<Vec<u8>> = match &mut self.frames {
            Frames::Fixed(frame) => vec![frame.clone()],
            Frames::Fresh { base, next, dport } => {
                let first = *next;
                *next += runs as u32;
                (first..first + runs as u32)
                    .map(|i| fresh_syn(*base, i, *dport))
                    .collect()
            }
            Frames::Cycle { order, next, frame } => {
                let first = *next;
                *next += runs;
                (first..first + runs)
                    .map(|k| frame(order[k % order.len()]))
                    .collect()
            }
        };
        let len = frames[0].len();
        let ctx = xdp_ctx(len, self.ingress);
        let mut out = vec![0u8; len + 256];
        let mut durations = Vec::with_capacity(runs);
        for i in 0..runs {
            let frame = &frames[i % frames.len()];
            let r = match &self.verdicts {
                Some(v) if self.repeat > 1 => v
                    .checked_run(self.fd, (frame, &mut out, &ctx), self.repeat, self.expect)
                    .with_context(|| format!("a burst of {}", self.name))?,
                _ => test_run_repeat(self.fd, frame, &mut out, &ctx, self.repeat)
                    .with_context(|| format!("BPF_PROG_TEST_RUN ({})", self.name))?,
            };
            if r.retval != self.expect {
                self.unexpected += 1;
            }
            durations.push(f64::from(r.duration_ns));
        }
        Ok(durations)
    }

    fn expect_no_other_verdict(&self, when: &str) -> Result<()> {
        if self.unexpected > 0 {
            bail!(
                "{} ({when}): {} test runs got another verdict than {}",
                self.name,
                self.unexpected,
                verdict_name(self.expect)
            );
        }
        Ok(())
    }

    fn round(&mut self, runs: usize) -> Result<()> {
        let d = self.run(runs)?;
        self.round_medians.push(summarize(&d).p50);
        self.samples.extend(d);
        Ok(())
    }

    pub(super) fn result(&self) -> CaseResult {
        CaseResult {
            name: self.name,
            verdict: verdict_name(self.expect),
            summary: summarize(&self.samples),
            round_medians: self.round_medians.clone(),
            unexpected: self.unexpected,
        }
    }
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "?",
    }
}

/// Runs one frame once and checks the verdict; returns the output frame.
pub(super) fn once(
    fd: RawFd,
    frame: &[u8],
    ingress: u32,
    expect: u32,
    what: &str,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = test_run(fd, frame, &mut out, &xdp_ctx(frame.len(), ingress))
        .with_context(|| format!("BPF_PROG_TEST_RUN ({what})"))?;
    if r.retval != expect {
        bail!(
            "{what}: verdict {} ({}), expected {}: is the FIB lookup failing?",
            r.retval,
            verdict_name(r.retval),
            verdict_name(expect)
        );
    }
    out.truncate(r.size_out as usize);
    Ok(out)
}

/// Interleaves the cases round by round (so slow drifts of a shared machine hit all alike).
/// A run whose verdict is not its case's fails the measurement: its time would be another
/// path's.
pub(super) fn measure_rounds(cases: &mut [Case], plan: Plan, stop: &Stop) -> Result<()> {
    for case in cases.iter_mut() {
        case.run(plan.runs / 10 + 1)?; // warm-up, not recorded
        case.expect_no_other_verdict("warm-up")?;
    }
    for round in 0..plan.rounds {
        stop.check()?;
        for case in cases.iter_mut() {
            case.round(plan.runs)?;
            case.expect_no_other_verdict(&format!("round {}", round + 1))?;
        }
    }
    Ok(())
}
