//! The control socket's server half: a root-only Unix socket speaking JSON lines
//! ([`crate::api`]); each request becomes an [`Event::Control`] for the agent's loop,
//! whose answer goes back on the same connection.

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::Event;
use crate::api::{Request, Response};

/// Binds the control socket at `path` (replacing a stale one that nobody serves) and
/// serves it on tasks of its own; requests go to `events`.
pub fn start(path: &Path, events: mpsc::Sender<Event>) -> anyhow::Result<()> {
    let listener = bind_socket(path)?;
    tokio::spawn(accept_loop(listener, events));
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

async fn accept_loop(listener: UnixListener, events: mpsc::Sender<Event>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(stream, events.clone()));
            }
            Err(e) => log::warn!("control socket accept: {e}"),
        }
    }
}

/// Longest request line the agent reads (a request is a small JSON object).
const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Requests on one connection, one JSON object per line, answered in order. A line that
/// is not UTF-8 gets an error answer; one longer than [`MAX_REQUEST_LINE`] gets an error
/// answer and the connection is closed.
async fn serve_client(stream: UnixStream, events: mpsc::Sender<Event>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = MAX_REQUEST_LINE as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.len() > MAX_REQUEST_LINE {
            let response =
                Response::error(format!("bad request: longer than {MAX_REQUEST_LINE} bytes"));
            let _ = write_response(&mut write, &response).await;
            return;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            let response = Response::error("bad request: not UTF-8");
            if write_response(&mut write, &response).await.is_err() {
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
        if write_response(&mut write, &response).await.is_err() {
            return;
        }
    }
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut out = serde_json::to_string(response).expect("responses serialize");
    out.push('\n');
    write.write_all(out.as_bytes()).await
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
        tokio::spawn(serve_client(server, events));
        let (mut read, mut write) = client.into_split();
        write.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            read.read_to_end(&mut out),
        )
        .await;
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
}
