//! Health checks of backends: the rise/fall state machine ([`Tracker`], in `state`), single
//! TCP, HTTP and UDP probes ([`check_once`], in `probe`, `http`, `tcp` and `syn`), and the
//! [`Checker`] (in `scheduler`) that runs them periodically on tokio and reports every
//! result to the agent's owner task as a [`HealthEvent`]. What a check does is configured
//! by a [`config::CheckConfig`]; this module does not read the configuration file.
//!
//! The semantics are HAProxy's `check` (and keepalived's real-server checks):
//!
//! * A backend that is up goes down after `fall` consecutive failed checks; a backend that
//!   is down comes up after `rise` consecutive successful checks. A result that agrees with
//!   the current state resets the count of the opposite results, so a flapping backend
//!   (alternating results) never changes state while `rise`, `fall` > 1.
//! * Checks run every `interval`; every `fastinter` while a transition is pending (some
//!   opposite results seen, not yet enough); every `downinter` while the backend is down.
//! * The first check of a backend is delayed by a random fraction of `interval`, and every
//!   later delay is varied by +-10%, so that many backends are not checked in lock step.
//!   Start times are then rounded up to a tick (a 16th of the pause, at most 50 ms), so that
//!   the checks of many backends run in batches: one wake-up of the runtime, and for TCP
//!   checks one `sendmmsg()`, per batch rather than per check (and the owner task hears
//!   only of results that changed).
//! * One check (connect, request, response) never takes longer than `timeout`.
//! * TCP and HTTP check connections are closed with a reset (zero linger), as HAProxy
//!   does, so that checks leave no `TIME_WAIT` sockets behind on the balancer host. A TCP
//!   check of an IPv4 target is a bare SYN sent in a batch from a raw socket, whose SYN-ACK
//!   the kernel resets (see [`syn`]); without raw sockets (no `CAP_NET_RAW`) or for IPv6, it
//!   reuses one socket per backend and resets before the handshake's last ACK (see
//!   [`tcp`]).
//!
//! Type `none` means "not checked": the backend is always up and no task runs.
//!
//! The checks run on a current-thread tokio runtime in a thread of the [`Checker`]'s own.
//! Their CPU cost is measured by `cargo xtask bench -- --only health` (the real agent, 1000
//! TCP-checked backends in another namespace whose packets another CPU handles) and, over
//! loopback, where the listening side's half of each handshake is billed to the checker
//! too, by the ignored test `health_cpu_1000_tcp_backends`.

pub mod config;
mod http;
mod probe;
mod scheduler;
mod state;
mod syn;
mod tcp;
#[cfg(test)]
mod testing;

pub use http::{MAX_HTTP_BODY, MAX_HTTP_HEAD};
pub use probe::{check_once, CheckOutcome, Prober};
pub use scheduler::{latest, Checker, HealthEvent, LatestCheck, LatestSlot};
pub use state::{Health, Tracker};

// The SYN engine words its connect failures like the other TCP checks.
use tcp::connect_reason;
