//! Client helpers: HTTP over new or kept-alive TCP connections and UDP requests, run inside a namespace through a worker thread.
//!
//! The free functions work in the network namespace of the calling thread; [`ClientNs`]
//! runs them on a worker thread that entered a namespace (normally the client's).

use crate::netns::{Netns, NsThread};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

/// Timeout the helpers use when the caller has no opinion.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as received; look them up with [`HttpResponse::header`].
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn request_text(addr: SocketAddr, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: balancer-tests\r\nAccept: */*\r\n\
         Connection: {connection}\r\n\r\n"
    )
}

/// Reads one response. With `need_length`, a response without Content-Length is an error
/// (a kept-alive connection could not find where the body ends).
fn read_response<R: BufRead>(reader: &mut R, need_length: bool) -> Result<HttpResponse> {
    let mut line = String::new();
    if reader
        .read_line(&mut line)
        .context("reading the status line")?
        == 0
    {
        bail!("connection closed before a response arrived");
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {:?}", line.trim_end());
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {:?}", line.trim_end()))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).context("reading headers")? == 0 {
            bail!("connection closed in the middle of the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| anyhow!("bad header line: {l:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| {
            v.parse::<usize>()
                .map_err(|_| anyhow!("bad Content-Length: {v:?}"))
        })
        .transpose()?;
    let body = match length {
        Some(n) => {
            let mut buf = vec![0; n];
            reader
                .read_exact(&mut buf)
                .with_context(|| format!("reading a {n}-byte body"))?;
            buf
        }
        None if need_length => bail!("response without Content-Length on a kept-alive connection"),
        None => {
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf).context("reading the body")?;
            buf
        }
    };
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `GET /` over a new TCP connection (`Connection: close`); returns the whole response.
/// `addr` is of either family (an IPv6 one is written `[ADDRESS]:PORT` in `Host`).
pub fn http_request(addr: impl Into<SocketAddr>, timeout: Duration) -> Result<HttpResponse> {
    let addr = addr.into();
    let run = || -> Result<HttpResponse> {
        let mut stream = connect(addr, timeout)?;
        stream
            .write_all(request_text(addr, true).as_bytes())
            .context("sending the request")?;
        read_response(&mut BufReader::new(stream), false)
    };
    run().with_context(|| format!("GET http://{addr}/"))
}

/// `GET /` over a new TCP connection; returns the body (the test servers answer with
/// their name). A status other than 200 is an error.
pub fn http_get(addr: impl Into<SocketAddr>, timeout: Duration) -> Result<String> {
    let addr = addr.into();
    let resp = http_request(addr, timeout)?;
    if resp.status != 200 {
        bail!(
            "GET http://{addr}/: status {} (body {:?})",
            resp.status,
            resp.body
        );
    }
    Ok(resp.body)
}

/// An HTTP/1.1 keep-alive connection that sends repeated requests on one TCP connection.
///
/// The socket belongs to the namespace of the thread that connected it; `get` can be
/// called from any thread.
#[derive(Debug)]
pub struct KeepAlive {
    addr: SocketAddrV4,
    reader: BufReader<TcpStream>,
    requests: usize,
}

impl KeepAlive {
    /// Connects to `addr` with [`DEFAULT_TIMEOUT`] for connecting and each request.
    pub fn connect(addr: SocketAddrV4) -> Result<KeepAlive> {
        KeepAlive::connect_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// Connects to `addr`; `timeout` bounds connecting and each request.
    pub fn connect_timeout(addr: SocketAddrV4, timeout: Duration) -> Result<KeepAlive> {
        let stream =
            connect(addr.into(), timeout).with_context(|| format!("keep-alive to {addr}"))?;
        Ok(KeepAlive {
            addr,
            reader: BufReader::new(stream),
            requests: 0,
        })
    }

    /// Sends `GET /` on the connection and returns the response.
    pub fn request(&mut self) -> Result<HttpResponse> {
        self.requests += 1;
        let n = self.requests;
        let addr = self.addr;
        let local = self.local_addr();
        let mut run = || -> Result<HttpResponse> {
            self.reader
                .get_mut()
                .write_all(request_text(addr.into(), false).as_bytes())
                .context("sending the request")?;
            let resp = read_response(&mut self.reader, true)?;
            if resp.wants_close() {
                bail!("the server closed the kept-alive connection (Connection: close)");
            }
            Ok(resp)
        };
        run().with_context(|| {
            format!("request #{n} on the kept-alive connection {local:?} -> {addr}")
        })
    }

    /// Sends `GET /` on the connection and returns the body; a status other than 200 is an
    /// error.
    pub fn get(&mut self) -> Result<String> {
        let resp = self.request()?;
        if resp.status != 200 {
            bail!(
                "request #{} on the kept-alive connection to {}: status {} (body {:?})",
                self.requests,
                self.addr,
                resp.status,
                resp.body
            );
        }
        Ok(resp.body)
    }

    /// The connection's local address (the client's ephemeral port).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.reader.get_ref().local_addr().ok()
    }

    /// Requests sent so far.
    pub fn requests(&self) -> usize {
        self.requests
    }
}

/// Sends `payload` to `addr` from a fresh ephemeral UDP socket and returns the reply as
/// text. A reply from another address than `addr` is an error (NAT must rewrite it).
pub fn udp_request(addr: SocketAddrV4, payload: &[u8], timeout: Duration) -> Result<String> {
    let run = || -> Result<String> {
        let sock = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
        sock.set_read_timeout(Some(timeout))?;
        sock.send_to(payload, addr).context("sending")?;
        let mut buf = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut buf).context("waiting for the reply")?;
        if from != SocketAddr::V4(addr) {
            bail!("the reply came from {from}, not from {addr}");
        }
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    run().with_context(|| format!("UDP request to {addr}"))
}

/// Answers counted by responder name, plus the failures.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// How often each name (backend) answered.
    pub counts: BTreeMap<String, usize>,
    /// One message per failed request (plus a last one when a `*_many` helper gave up).
    pub failures: Vec<String>,
}

impl Tally {
    /// Counts one result (`Ok(name)` or an error).
    pub fn record(&mut self, result: Result<String>) {
        match result {
            Ok(name) => *self.counts.entry(name).or_default() += 1,
            Err(e) => self
                .failures
                .push(format!("request {}: {e:#}", self.total() + 1)),
        }
    }

    /// Answers from `name`.
    pub fn count(&self, name: &str) -> usize {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// Requests answered.
    pub fn ok(&self) -> usize {
        self.counts.values().sum()
    }

    /// Requests answered or failed.
    pub fn total(&self) -> usize {
        self.ok() + self.failures.len()
    }

    /// Number of distinct names that answered.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }
}

impl fmt::Display for Tally {
    /// One line: `b1=30 b2=29 b3=31, 0 failed`, then up to 5 failure messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{}, {} failed",
            if counts.is_empty() {
                "no answers".to_string()
            } else {
                counts.join(" ")
            },
            self.failures.len()
        )?;
        for msg in self.failures.iter().take(5) {
            write!(f, "\n  {msg}")?;
        }
        if self.failures.len() > 5 {
            write!(f, "\n  ... and {} more", self.failures.len() - 5)?;
        }
        Ok(())
    }
}

/// The `*_many` helpers give up after this many failures in a row (a dead path would
/// otherwise cost one timeout per remaining request); the tally then has fewer than `n`
/// entries and a last failure saying so.
pub const MAX_CONSECUTIVE_FAILURES: usize = 5;

fn many(n: usize, mut one: impl FnMut(usize) -> Result<String>) -> Tally {
    let mut tally = Tally::default();
    let mut in_a_row = 0;
    for i in 0..n {
        let result = one(i);
        in_a_row = if result.is_ok() { 0 } else { in_a_row + 1 };
        tally.record(result);
        if in_a_row >= MAX_CONSECUTIVE_FAILURES && i + 1 < n {
            tally.failures.push(format!(
                "gave up after {in_a_row} failures in a row; {} of {n} requests not sent",
                n - i - 1
            ));
            break;
        }
    }
    tally
}

/// `n` [`http_get`]s, each on a new connection, tallied by answering backend.
pub fn http_get_many(addr: impl Into<SocketAddr>, n: usize, timeout: Duration) -> Tally {
    let addr = addr.into();
    many(n, |_| http_get(addr, timeout))
}

/// `n` [`udp_request`]s, each from a fresh socket, tallied by answering backend.
pub fn udp_request_many(addr: SocketAddrV4, n: usize, timeout: Duration) -> Tally {
    many(n, |i| {
        udp_request(addr, format!("ping {i}").as_bytes(), timeout)
    })
}

/// A worker thread inside a namespace (normally the client's, see
/// [`crate::Topology::client_ns`]) that runs the client helpers there.
///
/// Declare it after the topology so that it is dropped first.
pub struct ClientNs {
    thread: NsThread,
}

impl ClientNs {
    /// Starts a worker thread inside `ns`.
    pub fn new(ns: &Netns) -> Result<ClientNs> {
        Ok(ClientNs {
            thread: NsThread::new(ns)?,
        })
    }

    /// Runs any closure inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.thread.run(f)
    }

    /// [`http_get`] from inside the namespace.
    pub fn http_get(&self, addr: impl Into<SocketAddr>, timeout: Duration) -> Result<String> {
        let addr = addr.into();
        self.run(move || http_get(addr, timeout))
    }

    /// [`http_request`] from inside the namespace.
    pub fn http_request(
        &self,
        addr: impl Into<SocketAddr>,
        timeout: Duration,
    ) -> Result<HttpResponse> {
        let addr = addr.into();
        self.run(move || http_request(addr, timeout))
    }

    /// A [`KeepAlive`] connected from inside the namespace.
    pub fn keepalive(&self, addr: SocketAddrV4) -> Result<KeepAlive> {
        self.run(move || KeepAlive::connect(addr))
    }

    /// [`udp_request`] from inside the namespace.
    pub fn udp_request(
        &self,
        addr: SocketAddrV4,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<String> {
        let payload = payload.to_vec();
        self.run(move || udp_request(addr, &payload, timeout))
    }

    /// [`http_get_many`] from inside the namespace.
    pub fn http_get_many(&self, addr: impl Into<SocketAddr>, n: usize, timeout: Duration) -> Tally {
        let addr = addr.into();
        self.run(move || http_get_many(addr, n, timeout))
    }

    /// [`udp_request_many`] from inside the namespace.
    pub fn udp_request_many(&self, addr: SocketAddrV4, n: usize, timeout: Duration) -> Tally {
        self.run(move || udp_request_many(addr, n, timeout))
    }
}
