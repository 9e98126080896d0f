//! `[tunnel]`: the outer headers of tunnel VIPs' packets: their source (an address, or a
//! prefix the flows are spread over), GUE's port, and the MTU of the way to the backends.

use std::net::Ipv4Addr;

use toml::Spanned;

use super::{Checked, Validator};
use crate::config::raw::RawTunnel;
use crate::config::TunnelConfig;

/// The smallest `tunnel.mtu`: every IPv4 host must take datagrams this large (RFC 791).
const MIN_TUNNEL_MTU: u16 = 576;

impl Validator<'_> {
    pub(super) fn tunnel(&self, raw: &RawTunnel) -> Checked<TunnelConfig> {
        let mut tunnel = TunnelConfig::default();
        if let Some(source) = &raw.source {
            tunnel.source = Some(self.tunnel_source(source)?);
        }
        if let Some(port) = &raw.gue_port {
            tunnel.gue_port = self.port(port, "tunnel.gue_port")?;
        }
        if let Some(mtu) = &raw.mtu {
            let v = mtu.get_ref().0;
            tunnel.mtu = u16::try_from(v)
                .ok()
                .filter(|m| *m >= MIN_TUNNEL_MTU)
                .ok_or_else(|| {
                    self.error(
                        mtu.span(),
                        "tunnel.mtu",
                        format!("MTU {v} is out of range {MIN_TUNNEL_MTU}..=65535"),
                    )
                })?;
        }
        Ok(tunnel)
    }

    /// `tunnel.source`: `ADDRESS` or `ADDRESS/LENGTH` (the address's bits past the length
    /// must be zero, as in a route).
    fn tunnel_source(&self, raw: &Spanned<String>) -> Checked<(Ipv4Addr, u8)> {
        let text = raw.get_ref();
        let bad = |why: &str| {
            self.error(
                raw.span(),
                "tunnel.source",
                format!(
                    "invalid source {text:?}: {why} (write e.g. \"10.0.3.1\" or \"172.16.0.0/16\")"
                ),
            )
        };
        let (addr, len) = match text.split_once('/') {
            None => (text.as_str(), 32),
            Some((addr, len)) => {
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| (8..=32).contains(l))
                    .ok_or_else(|| bad("the prefix length must be 8 to 32"))?;
                (addr, len)
            }
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let host_bits = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        if u32::from(addr) & host_bits != 0 {
            return Err(bad("the address has bits set past the prefix length"));
        }
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback()
        {
            return Err(bad("not an address a host can send from"));
        }
        Ok((addr, len))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{error_of, ONE_VIP, ORIGIN};
    use crate::config::{parse, TunnelConfig};

    fn tunnel_of(section: &str) -> TunnelConfig {
        let text = format!("{ONE_VIP}\n[tunnel]\n{section}");
        parse(&text, ORIGIN).unwrap().tunnel
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(
            parse(ONE_VIP, ORIGIN).unwrap().tunnel,
            TunnelConfig::default()
        );
        let t = tunnel_of("source = \"172.16.0.0/16\"\ngue_port = 9000\nmtu = 1400\n");
        assert_eq!(t.source, Some(("172.16.0.0".parse().unwrap(), 16)));
        assert_eq!((t.gue_port, t.mtu), (9000, 1400));
        let single = tunnel_of("source = \"10.0.3.1\"\n").source;
        assert_eq!(single, Some(("10.0.3.1".parse().unwrap(), 32)));
    }

    #[test]
    fn bad_values_are_named() {
        for (section, problem) in [
            (
                "source = \"10.0.3.1/16\"",
                "bits set past the prefix length",
            ),
            (
                "source = \"10.0.3.0/33\"",
                "the prefix length must be 8 to 32",
            ),
            ("source = \"ten\"", "not an IPv4 address"),
            (
                "source = \"224.0.0.1\"",
                "not an address a host can send from",
            ),
            ("mtu = 500", "MTU 500 is out of range 576..=65535"),
            ("gue_port = 0", "port 0 is out of range"),
        ] {
            let text = format!("{ONE_VIP}\n[tunnel]\n{section}\n");
            let key = section.split(' ').next().unwrap();
            let column = section.find('=').unwrap() + 3;
            let message = error_of(&text);
            let prefix = format!("{ORIGIN}:14:{column}: tunnel.{key}: ");
            assert!(
                message.starts_with(&prefix),
                "{message:?} does not start with {prefix:?}"
            );
            assert!(
                message.contains(problem),
                "{message:?} does not say {problem:?}"
            );
        }
    }
}
