//! End-to-end: ICMP errors about balanced flows cross the NAT. A backend's "port
//! unreachable" reaches the client as coming from the VIP (its connected UDP socket sees
//! ECONNREFUSED), and a "fragmentation needed" from the clients' side reaches the backend
//! about its own tuple (its kernel lowers the path MTU towards the SNAT address).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use balancer_tests::{
    default_config,
    frame::{self, Icmp, Spec, L4},
    topology::{CLIENT_ADDR, LB_BACKEND_ADDR, VIP},
    Running, Topology, DEFAULT_TIMEOUT,
};
use balancer_wire::icmpv4::{unreachable, Message};

/// A UDP VIP whose backend has nothing listening on its port.
const CLOSED_PORT: u16 = 5399;

/// The value of `counter` in the agent's status (0 when it is not listed).
fn counter(run: &Running, counter: &str) -> u64 {
    let status = run.agent.cli_ok(&["status"]).expect("balancer status");
    status
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(counter)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_from_the_vip() {
    let run = Running::start_with(1, |topo| {
        format!(
            "{}\n[[pool]]\nname = \"closed\"\nbackends = [{{ address = \"{}\", port = {CLOSED_PORT} }}]\n\n\
             [[vip]]\nname = \"closed\"\naddress = \"{VIP}\"\nport = {CLOSED_PORT}\nprotocol = \"udp\"\n\
             pool = \"closed\"\n",
            default_config(topo, "maglev"),
            topo.backend_addr(1),
        )
    });
    let vip = SocketAddrV4::new(VIP, CLOSED_PORT);
    let outcome = run.client.run(move || -> std::io::Result<usize> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(vip)?;
        sock.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        sock.send(b"anyone?")?;
        sock.recv(&mut [0u8; 64])
    });
    match outcome {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!(
            "a datagram to {vip}, whose backend has no socket on its port, must end in \
             ECONNREFUSED (the backend's ICMP port unreachable, translated to come from the \
             VIP); got {other:?}"
        ),
    }
    assert!(
        counter(&run, "icmp_to_client") >= 1,
        "the error must have crossed the data plane (icmp_to_client)"
    );
}

/// The path MTU the backend's kernel has cached towards `addr`, if any.
fn cached_mtu(run: &Running, addr: Ipv4Addr) -> Option<u32> {
    let route = run
        .topo
        .backend(1)
        .ip(&["route", "get", &addr.to_string()])
        .expect("ip route get in the backend");
    let mut words = route.split_whitespace();
    words.find(|&w| w == "mtu")?;
    words.next()?.parse().ok()
}

/// Sends `msg` as an ICMP message to `to` from a raw socket (the kernel adds the IPv4
/// header).
fn send_icmp(to: Ipv4Addr, msg: &[u8]) -> std::io::Result<()> {
    // SAFETY: plain libc calls; the buffers outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let result = if sent < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

#[test]
fn fragmentation_needed_from_the_clients_side_lowers_the_backends_path_mtu() {
    let run = Running::start(1, "maglev");
    assert_eq!(
        cached_mtu(&run, LB_BACKEND_ADDR),
        None,
        "the backend must start without a cached path MTU towards the SNAT address"
    );
    // A UDP flow through the VIP, answered by the backend's echo server.
    let client_port = run.client.run(|| -> std::io::Result<u16> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        sock.send_to(b"hello", Topology::vip_udp())?;
        sock.recv_from(&mut [0u8; 2048])?;
        Ok(sock.local_addr()?.port())
    });
    let client_port = client_port.expect("a UDP request to the VIP");
    // A router between the balancer and the client (played by the client) could not
    // forward a large reply of that flow: it quotes the reply's IPv4 header and 8 bytes.
    let reply = frame::build(&Spec {
        src: VIP,
        dst: CLIENT_ADDR,
        sport: Topology::vip_udp().port(),
        dport: client_port,
        l4: L4::Udp { checksum: false },
        payload: vec![0; 1400],
        ..Spec::default()
    });
    let error = frame::icmp_message(&Icmp {
        kind: Message::DST_UNREACHABLE,
        code: unreachable::FRAG_NEEDED,
        rest: 1400,
        body: frame::ip_datagram(&reply)[..28].to_vec(),
    });
    run.client
        .run(move || send_icmp(VIP, &error))
        .expect("sending the ICMP error from the client's namespace");
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while cached_mtu(&run, LB_BACKEND_ADDR).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cached_mtu(&run, LB_BACKEND_ADDR),
        Some(1400),
        "the backend must learn the path MTU of 1400 towards the SNAT address {LB_BACKEND_ADDR} \
         (the error translated to quote its own tuple)"
    );
    assert!(
        counter(&run, "icmp_to_backend") >= 1,
        "the error must have crossed the data plane (icmp_to_backend)"
    );
}
