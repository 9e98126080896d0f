//! One running end-to-end set-up: a topology, its test servers, the agent and a client
//! worker, started in the order every test needs and torn down in reverse.
use crate::{default_config, require_root, Agent, ClientNs, KeepAlive, Servers, Topology};

/// Fields drop in declaration order: client, agent, servers, then the namespaces.
pub struct Running {
    pub client: ClientNs,
    pub agent: Agent,
    pub servers: Servers,
    pub topo: Topology,
}

impl Running {
    /// `backends` test servers and an agent with [`default_config`] for `scheduler`.
    pub fn start(backends: usize, scheduler: &str) -> Running {
        Running::start_with(backends, |topo| default_config(topo, scheduler))
    }

    /// Like [`Running::start`] with the agent configuration `config` makes.
    pub fn start_with(backends: usize, config: impl FnOnce(&Topology) -> String) -> Running {
        require_root();
        let topo = Topology::new(backends).expect("building the topology");
        let servers = topo.start_backends().expect("starting the test servers");
        let agent = Agent::start(&topo, &config(&topo)).expect("starting the agent");
        let client = topo
            .client_ns()
            .expect("worker thread in the client namespace");
        Running {
            client,
            agent,
            servers,
            topo,
        }
    }

    /// A keep-alive connection to the HTTP VIP, with the name and index of the backend
    /// that answered its first request.
    pub fn pinned_connection(&self) -> (KeepAlive, String, usize) {
        let mut ka = self
            .client
            .keepalive(Topology::vip_http())
            .expect("opening a keep-alive connection to the VIP");
        let name = ka
            .get()
            .unwrap_or_else(|e| panic!("first request on the keep-alive connection failed: {e:#}"));
        let index = self
            .topo
            .backend_index(&name)
            .unwrap_or_else(|| panic!("the VIP was answered by {name:?}, not by a test backend"));
        (ka, name, index)
    }
}

impl KeepAlive {
    /// Sends `n` requests and panics unless each is answered by `expected`; `after` says
    /// what happened before (for the message).
    pub fn expect_backend(&mut self, expected: &str, n: usize, after: &str) {
        for k in 1..=n {
            match self.get() {
                Ok(name) => assert_eq!(
                    name, expected,
                    "after {after}: expected request {k} on the established connection to stay \
                     on backend {expected}, it was answered by {name}"
                ),
                Err(e) => panic!(
                    "after {after}: expected request {k} on the established connection to be \
                     answered by {expected}, it failed: {e:#}"
                ),
            }
        }
    }
}
