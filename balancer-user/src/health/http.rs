//! HTTP checks: the request, the status line, and reading just as much of the response as
//! the check needs.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::HttpCheck;
use super::tcp::connect_reason;

/// Most bytes of an HTTP response's status line and headers that are read.
pub const MAX_HTTP_HEAD: usize = 16 * 1024;
/// Most bytes of an HTTP response body searched for `expect_body`.
pub const MAX_HTTP_BODY: usize = 64 * 1024;
/// The `User-Agent` of HTTP checks.
const USER_AGENT: &str = "balancer-health-check";

/// A connection for one check, closed with a reset when dropped.
async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| connect_reason(&e))?;
    // Close with RST rather than FIN, as HAProxy does: no TIME_WAIT per check on this
    // host. A zero linger never blocks the closing thread.
    let _ = stream.set_zero_linger();
    Ok(stream)
}

/// The `Host` header when the check gives none: the address, with the port unless 80.
fn default_host(target: SocketAddr) -> String {
    match (target, target.port()) {
        (SocketAddr::V4(a), 80) => a.ip().to_string(),
        (SocketAddr::V6(a), 80) => format!("[{}]", a.ip()),
        (a, _) => a.to_string(),
    }
}

/// The bytes of the request an HTTP check sends. HTTP/1.0, so that the body is never
/// chunked; `Host` for virtual hosts; `Connection: close` for servers that keep 1.0
/// connections alive anyway.
fn http_request(http: &HttpCheck, target: SocketAddr) -> String {
    let host = http.host.clone().unwrap_or_else(|| default_host(target));
    format!(
        "{} {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.method, http.path
    )
}

/// Reads more of the response into `buf`, at most up to `limit` bytes in all.
/// Returns how many bytes were added (0 at end of stream). Reads straight into `buf`:
/// a buffer on the stack would live in every check task's future.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    const CHUNK: usize = 8192;
    let old = buf.len();
    let room = limit.saturating_sub(old).min(CHUNK);
    if room == 0 {
        return Ok(0);
    }
    buf.resize(old + room, 0);
    let read = match buf.get_mut(old..) {
        Some(spare) => stream.read(spare).await,
        None => Ok(0),
    };
    buf.truncate(old + *read.as_ref().unwrap_or(&0));
    read
}

/// Where `needle` first occurs in `haystack`.
pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`, without the line end).
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let rest = rest.get(space + 1..)?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// A short printable rendering of bytes received, for a failure reason.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes.get(..bytes.len().min(40)).unwrap_or_default());
    let mut out: String = text.chars().filter(|c| !c.is_control()).collect();
    if bytes.len() > 40 {
        out.push_str("...");
    }
    out
}

/// Connects to `target`, sends `http`'s request and reads as much of the response as the
/// check needs: the status line, and with `expect_body` the body up to the text.
/// `Err`: why the check failed, as shown in a check's reason.
pub(super) async fn probe(http: &HttpCheck, target: SocketAddr) -> Result<(), String> {
    let mut stream = connect(target).await?;
    stream
        .write_all(http_request(http, target).as_bytes())
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let read_failed = |e: io::Error| format!("receive failed: {e}");

    // The status line.
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let status = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.get(..end).unwrap_or_default();
            break parse_status_line(line)
                .ok_or_else(|| format!("bad status line \"{}\"", excerpt(line)))?;
        }
        if buf.len() >= MAX_HTTP_HEAD {
            return Err(format!("status line longer than {MAX_HTTP_HEAD} bytes"));
        }
        if read_more(&mut stream, &mut buf, MAX_HTTP_HEAD)
            .await
            .map_err(read_failed)?
            == 0
        {
            return Err(if buf.is_empty() {
                "connection closed without a response".to_owned()
            } else {
                format!("bad status line \"{}\"", excerpt(&buf))
            });
        }
    };
    if !http.expect_status.contains(status) {
        return Err(format!("status {status}"));
    }
    let Some(expected) = &http.expect_body else {
        return Ok(());
    };

    // The end of the headers.
    let body_start = loop {
        let crlf = find(&buf, b"\r\n\r\n").map(|i| i + 4);
        let lf = find(&buf, b"\n\n").map(|i| i + 2);
        if let Some(start) = match (crlf, lf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        } {
            break start;
        }
        if buf.len() >= MAX_HTTP_HEAD {
            return Err(format!("headers longer than {MAX_HTTP_HEAD} bytes"));
        }
        if read_more(&mut stream, &mut buf, MAX_HTTP_HEAD)
            .await
            .map_err(read_failed)?
            == 0
        {
            return Err("connection closed inside the headers".to_owned());
        }
    };

    // The body, up to MAX_HTTP_BODY bytes, searched as it arrives.
    let needle = expected.as_bytes();
    let limit = body_start.saturating_add(MAX_HTTP_BODY);
    let mut searched = body_start;
    loop {
        let end = buf.len().min(limit);
        if find(buf.get(searched..end).unwrap_or_default(), needle).is_some() {
            return Ok(());
        }
        // The next search starts where a match could still begin.
        searched = end
            .saturating_sub(needle.len().saturating_sub(1))
            .max(body_start);
        if end >= limit {
            return Err(format!(
                "body lacks {expected:?} (in its first {} KiB)",
                MAX_HTTP_BODY / 1024
            ));
        }
        if read_more(&mut stream, &mut buf, limit)
            .await
            .map_err(read_failed)?
            == 0
        {
            return Err(format!("body lacks {expected:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/2 404 Not Found"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH_9.2"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
