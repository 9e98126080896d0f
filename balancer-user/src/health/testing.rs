//! What the tests of several health modules share.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub(super) const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
pub(super) fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap()
}
