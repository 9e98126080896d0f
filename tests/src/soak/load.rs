//! The soak's traffic: client threads in the client namespace that stamp every request with
//! its start time and follow long-lived flows until they break.

use std::{
    io::ErrorKind,
    net::UdpSocket,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{client::http_get, netns::enter_netns_path, KeepAlive, Topology};

/// A stream of requests of one kind; failures are classified against the faults later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    /// `GET /` on a new connection each time.
    HttpNew,
    /// `GET /` on one kept-alive connection, opened again after a failure.
    HttpKeepAlive,
    /// One datagram from a fresh socket each time.
    UdpNew,
    /// The datagrams of the long-lived UDP flows (a lost one is a failed request).
    UdpFlow,
}

impl Stream {
    pub fn label(self) -> &'static str {
        match self {
            Stream::HttpNew => "HTTP, new connection",
            Stream::HttpKeepAlive => "HTTP, keep-alive",
            Stream::UdpNew => "UDP, new socket",
            Stream::UdpFlow => "UDP, long-lived flows",
        }
    }
}

/// One request: when it started and ended (since the soak began) and its error if it
/// failed.
#[derive(Debug, Clone)]
pub struct Request {
    pub stream: Stream,
    pub at: Duration,
    pub end: Duration,
    pub error: Option<String>,
}

/// Whether a long-lived flow is a TCP connection or a UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// A long-lived flow: a kept-alive TCP connection or a connected UDP socket that must keep
/// its backend for its whole life.
#[derive(Debug, Clone)]
pub struct Flow {
    pub transport: Transport,
    pub opened: Duration,
    pub backend: String,
    pub answered: u64,
    /// When the flow broke (an error, or an answer from another backend) and how.
    pub broken: Option<(Duration, String)>,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct Traffic {
    pub requests: Vec<Request>,
    pub flows: Vec<Flow>,
}

/// How often the long-lived flows send; each request of a short stream follows the previous
/// one after [`PAUSE`].
const FLOW_TICK: Duration = Duration::from_millis(250);
const PAUSE: Duration = Duration::from_millis(10);
/// Timeout of a short request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of a request on a long-lived TCP flow: long enough for TCP to retransmit across
/// an interface that is deleted and created again.
const FLOW_TIMEOUT: Duration = Duration::from_secs(8);
/// Timeout of a datagram on a long-lived UDP flow.
const DATAGRAM_TIMEOUT: Duration = Duration::from_secs(1);

enum Output {
    Requests(Vec<Request>),
    Flows(Vec<Flow>, Vec<Request>),
}

/// One client thread's work, given the soak's stop flag.
type Client = Box<dyn FnOnce(&AtomicBool) -> Result<Output> + Send>;

/// The running client threads.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Output>>>,
}

impl Load {
    /// Starts the clients in the namespace at `client_ns`: one thread per short stream, and
    /// `tcp_flows` + `udp_flows` long-lived flows. Times count from `t0`.
    pub fn start(client_ns: &Path, t0: Instant, tcp_flows: usize, udp_flows: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut spawn = |work: Client| {
            let (stop, ns) = (stop.clone(), client_ns.to_path_buf());
            threads.push(thread::spawn(move || {
                enter_netns_path(&ns)?;
                work(&stop)
            }));
        };
        for stream in [Stream::HttpNew, Stream::HttpKeepAlive, Stream::UdpNew] {
            spawn(Box::new(move |stop| {
                Ok(Output::Requests(short_stream(stream, t0, stop)))
            }));
        }
        for k in 0..tcp_flows {
            spawn(Box::new(move |stop| {
                Ok(Output::Flows(
                    tcp_flows_one_at_a_time(t0, stop, k),
                    Vec::new(),
                ))
            }));
        }
        for k in 0..udp_flows {
            spawn(Box::new(move |stop| {
                let (flows, datagrams) = udp_flows_one_at_a_time(t0, stop, k)?;
                Ok(Output::Flows(flows, datagrams))
            }));
        }
        Load { stop, threads }
    }

    /// Stops the clients and collects what they saw.
    pub fn finish(self) -> Result<Traffic> {
        self.stop.store(true, Ordering::Relaxed);
        let mut traffic = Traffic::default();
        for thread in self.threads {
            match thread
                .join()
                .map_err(|_| anyhow::anyhow!("a soak client thread panicked"))??
            {
                Output::Requests(requests) => traffic.requests.extend(requests),
                Output::Flows(flows, requests) => {
                    traffic.flows.extend(flows);
                    traffic.requests.extend(requests);
                }
            }
        }
        traffic.requests.sort_by_key(|r| r.at);
        Ok(traffic)
    }
}

fn short_stream(stream: Stream, t0: Instant, stop: &AtomicBool) -> Vec<Request> {
    let mut requests = Vec::new();
    let mut kept: Option<KeepAlive> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let at = t0.elapsed();
        let result = match stream {
            Stream::HttpNew => http_get(Topology::vip_http(), REQUEST_TIMEOUT),
            Stream::HttpKeepAlive => {
                let connection = match kept.take() {
                    Some(connection) => Ok(connection),
                    None => KeepAlive::connect_timeout(Topology::vip_http(), REQUEST_TIMEOUT),
                };
                connection.and_then(|mut connection| {
                    let answer = connection.get();
                    if answer.is_ok() {
                        kept = Some(connection);
                    }
                    answer
                })
            }
            Stream::UdpNew | Stream::UdpFlow => crate::udp_request(
                Topology::vip_udp(),
                format!("soak {n}").as_bytes(),
                REQUEST_TIMEOUT,
            ),
        };
        n += 1;
        requests.push(Request {
            stream,
            at,
            end: t0.elapsed(),
            error: result.err().map(|e| format!("{e:#}")),
        });
        thread::sleep(PAUSE);
    }
    requests
}

/// Sleeps one flow tick in small steps; false once the soak stops.
fn tick(stop: &AtomicBool) -> bool {
    let until = Instant::now() + FLOW_TICK;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    !stop.load(Ordering::Relaxed)
}

/// Long-lived TCP flow number `k`: a kept-alive connection asked every tick; when it
/// breaks, the next one is opened.
fn tcp_flows_one_at_a_time(t0: Instant, stop: &AtomicBool, k: usize) -> Vec<Flow> {
    let mut flows = Vec::new();
    // Spread the flows' ticks.
    thread::sleep(FLOW_TICK / 8 * u32::try_from(k % 8).unwrap_or(0));
    while !stop.load(Ordering::Relaxed) {
        let opened = t0.elapsed();
        let Ok(mut connection) = KeepAlive::connect_timeout(Topology::vip_http(), FLOW_TIMEOUT)
        else {
            tick(stop);
            continue;
        };
        let Ok(backend) = connection.get() else {
            tick(stop);
            continue;
        };
        let mut flow = Flow {
            transport: Transport::Tcp,
            opened,
            backend,
            answered: 1,
            broken: None,
        };
        while tick(stop) {
            let at = t0.elapsed();
            match connection.get() {
                Ok(name) if name == flow.backend => flow.answered += 1,
                Ok(name) => {
                    flow.broken = Some((at, format!("moved from {} to {name}", flow.backend)));
                }
                Err(e) => flow.broken = Some((at, format!("{e:#}"))),
            }
            if flow.broken.is_some() {
                break;
            }
        }
        flows.push(flow);
    }
    flows
}

/// Long-lived UDP flow number `k`: a connected socket that sends a datagram every tick.
/// A lost datagram is a failed request of [`Stream::UdpFlow`]; an answer from another
/// backend breaks the flow, and the next one uses a new socket.
fn udp_flows_one_at_a_time(
    t0: Instant,
    stop: &AtomicBool,
    k: usize,
) -> Result<(Vec<Flow>, Vec<Request>)> {
    let (mut flows, mut datagrams) = (Vec::new(), Vec::new());
    thread::sleep(FLOW_TICK / 8 * u32::try_from(k % 8).unwrap_or(0));
    let mut buf = [0u8; 256];
    'flows: while !stop.load(Ordering::Relaxed) {
        let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
        socket.connect(Topology::vip_udp())?;
        socket.set_read_timeout(Some(DATAGRAM_TIMEOUT))?;
        let mut flow: Option<Flow> = None;
        let mut n = 0u64;
        loop {
            let at = t0.elapsed();
            n += 1;
            // Sending fails while the client's interface is gone: a lost datagram too.
            let answer = socket
                .send(format!("flow {k} datagram {n}").as_bytes())
                .and_then(|_| loop {
                    match socket.recv(&mut buf) {
                        Ok(len) => break Ok(String::from_utf8_lossy(&buf[..len]).into_owned()),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                });
            let error = match (answer, flow.as_mut()) {
                (Ok(name), None) => {
                    flow = Some(Flow {
                        transport: Transport::Udp,
                        opened: at,
                        backend: name,
                        answered: 1,
                        broken: None,
                    });
                    None
                }
                (Ok(name), Some(f)) if name == f.backend => {
                    f.answered += 1;
                    None
                }
                (Ok(name), Some(f)) => {
                    f.broken = Some((at, format!("moved from {} to {name}", f.backend)));
                    None
                }
                (Err(e), _) => Some(format!("datagram {n} of UDP flow {k}: no answer: {e}")),
            };
            datagrams.push(Request {
                stream: Stream::UdpFlow,
                at,
                end: t0.elapsed(),
                error,
            });
            let broken = flow.as_ref().is_some_and(|f| f.broken.is_some());
            if broken || !tick(stop) {
                flows.extend(flow);
                continue 'flows;
            }
        }
    }
    Ok((flows, datagrams))
}
