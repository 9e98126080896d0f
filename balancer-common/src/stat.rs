//! Indices of `GLOBAL_STATS` (a per-CPU array of u64): verdicts, then drop and pass
//! reasons and other events, with their names.

pub const XDP_PASS: u32 = 0;
pub const XDP_TX: u32 = 1;
pub const XDP_REDIRECT: u32 = 2;
pub const XDP_DROP: u32 = 3;
pub const XDP_ABORTED: u32 = 4;
/// Dropped: truncated or malformed Ethernet/IPv4/IPv6/TCP/UDP header.
pub const DROP_MALFORMED: u32 = 5;
/// Dropped: a new flow for a VIP with no usable backend.
pub const DROP_NO_BACKEND: u32 = 6;
/// Dropped: every probed SNAT port was taken.
pub const DROP_SNAT_EXHAUSTED: u32 = 7;
/// Dropped: the FIB has no route (or forwarding is off, or the egress is unusable).
pub const DROP_FIB: u32 = 8;
/// Dropped: connection table insert failed.
pub const DROP_CONN_TABLE: u32 = 9;
/// Passed rewritten to the stack: no neighbour entry yet, the stack resolves it.
pub const PASS_NO_NEIGH: u32 = 10;
/// Passed: an IPv4 fragment, or an IPv6 packet with a fragment header (ports unknown; not
/// balanced).
pub const PASS_FRAGMENT: u32 = 11;
/// A reply translated back to a client.
pub const NAT_REPLY: u32 = 12;
/// A flow table entry found expired and replaced.
pub const CONN_EXPIRED: u32 = 13;
/// A flow moved off a backend that went down (`on_backend_down = "shutdown"`).
pub const CONN_RESCHEDULED: u32 = 14;
/// Passed: a new flow for a VIP whose backends are all down, with `on_all_down = "pass"`.
pub const PASS_ALL_DOWN: u32 = 15;
/// A new flow took a SNAT port still resting after its previous flow closed (within
/// `Settings::snat_time_wait_ns`), because no probed port was free.
pub const SNAT_PORT_REUSED_EARLY: u32 = 16;
/// Dropped: a FIN or RST from a backend to a client whose tuple has another flow now
/// (a late segment of an ended flow, which must not close the client's new one).
pub const DROP_STALE_REPLY: u32 = 17;
/// Dropped: a TCP RST from a client for a VIP with no live flow on its tuple.
pub const DROP_STRAY_RST: u32 = 18;
/// An established flow's reply entry had been evicted and its SNAT port taken by a new
/// flow meanwhile: the flow moved to another port (a TCP connection breaks; without
/// the move two clients would share a tuple towards the backend).
pub const SNAT_PORT_LOST: u32 = 19;
/// An ICMP error about a packet a backend got from the balancer (port unreachable,
/// fragmentation needed, ...) translated for the flow's client and passed to the stack
/// to forward.
pub const ICMP_TO_CLIENT: u32 = 20;
/// An ICMP error about a reply a client got from a VIP translated for the flow's
/// backend and passed to the stack to forward.
pub const ICMP_TO_BACKEND: u32 = 21;
/// Passed untranslated: a "fragmentation needed" about a reply to a client that gives
/// a next-hop MTU below `PMTU_FLOOR`. Translated, it would lower the backend's path MTU
/// towards the SNAT address, which every client of that backend shares.
pub const PASS_ICMP_LOW_MTU: u32 = 22;
/// A new flow took the SNAT port of a half-open TCP flow (its client never completed
/// the handshake: a spoofed SYN, most likely) because no probed port was free.
pub const SNAT_PORT_HALF_OPEN_TAKEN: u32 = 23;
/// A half-open flow whose port a new flow had taken took it back: its client
/// acknowledged the backend's SYN-ACK (late, in a flood), the other's had not.
pub const SNAT_PORT_TAKEN_BACK: u32 = 24;
/// Passed untouched: a VLAN-tagged (802.1Q or 802.1ad) frame. The balancer routes
/// untagged frames only: forwarded, a tag would carry a client into another VLAN.
pub const PASS_VLAN: u32 = 25;
/// Passed untouched: TTL 0 or 1, which a router must not forward; the stack answers
/// with an ICMP time exceeded (traceroute through the balancer works).
pub const PASS_TTL_EXPIRED: u32 = 26;
/// Dropped: a packet that would start a flow has a wrong IPv4 header checksum or
/// (checked for segments of up to 60 bytes: SYNs) TCP checksum.
pub const DROP_BAD_CHECKSUM: u32 = 27;
/// Dropped: a packet that would start a flow comes from a source no host can have
/// (0/8, 127/8, multicast, 240/4, broadcast): its replies could go nowhere.
pub const DROP_MARTIAN: u32 = 28;
/// Dropped: a packet of a direct-server-return flow whose backend is not on a link of
/// the balancer (the FIB names a gateway): only its MAC would change, so it would loop.
pub const DROP_DSR_NOT_ON_LINK: u32 = 29;
/// Answered with an ICMP "fragmentation needed" (sent back out of the ingress
/// interface): a packet of a tunnel flow that would exceed `Settings::tunnel_mtu` once
/// encapsulated. The client's path MTU discovery then sends smaller packets.
pub const TUNNEL_TOO_BIG: u32 = 30;
/// Dropped: a packet of a tunnel flow that fits `Settings::tunnel_mtu` encapsulated
/// but not the MTU of the interface towards its backend (`tunnel.mtu` is set above it).
pub const DROP_TUNNEL_MTU: u32 = 31;
/// Passed untouched: an IPv6 packet with more extension headers (hop-by-hop, routing,
/// destination options) before its TCP/UDP header than the data plane skips
/// (`MAX_IPV6_EXT_HEADERS`).
pub const PASS_IPV6_EXT_HEADERS: u32 = 32;
pub const COUNT: u32 = 33;

/// Human names, indexed like the constants.
pub const NAMES: [&str; COUNT as usize] = [
    "xdp_pass",
    "xdp_tx",
    "xdp_redirect",
    "xdp_drop",
    "xdp_aborted",
    "drop_malformed",
    "drop_no_backend",
    "drop_snat_exhausted",
    "drop_fib",
    "drop_conn_table",
    "pass_no_neigh",
    "pass_fragment",
    "nat_reply",
    "conn_expired",
    "conn_rescheduled",
    "pass_all_down",
    "snat_port_reused_early",
    "drop_stale_reply",
    "drop_stray_rst",
    "snat_port_lost",
    "icmp_to_client",
    "icmp_to_backend",
    "pass_icmp_low_mtu",
    "snat_port_half_open_taken",
    "snat_port_taken_back",
    "pass_vlan",
    "pass_ttl_expired",
    "drop_bad_checksum",
    "drop_martian",
    "drop_dsr_not_on_link",
    "tunnel_too_big",
    "drop_tunnel_mtu",
    "pass_ipv6_ext_headers",
];
