//! The agent's one loop body: every change to the data plane arrives as an [`Event`], and
//! [`Agent::handle`] applies them one at a time. The agent is the only writer of the maps;
//! subsystems (the control server, the health checker, signals; later reload, discovery
//! and VRRP) only send events.

use std::{collections::HashSet, net::SocketAddrV4, ops::ControlFlow};

use tokio::sync::oneshot;

use crate::{
    api::{Request, Response},
    dataplane::Maps,
    health::{Checker, HealthEvent},
    lb::{Balancer, BalancerError},
};

/// Something that happened, for the agent to apply.
#[derive(Debug)]
pub enum Event {
    /// A control-socket request, and where its answer goes.
    Control {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    /// A health check result (sent only when a backend's outcome changes).
    Health(HealthEvent),
    /// A signal asked the agent to stop.
    Stop { signal: &'static str },
}

/// The agent's state: the balancer (which owns the maps) and the health checks it runs.
pub struct Agent<M: Maps> {
    lb: Balancer<M>,
    checker: Checker,
    /// The checks running: (pool, backend).
    checked: HashSet<(String, SocketAddrV4)>,
}

impl<M: Maps> Agent<M> {
    /// Starts the checks of every checked backend of `lb`.
    pub fn new(lb: Balancer<M>, checker: Checker) -> Self {
        let mut agent = Agent {
            lb,
            checker,
            checked: HashSet::new(),
        };
        agent.sync_checks();
        agent
    }

    /// Applies one event; `Break` when the agent must stop.
    pub fn handle(&mut self, event: Event) -> ControlFlow<()> {
        match event {
            Event::Control { request, reply } => {
                let started = std::time::Instant::now();
                let what = format!("{request:?}");
                let response = self.apply(request);
                log::debug!("control request applied in {:?}: {what}", started.elapsed());
                self.sync_checks();
                let _ = reply.send(response);
            }
            Event::Health(event) => {
                if let Err(e) = self.lb.record_health(&event) {
                    log::error!(
                        "pool {}: backend {}: applying health {:?}: {e}",
                        event.pool,
                        event.backend,
                        event.health
                    );
                }
            }
            Event::Stop { signal } => {
                log::info!("{signal}: stopping");
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// The balancer, once the agent stops.
    pub fn into_balancer(self) -> Balancer<M> {
        self.lb
    }

    /// Applies one control request and answers with the status after it.
    fn apply(&mut self, request: Request) -> Response {
        let lb = &mut self.lb;
        let change = !matches!(request, Request::Status);
        let result: Result<(), BalancerError> = match request {
            Request::Status => Ok(()),
            Request::VipAdd { vip } => lb.add_vip(vip),
            Request::VipDel { name } => lb.del_vip(&name),
            Request::BackendAdd {
                target,
                address,
                weight,
            } => lb.add_backend(&target, address, weight),
            Request::BackendDel { target, address } => lb.del_backend(&target, address),
            Request::BackendWeight {
                target,
                address,
                weight,
            } => lb.set_weight(&target, address, weight),
        };
        if let Err(e) = result {
            return Response::error(e.to_string());
        }
        match lb.status() {
            Ok(status) => Response {
                ok: true,
                error: None,
                status: Some(status),
            },
            // The change took effect: saying it was refused would be wrong.
            Err(e) if change => Response {
                ok: true,
                error: Some(format!("reading the status failed: {e}")),
                status: None,
            },
            Err(e) => Response::error(e.to_string()),
        }
    }

    /// Starts checks for backends that gained one and stops those of removed backends.
    fn sync_checks(&mut self) {
        let wanted = self.lb.checks();
        let keys: HashSet<(String, SocketAddrV4)> = wanted
            .iter()
            .map(|(pool, addr, ..)| (pool.clone(), *addr))
            .collect();
        for (pool, addr) in self.checked.difference(&keys) {
            self.checker.stop(pool, *addr);
        }
        for (pool, addr, check, health) in &wanted {
            if !self.checked.contains(&(pool.clone(), *addr)) {
                if let Some(slot) = self.checker.start(pool, *addr, check, *health) {
                    self.lb.set_latest_slot(pool, *addr, slot);
                }
            }
        }
        self.checked = keys;
    }
}
