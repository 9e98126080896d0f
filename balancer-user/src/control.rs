//! The control socket: JSON-lines requests and responses over a root-only Unix socket.
//! The agent's listener turns each request into a message for the balancer's owner task;
//! the CLI is the client.
use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddrV4,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    balancer::{Balancer, BalancerError, Status},
    config::VipConfig,
    maps::Maps,
};

/// One request to the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    VipAdd {
        #[serde(flatten)]
        vip: VipConfig,
    },
    VipDel {
        name: String,
    },
    BackendAdd {
        target: String,
        address: SocketAddrV4,
        weight: u32,
    },
    BackendDel {
        target: String,
        address: SocketAddrV4,
    },
    BackendWeight {
        target: String,
        address: SocketAddrV4,
        weight: u32,
    },
}

/// The agent's answer: the status after the request, or why it was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(message.into()),
            status: None,
        }
    }
}

/// Applies one request to the balancer (the owner task calls this; nothing else writes maps).
pub fn handle<M: Maps>(lb: &mut Balancer<M>, request: Request) -> Response {
    let change = !matches!(request, Request::Status);
    let result: Result<(), BalancerError> = match request {
        Request::Status => Ok(()),
        Request::VipAdd { vip } => lb.add_vip(vip),
        Request::VipDel { name } => lb.del_vip(&name),
        Request::BackendAdd {
            target,
            address,
            weight,
        } => lb.add_backend(&target, address, weight),
        Request::BackendDel { target, address } => lb.del_backend(&target, address),
        Request::BackendWeight {
            target,
            address,
            weight,
        } => lb.set_weight(&target, address, weight),
    };
    if let Err(e) = result {
        return Response::error(e.to_string());
    }
    match lb.status() {
        Ok(status) => Response {
            ok: true,
            error: None,
            status: Some(status),
        },
        // The change took effect: saying it was refused would be wrong.
        Err(e) if change => Response {
            ok: true,
            error: Some(format!("reading the status failed: {e}")),
            status: None,
        },
        Err(e) => Response::error(e.to_string()),
    }
}

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
