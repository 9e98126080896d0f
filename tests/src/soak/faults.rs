//! The soak's faults, injected one at a time: a backend killed and restarted, a weight
//! changed, a backend drained, the agent killed (SIGKILL) and restarted (`keep_attached`), and an
//! interface of the balancer deleted and created again. Each is stamped with when it began,
//! when the system had detected it, and when it was over.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{Agent, Servers, Topology, HTTP_PORT, UDP_PORT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    WeightChanged,
    BackendKilled,
    Drained,
    AgentKilled,
    InterfaceRecreated,
}

impl FaultKind {
    /// The order the soak injects them in, round and round.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::WeightChanged,
        FaultKind::BackendKilled,
        FaultKind::Drained,
        FaultKind::AgentKilled,
        FaultKind::InterfaceRecreated,
    ];
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::WeightChanged => "weight changed",
            FaultKind::BackendKilled => "backend killed",
            FaultKind::Drained => "backend drained",
            FaultKind::AgentKilled => "agent SIGKILLed",
            FaultKind::InterfaceRecreated => "interface re-created",
        })
    }
}

/// One injected fault. Times count from the soak's start.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// What it hit: a backend's name or an interface.
    pub target: String,
    pub start: Duration,
    /// When the system had noticed: the backend's health down in the status, the new agent
    /// answering, the interface attached again. Requests that start later must not fail.
    pub detected: Duration,
    /// When the fault was undone and its effects were over (the backend up again, the
    /// weight restored).
    pub over: Duration,
}

impl Fault {
    /// How long the system took to notice it.
    pub fn detected_after(&self) -> Duration {
        self.detected.saturating_sub(self.start)
    }

    /// How long it lasted.
    pub fn lasted(&self) -> Duration {
        self.over.saturating_sub(self.start)
    }
}

/// How long a backend or weight change is held before it is undone.
const HOLD: Duration = Duration::from_secs(2);
/// How long a deleted interface stays away.
const MISSING: Duration = Duration::from_secs(1);
/// How long the agent may take to notice a fault or its end.
const NOTICE: Duration = Duration::from_secs(10);

/// Injects the faults into one topology and owns the agent, which it restarts.
pub struct Injector<'a> {
    topo: &'a Topology,
    servers: &'a mut Servers,
    config: String,
    pub agent: Agent,
    /// Agents that were killed, kept so that their logs outlive them.
    pub dead: Vec<Agent>,
    /// The running agent's pid, for the usage sampler (0 while none runs).
    pub agent_pid: Arc<AtomicU32>,
    t0: Instant,
    next: usize,
}

impl<'a> Injector<'a> {
    pub fn new(
        topo: &'a Topology,
        servers: &'a mut Servers,
        config: String,
        agent: Agent,
        t0: Instant,
    ) -> Injector<'a> {
        let agent_pid = Arc::new(AtomicU32::new(agent.pid().unwrap_or(0)));
        Injector {
            topo,
            servers,
            config,
            agent,
            dead: Vec::new(),
            agent_pid,
            t0,
            next: 0,
        }
    }

    /// Injects the next fault and waits until it is over.
    pub fn inject_next(&mut self) -> Result<Fault> {
        let round = self.next / FaultKind::ALL.len();
        let kind = FaultKind::ALL[self.next % FaultKind::ALL.len()];
        self.next += 1;
        // Every backend and both interfaces get their turn.
        let backend = 1 + round % self.topo.n_backends();
        match kind {
            FaultKind::WeightChanged => self.weight_changed(backend),
            FaultKind::BackendKilled => self.backend_killed(backend),
            FaultKind::Drained => self.drained(backend),
            FaultKind::AgentKilled => self.agent_killed(),
            FaultKind::InterfaceRecreated => {
                self.interface_recreated(self.topo.lb_interfaces()[(round + 1) % 2])
            }
        }
        .with_context(|| format!("injecting fault {kind} (number {})", self.next))
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn fault(&self, kind: FaultKind, target: String, start: Duration, detected: Duration) -> Fault {
        Fault {
            kind,
            target,
            start,
            detected,
            over: self.now(),
        }
    }

    /// Runs `balancer backend VERB POOL ADDRESS REST...` for backend `i` in both pools.
    fn backend_cli(&self, i: usize, verb: &str, rest: &[&str]) -> Result<()> {
        let addr = self.topo.backend_addr(i);
        for (pool, port) in [("web", HTTP_PORT), ("dns", UDP_PORT)] {
            let address = format!("{addr}:{port}");
            let mut args = vec!["backend", verb, pool, &address];
            args.extend_from_slice(rest);
            self.agent.cli_ok(&args)?;
        }
        Ok(())
    }

    fn weight_changed(&mut self, i: usize) -> Result<Fault> {
        let start = self.now();
        self.backend_cli(i, "weight", &["3"])?;
        thread::sleep(HOLD);
        self.backend_cli(i, "weight", &["1"])?;
        Ok(self.fault(
            FaultKind::WeightChanged,
            self.topo.backend_name(i),
            start,
            start,
        ))
    }

    fn drained(&mut self, i: usize) -> Result<Fault> {
        let start = self.now();
        self.backend_cli(i, "drain", &[])?;
        thread::sleep(HOLD);
        self.backend_cli(i, "weight", &["1"])?;
        Ok(self.fault(FaultKind::Drained, self.topo.backend_name(i), start, start))
    }

    fn backend_killed(&mut self, i: usize) -> Result<Fault> {
        let start = self.now();
        self.servers.stop(i);
        self.wait_health(i, "down")?;
        let detected = self.now();
        thread::sleep(HOLD);
        self.servers.start(i)?;
        self.wait_health(i, "up")?;
        Ok(self.fault(
            FaultKind::BackendKilled,
            self.topo.backend_name(i),
            start,
            detected,
        ))
    }

    fn agent_killed(&mut self) -> Result<Fault> {
        let start = self.now();
        self.agent.kill();
        self.agent_pid.store(0, Ordering::Relaxed);
        let agent = Agent::start(self.topo, &self.config)?;
        self.agent_pid
            .store(agent.pid().unwrap_or(0), Ordering::Relaxed);
        self.dead.push(std::mem::replace(&mut self.agent, agent));
        let detected = self.now();
        Ok(self.fault(FaultKind::AgentKilled, "agent".into(), start, detected))
    }

    fn interface_recreated(&mut self, name: &str) -> Result<Fault> {
        let start = self.now();
        self.topo.lb().ip(&["link", "del", name])?;
        self.wait_interface(name, "missing")?;
        thread::sleep(MISSING);
        if name == self.topo.lb_interfaces()[0] {
            self.topo.create_client_link()?;
        } else {
            self.topo.create_backend_link()?;
        }
        self.wait_interface(name, "attached")?;
        let detected = self.now();
        Ok(self.fault(FaultKind::InterfaceRecreated, name.into(), start, detected))
    }

    /// Polls the status until backend `i` is `health` in both pools.
    fn wait_health(&self, i: usize, health: &str) -> Result<()> {
        let addr = self.topo.backend_addr(i).to_string();
        self.wait(
            &format!("backend {addr} {health} in both pools"),
            |status| {
                status["pools"].as_array().is_some_and(|pools| {
                    pools.iter().all(|pool| {
                        pool["backends"].as_array().is_some_and(|backends| {
                            backends
                                .iter()
                                .filter(|b| b["address"] == addr.as_str())
                                .all(|b| b["health"] == health)
                        })
                    })
                })
            },
        )
    }

    fn wait_interface(&self, name: &str, state: &str) -> Result<()> {
        self.wait(&format!("interface {name} {state}"), |status| {
            status["interfaces"].as_array().is_some_and(|list| {
                list.iter()
                    .any(|i| i["name"] == name && i["state"] == state)
            })
        })
    }

    fn wait(&self, what: &str, done: impl Fn(&Value) -> bool) -> Result<()> {
        let deadline = Instant::now() + NOTICE;
        loop {
            let out = self.agent.cli(&["status", "--json"]);
            if out.success() {
                let status: Value = serde_json::from_str(&out.stdout)
                    .with_context(|| format!("status --json printed {out}"))?;
                if done(&status) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("not seen within {NOTICE:?}: {what}; last status: {out}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}
