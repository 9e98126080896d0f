//! The telemetry listener: hyper (HTTP/1.1) on `[telemetry] listen`, routing `/metrics`,
//! `/status.json`, `/stats` and `/stats/action`; every answer comes from a status the
//! agent's loop gave, and every admin action is a control request to that loop.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::auth::{Expected, REALM};
use super::config::TelemetryConfig;
use super::page::PageOptions;
use super::rates::Rates;
use super::{action, metrics, page};
use crate::api::{self, Status};

/// Where the server sends control requests, each with where its answer goes (the agent
/// makes them `Event::Control`s).
pub type Ask = mpsc::Sender<(api::Request, oneshot::Sender<api::Response>)>;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a client has to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent's loop may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest admin form read.
const MAX_FORM: usize = 4096;

struct Server {
    ask: Ask,
    auth: Option<Expected>,
    page: PageOptions,
    rates: Mutex<Rates>,
}

/// Binds `config.listen` and serves it on tasks of its own; a sampler asks for the status
/// every `refresh` so that the page's rates are there on its first view.
///
/// # Errors
/// The address cannot be bound.
pub async fn start(config: &TelemetryConfig, ask: Ask) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("telemetry.listen: binding {}", config.listen))?;
    let server = Arc::new(Server {
        ask,
        auth: config.auth.as_ref().map(Expected::new),
        page: PageOptions {
            refresh: config.refresh,
            admin: config.admin,
        },
        // Long enough to span two refreshes of the page.
        rates: Mutex::new(Rates::new(
            (config.refresh * 2).max(Duration::from_secs(10)),
        )),
    });
    log::info!(
        "telemetry: serving /metrics, /status.json and /stats on http://{}{}",
        config.listen,
        if config.admin { " (admin mode)" } else { "" }
    );
    tokio::spawn(sample(Arc::clone(&server), config.refresh));
    tokio::spawn(accept_loop(listener, server));
    Ok(())
}

async fn sample(server: Arc<Server>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // The loop is gone: the agent is stopping. (Other failures: the next tick.)
        if let Err(Unavailable::Stopped) = server.status().await {
            return;
        }
    }
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("telemetry: accept: {e}");
                // With no file descriptor left accept fails at once: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(server.serve(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

enum Unavailable {
    Stopped,
    Slow,
    Refused(String),
}

impl Server {
    async fn ask(&self, request: api::Request) -> Result<Status, Unavailable> {
        let (reply, answer) = oneshot::channel();
        self.ask
            .send((request, reply))
            .await
            .map_err(|_| Unavailable::Stopped)?;
        let response = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| Unavailable::Slow)?
            .map_err(|_| Unavailable::Stopped)?;
        match (response.ok, response.status) {
            (true, Some(status)) => Ok(status),
            (_, _) => Err(Unavailable::Refused(
                response.error.unwrap_or_else(|| "no status".to_owned()),
            )),
        }
    }

    /// The status, recorded for the rates.
    async fn status(&self) -> Result<Status, Unavailable> {
        let status = self.ask(api::Request::Status).await?;
        self.rates
            .lock()
            .expect("no panic while recording")
            .record(Instant::now(), &status);
        Ok(status)
    }

    async fn serve(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(auth) = &self.auth {
            let header = request.headers().get(header::AUTHORIZATION);
            if !auth.accepts(header.map(HeaderValue::as_bytes)) {
                let mut response = text(StatusCode::UNAUTHORIZED, "authentication required\n");
                let challenge = format!("Basic realm=\"{REALM}\", charset=\"UTF-8\"");
                if let Ok(challenge) = HeaderValue::from_str(&challenge) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge);
                }
                return response;
            }
        }
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => {
                self.answer(|s| (metrics::CONTENT_TYPE, metrics::render(s)))
                    .await
            }
            (Method::GET, "/status.json") => {
                self.answer(|s| {
                    // As `balancer status --json` prints it.
                    let json = serde_json::to_string_pretty(s).expect("status serializes");
                    ("application/json", json + "\n")
                })
                .await
            }
            (Method::GET, "/stats") => {
                let status = self.status().await;
                match status {
                    Ok(status) => {
                        let rates = self.rates.lock().expect("no panic while rendering");
                        let html = page::render(&status, &rates, &self.page);
                        body(StatusCode::OK, "text/html; charset=utf-8", html)
                    }
                    Err(e) => unavailable(&e),
                }
            }
            (Method::GET, "/") => redirect("/stats"),
            (Method::POST, "/stats/action") => self.action(request).await,
            (_, "/metrics" | "/status.json" | "/stats" | "/" | "/stats/action") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /stats, /metrics or /status.json\n",
            ),
        }
    }

    async fn answer(
        &self,
        render: impl FnOnce(&Status) -> (&'static str, String),
    ) -> Response<Full<Bytes>> {
        match self.status().await {
            Ok(status) => {
                let (content_type, text) = render(&status);
                body(StatusCode::OK, content_type, text)
            }
            Err(e) => unavailable(&e),
        }
    }

    /// An admin form: refused unless admin mode is on (and so authentication, checked
    /// already) and the form comes from this page's origin; else the control request.
    async fn action(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.page.admin {
            return text(
                StatusCode::FORBIDDEN,
                "admin mode is off (telemetry.admin)\n",
            );
        }
        if !same_origin(&request) {
            return text(StatusCode::FORBIDDEN, "the form comes from another site\n");
        }
        let form = match Limited::new(request.into_body(), MAX_FORM).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n"),
        };
        let request = match action::parse(&String::from_utf8_lossy(&form)) {
            Ok(request) => request,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        log::info!("telemetry: stats page admin: {request:?}");
        match self.ask(request).await {
            Ok(_) => redirect("/stats"),
            Err(Unavailable::Refused(e)) => text(StatusCode::CONFLICT, &format!("{e}\n")),
            Err(e) => unavailable(&e),
        }
    }
}

/// Whether a form post comes from the page itself: browsers send `Origin` with posts, and
/// a page elsewhere must not make an authenticated operator's browser change backends.
fn same_origin<B>(request: &Request<B>) -> bool {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        // Not a browser (curl, scripts): they hold the credentials themselves.
        return true;
    };
    let host = request.headers().get(header::HOST);
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host);
    matches!((origin_host, host.and_then(|h| h.to_str().ok())), (Some(a), Some(b)) if a == b)
}

fn body(status: StatusCode, content_type: &'static str, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", text.to_owned())
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::SEE_OTHER, "");
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

fn unavailable(e: &Unavailable) -> Response<Full<Bytes>> {
    let why = match e {
        Unavailable::Stopped => "the agent is stopping".to_owned(),
        Unavailable::Slow => "the agent did not answer in time".to_owned(),
        Unavailable::Refused(e) => e.clone(),
    };
    text(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n"))
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    fn post(origin: Option<&str>, host: &str) -> http::Request<()> {
        let mut b = http::Request::post("/stats/action").header("host", host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        assert!(same_origin(&post(None, "127.0.0.1:9901")));
        assert!(same_origin(&post(
            Some("http://127.0.0.1:9901"),
            "127.0.0.1:9901"
        )));
        assert!(!same_origin(&post(
            Some("https://evil.example"),
            "127.0.0.1:9901"
        )));
        assert!(!same_origin(&post(Some("null"), "127.0.0.1:9901")));
    }
}
