//! The control socket's server half: a root-only Unix socket speaking JSON lines
//! ([`crate::api`]); each request becomes an [`Event::Control`] for the agent's loop,
//! whose answer goes back on the same connection. Clients are bounded: so many at once,
//! so long to send a request, and accept errors (no file descriptor left) back off.

use std::{
    collections::HashMap,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, Semaphore},
};

use super::Event;
use crate::api::{Request, Response};

/// What control clients may hold of the agent.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once; another one is answered with an error and closed.
    max_connections: usize,
    /// How long a client has to send a whole request line (an idle connection is closed
    /// after it too) and to take its answer.
    request_timeout: Duration,
}

/// The CLI sends one request as soon as it connects, so these are generous for it and
/// small for whatever holds connections open.
const LIMITS: Limits = Limits {
    max_connections: 64,
    request_timeout: Duration::from_secs(5),
};

/// How long the accept loop pauses after an error: with no file descriptor left, `accept`
/// fails at once for as long as a connection waits, and retrying without a pause spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often one kind of accept error is logged at most.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Binds the control socket at `path` (replacing a stale one that nobody serves) and
/// serves it on tasks of its own; requests go to `events`.
pub fn start(path: &Path, events: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let listener = bind_socket(path)?;
    tokio::spawn(accept_loop(listener, events, LIMITS));
    Ok(())
}

fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the control socket's directory {}", dir.display())
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "control socket path {} exists and is not a socket (choose another path, or \
                 remove it if it is unused)",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is already serving {} (stop it first)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, events: mpsc::Sender<Event>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut errors = AcceptErrors::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => {
                    let events = events.clone();
                    tokio::spawn(async move {
                        serve_client(stream, events, limits.request_timeout).await;
                        drop(slot);
                    });
                }
                Err(_) => refuse(&stream, limits.max_connections),
            },
            Err(e) => {
                if let Some(message) = errors.record(&e, Instant::now()) {
                    log::warn!("{message}");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Tells a client over the cap why it is closed: one line into the fresh socket's empty
/// buffer, never waiting for it.
fn refuse(stream: &UnixStream, max: usize) {
    let response = Response::error(format!(
        "the agent is serving {max} control connections already; try again"
    ));
    let _ = stream.try_write(response_line(&response).as_bytes());
}

/// Accept errors, logged once per kind per [`ACCEPT_ERROR_LOG_INTERVAL`] with the number
/// left out since.
#[derive(Default)]
struct AcceptErrors {
    /// Per kind (and OS error): when it was last logged, and how many were not since.
    kinds: HashMap<(std::io::ErrorKind, Option<i32>), (Instant, u64)>,
}

impl AcceptErrors {
    /// Records an error at `now`; `Some` is what to log.
    fn record(&mut self, e: &std::io::Error, now: Instant) -> Option<String> {
        let key = (e.kind(), e.raw_os_error());
        match self.kinds.get_mut(&key) {
            Some((last, quiet)) if now.duration_since(*last) < ACCEPT_ERROR_LOG_INTERVAL => {
                *quiet += 1;
                None
            }
            Some((last, quiet)) => {
                let message = format!(
                    "control socket accept: {e} ({} more since the last message); retrying \
                     every {ACCEPT_BACKOFF:?}",
                    *quiet
                );
                *last = now;
                *quiet = 0;
                Some(message)
            }
            None => {
                self.kinds.insert(key, (now, 0));
                Some(format!(
                    "control socket accept: {e}; retrying every {ACCEPT_BACKOFF:?}"
                ))
            }
        }
    }
}

/// Longest request line the agent reads (a request is a small JSON object).
const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Requests on one connection, one JSON object per line, answered in order. A line that
/// is not UTF-8 gets an error answer; one longer than [`MAX_REQUEST_LINE`], or not
/// complete within `timeout` (counted from the previous answer), gets an error answer and
/// the connection is closed. An answer the client does not take within `timeout` closes
/// it too.
async fn serve_client(stream: UnixStream, events: mpsc::Sender<Event>, timeout: Duration) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = MAX_REQUEST_LINE as u64 + 1;
        let mut request = (&mut reader).take(limit);
        let line = request.read_until(b'\n', &mut buf);
        match tokio::time::timeout(timeout, line).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                let response = Response::error(format!(
                    "bad request: no complete request line within {timeout:?}; closing the \
                     connection"
                ));
                let _ = write_response(&mut write, &response, timeout).await;
                return;
            }
        }
        if buf.len() > MAX_REQUEST_LINE {
            let response =
                Response::error(format!("bad request: longer than {MAX_REQUEST_LINE} bytes"));
            let _ = write_response(&mut write, &response, timeout).await;
            return;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            let response = Response::error("bad request: not UTF-8");
            if write_response(&mut write, &response, timeout)
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let response = match serde_json::from_str::<Request>(line) {
            Ok(request) => {
                let (reply, rx) = oneshot::channel();
                if events
                    .send(Event::Control { request, reply })
                    .await
                    .is_err()
                {
                    return;
                }
                rx.await
                    .unwrap_or_else(|_| Response::error("agent is shutting down"))
            }
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        if write_response(&mut write, &response, timeout)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Writes one answer; an error when it fails or the client does not take it within
/// `timeout`.
async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
    timeout: Duration,
) -> std::io::Result<()> {
    let line = response_line(response);
    tokio::time::timeout(timeout, write.write_all(line.as_bytes()))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn response_line(response: &Response) -> String {
    let mut line = serde_json::to_string(response).expect("responses serialize");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A scratch directory of this test process, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("balancer-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_control_socket_path_naming_a_file_leaves_the_file_alone() {
        let dir = Scratch::new("socket-path");
        let file = dir.0.join("balancer.toml");
        std::fs::write(&file, "precious").unwrap();
        let e = format!("{:#}", bind_socket(&file).unwrap_err());
        assert!(
            e.contains("is not a socket") && e.contains("balancer.toml"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        // A stale socket (nobody serving it) is replaced.
        let socket = dir.0.join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        bind_socket(&socket).expect("a stale socket is replaced");
    }

    /// Sends `bytes` to a fresh connection of [`serve_client`] and returns everything it
    /// answers until it closes the connection or goes quiet.
    async fn answers(bytes: &[u8]) -> String {
        let (client, server) = UnixStream::pair().unwrap();
        let (events, _queue) = mpsc::channel::<Event>(1);
        tokio::spawn(serve_client(server, events, Duration::from_secs(5)));
        let (mut read, mut write) = client.into_split();
        write.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(300), read.read_to_end(&mut out)).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn bad_request_lines_get_an_answer() {
        let out = answers(b"\xff\xfe\n{\n").await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains("not UTF-8"), "{out}");
        assert!(lines[1].contains("bad request"), "{out}");
        // A line over the limit is answered, then the connection is closed.
        let mut long = vec![b'x'; MAX_REQUEST_LINE + 10];
        long.extend_from_slice(b"\n{}\n");
        let out = answers(&long).await;
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("longer than 65536 bytes"), "{out}");
    }

    #[tokio::test]
    async fn a_half_sent_request_is_answered_and_closed_after_the_timeout() {
        let (client, server) = UnixStream::pair().unwrap();
        let (events, _queue) = mpsc::channel::<Event>(1);
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let server_task = tokio::spawn(serve_client(server, events, timeout));
        let (mut read, mut write) = client.into_split();
        write.write_all(br#"{"Status"#).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), read.read_to_string(&mut out))
            .await
            .expect("the agent closes the connection")
            .unwrap();
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert!(
            out.contains("no complete request line within 200ms"),
            "{out}"
        );
        server_task.await.unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_told_and_closed() {
        let dir = Scratch::new("socket-cap");
        let path = dir.0.join("control.sock");
        let listener = bind_socket(&path).unwrap();
        let (events, _queue) = mpsc::channel::<Event>(1);
        let limits = Limits {
            max_connections: 2,
            request_timeout: Duration::from_secs(5),
        };
        tokio::spawn(accept_loop(listener, events, limits));
        let _held = [
            UnixStream::connect(&path).await.unwrap(),
            UnixStream::connect(&path).await.unwrap(),
        ];
        let mut third = UnixStream::connect(&path).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(2), third.read_to_string(&mut out))
            .await
            .expect("the agent closes the connection over the cap")
            .unwrap();
        assert!(
            out.contains("serving 2 control connections already"),
            "{out}"
        );
    }

    #[test]
    fn accept_errors_are_logged_once_per_kind_per_interval() {
        let mut errors = AcceptErrors::default();
        let emfile = || std::io::Error::from_raw_os_error(libc::EMFILE);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let first = errors
            .record(&emfile(), at(0))
            .expect("the first one is logged");
        assert!(first.contains("Too many open files"), "{first}");
        // A tight loop's worth of the same error within the interval: silent.
        for ms in 1..1000 {
            assert_eq!(errors.record(&emfile(), at(ms)), None, "at {ms} ms");
        }
        // Another kind is logged on its own.
        let other = std::io::Error::from_raw_os_error(libc::ENOBUFS);
        assert!(errors.record(&other, at(500)).is_some());
        let next = errors
            .record(&emfile(), at(1000))
            .expect("logged again after 1 s");
        assert!(next.contains("999 more since the last message"), "{next}");
    }
}
