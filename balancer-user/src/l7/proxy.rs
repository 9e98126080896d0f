//! The reverse proxy of HTTP-mode VIPs: hyper 1 on both sides. Each VIP listens on its
//! address (bound with `IP_FREEBIND`, so VRRP may add the address later), routes each
//! request by its rules to a pool, picks a backend there, and streams the request and the
//! answer through (keep-alive and pooled connections on both sides, upgrades passed on).
//! Counters per VIP, rule and backend; a graceful drain on shutdown. A reload swaps a
//! running VIP's rules, pools and settings under its listener (each request takes the
//! version current when it starts), and starts or drains whole VIPs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::balance::{PoolSelector, RequestKey, SetCookie};
use super::headers::{self, ForwardedStyle};
use super::rules::Rules;
use super::stats::{BackendCounters, UpstreamError};
use crate::api::HttpVipStatus;
use crate::sys;
use vip::{Running, Vip};

mod vip;

/// The body both sides of the proxy carry.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Timeouts and limits of one HTTP VIP (HAProxy's names where it has them).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// `timeout connect`: connecting to a backend.
    pub connect_timeout: Duration,
    /// `timeout server`: a backend's answer (its headers) after the request was sent.
    pub server_timeout: Duration,
    /// `timeout http-request`: a client's whole request head (slowloris).
    pub http_request_timeout: Duration,
    /// `maxconn`: requests in progress at once on the VIP; more wait in a queue.
    pub maxconn: usize,
    /// `timeout queue`: how long a request may wait for a slot.
    pub queue_timeout: Duration,
    /// Connect failures retried on another backend (idempotent requests without a body).
    pub retries: u32,
    pub forwarded: ForwardedStyle,
    /// Adds `X-Request-Id` to requests that have none.
    pub request_id: bool,
    /// Most headers in a request (more: 431).
    pub max_headers: usize,
    /// Most bytes of a request head (more: 431).
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// A line per request to the log (target `balancer::access`).
    pub access_log: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(5),
            server_timeout: Duration::from_secs(30),
            http_request_timeout: Duration::from_secs(10),
            maxconn: 10_000,
            queue_timeout: Duration::from_secs(5),
            retries: 3,
            forwarded: ForwardedStyle::XForwarded,
            request_id: false,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(10),
            access_log: false,
        }
    }
}

/// One HTTP VIP to serve.
pub struct HttpVipSpec {
    pub name: String,
    pub listen: SocketAddr,
    pub rules: Rules,
    /// (name, pool) of each rule, then the default pool's: for status.
    pub rule_names: Vec<(String, String)>,
    pub settings: ProxySettings,
}

/// The proxy of every HTTP VIP: what the agent holds.
pub struct Proxy {
    vips: Vec<Running>,
}

impl Proxy {
    /// Binds every VIP's listener and starts serving; `pools` holds every pool a rule or a
    /// default names (the agent keeps their backend sets current).
    ///
    /// # Errors
    /// A listener that cannot be bound, named by VIP.
    pub fn start(
        specs: Vec<HttpVipSpec>,
        pools: &Arc<HashMap<String, Arc<PoolSelector>>>,
    ) -> anyhow::Result<Proxy> {
        let mut vips = Vec::new();
        for spec in specs {
            vips.push(Running::start(spec, pools)?);
        }
        Ok(Proxy { vips })
    }

    /// Serves `specs` from now on: a VIP listening where it did takes its new rules, pools
    /// and settings at once (requests under way finish with the old ones); one no longer
    /// there stops accepting and drains in the background; a new one starts listening.
    ///
    /// # Errors
    /// A new VIP's listener that cannot be bound (the VIPs before it were applied).
    pub fn reconfigure(
        &mut self,
        specs: Vec<HttpVipSpec>,
        pools: &Arc<HashMap<String, Arc<PoolSelector>>>,
    ) -> anyhow::Result<()> {
        let same = |r: &Running, s: &HttpVipSpec| {
            let v = r.vip.load();
            v.name == s.name && v.listen == s.listen
        };
        let (kept, gone): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.vips)
            .into_iter()
            .partition(|r| specs.iter().any(|s| same(r, s)));
        for running in gone {
            log::info!(
                "vip {}: HTTP proxy stops (removed by a reload)",
                running.vip.load().name
            );
            let _ = running.stop.send(true);
            // (The task drains the VIP's connections on its own.)
        }
        self.vips = kept;
        for spec in specs {
            match self.vips.iter().find(|r| same(r, &spec)) {
                Some(running) => {
                    let previous = running.vip.load_full();
                    running
                        .vip
                        .store(Arc::new(Vip::new(spec, pools, Some(&previous))));
                }
                None => self.vips.push(Running::start(spec, pools)?),
            }
        }
        Ok(())
    }

    /// The address each VIP listens on.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        self.vips.iter().map(|r| r.vip.load().listen).collect()
    }

    /// The longest drain timeout of the VIPs.
    pub fn drain_timeout(&self) -> Duration {
        self.vips
            .iter()
            .map(|r| r.vip.load().settings.drain_timeout)
            .max()
            .unwrap_or_default()
    }

    /// Every VIP's counters.
    pub fn status(&self) -> Vec<HttpVipStatus> {
        self.vips
            .iter()
            .map(|r| {
                let v = r.vip.load();
                v.counters.snapshot(&v.name, v.listen, &v.rule_names)
            })
            .collect()
    }

    /// Stops accepting, lets requests in flight finish (each VIP's drain timeout at most).
    pub async fn shutdown(self) {
        for running in &self.vips {
            let _ = running.stop.send(true);
        }
        for running in self.vips {
            let _ = running.task.await;
        }
    }
}

/// A listening socket on `addr` that may be bound before the address is on an interface
/// (`IP_FREEBIND`), as a VRRP Backup's VIP is not.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // The configuration refuses IPv6 HTTP VIPs.
    let SocketAddr::V4(addr) = addr else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("{addr}: HTTP-mode VIPs are IPv4 only"),
        ));
    };
    let fd = sys::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    let one: libc::c_int = 1;
    sys::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    sys::setsockopt(&fd, libc::IPPROTO_IP, libc::IP_FREEBIND, &one)?;
    let sockaddr = sys::sockaddr_in(addr);
    // SAFETY: a valid sockaddr_in of the size passed.
    sys::check(unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            std::ptr::from_ref(&sockaddr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    // SAFETY: a bound socket.
    sys::check(unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 4096) })?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// Accepts connections until told to stop, then drains them: each connection finishes the
/// request it is serving and closes (bounded by the drain timeout).
async fn serve(slot: Arc<ArcSwap<Vip>>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        log::warn!("vip {}: accepting a connection: {e}", slot.load().name);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                tokio::spawn(connection(Arc::clone(&slot), stream, client, stop.clone()));
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let vip = slot.load_full();
    let deadline = Instant::now() + vip.settings.drain_timeout;
    while vip.counters.active_connections.load(Relaxed) > 0 {
        if Instant::now() >= deadline {
            log::warn!(
                "vip {}: connections still open after the drain timeout ({:?}); closing them",
                vip.name,
                vip.settings.drain_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves one client connection until it closes, or, once told to stop, until the request
/// under way is answered.
async fn connection(
    slot: Arc<ArcSwap<Vip>>,
    stream: tokio::net::TcpStream,
    client: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let vip = slot.load_full();
    let _ = stream.set_nodelay(true);
    vip.counters.connections.fetch_add(1, Relaxed);
    vip.counters.active_connections.fetch_add(1, Relaxed);
    // Nothing of hyper's (its buffers) until the client sends a byte, within the request
    // timeout: a connection that never speaks costs only this task.
    let first_byte = tokio::select! {
        ready = tokio::time::timeout(vip.settings.http_request_timeout, stream.readable()) => {
            matches!(ready, Ok(Ok(())))
        }
        _ = stop.changed() => false,
    };
    if !first_byte {
        vip.counters.active_connections.fetch_sub(1, Relaxed);
        return;
    }
    // Each request takes the VIP's version current when it comes (a reload may swap it).
    let service = service_fn(move |request| {
        let vip = slot.load_full();
        async move { Ok::<_, Infallible>(handle(&vip, client, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(vip.settings.http_request_timeout)
        .max_buf_size(vip.settings.max_header_bytes.max(8192))
        .max_headers(vip.settings.max_headers)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        log::debug!("vip {}: connection from {client}: {e}", vip.name);
    }
    vip.counters.active_connections.fetch_sub(1, Relaxed);
}

/// Methods a retry may send again (RFC 9110 section 9.2.2), when the request has no body.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A short answer of the proxy's own.
fn error_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Serves one request: route, pick, forward (retrying connect failures), answer.
async fn handle(
    vip: &Arc<Vip>,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let counters = &vip.counters;
    counters.requests.fetch_add(1, Relaxed);
    counters.active_requests.fetch_add(1, Relaxed);
    let line = vip.settings.access_log.then(|| {
        format!(
            "\"{} {} {:?}\"",
            request.method(),
            request.uri(),
            request.version()
        )
    });
    let mut trace = Trace::default();
    let response = forward(vip, client.ip(), request, &mut trace).await;
    counters.active_requests.fetch_sub(1, Relaxed);
    let took = started.elapsed();
    counters.response(response.status().as_u16(), took);
    if let Some(line) = line {
        access_log(vip, client, &trace, &response, took, &line);
    }
    response
}

/// What became of a request, for the access log.
#[derive(Debug, Default)]
struct Trace {
    pool: String,
    backend: Option<SocketAddr>,
    retries: usize,
}

/// One access log line (target `balancer::access`), HAProxy's httplog fields in its order:
/// `CLIENT:PORT [DATE] VIP POOL/BACKEND TIME_MS STATUS BYTES RETRIES "METHOD URI VERSION"`.
/// It is written when the answer's head is ready: `TIME_MS` is the time to it, `BYTES` its
/// `Content-Length` (`-` when streamed without one).
fn access_log(
    vip: &Vip,
    client: SocketAddr,
    trace: &Trace,
    response: &Response<ProxyBody>,
    took: Duration,
    request_line: &str,
) {
    let date = humantime_serde::re::humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let backend = trace
        .backend
        .map_or_else(|| "<NOSRV>".to_owned(), |b| b.to_string());
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    log::info!(
        target: "balancer::access",
        "{client} [{date}] {} {}/{backend} {} {} {bytes} {} {request_line}",
        vip.name,
        if trace.pool.is_empty() { "-" } else { &trace.pool },
        took.as_millis(),
        response.status().as_u16(),
        trace.retries,
    );
}

async fn forward(
    vip: &Arc<Vip>,
    client: IpAddr,
    mut request: Request<Incoming>,
    trace: &mut Trace,
) -> Response<ProxyBody> {
    let counters = &vip.counters;
    let upgrading = headers::wants_upgrade(request.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
    let (request, body) = request.into_parts();
    let route = vip.rules.route(&request, client);
    counters.routed(route.rule);
    if vip.settings.access_log {
        route.pool.clone_into(&mut trace.pool);
    }
    let Some(pool) = vip.pools.get(route.pool) else {
        counters.error(UpstreamError::NoBackend);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: no such pool",
        );
    };
    let head = upstream_head(vip, &request, client, upgrading);
    let retryable = idempotent(&request.method) && body.is_end_stream();
    let mut body = Some(body.map_frame(count_frames(vip, true)).boxed());

    // maxconn: a slot per request in progress, waited for at most the queue timeout (and
    // counted as queued only while it waits).
    let slot = if let Ok(slot) = Arc::clone(&vip.slots).try_acquire_owned() {
        Ok(Ok(slot))
    } else {
        counters.queued.fetch_add(1, Relaxed);
        let slot = tokio::time::timeout(
            vip.settings.queue_timeout,
            Arc::clone(&vip.slots).acquire_owned(),
        )
        .await;
        counters.queued.fetch_sub(1, Relaxed);
        slot
    };
    let Ok(Ok(slot)) = slot else {
        counters.error(UpstreamError::QueueTimeout);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: queue full",
        );
    };

    let key = RequestKey {
        client,
        path_and_query: request
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str),
        headers: &request.headers,
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    // Waiting for a backend under its maxconn, at most the queue timeout in all.
    let mut queued_until: Option<Instant> = None;
    let (pick, active, upstream_response) = loop {
        // Registered before looking, so that a release in between is not missed.
        let released = pool.released().notified();
        let Some(pick) = pool.pick(&key, &tried) else {
            if pool.saturated(&tried) {
                let until = *queued_until
                    .get_or_insert_with(|| Instant::now() + vip.settings.queue_timeout);
                counters.queued.fetch_add(1, Relaxed);
                let woke = tokio::time::timeout_at(until.into(), released).await;
                counters.queued.fetch_sub(1, Relaxed);
                if woke.is_err() {
                    counters.error(UpstreamError::QueueTimeout);
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "503 Service Unavailable: every backend is at its maxconn",
                    );
                }
                continue;
            }
            let error = if tried.is_empty() {
                UpstreamError::NoBackend
            } else {
                UpstreamError::Connect
            };
            counters.error(error);
            return if tried.is_empty() {
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 Service Unavailable: no backend is up",
                )
            } else {
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "502 Bad Gateway: no backend answered",
                )
            };
        };
        trace.backend = Some(pick.addr);
        trace.retries = tried.len();
        let backend = counters.backend(pick.addr);
        backend.requests.fetch_add(1, Relaxed);
        let active = Active::new(&backend);
        let mut upstream = Request::new(body.take().unwrap_or_else(empty_body));
        *upstream.method_mut() = request.method.clone();
        *upstream.uri_mut() = backend_uri(pick.addr, &request.uri);
        *upstream.version_mut() = http::Version::HTTP_11;
        *upstream.headers_mut() = head.clone();
        pick.request_cookie.apply(upstream.headers_mut());
        let sent =
            tokio::time::timeout(vip.settings.server_timeout, vip.client.request(upstream)).await;
        match sent {
            Ok(Ok(response)) => break (pick, active, response),
            Ok(Err(e)) if e.is_connect() => {
                backend.errors.fetch_add(1, Relaxed);
                log::debug!("vip {}: connecting to {}: {e}", vip.name, pick.addr);
                if retryable && tried.len() < vip.settings.retries as usize {
                    counters.retries.fetch_add(1, Relaxed);
                    tried.push(pick.addr);
                    continue;
                }
                counters.error(UpstreamError::Connect);
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "502 Bad Gateway: cannot connect to a backend",
                );
            }
            Ok(Err(e)) => {
                backend.errors.fetch_add(1, Relaxed);
                log::debug!("vip {}: backend {}: {e}", vip.name, pick.addr);
                counters.error(UpstreamError::Protocol);
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "502 Bad Gateway: the backend's answer broke off",
                );
            }
            Err(_) => {
                backend.errors.fetch_add(1, Relaxed);
                counters.error(UpstreamError::Timeout);
                return error_response(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout");
            }
        }
    };

    answer(
        vip,
        upstream_response,
        pick.cookie.as_ref(),
        client_upgrade,
        (slot, pick.guard, active),
    )
}

/// The headers a request goes on with: hop-by-hop ones removed, the client described,
/// `Expect` dropped (the client's body is streamed as it comes: its 100-continue came from
/// our side), a request id when asked for.
fn upstream_head(
    vip: &Vip,
    request: &http::request::Parts,
    client: IpAddr,
    upgrading: bool,
) -> http::HeaderMap {
    let host = headers::request_host(&request.uri, &request.headers).map(str::to_owned);
    let mut head = request.headers.clone();
    headers::strip_hop_by_hop(&mut head, upgrading);
    head.remove(header::EXPECT);
    headers::add_forwarded(&mut head, vip.settings.forwarded, client, host.as_deref());
    if vip.settings.request_id && !head.contains_key(&REQUEST_ID) {
        if let Ok(id) = HeaderValue::from_str(&request_id()) {
            head.insert(REQUEST_ID.clone(), id);
        }
    }
    head
}

/// The backend's answer as the client gets it: hop-by-hop headers removed, the
/// persistence cookie set, the body streamed (holding `guard`, the request's slot and
/// active counts, until it ends), or an upgraded connection spliced to the client's.
fn answer<G: Send + Sync + 'static>(
    vip: &Arc<Vip>,
    response: Response<Incoming>,
    cookie: Option<&SetCookie>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    guard: G,
) -> Response<ProxyBody> {
    let (mut parts, upstream_body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    if let Some(cookie) = cookie {
        cookie.apply(&mut parts.headers);
    }
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let mut upstream = Response::from_parts(parts.clone(), upstream_body);
        let upstream_upgrade = hyper::upgrade::on(&mut upstream);
        let name = vip.name.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client_io, upstream_io)) => {
                    let mut client_io = TokioIo::new(client_io);
                    let mut upstream_io = TokioIo::new(upstream_io);
                    let _ = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await;
                }
                Err(e) => log::debug!("vip {name}: upgrade failed: {e}"),
            }
            drop(guard);
        });
        return Response::from_parts(parts, empty_body());
    }
    let count = count_frames(vip, false);
    let body = upstream_body
        .map_frame(move |frame| {
            let _ = &guard;
            count(frame)
        })
        .boxed();
    Response::from_parts(parts, body)
}

/// A request in progress on a backend, for its `active` counter.
struct Active(Arc<BackendCounters>);

impl Active {
    fn new(backend: &Arc<BackendCounters>) -> Self {
        backend.active.fetch_add(1, Relaxed);
        Active(Arc::clone(backend))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request id: unique per agent run, short, sortable by arrival.
fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    format!("{start:x}-{:x}", NEXT.fetch_add(1, Relaxed))
}

/// Counts the data bytes of frames going in (from clients) or out.
fn count_frames(
    vip: &Arc<Vip>,
    inbound: bool,
) -> impl Fn(hyper::body::Frame<Bytes>) -> hyper::body::Frame<Bytes> + Send + Sync + 'static {
    let vip = Arc::clone(vip);
    move |frame| {
        if let Some(data) = frame.data_ref() {
            let counter = if inbound {
                &vip.counters.bytes_in
            } else {
                &vip.counters.bytes_out
            };
            counter.fetch_add(data.len() as u64, Relaxed);
        }
        frame
    }
}

fn empty_body() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The backend's URI for a request: the backend's address, the request's path and query.
fn backend_uri(backend: SocketAddr, uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    format!("http://{backend}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}
