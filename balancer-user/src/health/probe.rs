//! One check of a backend: the [`Prober`] runs a check of any type against a target within
//! the check's timeout and reports a [`CheckOutcome`]. TCP checks go to the kept socket of
//! [`super::tcp`] or to the SYN engine of [`super::syn`], HTTP checks to [`super::http`];
//! the UDP check is here.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use humantime_serde::re::humantime;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::config::{CheckConfig, CheckKind, UdpCheck};
use super::http::{self, find};
use super::syn::SynClient;
use super::tcp::{connect_reason, CheckSocket};

/// Largest UDP reply that is read whole.
const MAX_UDP_REPLY: usize = 64 * 1024;

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// From the start of the check to its result.
    pub latency: Duration,
    /// `"ok"`, or why the check failed: `"connect refused"`, `"status 503"`,
    /// `"body lacks \"ok\""`, `"timeout after 1s"`, `"no reply (timeout after 1s)"`, ...
    pub reason: String,
}

/// Runs one check of `check.kind` against `target` with `check.timeout`, never panics,
/// never takes longer than the timeout (+ scheduling slack).
///
/// `target` is probed as given: [`CheckConfig::target`] applies the check's `address`
/// and `port` overrides to a backend's address (the [`super::Checker`] does that itself).
/// Type `none` succeeds at once without touching the network. (The [`super::Checker`]'s tasks
/// use a [`Prober`] each, which keeps its TCP check socket between checks.)
pub async fn check_once(check: &CheckConfig, target: SocketAddr) -> CheckOutcome {
    Prober::default().check(check, target).await
}

/// Runs the checks of one backend (one target address), one after the other, keeping what
/// can be reused between them: the socket of TCP checks (see [`super::tcp`]), unless TCP
/// checks of IPv4 targets go to a SYN engine (see [`super::syn`]).
#[derive(Default)]
pub struct Prober {
    // Visible to the SYN engine's tests, which check which of the two a prober uses.
    pub(super) tcp: Option<CheckSocket>,
    pub(super) syn: Option<SynClient>,
}

impl Prober {
    /// A prober whose TCP checks of IPv4 targets are sent by `syn`'s engine.
    pub(super) fn with_syn(syn: Option<SynClient>) -> Prober {
        Prober { tcp: None, syn }
    }

    /// Like [`check_once`].
    pub async fn check(&mut self, check: &CheckConfig, target: SocketAddr) -> CheckOutcome {
        let start = Instant::now();
        let result = match &check.kind {
            CheckKind::Tcp => self.tcp_probe(check, target).await,
            kind => {
                let probe = async {
                    match kind {
                        CheckKind::Http(http) => http::probe(http, target).await,
                        CheckKind::Udp(udp) => udp_probe(udp, target).await,
                        CheckKind::None | CheckKind::Tcp => Ok(()),
                    }
                };
                tokio::time::timeout(check.timeout, probe)
                    .await
                    .unwrap_or_else(|_| Err(timeout_reason(check)))
            }
        };
        let latency = start.elapsed();
        match result {
            Ok(()) => CheckOutcome {
                ok: true,
                latency,
                reason: "ok".to_owned(),
            },
            Err(reason) => CheckOutcome {
                ok: false,
                latency,
                reason,
            },
        }
    }

    /// Sends a SYN through the engine (IPv4 targets, while there is one); otherwise connects
    /// the kept socket (a new one the first time, or after an error), then resets the
    /// connection. Both within the check's timeout.
    async fn tcp_probe(&mut self, check: &CheckConfig, target: SocketAddr) -> Probe {
        let deadline = Instant::now() + check.timeout;
        if let (Some(syn), SocketAddr::V4(v4)) = (&self.syn, target) {
            match tokio::time::timeout_at(deadline, syn.probe(v4)).await {
                Ok(Some(result)) => return result,
                // The engine has stopped: this check and the next ones use the socket.
                Ok(None) => self.syn = None,
                Err(_) => return Err(timeout_reason(check)),
            }
        }
        let mut socket = match self.tcp.take() {
            Some(socket) => socket,
            None => CheckSocket::new(target).map_err(|e| format!("cannot create a socket: {e}"))?,
        };
        let result = match tokio::time::timeout_at(deadline, socket.connect(target)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(connect_reason(&e)),
            Err(_) => Err(timeout_reason(check)),
        };
        // A socket that cannot be reset is dropped (closed); the next check makes another.
        match socket.reset() {
            Ok(()) => self.tcp = Some(socket),
            Err(e) => log::debug!("{target}: resetting the check socket: {e}"),
        }
        result
    }
}

fn timeout_reason(check: &CheckConfig) -> String {
    let after = humantime::format_duration(check.timeout);
    match check.kind {
        CheckKind::Udp(_) => format!("no reply (timeout after {after})"),
        _ => format!("timeout after {after}"),
    }
}

/// Why a probe failed, as shown in [`CheckOutcome::reason`].
type Probe = Result<(), String>;

async fn udp_probe(udp: &UdpCheck, target: SocketAddr) -> Probe {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("socket failed: {e}"))?;
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    // ICMP port unreachable shows up as ECONNREFUSED on a connected UDP socket.
    let unreachable = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused => "port unreachable".to_owned(),
        _ => format!("receive failed: {e}"),
    };
    socket
        .send(udp.payload.as_bytes())
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => "port unreachable".to_owned(),
            _ => format!("send failed: {e}"),
        })?;
    let mut reply = Vec::with_capacity(MAX_UDP_REPLY);
    socket.recv_buf(&mut reply).await.map_err(unreachable)?;
    match &udp.expect {
        Some(expected) if find(&reply, expected.as_bytes()).is_none() => {
            Err(format!("reply lacks {expected:?}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{HttpCheck, StatusRanges};
    use super::super::testing::{closed_port, ms, LOCALHOST};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    fn check(kind: CheckKind, timeout: Duration) -> CheckConfig {
        CheckConfig {
            kind,
            timeout,
            ..CheckConfig::default()
        }
    }

    fn http(expect_body: Option<&str>) -> CheckKind {
        CheckKind::Http(HttpCheck {
            path: "/health".into(),
            expect_body: expect_body.map(str::to_owned),
            ..HttpCheck::default()
        })
    }

    fn udp(payload: &str, expect: Option<&str>) -> CheckKind {
        CheckKind::Udp(UdpCheck {
            payload: payload.into(),
            expect: expect.map(str::to_owned),
        })
    }

    /// An HTTP server for one request: answers `response` and returns the request.
    async fn http_server(response: &'static str) -> (SocketAddr, JoinHandle<String>) {
        http_server_on(LOCALHOST.into(), response).await
    }

    /// [`http_server`] on `ip`.
    async fn http_server_on(
        ip: std::net::IpAddr,
        response: &'static str,
    ) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&request, b"\r\n\r\n").is_none() {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before the end of the request");
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn tcp_check_ok() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        let outcome = check_once(&check(CheckKind::Tcp, ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.reason, "ok");
        assert!(outcome.latency < ms(1000));
    }

    #[tokio::test]
    async fn tcp_and_http_checks_of_ipv6_backends() {
        // TCP: connected by the kept socket (the SYN engine is IPv4's), then refused.
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        let mut prober = Prober::default();
        for _ in 0..2 {
            let outcome = prober.check(&check(CheckKind::Tcp, ms(1000)), target).await;
            assert!(outcome.ok, "{outcome:?}");
        }
        drop(listener);
        let refused = prober.check(&check(CheckKind::Tcp, ms(1000)), target).await;
        assert!(refused.reason.contains("refused"), "{refused:?}");
        // HTTP, with the address in brackets in `Host`.
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (target, server) = http_server_on(Ipv6Addr::LOCALHOST.into(), ok).await;
        let outcome = check_once(&check(http(Some("ok")), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        let request = server.await.unwrap();
        assert!(
            request.contains(&format!("\r\nHost: [::1]:{}\r\n", target.port())),
            "{request}"
        );
    }

    #[tokio::test]
    async fn tcp_check_refused() {
        let outcome = check_once(&check(CheckKind::Tcp, ms(1000)), closed_port()).await;
        assert!(!outcome.ok);
        assert!(outcome.reason.contains("refused"), "{outcome:?}");
    }

    /// The kept socket's descriptor, asserting there is one.
    fn kept_fd(prober: &Prober) -> i32 {
        use std::os::fd::AsRawFd as _;
        prober
            .tcp
            .as_ref()
            .expect("a kept TCP socket")
            .fd()
            .as_raw_fd()
    }

    /// A listener whose accept queue holds one connection (backlog 0), so a second SYN
    /// before an accept is dropped silently.
    fn tiny_listener(port: u16) -> TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from((LOCALHOST, port))).unwrap();
        socket.listen(0).unwrap()
    }

    #[tokio::test]
    async fn prober_keeps_one_socket_through_success_timeout_and_refusal() {
        let tcp = check(CheckKind::Tcp, ms(300));
        let listener = tiny_listener(0);
        let target = listener.local_addr().unwrap();
        let mut prober = Prober::default();

        let first = prober.check(&tcp, target).await;
        assert!(first.ok, "{first:?}");
        let fd = kept_fd(&prober);
        // The handshake's last ACK was never sent (the reset came first): nothing reaches
        // the backend's accept queue.
        assert!(
            tokio::time::timeout(ms(200), listener.accept())
                .await
                .is_err(),
            "a check left a connection for the backend to accept"
        );
        assert!(prober.check(&tcp, target).await.ok);

        // A full accept queue drops SYNs silently: the check times out.
        let queued = tokio::net::TcpStream::connect(target).await.unwrap();
        let timed_out = prober.check(&tcp, target).await;
        assert_eq!(timed_out.reason, "timeout after 300ms", "{timed_out:?}");
        assert_eq!(kept_fd(&prober), fd);
        drop(listener.accept().await.unwrap());
        drop(queued);
        let after_timeout = prober.check(&tcp, target).await;
        assert!(after_timeout.ok, "{after_timeout:?}");

        drop(listener);
        let refused = prober.check(&tcp, target).await;
        assert!(refused.reason.contains("refused"), "{refused:?}");
        assert_eq!(kept_fd(&prober), fd);

        let _listener = tiny_listener(target.port());
        let back = prober.check(&tcp, target).await;
        assert!(back.ok, "{back:?}");
        assert_eq!(kept_fd(&prober), fd, "one socket for every check");
    }

    #[tokio::test]
    async fn http_check_times_out_when_server_never_answers() {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        // Accepts and holds the connection, never answering.
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        });
        let outcome = check_once(&check(http(None), ms(200)), target).await;
        server.abort();
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "timeout after 200ms");
        assert!(outcome.latency >= ms(200), "{outcome:?}");
        assert!(outcome.latency < ms(1000), "{outcome:?}");
    }

    #[tokio::test]
    async fn http_check_ok_and_request_shape() {
        let (target, server) = http_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /health HTTP/1.0\r\n"), "{request}");
        assert!(
            request.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", target.port())),
            "{request}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
    }

    #[tokio::test]
    async fn http_check_host_and_method() {
        let (target, server) = http_server("HTTP/1.0 204 No Content\r\n\r\n").await;
        let kind = CheckKind::Http(HttpCheck {
            method: "HEAD".into(),
            host: Some("example.org".into()),
            ..HttpCheck::default()
        });
        let outcome = check_once(&check(kind, ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        let request = server.await.unwrap();
        assert!(request.starts_with("HEAD / HTTP/1.0\r\n"), "{request}");
        assert!(request.contains("\r\nHost: example.org\r\n"), "{request}");
    }

    #[tokio::test]
    async fn http_check_bad_status() {
        let (target, _server) =
            http_server("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "status 500");

        // The same status is fine when listed.
        let (target, _server) = http_server("HTTP/1.1 500 Oops\r\n\r\n").await;
        let kind = CheckKind::Http(HttpCheck {
            expect_status: "200,500-503".parse::<StatusRanges>().unwrap(),
            ..HttpCheck::default()
        });
        assert!(check_once(&check(kind, ms(1000)), target).await.ok);
    }

    #[tokio::test]
    async fn http_check_body() {
        let (target, _server) = http_server("HTTP/1.1 200 OK\r\n\r\nnot ready").await;
        let outcome = check_once(&check(http(Some("ok")), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "body lacks \"ok\"");

        let (target, _server) = http_server("HTTP/1.1 200 OK\r\nX-Ok: no\r\n\r\nall is ok\n").await;
        let outcome = check_once(&check(http(Some("ok")), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");

        // The text in a header does not count.
        let (target, _server) = http_server("HTTP/1.1 200 OK\r\nX-Ok: ok\r\n\r\nnope").await;
        assert!(
            !check_once(&check(http(Some("ok")), ms(1000)), target)
                .await
                .ok
        );
    }

    #[tokio::test]
    async fn http_check_body_across_reads() {
        // A body larger than one read, with the text straddling read boundaries.
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            stream.write_all(&vec![b'x'; 20_000]).await.unwrap();
            stream.write_all(b"sta").await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(ms(20)).await;
            stream.write_all(b"tus: green").await.unwrap();
        });
        let outcome = check_once(&check(http(Some("status: green")), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
    }

    #[tokio::test]
    async fn http_check_not_http() {
        let (target, _server) = http_server("SSH-2.0-OpenSSH_9.2\r\n").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "bad status line \"SSH-2.0-OpenSSH_9.2\"");

        let (target, _server) = http_server("").await;
        let outcome = check_once(&check(http(None), ms(1000)), target).await;
        assert_eq!(outcome.reason, "connection closed without a response");

        let outcome = check_once(&check(http(None), ms(1000)), closed_port()).await;
        assert_eq!(outcome.reason, "connect refused");
    }

    #[tokio::test]
    async fn udp_check_echo() {
        let server = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                let reply: &[u8] = if &buf[..n] == b"ping" {
                    b"pong"
                } else {
                    &buf[..n]
                };
                server.send_to(reply, from).await.unwrap();
            }
        });
        let outcome = check_once(&check(udp("ping", Some("pong")), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        // An empty datagram, any reply.
        let outcome = check_once(&check(udp("", None), ms(1000)), target).await;
        assert!(outcome.ok, "{outcome:?}");
        // A reply without the expected text.
        let outcome = check_once(&check(udp("hello", Some("pong")), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "reply lacks \"pong\"");
    }

    #[tokio::test]
    async fn udp_check_no_reply() {
        // Bound, so no ICMP unreachable comes back, but never answers.
        let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
        let target = silent.local_addr().unwrap();
        let outcome = check_once(&check(udp("ping", None), ms(150)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "no reply (timeout after 150ms)");
        assert!(outcome.latency >= ms(150));
        drop(silent);
    }

    #[tokio::test]
    async fn udp_check_port_unreachable() {
        let closed = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
        let target = closed.local_addr().unwrap();
        drop(closed);
        let outcome = check_once(&check(udp("ping", None), ms(1000)), target).await;
        assert!(!outcome.ok);
        assert_eq!(outcome.reason, "port unreachable");
    }

    #[tokio::test]
    async fn none_check_is_always_ok() {
        let outcome = check_once(&CheckConfig::default(), closed_port()).await;
        assert!(outcome.ok);
    }
}
