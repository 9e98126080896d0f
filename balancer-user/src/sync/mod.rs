//! Flow-table sync between the balancers of a VRRP pair (`[sync]`), so that a failover
//! keeps established connections: the Master tells its peers every flow it holds (backend,
//! SNAT address and port, state, age), and a Backup writes them into its own `CONNS` and
//! `NAT` tables, so that on becoming Master its data plane forwards them as the old one
//! did. The data plane is not changed for it.
//!
//! - Finding changes ([`outbox`]): the Master compares its table with what it sent, in
//!   the walk the flow census makes anyway (every `interval` while Master), and sends new,
//!   changed and removed flows, refreshes of long-lived ones (with their age, which the
//!   receiver turns into its own clock), and a full round every `full_resync` and when a
//!   peer asks.
//! - The protocol ([`machine`], sans-IO): UDP datagrams under 1400 bytes
//!   (`balancer_wire::sync`), each signed with HMAC-SHA256 over a shared key and numbered
//!   within the sender's boot: forged, replayed and stale datagrams are refused and
//!   counted; a lost one makes the receiver ask for a full resync; a rate bound paces
//!   what the Master sends. [`service`] is the tokio task around it.
//! - Writing ([`apply`]): the agent's loop gets what arrived as events and, while not
//!   Master, writes it on a blocking thread (one at a time), mapping each flow's VIP and
//!   backend onto its own ids by address ([`record`] holds every ABI conversion).
//!
//! The role follows VRRP: a node sends while Master of `[sync].instance` (an instance or
//! a sync group; any instance when not given), and writes what it receives otherwise. On
//! becoming Master it keeps what it learnt and starts with a full round. A starting node
//! asks for a full resync at once; a returning Master should preempt only after that
//! arrived: `preempt_delay` on its instance (a few `interval`s, more for large tables).

pub mod apply;
pub mod config;
pub mod machine;
pub mod outbox;
pub mod record;
pub mod service;

pub use apply::{apply, Applied};
pub use config::{KeySource, SyncConfig};
pub use machine::{Delivery, Machine, PeerStats};
pub use outbox::Outbox;
pub use service::{FlowSync, Snapshot};
