//! HTTP-mode VIPs: a reverse proxy in the agent.

pub mod balance;
pub mod headers;
pub mod stats;
