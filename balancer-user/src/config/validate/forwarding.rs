//! A `[[vip]]`'s `forwarding`: full NAT, or direct server return, which sends packets to
//! the backends unchanged but for the MAC, so an HTTP VIP (served by the agent's proxy)
//! cannot have it and its pool's backends must listen on the VIP's own port.

use super::super::raw::RawVip;
use super::{Checked, Validator};
use crate::config::{Forwarding, PoolConfig, VipMode};

impl Validator<'_> {
    /// The `forwarding` of `vip` (key path `field`, port `port`, `mode`), whose pool is
    /// `pool`.
    pub(super) fn forwarding(
        &self,
        vip: &RawVip,
        field: &str,
        (port, mode): (u16, VipMode),
        pool: Option<&PoolConfig>,
    ) -> Checked<Forwarding> {
        let Some(raw) = &vip.forwarding else {
            return Ok(Forwarding::default());
        };
        let forwarding = self.word(raw, format_args!("{field}.forwarding"))?;
        if forwarding == Forwarding::Dsr {
            let problem = if mode == VipMode::Http {
                Some(
                    "an HTTP-mode VIP is served by the agent's proxy: it cannot be \"dsr\""
                        .to_owned(),
                )
            } else {
                pool.and_then(|p| p.backends.iter().find(|b| b.port != port).map(|b| (p, b)))
                    .map(|(p, b)| {
                        format!(
                            "\"dsr\" sends packets to the backends with the VIP's address and port: \
                             backend {}:{} of pool {:?} must listen on port {port}",
                            b.address, b.port, p.name
                        )
                    })
            };
            if let Some(problem) = problem {
                return Err(self.error(raw.span(), format_args!("{field}.forwarding"), problem));
            }
        }
        Ok(forwarding)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_error_at, with, HTTP_VIP, ONE_VIP, ORIGIN};
    use crate::config::{parse, Forwarding};

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
            ("dsr", "tunnel"),
            (13, "\"tunnel\""),
            field,
            "invalid forwarding \"tunnel\": expected \"nat\" or \"dsr\" (\"tunnel\" is not built yet)",
        );
        assert_error_at(
            HTTP_VIP,
            ("mode = \"http\"", "mode = \"http\"\nforwarding = \"dsr\""),
            (13, "\"dsr\""),
            "vip[0] (\"www\").forwarding",
            "an HTTP-mode VIP is served by the agent's proxy",
        );
    }
}
