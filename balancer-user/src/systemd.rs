//! The service manager's readiness protocol (`sd_notify`), written out: one datagram of
//! `KEY=VALUE` lines to the unix socket `$NOTIFY_SOCKET` names (a name starting with `@`
//! is in the abstract namespace). Outside systemd (no such variable) it does nothing.

use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The data plane is attached and every subsystem started.
pub const READY: &str = "READY=1";
/// The agent is stopping.
pub const STOPPING: &str = "STOPPING=1";

/// A reload begins (with the monotonic clock systemd 253 wants beside it).
pub fn reloading() -> String {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// Sends `state` to the service manager, if there is one; returns whether it was sent.
/// Failures are logged, not returned: the agent runs the same with or without systemd.
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return false;
    };
    match send(&socket.to_string_lossy(), state) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("systemd: telling {state:?} to {NOTIFY_SOCKET}: {e}");
            false
        }
    }
}

/// One datagram of `state` to the socket `path` (`@name`: abstract).
pub fn send(path: &str, state: &str) -> io::Result<()> {
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} is neither a path nor an abstract name"),
            ))
        }
    };
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(state.as_bytes(), &address)?;
    if sent == state.len() {
        Ok(())
    } else {
        Err(io::Error::other("the datagram was cut short"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn states_reach_a_bound_socket_by_path_and_by_abstract_name() {
        let dir = std::env::temp_dir().join(format!("balancer-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let bound = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), READY).unwrap();
        assert_eq!(received(&bound), "READY=1");

        let name = format!("balancer-notify-test-{}", std::process::id());
        let abstract_socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let reloading = reloading();
        send(&format!("@{name}"), &reloading).unwrap();
        let got = received(&abstract_socket);
        assert!(got.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{got}");
        assert!(got.rsplit('=').next().unwrap().parse::<u64>().unwrap() > 0);

        assert!(send("relative/path", STOPPING).is_err());
        assert!(send(dir.join("absent.sock").to_str().unwrap(), STOPPING).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
