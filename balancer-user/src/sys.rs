//! Thin wrappers over the socket and interface syscalls the health checks and VRRP use:
//! results checked, descriptors owned. Nothing here keeps state.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `rc` as a result: the OS error when it is negative.
pub fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A non-blocking, close-on-exec socket.
pub fn socket(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let raw = check(unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sets a socket option whose value is a `T` (an `int`, a `struct ip_mreqn`, ...).
pub fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a valid `T`, readable as its bytes for its size.
    let bytes = unsafe {
        std::slice::from_raw_parts(std::ptr::from_ref::<T>(value).cast(), size_of::<T>())
    };
    setsockopt_bytes(fd, level, name, bytes)
}

/// Sets a socket option whose value is bytes (an interface name, ...).
pub fn setsockopt_bytes(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: `value` is readable for its length.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: in_addr(*addr.ip()),
        sin_zero: [0; 8],
    }
}

pub fn in_addr(addr: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(addr.octets()),
    }
}

/// The address a socket is bound to.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddrV4> {
    // SAFETY: an all-zero sockaddr_in is valid; getsockname writes at most `len` bytes.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes.
    check(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &raw mut len) })?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(addr.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(addr.sin_port),
    ))
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c_name` is a valid C string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The IPv4 addresses of interface `name`, with their prefix lengths, primary first (in
/// the kernel's order).
pub fn ipv4_addresses(name: &str) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    Ok(all_ipv4_addresses()?
        .into_iter()
        .filter(|(interface, _, _)| interface == name)
        .map(|(_, addr, prefix)| (addr, prefix))
        .collect())
}

/// Whether `addr` is an address of some interface of this host (namespace).
pub fn is_local(addr: IpAddr) -> io::Result<bool> {
    Ok(all_addresses()?.iter().any(|&(_, a, _)| a == addr))
}

/// Every interface's IPv4 addresses: (interface, address, prefix length), in the kernel's
/// order.
pub fn all_ipv4_addresses() -> io::Result<Vec<(String, Ipv4Addr, u8)>> {
    Ok(all_addresses()?
        .into_iter()
        .filter_map(|(name, addr, prefix)| match addr {
            IpAddr::V4(v4) => Some((name, v4, prefix)),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// Every interface's addresses of both families: (interface, address, prefix length), in
/// the kernel's order.
pub fn all_addresses() -> io::Result<Vec<(String, IpAddr, u8)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list that freeifaddrs frees below.
    check(unsafe { libc::getifaddrs(&raw mut list) })?;
    let mut found = Vec::new();
    let mut next = list;
    while !next.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*next };
        next = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` points to a sockaddr whose family says its type.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6, and so is its netmask.
            let (addr, mask) = unsafe {
                let addr = entry.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned();
                let mask = (!entry.ifa_netmask.is_null()).then(|| {
                    entry
                        .ifa_netmask
                        .cast::<libc::sockaddr_in6>()
                        .read_unaligned()
                });
                (addr, mask)
            };
            let prefix = mask.map_or(128, |m| {
                u128::from_be_bytes(m.sin6_addr.s6_addr).count_ones() as u8
            });
            found.push((
                name.to_string_lossy().into_owned(),
                IpAddr::V6(Ipv6Addr::from(addr.sin6_addr.s6_addr)),
                prefix,
            ));
            continue;
        }
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let addr = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
        let prefix = if entry.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in too.
            let mask = unsafe {
                entry
                    .ifa_netmask
                    .cast::<libc::sockaddr_in>()
                    .read_unaligned()
            };
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
        };
        found.push((
            name.to_string_lossy().into_owned(),
            IpAddr::V4(Ipv4Addr::from(addr.sin_addr.s_addr.to_ne_bytes())),
            prefix,
        ));
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The hardware address of interface `name` (`/sys/class/net/NAME/address`).
pub fn mac_address(name: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = parts
            .next()
            .and_then(|part| u8::from_str_radix(part, 16).ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{name}: MAC address {text:?}"),
                )
            })?;
    }
    Ok(mac)
}

/// Whether interface `name` exists and its link is up (`/sys/class/net/NAME/operstate` is
/// `up`, or `unknown` as for links that do not report one).
pub fn link_up(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
        .is_ok_and(|state| matches!(state.trim(), "up" | "unknown"))
}

/// Adds (`add`) or removes `address` (`ADDRESS/PREFIX`) on `interface` with iproute2's
/// `ip address`, as an operator would; an address already there (or already gone) is not
/// an error.
pub async fn set_address(interface: &str, address: &str, add: bool) -> io::Result<()> {
    let verb = if add { "add" } else { "del" };
    let output = tokio::process::Command::new("ip")
        .args(["address", verb, address, "dev", interface])
        .output()
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("running `ip address {verb}`: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // "File exists" (added already), "Cannot assign requested address" (gone already).
    if (add && stderr.contains("File exists")) || (!add && stderr.contains("Cannot assign")) {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip address {verb} {address} dev {interface}: {}",
        stderr.trim()
    )))
}

/// How many TCP sockets of this host (namespace) on local address `addr` may still have
/// data to send (states `ESTABLISHED`, `FIN_WAIT1`, `CLOSE_WAIT`, `LAST_ACK`, `CLOSING`), from
/// `/proc/net/tcp`.
pub fn tcp_sockets_sending(addr: SocketAddrV4) -> io::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    );
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = fields.next();
            let state = fields.nth(1);
            local == Some(want.as_str()) && matches!(state, Some("01" | "04" | "08" | "09" | "0B"))
        })
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_known() {
        assert_eq!(ifindex("lo").unwrap(), 1);
        assert!(ipv4_addresses("lo")
            .unwrap()
            .contains(&(Ipv4Addr::LOCALHOST, 8)));
        assert_eq!(mac_address("lo").unwrap(), [0; 6]);
        assert!(ifindex("no-such-if0").is_err());
        assert!(!link_up("no-such-if0"));
    }
}
