//! HTTP mode (L7): VIPs served by a reverse proxy in the agent instead of the XDP program:
//! the rules that choose a pool for each request (`rules`), how a pool picks a backend
//! (`balance`), what happens to headers on the way (`headers`), the proxy (`proxy`) and its
//! counters (`stats`).

pub mod balance;
mod frontend;
pub mod headers;
pub mod proxy;
pub mod rules;
pub mod stats;

pub use frontend::Frontend;
