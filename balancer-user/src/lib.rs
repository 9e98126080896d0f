//! balancer's userspace: configuration, the Maglev/round-robin ring builder, the map owner
//! (`Balancer`), the control socket, the agent and the CLI.
pub mod agent;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod control;
pub mod health;
pub mod maps;
pub mod pins;
pub mod ring;
pub mod vrrp;
