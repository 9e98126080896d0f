//! The CLI's half of the control socket: one request, one answer, within a time limit.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    sync::mpsc,
    time::Duration,
};

use super::{Request, Response, Status};

// (The I/O errors are part of the message and not a `#[source]`: an error chain printed
// whole would say them twice.)
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the balancer agent at {path}: {error} (is `balancer run` running, and are you root?)")]
    Connect { path: String, error: std::io::Error },
    #[error("control socket {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the agent at {path} did not answer within {}s", timeout.as_secs_f64())]
    NoAnswer { path: String, timeout: Duration },
    #[error("control socket {path}: bad response from the agent: {message}")]
    Protocol { path: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("the change was applied, but the agent cannot show the result: {0}")]
    AppliedWithoutStatus(String),
}

/// Sends one request and waits for the answer, at most `timeout` from the start (connecting
/// included: an agent that accepts nothing leaves the connection waiting in the backlog).
pub fn request(socket: &Path, request: &Request, timeout: Duration) -> Result<Status, ClientError> {
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    let (answer, answered) = mpsc::channel();
    let socket_path = socket.to_path_buf();
    // std has no connect timeout for Unix sockets: the exchange runs on a thread of its
    // own, left behind (and ended with the process) if it takes too long.
    std::thread::spawn(move || {
        let _ = answer.send(exchange(&socket_path, &line, timeout));
    });
    answered.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(ClientError::NoAnswer {
            path: socket.display().to_string(),
            timeout,
        })
    })
}

/// Sends `line` to the agent at `socket` and reads its answer.
fn exchange(socket: &Path, line: &str, timeout: Duration) -> Result<Status, ClientError> {
    let path = socket.display().to_string();
    let io = |error: std::io::Error| match error.kind() {
        // The socket's own timeouts (a little later than the caller's, as a backstop).
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::NoAnswer {
            path: path.clone(),
            timeout,
        },
        _ => ClientError::Io {
            path: path.clone(),
            error,
        },
    };
    let mut stream = UnixStream::connect(socket).map_err(|error| ClientError::Connect {
        path: path.clone(),
        error,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let response: Response = serde_json::from_str(&answer).map_err(|e| ClientError::Protocol {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match (response.ok, response.status, response.error) {
        (true, Some(status), _) => Ok(status),
        (false, _, Some(error)) => Err(ClientError::Refused(error)),
        (true, None, Some(error)) => Err(ClientError::AppliedWithoutStatus(error)),
        _ => Err(ClientError::Protocol {
            path,
            message: "neither status nor error".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn an_agent_that_does_not_answer_is_an_error_in_time() {
        let dir = std::env::temp_dir().join(format!("balancer-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("silent.sock");
        let _ = std::fs::remove_file(&socket);
        // Accepts (the kernel does, into the backlog) and never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let started = Instant::now();
        let timeout = Duration::from_millis(300);
        let e = request(&socket, &Request::Status, timeout).unwrap_err();
        let elapsed = started.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(e, ClientError::NoAnswer { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "the agent at {} did not answer within 0.3s",
                socket.display()
            )
        );
        assert!(
            elapsed >= timeout && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    #[test]
    fn an_os_error_is_said_once() {
        let e = request(
            Path::new("/nonexistent/balancer.sock"),
            &Request::Status,
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(std::error::Error::source(&e).is_none(), "{e:?}");
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            chain.matches("No such file or directory").count(),
            1,
            "{chain}"
        );
    }
}
