//! TCP checks of IPv4 targets as bare SYNs: sent in batches from a raw socket, answered
//! SYN-ACKs and resets read from a packet socket, the half-open connection ended by the
//! kernel's own reset.
//!
//! A TCP check asks one thing: does the backend's kernel answer a SYN for the port with a
//! SYN-ACK (up) or a reset (refused)? A socket per check (or per backend, [`super::tcp`])
//! pays the whole connect path for that: a `connect()`, a readiness registration and
//! wake-up, a `getpeername()` and a reset, all per check. Here the checks of a batch (the
//! tasks that wake on one tick) are queued to one engine task ([`engine`]), which
//!
//! * writes their SYNs ([`packets`]) with one `sendmmsg()` on a raw `IPPROTO_RAW` socket
//!   ([`sockets`]), from a few consecutive source ports reserved by bound (never listening)
//!   TCP sockets and taken in turn by each target's checks, each SYN with a random sequence
//!   number that identifies the check;
//! * reads the answers with `recvmmsg()` from an `AF_PACKET` socket whose classic BPF
//!   filter ([`filter`]) lets through only TCP segments to those ports with SYN+ACK or RST
//!   set and ICMP destination-unreachable messages (which quote the SYN); the filter runs
//!   before the packet is cloned, so other traffic costs almost nothing;
//! * leaves the answer to the kernel: a SYN-ACK to a port with no connection gets a reset,
//!   so a check is SYN, SYN-ACK, RST, as with the kept socket, and the backend never has a
//!   connection to accept.
//!
//! The check's source address is the one the kernel's routing picks for the target
//! (learnt from a connected UDP socket, refreshed every [`engine::SOURCE_TTL`]); it is
//! needed for the TCP checksum. Answers are matched by the target's address and port and
//! the acknowledged (or, in an ICMP error, quoted) sequence number. A SYN without an answer
//! is sent again (same port and sequence number) after 1 s, then 2 s more, and so on, as
//! `connect()` does, until the caller's timeout ends the check. Opening the raw and packet
//! sockets needs `CAP_NET_RAW`; without it, or once the engine has stopped, the checker
//! uses [`super::tcp`].

mod engine;
mod filter;
mod packets;
mod sockets;

pub use engine::{SynClient, SynProber};
