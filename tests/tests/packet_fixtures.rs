//! Packet fixtures through the kernel's BPF_PROG_TEST_RUN: a frame in, the expected verdict
//! and frame out. Runs the real XDP program in a fresh namespace whose routes and permanent
//! neighbour entries make the FIB lookups (and so the output MACs) deterministic.
use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{programs::Xdp, Ebpf, TestRun, TestRunOptions};
use balancer::{
    balancer::{settings, Balancer, Counters, SnatSource},
    config::{NatConfig, Protocol, Scheduler, Timeouts, VipConfig},
    health::{CheckOutcome, Health, HealthEvent},
    maps::{AyaMaps, Maps},
};
use balancer_common::{
    map_names, stat, Conn, FlowCacheEntry, FlowKey, NatEntry, NextHop, CLIENT_HOP_SLOTS,
    FLOW_CACHE_SLOTS, PMTU_FLOOR,
};
use balancer_tests::{
    frame::{self, Icmp, Spec, L4},
    netns::Netns,
    require_root,
};
use balancer_wire::icmpv4::{unreachable, Message};
use balancer_wire::tcp::Flags;
use balancer_wire::{EtherType, MacAddr};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 1);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const WEB_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 11);
const DNS_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 12);
/// MACs of the balancer's interfaces and of the neighbours (permanent entries).
const LB_CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x01]);
const LB_BACKEND_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x02, 0x01]);
const CLIENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x02]);
const WEB_BACKEND_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x02, 0x11]);
const DNS_BACKEND_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x02, 0x12]);

struct Fixture {
    ebpf: Ebpf,
    lb: Balancer<AyaMaps>,
    client_if: u32,
    backend_if: u32,
    // Dropped last: the namespace outlives the program's use of it.
    _ns: Netns,
}

fn mac(m: &MacAddr) -> String {
    m.to_string()
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_timeouts(Timeouts::default())
    }

    fn with_timeouts(timeouts: Timeouts) -> Fixture {
        Fixture::with(timeouts, NatConfig::default())
    }

    fn with(timeouts: Timeouts, nat: NatConfig) -> Fixture {
        require_root();
        let ns = Netns::unique("fx").expect("create the fixture namespace");
        let cmds: Vec<Vec<String>> = [
            "ip link set lo up".to_string(),
            "ip link add fxc type veth peer name fxc-peer".into(),
            "ip link add fxb type veth peer name fxb-peer".into(),
            format!("ip link set fxc address {}", mac(&LB_CLIENT_MAC)),
            format!("ip link set fxb address {}", mac(&LB_BACKEND_MAC)),
            "ip addr add 10.0.1.1/24 dev fxc".into(),
            "ip addr add 10.0.2.1/24 dev fxb".into(),
            "ip link set fxc up".into(),
            "ip link set fxc-peer up".into(),
            "ip link set fxb up".into(),
            "ip link set fxb-peer up".into(),
            format!(
                "ip neigh replace {CLIENT} lladdr {} dev fxc nud permanent",
                mac(&CLIENT_MAC)
            ),
            format!(
                "ip neigh replace {WEB_BACKEND} lladdr {} dev fxb nud permanent",
                mac(&WEB_BACKEND_MAC)
            ),
            format!(
                "ip neigh replace {DNS_BACKEND} lladdr {} dev fxb nud permanent",
                mac(&DNS_BACKEND_MAC)
            ),
            "sysctl -qw net.ipv4.ip_forward=1".into(),
            "sysctl -qw net.ipv4.conf.all.forwarding=1".into(),
        ]
        .iter()
        .map(|c| c.split_whitespace().map(String::from).collect())
        .collect();
        for cmd in &cmds {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            ns.run(&args).unwrap_or_else(|e| {
                panic!("fixture namespace set-up `{}` failed: {e:#}", cmd.join(" "))
            });
        }
        // BPF_PROG_TEST_RUN resolves the ingress ifindex and the FIB in the caller's namespace.
        ns.enter_current_thread()
            .expect("enter the fixture namespace");
        let ifindex = |name: &str| {
            let c = std::ffi::CString::new(name).unwrap();
            // SAFETY: plain libc call with a valid C string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert!(i != 0, "interface {name} missing in the fixture namespace");
            i
        };
        let (client_if, backend_if) = (ifindex("fxc"), ifindex("fxb"));

        let mut ebpf = balancer::agent::load_program().expect("load the XDP program");
        let maps = AyaMaps::new(&mut ebpf).expect("take the program's maps");
        let settings = settings(&timeouts, &nat);
        let mut lb = Balancer::new(maps, &settings, SnatSource::Fixed(SNAT)).unwrap();
        lb.add_vip(vip("web", 80, Protocol::Tcp)).unwrap();
        lb.add_backend("web", SocketAddrV4::new(WEB_BACKEND, 80), 1)
            .unwrap();
        lb.add_vip(vip("dns", 5300, Protocol::Udp)).unwrap();
        lb.add_backend("dns", SocketAddrV4::new(DNS_BACKEND, 5300), 1)
            .unwrap();
        lb.add_vip(vip("empty", 81, Protocol::Tcp)).unwrap();
        Fixture {
            ebpf,
            lb,
            client_if,
            backend_if,
            _ns: ns,
        }
    }

    /// Runs the program once on `frame` as if received on `ingress`.
    fn run(&mut self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ingress, 0, 0]
            .iter()
            .flat_map(|v: &u32| v.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 256];
        let program: &mut Xdp = self
            .ebpf
            .program_mut("balancer")
            .unwrap()
            .try_into()
            .unwrap();
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn send_from_client(&mut self, spec: &Spec) -> (u32, Vec<u8>) {
        let frame = frame::build(spec);
        let ingress = self.client_if;
        self.run(&frame, ingress)
    }

    fn global(&self, index: u32) -> u64 {
        self.lb.maps().global_stats().unwrap()[index as usize]
    }

    /// The counters of VIP "web".
    fn web_counters(&self) -> Counters {
        self.lb
            .status()
            .unwrap()
            .vips
            .into_iter()
            .find(|v| v.config.name == "web")
            .expect("VIP web in the status")
            .counters
    }

    /// Every cached reply next hop, over all slots and CPUs.
    fn client_hops(&self) -> Vec<NextHop> {
        let map = self
            .ebpf
            .map(map_names::CLIENT_HOPS)
            .expect("the object has CLIENT_HOPS");
        let hops = aya::maps::PerCpuArray::<_, NextHop>::try_from(map).expect("a per-CPU array");
        (0..CLIENT_HOP_SLOTS)
            .flat_map(|i| {
                hops.get(&i, 0)
                    .expect("a slot")
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .filter(|h| h.ifindex != 0)
            .collect()
    }
}

impl Fixture {
    /// Every filled slot of the per-CPU flow cache, over all CPUs.
    fn flow_cache(&self) -> Vec<FlowCacheEntry> {
        let map = self
            .ebpf
            .map(map_names::FLOW_CACHE)
            .expect("the object has FLOW_CACHE");
        let cache =
            aya::maps::PerCpuArray::<_, FlowCacheEntry>::try_from(map).expect("a per-CPU array");
        (0..FLOW_CACHE_SLOTS)
            .flat_map(|i| {
                cache
                    .get(&i, 0)
                    .expect("a slot")
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .filter(|e| e.key != FlowKey::default())
            .collect()
    }

    /// ICMP errors translated so far: (to clients, to backends).
    fn icmp_translated(&self) -> (u64, u64) {
        (
            self.global(stat::ICMP_TO_CLIENT),
            self.global(stat::ICMP_TO_BACKEND),
        )
    }

    /// The flow's `CONNS` entry.
    fn conn(&self, key: &FlowKey) -> Conn {
        let map = self
            .ebpf
            .map(map_names::CONNS)
            .expect("the object has CONNS");
        let conns = aya::maps::HashMap::<_, FlowKey, Conn>::try_from(map).expect("an LRU hash map");
        conns.get(key, 0).expect("the flow's entry")
    }

    /// Whether `CONNS` has an entry for the flow.
    fn has_conn(&self, key: &FlowKey) -> bool {
        let map = self
            .ebpf
            .map(map_names::CONNS)
            .expect("the object has CONNS");
        let conns = aya::maps::HashMap::<_, FlowKey, Conn>::try_from(map).expect("an LRU hash map");
        conns.get(key, 0).is_ok()
    }

    /// The web pool's only backend fails its checks (`on_backend_down = shutdown`, the
    /// default, moves its flows).
    fn web_backend_fails(&mut self) {
        let down = HealthEvent {
            pool: "web".into(),
            backend: SocketAddrV4::new(WEB_BACKEND, 80),
            outcome: CheckOutcome {
                ok: false,
                latency: std::time::Duration::from_millis(1),
                reason: "connect refused".into(),
            },
            transition: Some((Health::Up, Health::Down)),
            health: Health::Down,
            check: 3,
            // The fixture starts no check tasks: its backends' task number is 0.
            task: 0,
        };
        self.lb
            .record_health(&down)
            .expect("record the health change");
    }

    /// Rewrites a flow's entry in `CONNS` or `NAT` (`V`, the map's value type) with `edit`.
    fn edit<V: aya::Pod>(&mut self, map: &str, key: &FlowKey, edit: impl FnOnce(&mut V)) {
        let map = self
            .ebpf
            .map_mut(map)
            .unwrap_or_else(|| panic!("the object has {map}"));
        let mut table = aya::maps::HashMap::<_, FlowKey, V>::try_from(map).expect("a hash map");
        let mut value = table.get(key, 0).expect("the flow's entry");
        edit(&mut value);
        table.insert(key, value, 0).expect("writing the entry back");
    }

    /// Removes a flow's entry from `CONNS` (nothing but the cache then knows the flow) or
    /// from `NAT` (as an LRU eviction would); `V` is the map's value type.
    fn forget<V: aya::Pod>(&mut self, map: &str, key: &FlowKey) {
        let map = self
            .ebpf
            .map_mut(map)
            .unwrap_or_else(|| panic!("the object has {map}"));
        let mut table = aya::maps::HashMap::<_, FlowKey, V>::try_from(map).expect("a hash map");
        table.remove(key).expect("the flow's entry");
    }
}

/// The `CONNS` key of a client packet built from `spec` (TCP).
fn client_key(spec: &Spec) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(spec.src.octets()),
        dst_addr: u32::from_ne_bytes(spec.dst.octets()),
        src_port: spec.sport.to_be(),
        dst_port: spec.dport.to_be(),
        proto: 6,
        ..FlowKey::default()
    }
}

/// Keeps the calling thread on one CPU, so that a per-CPU map's slot of this CPU is the
/// one every test run reads and writes.
fn pin_to_one_cpu() {
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET and sched_setaffinity only
    // touch the set given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// VIP `name` on the fixture's VIP address, Maglev over pool `name`.
fn vip(name: &str, port: u16, protocol: Protocol) -> VipConfig {
    VipConfig {
        name: name.into(),
        address: VIP,
        port,
        protocol,
        scheduler: Scheduler::Maglev,
        ring_size: 65537,
        pool: name.into(),
        on_all_down: balancer::config::AllDownPolicy::Drop,
    }
}

/// The client's ACK after the handshake of [`syn`]'s flow.
fn ack() -> Spec {
    segment(Flags::ACK)
}

/// The client's FIN on [`syn`]'s flow, after the handshake.
fn fin() -> Spec {
    segment(Flags::FIN | Flags::ACK)
}

/// A datagram from [`syn`]'s client address and port to the UDP VIP (no payload).
fn udp() -> Spec {
    Spec {
        dport: 5300,
        l4: L4::Udp { checksum: true },
        ..syn()
    }
}

/// The client's segment with `flags` on [`syn`]'s tuple, after the handshake.
fn segment(flags: Flags) -> Spec {
    Spec {
        l4: L4::Tcp {
            flags,
            seq: 1001,
            ack: 5001,
        },
        ..syn()
    }
}

fn syn() -> Spec {
    Spec {
        src_mac: CLIENT_MAC,
        dst_mac: LB_CLIENT_MAC,
        src: CLIENT,
        dst: VIP,
        sport: 40000,
        dport: 80,
        ..Spec::default()
    }
}

fn parsed(out: &[u8]) -> frame::Parsed {
    frame::parse(out).unwrap_or_else(|e| panic!("output frame does not parse: {e}"))
}

fn assert_nat_forward(out: &frame::Parsed, input: &Spec, backend: Ipv4Addr, backend_mac: MacAddr) {
    assert_eq!(
        out.dst_mac, backend_mac,
        "destination MAC must be the backend's (from the FIB)"
    );
    assert_eq!(
        out.src_mac, LB_BACKEND_MAC,
        "source MAC must be the egress interface's"
    );
    assert_eq!(out.src, SNAT, "source address must be the SNAT address");
    assert_eq!(out.dst, backend, "destination must be the backend");
    assert!(
        (20000..=32767).contains(&out.sport),
        "SNAT port {} outside the configured range",
        out.sport
    );
    assert_eq!(out.dport, input.dport, "backend port");
    assert_eq!(out.ttl, input.ttl);
    assert!(
        out.ip_checksum_ok,
        "IPv4 header checksum is wrong after NAT"
    );
    assert_ne!(
        out.l4_checksum_ok,
        Some(false),
        "L4 checksum is wrong after NAT"
    );
    assert_eq!(out.payload, input.payload, "payload must be untouched");
}

#[test]
fn syn_to_vip_is_translated_to_the_backend() {
    let mut fx = Fixture::new();
    let spec = syn();
    let (verdict, out) = fx.send_from_client(&spec);
    assert_eq!(verdict, XDP_REDIRECT, "SYN to the VIP: verdict");
    let out = parsed(&out);
    assert_nat_forward(&out, &spec, WEB_BACKEND, WEB_BACKEND_MAC);
    assert_eq!(out.l4_checksum_ok, Some(true));
    assert_eq!(out.tcp_flags, Flags::SYN);
    let counters = fx.web_counters();
    assert_eq!((counters.packets, counters.new_flows), (1, 1));
}

#[test]
fn reply_is_translated_back_to_the_client() {
    let mut fx = Fixture::new();
    let (_, out) = fx.send_from_client(&syn());
    let fwd = parsed(&out);
    let reply = Spec {
        payload: b"welcome".to_vec(),
        ..web_reply(fwd.sport, Flags::SYN | Flags::ACK)
    };
    let ingress = fx.backend_if;
    let (verdict, out) = fx.run(&frame::build(&reply), ingress);
    assert_eq!(verdict, XDP_REDIRECT, "reply: verdict");
    let out = parsed(&out);
    assert_eq!(
        (out.src, out.sport),
        (VIP, 80),
        "reply must come from the VIP"
    );
    assert_eq!(
        (out.dst, out.dport),
        (CLIENT, 40000),
        "reply must go to the client"
    );
    assert_eq!(out.dst_mac, CLIENT_MAC);
    assert_eq!(out.src_mac, LB_CLIENT_MAC);
    assert!(
        out.ip_checksum_ok && out.l4_checksum_ok == Some(true),
        "checksums after reverse NAT"
    );
    assert_eq!(out.payload, b"welcome");
    assert_eq!(fx.global(stat::NAT_REPLY), 1);

    // The client's next hop is now cached, and the next reply leaves the same way.
    let hops = fx.client_hops();
    assert_eq!(hops.len(), 1, "one cached reply next hop: {hops:?}");
    assert_eq!(hops[0].addr, u32::from_ne_bytes(CLIENT.octets()));
    assert_eq!(
        (hops[0].dmac, hops[0].smac),
        (CLIENT_MAC.0, LB_CLIENT_MAC.0)
    );
    let (verdict, again) = fx.run(&frame::build(&reply), ingress);
    assert_eq!(verdict, XDP_REDIRECT, "second reply: verdict");
    let again = parsed(&again);
    assert_eq!(
        (again.dst, again.dst_mac, again.src_mac),
        (CLIENT, CLIENT_MAC, LB_CLIENT_MAC)
    );
    assert_eq!(fx.global(stat::NAT_REPLY), 2);
}

#[test]
fn later_packets_of_a_flow_keep_backend_and_port() {
    let mut fx = Fixture::new();
    let (_, first) = fx.send_from_client(&syn());
    let ack = ack();
    let (verdict, second) = fx.send_from_client(&ack);
    assert_eq!(verdict, XDP_REDIRECT);
    let (first, second) = (parsed(&first), parsed(&second));
    assert_eq!(
        (second.dst, second.sport),
        (first.dst, first.sport),
        "same flow, same translation"
    );
    // The second packet takes the backend's cached next hop instead of a FIB lookup.
    assert_eq!(
        (second.dst_mac, second.src_mac),
        (WEB_BACKEND_MAC, LB_BACKEND_MAC),
        "cached next hop must give the FIB's MACs"
    );
    assert!(second.ip_checksum_ok && second.l4_checksum_ok == Some(true));
    let other = Spec {
        sport: 40001,
        ..syn()
    };
    let (_, third) = fx.send_from_client(&other);
    assert_ne!(
        parsed(&third).sport,
        first.sport,
        "another flow needs another SNAT port"
    );
    let web = fx.web_counters();
    assert_eq!((web.packets, web.new_flows), (3, 2));
}

#[test]
fn established_packets_are_forwarded_from_the_cpus_flow_cache_but_fin_and_syn_are_not() {
    pin_to_one_cpu();
    let mut fx = Fixture::new();
    let (verdict, first) = fx.send_from_client(&syn());
    assert_eq!(verdict, XDP_REDIRECT);
    let first = parsed(&first);
    // The new flow left a copy of its CONNS entry in this CPU's cache.
    let key = client_key(&syn());
    let cached = fx.flow_cache();
    assert_eq!(cached.len(), 1, "one cached flow: {cached:?}");
    assert_eq!(cached[0].key, key);
    assert_eq!(
        cached[0].backend_addr,
        u32::from_ne_bytes(WEB_BACKEND.octets())
    );
    assert_eq!(cached[0].snat_port, first.sport.to_be());

    // With the CONNS entry gone, only the cache knows the flow: the ACK still goes to the
    // same backend with the same SNAT port, and no flow is scheduled.
    fx.forget::<Conn>(map_names::CONNS, &key);
    let (verdict, second) = fx.send_from_client(&ack());
    assert_eq!(verdict, XDP_REDIRECT);
    let second = parsed(&second);
    assert_eq!((second.dst, second.sport), (first.dst, first.sport));
    assert!(second.ip_checksum_ok && second.l4_checksum_ok == Some(true));
    assert_eq!(fx.web_counters().new_flows, 1, "served from the cache");

    // A FIN may change the flow: it takes the CONNS path, which misses, so it schedules.
    let fin = fin();
    let (verdict, _) = fx.send_from_client(&fin);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        fx.web_counters().new_flows,
        2,
        "a FIN is never served from the cache"
    );
    // The closing flow's copy is not served either: a SYN on the tuple starts a new flow.
    let (verdict, _) = fx.send_from_client(&syn());
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(fx.web_counters().new_flows, 3);
}

#[test]
fn a_cached_flow_of_a_backend_that_went_down_is_moved_at_its_next_packet() {
    pin_to_one_cpu();
    let mut fx = Fixture::new();
    let (verdict, _) = fx.send_from_client(&syn());
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(fx.flow_cache().len(), 1, "the flow is cached");
    // The web pool's only backend fails its checks (`on_backend_down = shutdown`, the
    // default): its flows must move, and the cached copy must not hide that.
    fx.web_backend_fails();
    let (verdict, _) = fx.send_from_client(&ack());
    assert_eq!(verdict, XDP_DROP, "no backend is left to move the flow to");
    assert_eq!(fx.global(stat::CONN_RESCHEDULED), 1);
}

#[test]
fn a_flow_stays_when_the_backend_now_holding_its_id_goes_down() {
    let mut fx = Fixture::new();
    let (verdict, _) = fx.send_from_client(&syn());
    assert_eq!(verdict, XDP_REDIRECT);
    // As after the flow's backend was deleted and its id given to another backend (or an
    // agent that took the pinned tables over numbered the backends afresh): the id now
    // names another address than the flow's.
    let other = Ipv4Addr::new(10, 0, 2, 99);
    fx.edit::<Conn>(map_names::CONNS, &client_key(&syn()), |conn| {
        conn.backend_addr = u32::from_ne_bytes(other.octets())
    });
    fx.web_backend_fails();
    let (verdict, out) = fx.send_from_client(&ack());
    assert_eq!(
        verdict, XDP_PASS,
        "the flow keeps its own backend (passed: the fixture has no neighbour for it)"
    );
    assert_eq!(parsed(&out).dst, other, "the flow's own backend");
    assert_eq!(fx.global(stat::CONN_RESCHEDULED), 0);
}

#[test]
fn a_cached_flow_whose_snat_port_went_to_another_flow_is_not_forwarded() {
    pin_to_one_cpu();
    // One SNAT port: a second flow can only have it by taking it from the first.
    let nat = NatConfig {
        port_min: 20000,
        port_max: 20000,
        ..NatConfig::default()
    };
    let mut fx = Fixture::with(Timeouts::default(), nat);
    let (verdict, _) = fx.send_from_client(&syn());
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(fx.flow_cache().len(), 1, "the first flow is cached");
    // The LRU evicts the first flow's CONNS entry; a second client flow then takes the
    // port, whose holder it no longer finds.
    fx.forget::<Conn>(map_names::CONNS, &client_key(&syn()));
    let second = Spec {
        sport: 40001,
        ..syn()
    };
    let (verdict, out) = fx.send_from_client(&second);
    assert_eq!(verdict, XDP_REDIRECT, "the second flow takes the port");
    assert_eq!(parsed(&out).sport, 20000);
    // The first flow's copy must not be used now: forwarded, it would arrive on the
    // second flow's tuple. Its CONNS path finds no flow and no free port.
    let (verdict, _) = fx.send_from_client(&ack());
    assert_eq!(
        verdict, XDP_DROP,
        "the evicted flow's packet must not be forwarded"
    );
    assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 1);
    // A flow that got no port leaves no forward entry (written before each reply entry
    // it tries) naming a port it does not hold.
    assert!(
        !fx.has_conn(&client_key(&syn())),
        "a CONNS entry without its port"
    );
    assert!(fx.has_conn(&client_key(&second)));
}

#[test]
fn fin_then_syn_on_same_tuple_starts_a_new_flow_but_fin_alone_does_not() {
    let mut fx = Fixture::new();
    let (_, first) = fx.send_from_client(&syn());
    let fin = fin();
    let (verdict, after_fin) = fx.send_from_client(&fin);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        parsed(&after_fin).sport,
        parsed(&first).sport,
        "FIN belongs to the flow"
    );
    let (_, again) = fx.send_from_client(&syn());
    assert_eq!(parsed(&again).dst, WEB_BACKEND);
    assert_eq!(
        parsed(&again).sport,
        parsed(&first).sport,
        "a client reusing its port gets its SNAT port back, so the backend's TIME_WAIT \
         sees the client's own tuple sequence"
    );
    assert_eq!(
        fx.web_counters().new_flows,
        2,
        "a SYN on a closing tuple is a new flow"
    );
}

/// A fixture whose SNAT range is `ports` ports from 20000, and whose closed flows expire
/// 1 s after their last packet (their ports then rest for the default snat_time_wait,
/// 60 s, if the backend closed them).
fn snat_fixture(ports: u16) -> Fixture {
    let nat = NatConfig {
        port_min: 20000,
        port_max: 20000 + ports - 1,
        ..NatConfig::default()
    };
    let timeouts = Timeouts {
        tcp_closing: std::time::Duration::from_secs(1),
        ..Timeouts::default()
    };
    Fixture::with(timeouts, nat)
}

/// A new flow from client port `sport`; returns the verdict and its SNAT port.
fn open(fx: &mut Fixture, sport: u16) -> (u32, u16) {
    let (verdict, out) = fx.send_from_client(&Spec { sport, ..syn() });
    (
        verdict,
        if verdict == XDP_REDIRECT {
            parsed(&out).sport
        } else {
            0
        },
    )
}

/// A TCP segment with `flags` from the web backend to SNAT port `port`.
fn web_reply(port: u16, flags: Flags) -> Spec {
    Spec {
        src_mac: WEB_BACKEND_MAC,
        dst_mac: LB_BACKEND_MAC,
        src: WEB_BACKEND,
        dst: SNAT,
        sport: 80,
        dport: port,
        l4: L4::Tcp {
            flags,
            seq: 5001,
            ack: 1002,
        },
        ..Spec::default()
    }
}

/// One TCP segment with `flags` from the web backend to SNAT port `port`, which must be
/// a reply of a flow.
fn from_backend(fx: &mut Fixture, port: u16, flags: Flags) {
    let reply = web_reply(port, flags);
    let ingress = fx.backend_if;
    let (verdict, _) = fx.run(&frame::build(&reply), ingress);
    assert_eq!(
        verdict, XDP_REDIRECT,
        "the backend's segment is a reply of the flow"
    );
}

/// One TCP segment with `flags` from client port `sport`.
fn from_client(fx: &mut Fixture, sport: u16, flags: Flags) {
    let spec = Spec {
        sport,
        ..segment(flags)
    };
    let (verdict, _) = fx.send_from_client(&spec);
    assert_eq!(
        verdict, XDP_REDIRECT,
        "the client's segment belongs to the flow"
    );
}

/// Who sends a segment.
enum Side {
    Client,
    Backend,
}

/// A [`snat_fixture`] of `ports` ports in which client port 40000 opened a flow, ended it
/// with `segments` (TCP flags, in order), and let it expire (past the 1 s closing
/// timeout; the coarse clock ticks in jiffies). Returns the fixture and the flow's SNAT
/// port.
fn ended_flow(ports: u16, segments: &[(Side, Flags)]) -> (Fixture, u16) {
    pin_to_one_cpu();
    let mut fx = snat_fixture(ports);
    let (_, port) = open(&mut fx, 40000);
    for (side, flags) in segments {
        match side {
            Side::Client => from_client(&mut fx, 40000, *flags),
            Side::Backend => from_backend(&mut fx, port, *flags),
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1600));
    (fx, port)
}

/// An [`ended_flow`] of 2 ports that `first` closed with a FIN, then the other side.
fn closed_first_by(first: Side) -> (Fixture, u16) {
    let fin = Flags::FIN | Flags::ACK;
    let segments = match first {
        Side::Client => [(Side::Client, fin), (Side::Backend, fin)],
        Side::Backend => [(Side::Backend, fin), (Side::Client, fin)],
    };
    ended_flow(2, &segments)
}

#[test]
fn a_flow_the_backend_closed_leaves_its_snat_port_resting() {
    let (mut fx, closed) = closed_first_by(Side::Backend);
    // Client port 40001 probes the closed flow's port first (the client-closed test below
    // shows it getting that port at once); the free one is taken instead.
    let (verdict, port) = open(&mut fx, 40001);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_ne!(
        port, closed,
        "another client got a resting port while a port was free"
    );
    assert_eq!(fx.global(stat::SNAT_PORT_REUSED_EARLY), 0);
    // No free port left: the resting one is taken rather than dropping the flow.
    let (verdict, port) = open(&mut fx, 40002);
    assert_eq!(verdict, XDP_REDIRECT, "a resting port must beat a drop");
    assert_eq!(port, closed);
    assert_eq!(fx.global(stat::SNAT_PORT_REUSED_EARLY), 1);
    // Now both ports are held by live flows.
    let (verdict, _) = open(&mut fx, 40003);
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(fx.global(stat::DROP_SNAT_EXHAUSTED), 1);
}

#[test]
fn a_flow_the_client_closed_frees_its_snat_port_at_expiry() {
    // The client closes first: the backend closes passively and keeps no TIME-WAIT.
    let (mut fx, closed) = closed_first_by(Side::Client);
    let (verdict, port) = open(&mut fx, 40001);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(port, closed, "the expired flow's port is free again");
    assert_eq!(fx.global(stat::SNAT_PORT_REUSED_EARLY), 0);
}

#[test]
fn a_client_reusing_its_tuple_gets_its_old_port_back_though_an_earlier_one_came_free() {
    // Client ports 40000 and 40001 both probe 20000 first (see above): with 40001 there
    // first, 40000 gets 20001.
    pin_to_one_cpu();
    let mut fx = snat_fixture(2);
    let (_, first) = open(&mut fx, 40001);
    let (_, own) = open(&mut fx, 40000);
    assert_eq!((first, own), (20000, 20001));
    // 40001's flow ends (client first: its port does not rest) and expires.
    from_client(&mut fx, 40001, Flags::FIN | Flags::ACK);
    from_backend(&mut fx, first, Flags::FIN | Flags::ACK);
    std::thread::sleep(std::time::Duration::from_millis(1600));
    // 40000 closes and opens its tuple again: 20000 is free now, but it gets 20001 back.
    from_client(&mut fx, 40000, Flags::FIN | Flags::ACK);
    let (verdict, again) = open(&mut fx, 40000);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        again, own,
        "the backend must see the client's own tuple sequence on its old port"
    );
}

#[test]
fn a_reset_after_the_backends_fin_ends_the_rest() {
    // One port: a resting port could only be had through the counted fallback.
    let (mut fx, closed) = ended_flow(
        1,
        &[
            (Side::Backend, Flags::FIN | Flags::ACK),
            (Side::Client, Flags::RST),
        ],
    );
    let (verdict, port) = open(&mut fx, 40001);
    assert_eq!((verdict, port), (XDP_REDIRECT, closed));
    assert_eq!(
        fx.global(stat::SNAT_PORT_REUSED_EARLY),
        0,
        "an RST ends the backend's TIME-WAIT: the port must not rest"
    );
}

/// The new flows a VIP's counters show.
fn new_flows(fx: &Fixture, vip: &str) -> u64 {
    fx.lb
        .status()
        .unwrap()
        .vips
        .into_iter()
        .find(|v| v.config.name == vip)
        .unwrap()
        .counters
        .new_flows
}

#[test]
fn replies_keep_a_flow_alive_while_its_client_is_quiet() {
    pin_to_one_cpu();
    let mut fx = Fixture::with_timeouts(Timeouts {
        udp: std::time::Duration::from_secs(1),
        ..Timeouts::default()
    });
    let query = udp();
    let (verdict, out) = fx.send_from_client(&query);
    assert_eq!(verdict, XDP_REDIRECT);
    let port = parsed(&out).sport;
    // The backend streams for 1.6 s, past the 1 s UDP timeout; the client sends nothing.
    let chunk = Spec {
        src_mac: DNS_BACKEND_MAC,
        dst_mac: LB_BACKEND_MAC,
        src: DNS_BACKEND,
        dst: SNAT,
        sport: 5300,
        dport: port,
        l4: L4::Udp { checksum: true },
        payload: b"chunk".to_vec(),
        ..Spec::default()
    };
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(400));
        let (verdict, _) = fx.run(&frame::build(&chunk), fx.backend_if);
        assert_eq!(verdict, XDP_REDIRECT, "a reply of the flow");
    }
    let (verdict, out) = fx.send_from_client(&query);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        (parsed(&out).sport, new_flows(&fx, "dns")),
        (port, 1),
        "the backend's replies must keep the flow (and its SNAT port) alive"
    );
    assert_eq!(fx.global(stat::CONN_EXPIRED), 0);
}

#[test]
fn a_late_reset_of_an_ended_flow_does_not_reach_the_clients_new_one() {
    pin_to_one_cpu();
    let mut fx = Fixture::new();
    let (_, old_port) = open(&mut fx, 40000);
    // The client closes and opens its tuple again, by when the pool has moved on: the
    // web backend is drained and the DNS server answers on :80 too.
    from_client(&mut fx, 40000, Flags::FIN | Flags::ACK);
    fx.lb
        .add_backend("web", SocketAddrV4::new(DNS_BACKEND, 80), 1)
        .unwrap();
    fx.lb
        .set_weight("web", SocketAddrV4::new(WEB_BACKEND, 80), 0)
        .unwrap();
    let (verdict, out) = fx.send_from_client(&Spec {
        sport: 40000,
        ..syn()
    });
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(parsed(&out).dst, DNS_BACKEND, "the new flow's backend");
    // The old backend's late RST on the old flow's reply tuple.
    let rst = web_reply(old_port, Flags::RST);
    let (verdict, _) = fx.run(&frame::build(&rst), fx.backend_if);
    assert_eq!(verdict, XDP_DROP, "a stale RST must not reach the client");
    assert_eq!(fx.global(stat::DROP_STALE_REPLY), 1);
    // The new flow is untouched: not closing, so a SYN on it is no new flow.
    let (verdict, out) = fx.send_from_client(&Spec {
        sport: 40000,
        ..ack()
    });
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(parsed(&out).dst, DNS_BACKEND);
    assert_eq!(new_flows(&fx, "web"), 2);
}

#[test]
fn a_tcp_flow_its_backend_never_answered_idles_out_sooner() {
    pin_to_one_cpu();
    let mut fx = Fixture::with_timeouts(Timeouts {
        tcp: std::time::Duration::from_secs(30),
        tcp_unreplied: std::time::Duration::from_secs(1),
        ..Timeouts::default()
    });
    // Client port 40000's backend never answers; 40001's does (its SYN-ACK).
    let (_, _) = open(&mut fx, 40000);
    let (_, answered) = open(&mut fx, 40001);
    from_backend(&mut fx, answered, Flags::SYN | Flags::ACK);
    std::thread::sleep(std::time::Duration::from_millis(1600));
    from_client(&mut fx, 40001, Flags::ACK);
    assert_eq!(
        new_flows(&fx, "web"),
        2,
        "the answered flow must still be live"
    );
    let (verdict, _) = open(&mut fx, 40000);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        (new_flows(&fx, "web"), fx.global(stat::CONN_EXPIRED)),
        (3, 1),
        "the unanswered flow must have expired after timeouts.tcp_unreplied"
    );
}

/// The reply tuple of the web backend's flow on SNAT port `port`.
fn web_reply_key(port: u16) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(WEB_BACKEND.octets()),
        dst_addr: u32::from_ne_bytes(SNAT.octets()),
        src_port: 80u16.to_be(),
        dst_port: port.to_be(),
        proto: 6,
        _pad0: 0,
        _pad1: 0,
    }
}

#[test]
fn a_flow_whose_reply_entry_was_evicted_writes_it_again_or_leaves_its_port() {
    pin_to_one_cpu();
    // One SNAT port: a port without a reply entry is the one a new flow takes.
    let mut fx = snat_fixture(1);
    let (_, port) = open(&mut fx, 40000);
    fx.forget::<NatEntry>(map_names::NAT, &web_reply_key(port));
    // At the client side's next periodic touch (250 ms) the entry is written again, and
    // the backend's replies reach the client.
    std::thread::sleep(std::time::Duration::from_millis(300));
    from_client(&mut fx, 40000, Flags::ACK);
    from_backend(&mut fx, port, Flags::ACK);

    // Evicted again, and before the flow's next touch another client takes the port.
    fx.forget::<NatEntry>(map_names::NAT, &web_reply_key(port));
    let (verdict, taken) = open(&mut fx, 40001);
    assert_eq!((verdict, taken), (XDP_REDIRECT, port));
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The first flow must not go on sending from the port the second one holds; with the
    // only port taken, it has none left.
    let (verdict, _) = fx.send_from_client(&Spec {
        sport: 40000,
        ..ack()
    });
    assert_eq!(
        verdict, XDP_DROP,
        "two clients on one tuple towards the backend"
    );
    assert_eq!(
        (
            fx.global(stat::SNAT_PORT_LOST),
            fx.global(stat::DROP_SNAT_EXHAUSTED)
        ),
        (1, 1)
    );
}

#[test]
fn a_reset_with_no_flow_starts_none() {
    let mut fx = Fixture::new();
    let rst = segment(Flags::RST);
    let (verdict, _) = fx.send_from_client(&rst);
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(fx.global(stat::DROP_STRAY_RST), 1);
    assert!(
        !fx.has_conn(&client_key(&rst)),
        "a stray RST must not take a SNAT port"
    );
    assert_eq!(new_flows(&fx, "web"), 0);
}

#[test]
fn udp_to_vip_is_translated_and_zero_checksum_stays_zero() {
    let mut fx = Fixture::new();
    let spec = Spec {
        payload: b"query".to_vec(),
        ..udp()
    };
    let (verdict, out) = fx.send_from_client(&spec);
    assert_eq!(verdict, XDP_REDIRECT);
    let out = parsed(&out);
    assert_nat_forward(&out, &spec, DNS_BACKEND, DNS_BACKEND_MAC);
    assert_eq!(out.l4_checksum_ok, Some(true));

    let spec = Spec {
        sport: 40002,
        l4: L4::Udp { checksum: false },
        ..spec
    };
    let (verdict, out) = fx.send_from_client(&spec);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        parsed(&out).l4_checksum_ok,
        None,
        "a zero UDP checksum must stay zero"
    );
}

#[test]
fn a_flow_whose_vip_got_another_id_stays_its_vips() {
    let mut fx = Fixture::new();
    assert_eq!(fx.send_from_client(&syn()).0, XDP_REDIRECT);
    let key = client_key(&syn());
    let own = fx.conn(&key).vip_id;
    // As when an agent that took the pinned tables over gave the VIP another id: the
    // flow's id names another VIP, or none.
    fx.edit::<Conn>(map_names::CONNS, &key, |conn| conn.vip_id = (own + 1) % 32);
    let new_flows = fx.web_counters().new_flows;
    // A FIN: the flow cache does not serve it, the connection table does.
    assert_eq!(fx.send_from_client(&fin()).0, XDP_REDIRECT);
    assert_eq!(
        fx.web_counters().new_flows,
        new_flows,
        "the flow goes on (its VIP at its destination has its generation), not scheduled anew"
    );
    assert_eq!(
        fx.conn(&key).vip_id,
        own,
        "its entry names its VIP's id again"
    );
}

#[test]
fn a_deleted_vips_established_flow_is_no_longer_forwarded() {
    let mut fx = Fixture::new();
    let (verdict, _) = fx.send_from_client(&syn());
    assert_eq!(verdict, XDP_REDIRECT);
    let ack = ack();
    assert_eq!(fx.send_from_client(&ack).0, XDP_REDIRECT);
    // The flow's connection-table entry outlives its VIP, but it is the VIP's no more.
    fx.lb.del_vip("web").unwrap();
    let (verdict, out) = fx.send_from_client(&ack);
    assert_eq!(
        verdict, XDP_PASS,
        "a flow of a deleted VIP goes to the stack"
    );
    assert_eq!(out, frame::build(&ack), "and leaves untouched");
    // A VIP added again on the same address and port takes the tuple as a new flow.
    fx.lb.add_vip(vip("web", 80, Protocol::Tcp)).unwrap();
    let new_flows = fx.web_counters().new_flows;
    assert_eq!(fx.send_from_client(&ack).0, XDP_REDIRECT);
    assert_eq!(fx.web_counters().new_flows, new_flows + 1, "scheduled anew");
}

#[test]
fn non_vip_traffic_passes_unchanged() {
    let mut fx = Fixture::new();
    let cases = [
        (
            "VIP address, other port",
            Spec {
                dport: 8080,
                ..syn()
            },
        ),
        (
            "VIP address and port, other protocol",
            Spec {
                l4: L4::Udp { checksum: true },
                ..syn()
            },
        ),
        (
            "the balancer's own address",
            Spec {
                dst: Ipv4Addr::new(10, 0, 1, 1),
                dport: 22,
                ..syn()
            },
        ),
        (
            "another host",
            Spec {
                dst: Ipv4Addr::new(10, 9, 9, 9),
                ..syn()
            },
        ),
    ];
    for (what, spec) in cases {
        let frame = frame::build(&spec);
        let ingress = fx.client_if;
        let (verdict, out) = fx.run(&frame, ingress);
        assert_eq!(verdict, XDP_PASS, "{what}: verdict");
        assert_eq!(out, frame, "{what}: frame must be untouched");
    }
    // Not IPv4 at all: ARP.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC.0);
    arp.extend_from_slice(&EtherType::ARP.0.to_be_bytes());
    arp.extend_from_slice(&[0u8; 28]);
    let ingress = fx.client_if;
    let (verdict, out) = fx.run(&arp, ingress);
    assert_eq!((verdict, out), (XDP_PASS, arp), "ARP must pass untouched");
    // A reply-looking packet with no NAT entry.
    let stray = Spec {
        src: WEB_BACKEND,
        dst: SNAT,
        sport: 80,
        dport: 25000,
        ..syn()
    };
    let frame = frame::build(&stray);
    let ingress = fx.backend_if;
    let (verdict, out) = fx.run(&frame, ingress);
    assert_eq!(
        (verdict, out),
        (XDP_PASS, frame),
        "a packet to an unused SNAT port must pass"
    );
}

#[test]
fn truncated_and_malformed_headers_are_never_forwarded() {
    let mut fx = Fixture::new();
    let good = frame::build(&syn());
    let ip = 14;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 header cut short", good[..ip + 12].to_vec()),
        ("TCP header cut short", good[..ip + 20 + 10].to_vec()),
    ];
    let mut bad_ihl = good.clone();
    bad_ihl[ip] = 0x44;
    cases.push(("IHL below 5", bad_ihl));
    let mut bad_version = good.clone();
    bad_version[ip] = 0x65;
    cases.push(("IP version 6 in an IPv4 frame", bad_version));
    let mut long_total = good.clone();
    long_total[ip + 2..ip + 4].copy_from_slice(&2000u16.to_be_bytes());
    cases.push(("total length beyond the frame", long_total));
    let mut bad_doff = good.clone();
    bad_doff[ip + 20 + 12] = 0x20;
    cases.push(("TCP data offset below 5", bad_doff));
    let options_past_end = frame::build(&Spec {
        ip_options: vec![1; 40],
        ..syn()
    });
    cases.push((
        "IPv4 options but frame cut in TCP",
        options_past_end[..ip + 60 + 8].to_vec(),
    ));

    let before = fx.global(stat::DROP_MALFORMED);
    for (what, frame) in &cases {
        let ingress = fx.client_if;
        let (verdict, _) = fx.run(frame, ingress);
        assert_eq!(
            verdict, XDP_DROP,
            "{what}: must be dropped, not forwarded or passed"
        );
    }
    assert_eq!(fx.global(stat::DROP_MALFORMED) - before, cases.len() as u64);
}

#[test]
fn vlan_tagged_syn_is_translated_and_keeps_its_tag() {
    let mut fx = Fixture::new();
    let spec = Spec {
        vlan: Some(0x2064),
        ..syn()
    };
    let (verdict, out) = fx.send_from_client(&spec);
    assert_eq!(verdict, XDP_REDIRECT);
    let out = parsed(&out);
    assert_eq!(out.vlan, Some(0x2064), "802.1Q tag must be kept");
    assert_nat_forward(&out, &spec, WEB_BACKEND, WEB_BACKEND_MAC);
}

#[test]
fn ipv4_options_are_skipped_and_kept() {
    let mut fx = Fixture::new();
    let spec = Spec {
        ip_options: vec![1, 1, 1, 0],
        ..syn()
    };
    let (verdict, out) = fx.send_from_client(&spec);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_nat_forward(&parsed(&out), &spec, WEB_BACKEND, WEB_BACKEND_MAC);
    assert_eq!(out[14] & 0x0f, 6, "IHL with options must be kept");
}

#[test]
fn vip_without_backends_drops_new_flows() {
    let mut fx = Fixture::new();
    let (verdict, _) = fx.send_from_client(&Spec { dport: 81, ..syn() });
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(fx.global(stat::DROP_NO_BACKEND), 1);
}

#[test]
fn fragments_pass_unchanged() {
    let mut fx = Fixture::new();
    let mut frame = frame::build(&syn());
    frame[14 + 6] = 0x20; // more fragments
    let c = {
        frame[14 + 10] = 0;
        frame[14 + 11] = 0;
        balancer_wire::checksum::checksum(&frame[14..34])
    };
    frame[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let ingress = fx.client_if;
    let (verdict, out) = fx.run(&frame, ingress);
    assert_eq!((verdict, out), (XDP_PASS, frame));
    assert_eq!(fx.global(stat::PASS_FRAGMENT), 1);
}

/// A router on the backends' side of the balancer, and one on the clients' side.
const BACKEND_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 254);
const CLIENT_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 254);

/// An ICMP error `(kind, code, rest)` from `from` (Ethernet: `from_mac` to the balancer's
/// `to_mac`) to `to`, quoting `quoted`.
fn icmp_error(
    (from, from_mac): (Ipv4Addr, MacAddr),
    (to, to_mac): (Ipv4Addr, MacAddr),
    (kind, code, rest): (Message, u8, u32),
    quoted: &[u8],
) -> Vec<u8> {
    let outer = Spec {
        src_mac: from_mac,
        dst_mac: to_mac,
        src: from,
        dst: to,
        ..Spec::default()
    };
    let icmp = Icmp {
        kind,
        code,
        rest,
        body: quoted.to_vec(),
    };
    frame::build_icmp(&outer, &icmp)
}

fn parsed_icmp(out: &[u8]) -> frame::ParsedIcmp {
    frame::parse_icmp(out).unwrap_or_else(|e| panic!("output frame is no ICMP message: {e}"))
}

/// Checks a translated ICMP error: passed to the stack (MACs as received), now `from` ->
/// `to`, type, code and rest of header as sent, quoting `quoted`, checksums right.
fn assert_icmp_translated(
    what: &str,
    (verdict, out): (u32, Vec<u8>),
    sent: &[u8],
    (from, to): (Ipv4Addr, Ipv4Addr),
    quoted: &[u8],
) {
    assert_eq!(verdict, XDP_PASS, "{what}: verdict (the stack forwards it)");
    let (out, sent) = (parsed_icmp(&out), parsed_icmp(sent));
    assert_eq!((out.src, out.dst), (from, to), "{what}: addresses");
    assert!(out.ip_checksum_ok, "{what}: IPv4 header checksum");
    assert!(out.icmp_checksum_ok, "{what}: ICMP checksum");
    assert_eq!(
        (out.src_mac, out.dst_mac, out.ttl),
        (sent.src_mac, sent.dst_mac, sent.ttl),
        "{what}: Ethernet header and TTL"
    );
    let (icmp, sent) = (&out.icmp, &sent.icmp);
    assert_eq!(
        (icmp.kind, icmp.code, icmp.rest),
        (sent.kind, sent.code, sent.rest),
        "{what}: type, code and rest of header (the MTU)"
    );
    assert_eq!(
        icmp.body, quoted,
        "{what}: the quote must be the packet as the other end sent it"
    );
}

#[test]
fn icmp_errors_from_the_backends_side_reach_the_client_translated() {
    // (what, the client's packet, the error's source, (type, code))
    let cases = [
        (
            "UDP port unreachable from the backend",
            udp(),
            DNS_BACKEND,
            (Message::DST_UNREACHABLE, unreachable::PORT),
        ),
        (
            "TCP time exceeded from a router",
            syn(),
            BACKEND_ROUTER,
            (Message::TIME_EXCEEDED, 0),
        ),
    ];
    for (what, client_packet, from, (kind, code)) in cases {
        // The whole datagram quoted (the quoted TCP/UDP checksum changes too), and only
        // its IPv4 header and 8 bytes (RFC 792's minimum, short of the TCP checksum).
        for quote_len in [None, Some(28)] {
            let what = format!("{what}, quoting {quote_len:?} bytes");
            let mut fx = Fixture::new();
            let (verdict, forwarded) = fx.send_from_client(&client_packet);
            assert_eq!(verdict, XDP_REDIRECT, "{what}: the client's packet");
            let quote_of = |frame: &[u8]| -> Vec<u8> {
                let datagram = frame::ip_datagram(frame);
                datagram[..quote_len.unwrap_or(datagram.len())].to_vec()
            };
            let error = icmp_error(
                (from, WEB_BACKEND_MAC),
                (SNAT, LB_BACKEND_MAC),
                (kind, code, 0),
                &quote_of(&forwarded),
            );
            let ingress = fx.backend_if;
            let out = fx.run(&error, ingress);
            let original = quote_of(&frame::build(&client_packet));
            assert_icmp_translated(&what, out, &error, (VIP, CLIENT), &original);
            assert_eq!(fx.global(stat::ICMP_TO_CLIENT), 1, "{what}: counted");
        }
    }
}

#[test]
fn a_trailer_after_a_short_quote_is_left_alone() {
    // A TCP quote of 28 bytes ends before the TCP checksum; the frame carries a trailer
    // past the datagram, where the checksum would have been.
    let mut fx = Fixture::new();
    let (_, forwarded) = fx.send_from_client(&syn());
    let quote = frame::ip_datagram(&forwarded)[..28].to_vec();
    let trailer = frame::ip_datagram(&forwarded)[28..40].to_vec();
    let mut error = icmp_error(
        (BACKEND_ROUTER, WEB_BACKEND_MAC),
        (SNAT, LB_BACKEND_MAC),
        (Message::TIME_EXCEEDED, 0, 0),
        &quote,
    );
    error.extend_from_slice(&trailer);
    let ingress = fx.backend_if;
    let (verdict, out) = fx.run(&error, ingress);
    let original = frame::ip_datagram(&frame::build(&syn()))[..28].to_vec();
    assert_icmp_translated(
        "a short quote with a trailer",
        (verdict, out.clone()),
        &error,
        (VIP, CLIENT),
        &original,
    );
    assert_eq!(
        out[out.len() - trailer.len()..],
        trailer[..],
        "the trailer is not the quote's: untouched"
    );
}

#[test]
fn fragmentation_needed_from_the_clients_side_reaches_the_backend_translated() {
    for quote_len in [None, Some(28)] {
        let what = format!("quoting {quote_len:?} bytes");
        let mut fx = Fixture::new();
        let (_, forwarded) = fx.send_from_client(&syn());
        let reply = Spec {
            payload: vec![b'x'; 1400],
            ..web_reply(parsed(&forwarded).sport, Flags::ACK)
        };
        let reply = frame::build(&reply);
        let ingress = fx.backend_if;
        let (verdict, to_client) = fx.run(&reply, ingress);
        assert_eq!(verdict, XDP_REDIRECT, "{what}: the backend's reply");
        let quote_of = |frame: &[u8]| -> Vec<u8> {
            let datagram = frame::ip_datagram(frame);
            datagram[..quote_len.unwrap_or(datagram.len())].to_vec()
        };
        // A router between the balancer and the client cannot forward the reply whole.
        let error = |mtu: u32| {
            icmp_error(
                (CLIENT_ROUTER, CLIENT_MAC),
                (VIP, LB_CLIENT_MAC),
                (Message::DST_UNREACHABLE, unreachable::FRAG_NEEDED, mtu),
                &quote_of(&to_client),
            )
        };
        let ingress = fx.client_if;
        let out = fx.run(&error(1400), ingress);
        assert_icmp_translated(
            &what,
            out,
            &error(1400),
            (SNAT, WEB_BACKEND),
            &quote_of(&reply),
        );
        assert_eq!(fx.global(stat::ICMP_TO_BACKEND), 1, "{what}: counted");

        // Below the floor it would shrink the path MTU of every client of the backend
        // (they all share the SNAT address): not passed on. 0 comes from routers that
        // predate RFC 1191; the backend would fall back to its minimum.
        for mtu in [u32::from(PMTU_FLOOR) - 1, 0] {
            let low = error(mtu);
            let (verdict, out) = fx.run(&low, ingress);
            assert_eq!((verdict, out), (XDP_PASS, low), "{what}: MTU {mtu}");
        }
        let (verdict, _) = fx.run(&error(u32::from(PMTU_FLOOR)), ingress);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            (
                fx.global(stat::ICMP_TO_BACKEND),
                fx.global(stat::PASS_ICMP_LOW_MTU)
            ),
            (2, 2),
            "{what}: the floor itself is passed on, the two below it are not"
        );
    }
}

#[test]
fn icmp_messages_not_about_a_balanced_flow_pass_unchanged() {
    let mut fx = Fixture::new();
    let (_, forwarded) = fx.send_from_client(&udp());
    let quoted = frame::ip_datagram(&forwarded).to_vec();
    let unreachable = (Message::DST_UNREACHABLE, unreachable::PORT, 0);
    let from_backend = (DNS_BACKEND, DNS_BACKEND_MAC);
    let to_snat = (SNAT, LB_BACKEND_MAC);
    let mut later_fragment = quoted.clone();
    later_fragment[6..8].copy_from_slice(&[0x00, 0x10]); // offset 128 bytes
    let other_port = frame::build(&Spec {
        src: SNAT,
        dst: DNS_BACKEND,
        sport: 25000,
        dport: 5300,
        ..udp()
    });
    let unknown_reply = frame::build(&Spec {
        src: VIP,
        dst: CLIENT,
        sport: 80,
        dport: 40001,
        ..syn()
    });
    let cases = [
        (
            "an echo request to the VIP",
            icmp_error(
                (CLIENT, CLIENT_MAC),
                (VIP, LB_CLIENT_MAC),
                (Message::ECHO_REQUEST, 0, 0x0001_0001),
                b"ping",
            ),
            fx.client_if,
        ),
        (
            "an error about a SNAT port without a flow",
            icmp_error(
                from_backend,
                to_snat,
                unreachable,
                frame::ip_datagram(&other_port),
            ),
            fx.backend_if,
        ),
        (
            "an error about a reply to a client without a flow",
            icmp_error(
                (CLIENT_ROUTER, CLIENT_MAC),
                (VIP, LB_CLIENT_MAC),
                (Message::DST_UNREACHABLE, unreachable::FRAG_NEEDED, 1400),
                frame::ip_datagram(&unknown_reply),
            ),
            fx.client_if,
        ),
        (
            "an error sent to another address than the quoted packet's source",
            icmp_error(
                from_backend,
                (Ipv4Addr::new(10, 0, 2, 2), LB_BACKEND_MAC),
                unreachable,
                &quoted,
            ),
            fx.backend_if,
        ),
        (
            "an error quoting a later fragment (no ports)",
            icmp_error(from_backend, to_snat, unreachable, &later_fragment),
            fx.backend_if,
        ),
        (
            "an error whose quote ends inside the IPv4 header",
            icmp_error(from_backend, to_snat, unreachable, &quoted[..16]),
            fx.backend_if,
        ),
        (
            "an error whose quote ends before the ports",
            icmp_error(from_backend, to_snat, unreachable, &quoted[..22]),
            fx.backend_if,
        ),
        (
            "an error whose quote ends before the ports, in a frame with a trailer",
            {
                let mut frame = icmp_error(from_backend, to_snat, unreachable, &quoted[..22]);
                frame.extend_from_slice(&quoted[22..]);
                frame
            },
            fx.backend_if,
        ),
    ];
    for (what, frame, ingress) in cases {
        let (verdict, out) = fx.run(&frame, ingress);
        assert_eq!(verdict, XDP_PASS, "{what}: verdict");
        assert_eq!(out, frame, "{what}: the frame must be untouched");
    }
    // The flow was there all along: the same error, well formed, is translated.
    let error = icmp_error(from_backend, to_snat, unreachable, &quoted);
    let ingress = fx.backend_if;
    assert_eq!(fx.run(&error, ingress).0, XDP_PASS);
    assert_eq!(
        fx.icmp_translated(),
        (1, 0),
        "only the last error is about the flow"
    );
}

#[test]
fn icmp_errors_about_a_tuple_that_moved_on_pass_unchanged() {
    let mut fx = Fixture::new();
    let client = udp();
    let (_, forwarded) = fx.send_from_client(&client);
    let sport = parsed(&forwarded).sport;
    let key = FlowKey {
        proto: 17,
        ..client_key(&client)
    };
    // The backend's reply reaches the client: what the client's side could complain about.
    let reply = Spec {
        src_mac: DNS_BACKEND_MAC,
        dst_mac: LB_BACKEND_MAC,
        src: DNS_BACKEND,
        dst: SNAT,
        sport: 5300,
        dport: sport,
        ..udp()
    };
    let (backend_if, client_if) = (fx.backend_if, fx.client_if);
    let (_, to_client) = fx.run(&frame::build(&reply), backend_if);
    let from_backend = icmp_error(
        (DNS_BACKEND, DNS_BACKEND_MAC),
        (SNAT, LB_BACKEND_MAC),
        (Message::DST_UNREACHABLE, unreachable::PORT, 0),
        frame::ip_datagram(&forwarded),
    );
    let from_client_side = icmp_error(
        (CLIENT_ROUTER, CLIENT_MAC),
        (VIP, LB_CLIENT_MAC),
        (Message::DST_UNREACHABLE, unreachable::FRAG_NEEDED, 1400),
        frame::ip_datagram(&to_client),
    );
    let shift =
        |port: &mut u16, by: i32| *port = ((u16::from_be(*port) as i32 + by) as u16).to_be();

    // The client's tuple now has another SNAT port: the old port's errors are stale.
    fx.edit::<Conn>(map_names::CONNS, &key, |conn| shift(&mut conn.snat_port, 1));
    let (verdict, out) = fx.run(&from_backend, backend_if);
    assert_eq!(
        (verdict, out),
        (XDP_PASS, from_backend.clone()),
        "an error about a SNAT port whose client moved on must pass untouched"
    );
    fx.edit::<Conn>(map_names::CONNS, &key, |conn| {
        shift(&mut conn.snat_port, -1)
    });

    // The SNAT port now belongs to another client: the backend must not hear of this one.
    let reply_key = FlowKey {
        src_addr: u32::from_ne_bytes(DNS_BACKEND.octets()),
        src_port: 5300u16.to_be(),
        proto: 17,
        ..web_reply_key(sport)
    };
    fx.edit::<NatEntry>(map_names::NAT, &reply_key, |entry| {
        shift(&mut entry.client_port, 1)
    });
    let (verdict, out) = fx.run(&from_client_side, client_if);
    assert_eq!(
        (verdict, out),
        (XDP_PASS, from_client_side.clone()),
        "an error about a reply whose SNAT port went to another client must pass untouched"
    );
    fx.edit::<NatEntry>(map_names::NAT, &reply_key, |entry| {
        shift(&mut entry.client_port, -1)
    });
    assert_eq!(
        fx.icmp_translated(),
        (0, 0),
        "nothing translated while the tuples had moved on"
    );

    // Both tables name the flow again: both errors are translated.
    assert_eq!(fx.run(&from_backend, backend_if).0, XDP_PASS);
    assert_eq!(fx.run(&from_client_side, client_if).0, XDP_PASS);
    assert_eq!(
        fx.icmp_translated(),
        (1, 1),
        "both translated once the tables name the flow again"
    );
}

#[test]
fn idle_flows_expire_per_protocol() {
    let mut fx = Fixture::with_timeouts(Timeouts {
        tcp: std::time::Duration::from_secs(30),
        udp: std::time::Duration::from_secs(1),
        tcp_closing: std::time::Duration::from_secs(1),
        ..Timeouts::default()
    });
    let udp = udp();
    fx.send_from_client(&udp);
    fx.send_from_client(&syn());
    fx.send_from_client(&udp);
    assert_eq!((new_flows(&fx, "dns"), new_flows(&fx, "web")), (1, 1));
    // Past the UDP timeout (the coarse clock ticks in jiffies) but well within TCP's.
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let (verdict, _) = fx.send_from_client(&ack());
    assert_eq!(verdict, XDP_REDIRECT);
    let (verdict, _) = fx.send_from_client(&udp);
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(new_flows(&fx, "web"), 1, "the TCP flow must still be live");
    assert_eq!(
        new_flows(&fx, "dns"),
        2,
        "the idle UDP flow must have expired"
    );
    assert_eq!(fx.global(stat::CONN_EXPIRED), 1);
}
