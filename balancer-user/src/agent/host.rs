//! The host around the data plane: the sysctls it needs (`accept_local`, IPv4 and IPv6
//! forwarding) and the open-files limit the health checks need.

use std::path::{Path, PathBuf};

use crate::dataplane::pins;

/// Warns when the kernel would refuse the FIB lookups the program needs.
pub fn check_forwarding(iface: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => log::warn!(
            "{iface}: IPv4 forwarding is off, so FIB lookups fail and VIP traffic is dropped; \
             enable it: sysctl -w net.ipv4.conf.{iface}.forwarding=1 (or net.ipv4.ip_forward=1)"
        ),
        Err(e) => log::warn!("{iface}: cannot read {path}: {e}"),
    }
}

/// Where IPv6 forwarding is switched on for every interface at once.
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Turns IPv6 forwarding on (`net.ipv6.conf.all.forwarding=1`) when it is off, for the
/// IPv6 VIPs: the kernel refuses the program's IPv6 FIB lookups on an interface that does
/// not forward, and forwards nothing the program passes to it (a packet whose next hop's
/// MAC it does not know yet) while `all` is off. Then checks each of `interfaces`, as
/// [`check_forwarding`] does for IPv4. It stays on when the agent stops, as an operator's
/// `sysctl` would (the host is a router as long as it balances).
pub fn enable_ipv6_forwarding(interfaces: &[String]) {
    match std::fs::read_to_string(IPV6_FORWARDING) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => match std::fs::write(IPV6_FORWARDING, "1") {
            Ok(()) => log::info!(
                "net.ipv6.conf.all.forwarding set to 1 for the IPv6 VIPs (it stays on when \
                 the agent stops)"
            ),
            Err(e) => log::warn!(
                "cannot turn IPv6 forwarding on ({IPV6_FORWARDING}: {e}): IPv6 VIP traffic \
                 is dropped; enable it: sysctl -w net.ipv6.conf.all.forwarding=1"
            ),
        },
        Err(e) => log::warn!("cannot read {IPV6_FORWARDING}: {e}"),
    }
    for iface in interfaces {
        let path = format!("/proc/sys/net/ipv6/conf/{iface}/forwarding");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => log::warn!(
                "{iface}: IPv6 forwarding is off, so IPv6 FIB lookups fail and IPv6 VIP \
                 traffic is dropped; enable it: sysctl -w net.ipv6.conf.{iface}.forwarding=1"
            ),
            Err(e) => log::warn!("{iface}: cannot read {path}: {e}"),
        }
    }
}

/// Warns when `iface`'s MTU is below `tunnel_mtu` (`Some` while a tunnel VIP is
/// configured): encapsulated packets between the two sizes would be dropped.
pub fn check_tunnel_mtu(iface: &str, tunnel_mtu: Option<u16>) {
    let Some(tunnel_mtu) = tunnel_mtu else {
        return;
    };
    let path = format!("/sys/class/net/{iface}/mtu");
    let mtu = std::fs::read_to_string(&path)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    if let Some(warning) = mtu.and_then(|mtu| tunnel_mtu_warning(iface, mtu, tunnel_mtu)) {
        log::warn!("{warning}");
    }
}

/// What to say when `iface`'s `mtu` is below `tunnel_mtu`.
fn tunnel_mtu_warning(iface: &str, mtu: u32, tunnel_mtu: u16) -> Option<String> {
    (mtu < u32::from(tunnel_mtu)).then(|| {
        format!(
            "{iface}: MTU {mtu} is below tunnel.mtu {tunnel_mtu}: tunnelled packets of {} to \
             {tunnel_mtu} bytes that leave through {iface} are dropped (drop_tunnel_mtu) \
             instead of answered with \"fragmentation needed\"; set tunnel.mtu to at most {mtu}",
            mtu + 1
        )
    })
}

/// `accept_local` on the XDP interfaces while the agent runs. When the FIB has no
/// neighbour entry for a backend yet, the program passes the packet to the stack already
/// translated, from the SNAT address: one of this host's own, which the kernel drops as a
/// martian source unless `accept_local` is on. Forwarded, the packet makes the kernel
/// resolve the neighbour, and later packets take the fast path. The old values are put
/// back when the agent stops, unless its XDP links outlive it (`keep_attached`): then
/// they are recorded in the pin directory as soon as they are changed (so a crash keeps
/// them too), the agent leaves them on however it ends, and the agent that stops without
/// keeping the links puts them back (as does one that no longer configures an
/// interface).
pub struct AcceptLocal {
    /// (interface, its value before an agent turned it on).
    restore: Vec<(String, String)>,
    /// The values a previous agent that kept its links recorded: (interface, value).
    saved: Vec<(String, String)>,
    /// The pin directory, where values are recorded for later agents.
    pins: Option<PathBuf>,
    /// The links outlive the agent: leave `accept_local` on.
    keep: bool,
}

fn accept_local_sysctl(iface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/accept_local")
}

impl AcceptLocal {
    /// Puts back the values of interfaces a previous agent kept a link on and this one
    /// no longer configures (`ifaces`); [`AcceptLocal::turn_on`] does the configured
    /// ones as the program is attached to each.
    pub fn new(ifaces: &[String], pins: Option<&Path>, keep: bool) -> AcceptLocal {
        let saved = pins.map(pins::saved_accept_local).unwrap_or_default();
        let this = AcceptLocal {
            restore: Vec::new(),
            saved,
            pins: pins.map(Path::to_path_buf),
            keep,
        };
        // (Their links are released.)
        for (iface, value) in this.saved.iter().filter(|(i, _)| !ifaces.contains(i)) {
            this.put_back(iface, value);
        }
        this
    }

    /// Turns `accept_local` on for `iface` (again, when the interface was created again:
    /// the value to put back stays the first one seen).
    pub fn turn_on(&mut self, iface: &str) {
        let path = accept_local_sysctl(iface);
        let old = match std::fs::read_to_string(&path) {
            Ok(old) => old.trim().to_string(),
            Err(e) => {
                log::warn!("{iface}: cannot read {path}: {e}");
                return;
            }
        };
        // A previous agent that kept its link turned it on: its record is the value to
        // put back.
        let recorded = self.saved.iter().find(|(i, _)| i == iface).map(|(_, v)| v);
        if old != "1" {
            if let Err(e) = std::fs::write(&path, "1") {
                log::warn!(
                    "{iface}: cannot turn accept_local on ({e}): the first packets to a \
                     backend whose MAC address is not known yet will be dropped"
                );
                return;
            }
        }
        if !self.restore.iter().any(|(i, _)| i == iface) {
            match recorded {
                Some(value) => {
                    let value = value.clone();
                    self.restore.push((iface.to_owned(), value));
                }
                None if old != "1" => {
                    self.record(iface, &old);
                    self.restore.push((iface.to_owned(), old));
                }
                None => {}
            }
        }
        let rp_filter = |dev: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"))
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(0)
        };
        if rp_filter("all").max(rp_filter(iface)) == 1 {
            log::warn!(
                "{iface}: strict reverse-path filtering (rp_filter = 1) drops the packets \
                 passed to the stack while a backend's MAC address is not known yet; \
                 loose mode does not: sysctl -w net.ipv4.conf.{iface}.rp_filter=2 (and \
                 net.ipv4.conf.all.rp_filter at most 2)"
            );
        }
    }

    /// With `keep`, records `iface`'s `value` from before for the agent that will put it
    /// back.
    fn record(&self, iface: &str, value: &str) {
        let (true, Some(dir)) = (self.keep, &self.pins) else {
            return;
        };
        if let Err(e) = pins::save_accept_local(dir, iface, value) {
            log::warn!(
                "{iface}: cannot record its accept_local {value} for the next agent ({e}); it \
                 stays 1"
            );
        }
    }

    /// Sets `iface`'s `accept_local` back to `value` and removes its record.
    fn put_back(&self, iface: &str, value: &str) {
        let path = accept_local_sysctl(iface);
        match std::fs::write(&path, value) {
            Ok(()) => {}
            // The interface is gone, and its setting with it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot restore {path} to {value}: {e}"),
        }
        if let Some(dir) = &self.pins {
            pins::forget_accept_local(dir, iface, value);
        }
    }
}

impl Drop for AcceptLocal {
    fn drop(&mut self) {
        if self.keep {
            // The links stay attached (a failed start leaves the ones it pinned): the
            // data plane still needs it, and the records are made.
            return;
        }
        for (iface, value) in &self.restore {
            self.put_back(iface, value);
        }
    }
}

/// Raises the soft limit of open files to the hard limit, as HAProxy and nginx do: every
/// TCP-checked backend keeps a socket open (`health::Prober`), and the usual soft limit of
/// 1024 would end at about a thousand backends.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        log::warn!(
            "cannot read the open files limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let old = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads only the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } == 0 {
        log::debug!("open files limit raised from {old} to {}", limit.rlim_cur);
    } else {
        log::warn!(
            "cannot raise the open files limit from {old}: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod mtu_tests {
    use super::tunnel_mtu_warning;

    #[test]
    fn an_interface_below_the_tunnel_mtu_is_named_with_the_fix() {
        assert_eq!(tunnel_mtu_warning("lbs0", 1500, 1500), None);
        assert_eq!(tunnel_mtu_warning("lbs0", 9000, 1500), None);
        let warning = tunnel_mtu_warning("lbs0", 1400, 1500).unwrap();
        assert!(
            warning.starts_with("lbs0: MTU 1400 is below tunnel.mtu 1500"),
            "{warning}"
        );
        assert!(warning.contains("1401 to 1500 bytes"), "{warning}");
        assert!(
            warning.ends_with("set tunnel.mtu to at most 1400"),
            "{warning}"
        );
    }
}
