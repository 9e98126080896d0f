//! A `[[vip]]`'s `forwarding` and `encapsulation`: full NAT; direct server return, which
//! sends packets to the backends unchanged but for the MAC; or a tunnel, which sends them
//! unchanged inside an outer header. Untranslated, the packets reach a backend on the
//! VIP's own port, and an HTTP VIP (served by the agent's proxy) cannot have them.

use super::super::raw::RawVip;
use super::{Checked, Validator};
use crate::config::{Encapsulation, Forwarding, PoolConfig, TunnelConfig, VipMode};

impl Validator<'_> {
    /// The `forwarding` and `encapsulation` of `vip` (key path `field`, port `port`,
    /// `mode`), whose pool is `pool`, under the configuration's `[tunnel]`.
    pub(super) fn forwarding(
        &self,
        vip: &RawVip,
        field: &str,
        (port, mode): (u16, VipMode),
        pool: Option<&PoolConfig>,
        tunnel: &TunnelConfig,
    ) -> Checked<(Forwarding, Encapsulation)> {
        let forwarding = match &vip.forwarding {
            None => Forwarding::default(),
            Some(raw) => self.word(raw, format_args!("{field}.forwarding"))?,
        };
        let encapsulation = match &vip.encapsulation {
            None => Encapsulation::default(),
            Some(raw) if forwarding != Forwarding::Tunnel => {
                return Err(self.error(
                    raw.span(),
                    format_args!("{field}.encapsulation"),
                    "only a VIP with forwarding = \"tunnel\" is encapsulated",
                ));
            }
            Some(raw) => self.word(raw, format_args!("{field}.encapsulation"))?,
        };
        let (Some(raw), Forwarding::Dsr | Forwarding::Tunnel) = (&vip.forwarding, forwarding)
        else {
            return Ok((forwarding, encapsulation));
        };
        let problem = if mode == VipMode::Http {
            Some(format!(
                "an HTTP-mode VIP is served by the agent's proxy: it cannot be \"{forwarding}\""
            ))
        } else if forwarding == Forwarding::Tunnel && tunnel.source.is_none() {
            Some(
                "\"tunnel\" needs tunnel.source, the outer source address of the encapsulated \
                 packets (an address of the balancer, or a prefix to spread flows over)"
                    .to_owned(),
            )
        } else {
            pool.and_then(|p| p.backends.iter().find(|b| b.port != port).map(|b| (p, b)))
                .map(|(p, b)| {
                    format!(
                        "\"{forwarding}\" sends packets to the backends with the VIP's address and \
                         port: backend {} of pool {:?} must listen on port {port}",
                        b.socket_addr(),
                        p.name
                    )
                })
        };
        match problem {
            Some(problem) => {
                Err(self.error(raw.span(), format_args!("{field}.forwarding"), problem))
            }
            None => Ok((forwarding, encapsulation)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_error_at, with, HTTP_VIP, ONE_VIP, ORIGIN};
    use crate::config::{parse, Encapsulation, Forwarding};

    /// [`ONE_VIP`] with a backend on `port` and the VIP's `forwarding` line (line 13).
    fn one_vip(port: u16, forwarding: &str) -> String {
        let pool = with(
            ONE_VIP,
            "name = \"web\"\n[[vip]]",
            &format!(
                "name = \"web\"\nbackends = [{{ address = \"10.0.2.11\", port = {port} }}]\n[[vip]]"
            ),
        );
        format!("{pool}forwarding = \"{forwarding}\"\n")
    }

    #[test]
    fn nat_by_default_and_dsr_when_asked() {
        let config = parse(ONE_VIP, ORIGIN).unwrap();
        assert_eq!(config.vips[0].forwarding, Forwarding::Nat);
        let config = parse(&one_vip(80, "dsr"), ORIGIN).unwrap();
        assert_eq!(config.vips[0].forwarding, Forwarding::Dsr);
        assert_eq!(
            parse(&one_vip(8080, "nat"), ORIGIN).unwrap().vips[0].forwarding,
            Forwarding::Nat,
            "NAT translates ports"
        );
    }

    #[test]
    fn what_dsr_cannot_do_is_refused_at_its_value() {
        let base = one_vip(8080, "dsr");
        let field = "vip[0] (\"web\").forwarding";
        assert_error_at(
            &base,
            ("dsr", "dsr"),
            (13, "\"dsr\""),
            field,
            "backend 10.0.2.11:8080 of pool \"web\" must listen on port 80",
        );
        assert_error_at(
            &one_vip(80, "dsr"),
            ("dsr", "tunel"),
            (13, "\"tunel\""),
            field,
            "invalid forwarding \"tunel\": expected \"nat\", \"dsr\" or \"tunnel\"",
        );
        assert_error_at(
            HTTP_VIP,
            ("mode = \"http\"", "mode = \"http\"\nforwarding = \"dsr\""),
            (13, "\"dsr\""),
            "vip[0] (\"www\").forwarding",
            "an HTTP-mode VIP is served by the agent's proxy",
        );
    }

    #[test]
    fn tunnel_needs_a_source_and_takes_an_encapsulation() {
        let field = "vip[0] (\"web\").forwarding";
        assert_error_at(
            &one_vip(80, "tunnel"),
            ("tunnel", "tunnel"),
            (13, "\"tunnel\""),
            field,
            "\"tunnel\" needs tunnel.source",
        );
        let with_source = format!("{}[tunnel]\nsource = \"10.0.3.1\"\n", one_vip(80, "tunnel"));
        let config = parse(&with_source, ORIGIN).unwrap();
        assert_eq!(config.vips[0].forwarding, Forwarding::Tunnel);
        assert_eq!(config.vips[0].encapsulation, Encapsulation::Ipip);
        let gue = with(
            &with_source,
            "\"tunnel\"\n",
            "\"tunnel\"\nencapsulation = \"gue\"\n",
        );
        assert_eq!(
            parse(&gue, ORIGIN).unwrap().vips[0].encapsulation,
            Encapsulation::Gue
        );
        assert_error_at(
            &with_source,
            ("\"tunnel\"\n", "\"tunnel\"\nencapsulation = \"gre\"\n"),
            (14, "\"gre\""),
            "vip[0] (\"web\").encapsulation",
            "invalid encapsulation \"gre\": expected \"ipip\" or \"gue\"",
        );
        assert_error_at(
            &one_vip(80, "nat"),
            ("\"nat\"\n", "\"nat\"\nencapsulation = \"gue\"\n"),
            (14, "\"gue\""),
            "vip[0] (\"web\").encapsulation",
            "only a VIP with forwarding = \"tunnel\" is encapsulated",
        );
        assert_error_at(
            &with_source,
            ("port = 80 }", "port = 8080 }"),
            (13, "\"tunnel\""),
            field,
            "backend 10.0.2.11:8080 of pool \"web\" must listen on port 80",
        );
    }
}
