//! The CLI's half of the control socket: one request, one answer.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the balancer agent at {path}: {source} (is `balancer run` running, and are you root?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: bad response from the agent: {message}")]
    Protocol { path: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("the change was applied, but the agent cannot show the result: {0}")]
    AppliedWithoutStatus(String),
}

/// Sends one request and waits for the answer.
pub fn request(socket: &Path, request: &Request) -> Result<Status, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
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
