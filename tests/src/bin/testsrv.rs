//! `testsrv`: a tiny HTTP/1.1 (keep-alive) and UDP server that answers every request with its name, used as a balancer backend in tests.
//!
//! ```text
//! testsrv --name NAME [--http ADDR:PORT] [--udp ADDR:PORT] [--status CODE]
//! ```
//! HTTP: every request gets status CODE (default 200), `X-Backend: NAME`, `Content-Length`
//! and the body `NAME` (no newline), and shows what a proxy passed on: `X-Seen-Forwarded-For`
//! and `X-Seen-Cookie` carry the request's `X-Forwarded-For` and `Cookie`; `GET /bytes/N`
//! answers N bytes; request bodies are read and dropped. A request with
//! `Upgrade: echo` gets `101 Switching Protocols` and then every byte back. Connections stay
//! open until the client closes them or sends `Connection: close`. UDP: every datagram gets
//! `NAME` back. Standard library only.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::exit;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const USAGE: &str =
    "usage: testsrv --name NAME [--http ADDR:PORT] [--udp ADDR:PORT] [--status CODE]";

/// Idle kept-alive connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_mins(5);

struct Args {
    name: String,
    http: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    status: u16,
}

fn fail(msg: &str) -> ! {
    eprintln!("testsrv: {msg}");
    exit(1)
}

fn parse_args() -> Args {
    let mut name = None;
    let mut http = None;
    let mut udp = None;
    let mut status = 200;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let value = it
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value\n{USAGE}")));
        let addr = |v: &str| -> SocketAddr {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{flag}: {v:?} is not ADDR:PORT")))
        };
        match flag.as_str() {
            "--name" => name = Some(value),
            "--http" => http = Some(addr(&value)),
            "--udp" => udp = Some(addr(&value)),
            "--status" => {
                status = value
                    .parse()
                    .ok()
                    .filter(|s| (100..=999).contains(s))
                    .unwrap_or_else(|| fail(&format!("--status: {value:?} is not an HTTP status")));
            }
            other => fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let name = name.unwrap_or_else(|| fail(&format!("--name is required\n{USAGE}")));
    if http.is_none() && udp.is_none() {
        fail(&format!("give --http, --udp or both\n{USAGE}"));
    }
    Args {
        name,
        http,
        udp,
        status,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Serves requests on one connection until the client closes it or asks to.
fn serve_connection(stream: TcpStream, name: &str, status: u16) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // client closed
        }
        let request_line = line.trim_end().to_string();
        // `GET /bytes/N`: N bytes of body, streamed.
        let stream_len: Option<u64> = request_line
            .split_whitespace()
            .nth(1)
            .and_then(|path| path.strip_prefix("/bytes/"))
            .and_then(|n| n.parse().ok());
        if request_line.is_empty() {
            continue; // tolerate stray CRLF between requests
        }
        let http10 = request_line.ends_with("HTTP/1.0");
        let mut close = http10;
        let mut body_len = 0usize;
        let mut seen = String::new();
        let mut upgrade = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("connection") {
                    if v.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if v.eq_ignore_ascii_case("keep-alive") {
                        close = false;
                    }
                } else if k.eq_ignore_ascii_case("content-length") {
                    body_len = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("x-forwarded-for") {
                    let _ = write!(seen, "X-Seen-Forwarded-For: {v}\r\n");
                } else if k.eq_ignore_ascii_case("cookie") {
                    let _ = write!(seen, "X-Seen-Cookie: {v}\r\n");
                } else if k.eq_ignore_ascii_case("upgrade") && v.eq_ignore_ascii_case("echo") {
                    upgrade = true;
                }
            }
        }
        if body_len > 0 {
            // Read and dropped as it comes: an upload of any size takes no memory.
            let got = std::io::copy(
                &mut (&mut reader).take(body_len as u64),
                &mut std::io::sink(),
            )?;
            if got < body_len as u64 {
                return Ok(());
            }
        }
        if let Some(len) = stream_len {
            writer.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {len}\r\n\r\n"
                )
                .as_bytes(),
            )?;
            std::io::copy(&mut std::io::repeat(b'x').take(len), &mut writer)?;
            if close {
                return Ok(());
            }
            continue;
        }
        if upgrade {
            writer.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\
                     X-Backend: {name}\r\n\r\n"
                )
                .as_bytes(),
            )?;
            std::io::copy(&mut reader, &mut writer)?;
            return Ok(());
        }
        let response = format!(
            "HTTP/1.1 {status} {}\r\nX-Backend: {name}\r\n{seen}Content-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: {}\r\n\r\n{name}",
            reason(status),
            name.len(),
            if close { "close" } else { "keep-alive" },
        );
        writer.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "each server runs on a thread of its own, which owns its socket and name"
)]
fn run_http(listener: TcpListener, name: Arc<str>, status: u16) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let name = Arc::clone(&name);
                thread::spawn(move || {
                    let _ = serve_connection(stream, &name, status);
                });
            }
            Err(e) => eprintln!("testsrv {name}: accept failed: {e}"),
        }
    }
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "each server runs on a thread of its own, which owns its socket and name"
)]
fn run_udp(sock: UdpSocket, name: Arc<str>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, from)) => {
                if let Err(e) = sock.send_to(name.as_bytes(), from) {
                    eprintln!("testsrv {name}: UDP reply to {from} failed: {e}");
                }
            }
            Err(e) => eprintln!("testsrv {name}: UDP receive failed: {e}"),
        }
    }
}

fn main() {
    let args = parse_args();
    let name: Arc<str> = Arc::from(args.name.as_str());
    // Bind everything before serving, so a bind error exits 1 right away.
    let http = args.http.map(|addr| {
        TcpListener::bind(addr)
            .unwrap_or_else(|e| fail(&format!("{name}: cannot bind HTTP on {addr}: {e}")))
    });
    let udp = args.udp.map(|addr| {
        UdpSocket::bind(addr)
            .unwrap_or_else(|e| fail(&format!("{name}: cannot bind UDP on {addr}: {e}")))
    });
    let mut threads = Vec::new();
    if let Some(listener) = http {
        let name = Arc::clone(&name);
        let status = args.status;
        threads.push(thread::spawn(move || run_http(listener, name, status)));
    }
    if let Some(sock) = udp {
        let name = Arc::clone(&name);
        threads.push(thread::spawn(move || run_udp(sock, name)));
    }
    for t in threads {
        let _ = t.join();
    }
}
