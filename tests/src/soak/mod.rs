//! The soak: HTTP (new and kept-alive connections), UDP and long-lived TCP and UDP flows
//! through the VIPs for minutes while faults are injected one after another, then a report
//! of what failed, whether it failed before or after the fault was detected, what broke the
//! long-lived flows, and the agent's memory and descriptors over time.
//!
//! `cargo xtask soak --minutes N` runs it at length (the `soak` bin); the `soak` test runs
//! one minute in CI.

mod faults;
mod load;
mod report;
mod usage;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use faults::{Fault, FaultKind};
pub use load::{Flow, Request, Stream, Traffic, Transport};
pub use report::{Cause, Report, FD_SLACK};
pub use usage::Sample;

use crate::{config_for, require_root, Agent, Topology};

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub backends: usize,
    pub tcp_flows: usize,
    pub udp_flows: usize,
}

impl Options {
    /// A soak of `duration` with the usual load.
    pub fn lasting(duration: Duration) -> Options {
        Options {
            duration,
            backends: 4,
            tcp_flows: 8,
            udp_flows: 4,
        }
    }
}

/// Traffic runs this long before the first fault, and between two faults.
const SETTLE: Duration = Duration::from_secs(2);

/// The agent's configuration: both pools checked fast (the UDP pool through its backends'
/// HTTP port), flows of a dead backend rescheduled, the data plane kept attached.
fn config(topo: &Topology, backends: usize) -> String {
    let all: Vec<usize> = (1..=backends).collect();
    let check = |pool: &str, port: &str| {
        format!(
            "name = \"{pool}\"\non_backend_down = \"shutdown\"\ncheck = {{ type = \"tcp\"{port}, \
             interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }}\nbackends = ["
        )
    };
    config_for(topo, "maglev", &all)
        .replacen("\n[nat]", "keep_attached = true\n\n[nat]", 1)
        .replacen("name = \"web\"\nbackends = [", &check("web", ""), 1)
        .replacen(
            "name = \"dns\"\nbackends = [",
            &check("dns", ", port = 80"),
            1,
        )
}

/// Runs a soak; `progress` hears of each fault as it ends.
pub fn run(options: &Options, mut progress: impl FnMut(&Fault)) -> Result<Report> {
    require_root();
    let topo = Topology::new(options.backends).context("building the topology")?;
    let mut servers = topo.start_backends().context("starting the test servers")?;
    let config = config(&topo, options.backends);
    let agent = Agent::start(&topo, &config).context("starting the agent")?;
    let t0 = Instant::now();
    let mut injector = faults::Injector::new(&topo, &mut servers, config, agent, t0);
    let sampler = usage::Sampler::start(injector.agent_pid.clone(), t0);
    let load = load::Load::start(
        &topo.client().path(),
        t0,
        options.tcp_flows,
        options.udp_flows,
    );

    let mut faults = Vec::new();
    let mut failure = None;
    std::thread::sleep(SETTLE);
    while t0.elapsed() + SETTLE < options.duration {
        match injector.inject_next() {
            Ok(fault) => {
                progress(&fault);
                faults.push(fault);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        std::thread::sleep(SETTLE);
    }
    let traffic = load.finish()?;
    let usage = sampler.finish();
    if let Some(e) = failure {
        return Err(e.context(format!(
            "the soak stopped at {:.1} s; the agent's log:\n{}",
            t0.elapsed().as_secs_f64(),
            injector.agent.log()
        )));
    }
    let agent_logs = injector
        .dead
        .iter()
        .chain([&injector.agent])
        .map(Agent::log)
        .collect::<Vec<_>>()
        .join("\n===== the next agent =====\n");
    Ok(Report {
        duration: t0.elapsed(),
        backends: options.backends,
        faults,
        traffic,
        usage,
        agent_logs,
    })
}
