//! balancer's userspace: the agent (`balancer run`) and the CLI that talks to it.
//! ARCHITECTURE.md at the repository's root maps these modules.
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod discovery;
pub mod health;
pub mod l7;
pub mod lb;
pub mod logging;
pub mod ring;
pub mod spelling;
pub mod sync;
pub mod sys;
pub mod systemd;
pub mod telemetry;
pub mod vrrp;
