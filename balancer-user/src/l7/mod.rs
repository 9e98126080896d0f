//! HTTP mode (L7): VIPs served by a reverse proxy in the agent instead of the XDP program,
//! and the rules that choose a pool for each request.

pub mod rules;
