//! The words of the configuration file that name a choice (`protocol = "tcp"`,
//! `scheduler = "maglev"`, ...): one enum each, spelled the same in the file, on the command
//! line and in the control protocol's JSON.

use crate::spelling::config_words;

/// Transport protocol of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How a VIP is served.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum VipMode {
    /// The XDP program balances its flows (full NAT).
    #[default]
    L4,
    /// The agent's HTTP reverse proxy serves it, routing each request by the VIP's rules;
    /// the XDP program passes its packets to the kernel's stack.
    Http,
}

/// How a VIP spreads new flows over its pool's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    Maglev,
    RoundRobin,
}

/// How the XDP program is attached to the interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native (driver) mode only.
    Driver,
    /// Generic (SKB) mode only.
    Skb,
    /// Try driver mode, fall back to SKB mode.
    Auto,
}

/// What a pool does with established flows of a backend that health checks took down.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DownPolicy {
    /// Flows pinned to the backend are rescheduled to a backend that is up
    /// (HAProxy's `on-marked-down shutdown-sessions`, IPVS's `expire_nodest_conn`).
    #[default]
    Shutdown,
    /// Flows stay on the backend until they end.
    Keep,
}

/// What new flows of a VIP get while none of its backends is up.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AllDownPolicy {
    /// They are dropped.
    #[default]
    Drop,
    /// They are passed to the host's stack (`XDP_PASS`), e.g. for a local sorry server.
    Pass,
}

/// How an L4 VIP's packets reach a backend.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    /// Full NAT: from a SNAT address and port to the backend's, replies translated back.
    #[default]
    Nat,
    /// Direct server return (IPVS's DR): only the destination MAC changes; the backend, on
    /// a link of the balancer, holds the VIP and answers the client itself.
    Dsr,
    /// Tunnel (IPVS's TUN, Katran's way): the packet goes unchanged inside an outer IPv4
    /// header (IPIP or GUE, the VIP's `encapsulation`) to the backend, which may be any
    /// number of hops away; it decapsulates (`balancer decap`), holds the VIP and answers
    /// the client itself.
    Tunnel,
}

/// How a tunnel VIP's packets are encapsulated.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Encapsulation {
    /// IPv4 in IPv4 (RFC 2003): a 20-byte outer header.
    #[default]
    Ipip,
    /// The IPv4 packet in UDP to `tunnel.gue_port` (GUE variant 1, RFC 8086): 28 bytes;
    /// the UDP source port varies with the flow, so any NIC spreads flows over its queues.
    Gue,
}

config_words!(Protocol, "protocol", "\"tcp\" or \"udp\"", { Tcp => "tcp", Udp => "udp" });
config_words!(VipMode, "VIP mode", "\"l4\" or \"http\"", { L4 => "l4", Http => "http" });
config_words!(Scheduler, "scheduler", "\"maglev\" or \"round-robin\" (or \"rr\")", { Maglev => "maglev", RoundRobin => "round-robin" | "rr" });
config_words!(XdpMode, "XDP mode", "\"driver\", \"skb\" or \"auto\"", { Driver => "driver", Skb => "skb", Auto => "auto" });
config_words!(DownPolicy, "on_backend_down policy", "\"shutdown\" or \"keep\"", { Shutdown => "shutdown", Keep => "keep" });
config_words!(AllDownPolicy, "on_all_down policy", "\"drop\" or \"pass\"", { Drop => "drop", Pass => "pass" });
config_words!(Forwarding, "forwarding", "\"nat\", \"dsr\" or \"tunnel\"", { Nat => "nat", Dsr => "dsr", Tunnel => "tunnel" });
config_words!(Encapsulation, "encapsulation", "\"ipip\" or \"gue\"", { Ipip => "ipip", Gue => "gue" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_display_and_parse() {
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(p.to_string().parse::<Protocol>(), Ok(p));
        }
        for s in [Scheduler::Maglev, Scheduler::RoundRobin] {
            assert_eq!(s.to_string().parse::<Scheduler>(), Ok(s));
        }
        for m in [XdpMode::Driver, XdpMode::Skb, XdpMode::Auto] {
            assert_eq!(m.to_string().parse::<XdpMode>(), Ok(m));
        }
        for m in [VipMode::L4, VipMode::Http] {
            assert_eq!(m.to_string().parse::<VipMode>(), Ok(m));
        }
        assert_eq!(VipMode::default(), VipMode::L4);
        assert_eq!(serde_json::to_string(&VipMode::Http).unwrap(), "\"http\"");
        assert_eq!(Scheduler::RoundRobin.to_string(), "round-robin");
        assert_eq!("RR".parse::<Scheduler>(), Ok(Scheduler::RoundRobin));
        assert_eq!("Udp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("SKB".parse::<XdpMode>(), Ok(XdpMode::Skb));
        assert_eq!(
            "sctp".parse::<Protocol>().unwrap_err().to_string(),
            "invalid protocol \"sctp\": expected \"tcp\" or \"udp\""
        );
    }

    #[test]
    fn policy_words() {
        for p in [DownPolicy::Shutdown, DownPolicy::Keep] {
            assert_eq!(p.to_string().parse::<DownPolicy>(), Ok(p));
        }
        for p in [AllDownPolicy::Drop, AllDownPolicy::Pass] {
            assert_eq!(p.to_string().parse::<AllDownPolicy>(), Ok(p));
        }
        assert_eq!(DownPolicy::default(), DownPolicy::Shutdown);
        assert_eq!(AllDownPolicy::default(), AllDownPolicy::Drop);
        assert_eq!(
            serde_json::to_string(&AllDownPolicy::Pass).unwrap(),
            "\"pass\""
        );
    }
}
