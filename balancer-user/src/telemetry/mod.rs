//! Telemetry: an HTTP listener in the agent (`[telemetry] listen`) serving `/metrics`
//! (Prometheus text, [`metrics`]), `/status.json` (what `balancer status --json` prints) and
//! `/stats`, a self-contained page ([`page`]) with rates the agent computes from counter
//! deltas ([`rates`]), behind optional basic authentication ([`auth`]), with an admin mode
//! whose forms ([`action`]) become the CLI's control requests.
//!
//! It reads state only through the agent's loop: each request asks it for a
//! [`crate::api::Request::Status`] on the channel [`server::start`] is given (the agent
//! turns those into `Event::Control`), and never touches the maps.

pub mod action;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod page;
pub mod rates;
pub mod server;

pub use server::{start, Ask};
