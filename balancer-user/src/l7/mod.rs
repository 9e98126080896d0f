//! HTTP-mode VIPs: a reverse proxy in the agent.

pub mod headers;
pub mod stats;
