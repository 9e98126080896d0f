//! `balancer run`: load and attach the XDP program (taking over the flow tables and XDP
//! links a previous agent pinned), fill its maps from the configuration, serve the control
//! socket, and detach cleanly on SIGINT/SIGTERM (or leave the data plane running, with
//! `keep_attached`).
use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use aya::{
    programs::{xdp::XdpLinkId, Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfLoader,
};
use balancer_common::PROGRAM_NAME;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::{mpsc, oneshot},
};

use std::{collections::HashSet, net::SocketAddrV4};

use crate::{
    balancer::Balancer,
    config::{self, XdpMode},
    control::{self, Request, Response},
    health::{Checker, HealthEvent},
    maps::AyaMaps,
    maps::Maps,
    pins::{self, LinkMode, PinError, Pins},
};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer.bpf.o"));

/// The data plane's log records (aya-log) go to the agent's logger.
pub type DataPlaneLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Loads the embedded program into the kernel (maps created, none pinned, program
/// verified).
pub fn load_program() -> anyhow::Result<Ebpf> {
    load_program_with_logger(None).map(|(ebpf, _)| ebpf)
}

/// Like [`load_program`], with the flow tables pinned in `pins` (taken over when pinned
/// already), also returning the reader of the program's log ring, which must be polled
/// (see [`forward_logs`]) for the records to reach the agent's log.
pub fn load_program_with_logger(
    pins: Option<&Pins>,
) -> anyhow::Result<(Ebpf, Option<DataPlaneLogger>)> {
    if EBPF_OBJECT.is_empty() {
        bail!("this balancer binary was built without its XDP program; build it with `cargo xtask build`");
    }
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        pins.tables(&mut loader);
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the XDP object (are you root?)")?;
    // Before the program is loaded: the logger holds the log map's descriptor.
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(e) => {
            log::warn!("data plane log records are not available: {e}");
            None
        }
    };
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .context("the XDP object has no program named `balancer`")?
        .try_into()
        .context("program `balancer` is not an XDP program")?;
    program
        .load()
        .context("the kernel refused the XDP program (verifier)")?;
    Ok((ebpf, logger))
}

/// Copies the data plane's log records to the agent's log as they arrive.
async fn forward_logs(logger: DataPlaneLogger) {
    // SAFETY: the logger owns its ring buffer's descriptor, which stays open and the same
    // for as long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("cannot poll the data plane's log ring: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Attaches to one interface in the requested mode; `auto` tries driver mode first.
/// Returns the link and the mode it got.
fn attach(program: &mut Xdp, iface: &str, mode: XdpMode) -> anyhow::Result<(XdpLinkId, LinkMode)> {
    let mut attach_as = |aya_mode: AyaXdpMode, got: LinkMode| {
        program
            .attach(iface, aya_mode)
            .with_context(|| format!("attaching XDP to {iface} in {} mode", got.name()))
            .map(|id| (id, got))
    };
    match mode {
        XdpMode::Driver => attach_as(AyaXdpMode::Driver, LinkMode::Driver),
        XdpMode::Skb => attach_as(AyaXdpMode::Skb, LinkMode::Skb),
        XdpMode::Auto => attach_as(AyaXdpMode::Driver, LinkMode::Driver).or_else(|e| {
            log::warn!(
                "{iface}: driver-mode XDP unavailable ({e:#}); falling back to skb (generic) mode, which is slower"
            );
            attach_as(AyaXdpMode::Skb, LinkMode::Skb)
        }),
    }
}

/// The mode a link must have to serve `mode` (`None`: either).
fn link_mode(mode: XdpMode) -> Option<LinkMode> {
    match mode {
        XdpMode::Driver => Some(LinkMode::Driver),
        XdpMode::Skb => Some(LinkMode::Skb),
        XdpMode::Auto => None,
    }
}

/// The agent's pin directory, if it has one that works. Without `keep_attached` a
/// directory that is not on a bpf filesystem only costs the flows at the next restart:
/// a warning. (`keep_attached` needs it: an error. A directory another agent uses is an
/// error either way.)
fn open_pins(agent: &config::AgentConfig) -> anyhow::Result<Option<Pins>> {
    let Some(dir) = &agent.pin_dir else {
        return Ok(None);
    };
    match Pins::open(dir) {
        Ok(pins) => Ok(Some(pins)),
        // Never two agents on one set of tables and links.
        Err(e @ PinError::InUse { .. }) => Err(e).context("agent.pin_dir"),
        Err(e) if agent.keep_attached => Err(e).context("agent.keep_attached"),
        Err(e) => {
            log::warn!("agent.pin_dir: {e}; flows will not survive a restart of the agent");
            Ok(None)
        }
    }
}

/// Warns when the kernel would refuse the FIB lookups the program needs.
fn check_forwarding(iface: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => log::warn!(
            "{iface}: IPv4 forwarding is off, so FIB lookups fail and VIP traffic is dropped; \
             enable it: sysctl -w net.ipv4.conf.{iface}.forwarding=1 (or net.ipv4.ip_forward=1)"
        ),
        Err(e) => log::warn!("{iface}: cannot read {path}: {e}"),
    }
}

/// `accept_local` on the XDP interfaces while the agent runs. When the FIB has no
/// neighbour entry for a backend yet, the program passes the packet to the stack already
/// translated, from the SNAT address: one of this host's own, which the kernel drops as a
/// martian source unless `accept_local` is on. Forwarded, the packet makes the kernel
/// resolve the neighbour, and later packets take the fast path. The old values are put
/// back when the agent stops, unless its XDP links outlive it (`keep_attached`): then
/// they are recorded in the pin directory as soon as they are changed (so a crash keeps
/// them too), the agent leaves them on however it ends, and the agent that stops without
/// keeping the links puts them back (as does one that no longer configures an
/// interface).
struct AcceptLocal {
    /// (interface, its value before an agent turned it on).
    restore: Vec<(String, String)>,
    /// The pin directory, where values are recorded for later agents.
    pins: Option<PathBuf>,
    /// The links outlive the agent: leave `accept_local` on.
    keep: bool,
}

fn accept_local_sysctl(iface: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/accept_local")
}

impl AcceptLocal {
    fn enable(ifaces: &[String], pins: Option<&Path>, keep: bool) -> AcceptLocal {
        let saved = pins.map(pins::saved_accept_local).unwrap_or_default();
        let mut this = AcceptLocal {
            restore: Vec::new(),
            pins: pins.map(Path::to_path_buf),
            keep,
        };
        // Interfaces a previous agent kept a link on and this one no longer configures
        // (their links are released): back to what they were.
        for (iface, value) in saved.iter().filter(|(i, _)| !ifaces.contains(i)) {
            this.put_back(iface, value);
        }
        for iface in ifaces {
            let path = accept_local_sysctl(iface);
            let old = match std::fs::read_to_string(&path) {
                Ok(old) => old.trim().to_string(),
                Err(e) => {
                    log::warn!("{iface}: cannot read {path}: {e}");
                    continue;
                }
            };
            // A previous agent that kept its link turned it on: its record is the
            // value to put back.
            let recorded = saved.iter().find(|(i, _)| i == iface).map(|(_, v)| v);
            if old != "1" {
                if let Err(e) = std::fs::write(&path, "1") {
                    log::warn!(
                        "{iface}: cannot turn accept_local on ({e}): the first packets to a \
                         backend whose MAC address is not known yet will be dropped"
                    );
                    continue;
                }
            }
            match recorded {
                Some(value) => this.restore.push((iface.clone(), value.clone())),
                None if old != "1" => {
                    this.record(iface, &old);
                    this.restore.push((iface.clone(), old));
                }
                None => {}
            }
            let rp_filter = |dev: &str| {
                std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"))
                    .ok()
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .unwrap_or(0)
            };
            if rp_filter("all").max(rp_filter(iface)) == 1 {
                log::warn!(
                    "{iface}: strict reverse-path filtering (rp_filter = 1) drops the packets \
                     passed to the stack while a backend's MAC address is not known yet; \
                     loose mode does not: sysctl -w net.ipv4.conf.{iface}.rp_filter=2 (and \
                     net.ipv4.conf.all.rp_filter at most 2)"
                );
            }
        }
        this
    }

    /// With `keep`, records `iface`'s `value` from before for the agent that will put it
    /// back.
    fn record(&self, iface: &str, value: &str) {
        let (true, Some(dir)) = (self.keep, &self.pins) else {
            return;
        };
        if let Err(e) = pins::save_accept_local(dir, iface, value) {
            log::warn!(
                "{iface}: cannot record its accept_local {value} for the next agent ({e}); it \
                 stays 1"
            );
        }
    }

    /// Sets `iface`'s `accept_local` back to `value` and removes its record.
    fn put_back(&self, iface: &str, value: &str) {
        let path = accept_local_sysctl(iface);
        match std::fs::write(&path, value) {
            Ok(()) => {}
            // The interface is gone, and its setting with it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot restore {path} to {value}: {e}"),
        }
        if let Some(dir) = &self.pins {
            pins::forget_accept_local(dir, iface, value);
        }
    }
}

impl Drop for AcceptLocal {
    fn drop(&mut self) {
        if self.keep {
            // The links stay attached (a failed start leaves the ones it pinned): the
            // data plane still needs it, and the records are made.
            return;
        }
        for (iface, value) in &self.restore {
            self.put_back(iface, value);
        }
    }
}

type Job = (Request, oneshot::Sender<Response>);

pub struct RunOptions {
    pub config: PathBuf,
    pub socket: Option<PathBuf>,
    pub xdp_mode: Option<XdpMode>,
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let config = config::load(&options.config)?;
    let socket_path = options
        .socket
        .unwrap_or_else(|| config.agent.control_socket.clone());
    let mode = options.xdp_mode.unwrap_or(config.agent.xdp_mode);
    raise_open_files_limit();

    let pins = open_pins(&config.agent)?;
    if let Some(pins) = &pins {
        pins.release_other_links(&config.agent.interfaces);
    }
    let (mut ebpf, logger) = load_program_with_logger(pins.as_ref())?;
    if let Some(logger) = logger {
        tokio::spawn(forward_logs(logger));
    }
    let maps = AyaMaps::new(&mut ebpf)?;
    let mut lb = Balancer::from_config(maps, &config).context("applying the configuration")?;
    if let Err(e) = attach_all(&mut ebpf, &config, pins.as_ref(), mode) {
        // The previous program may still run (a kept link), and the next agent needs the
        // generations as they were.
        lb.restore_vip_gens();
        return Err(e);
    }
    if let Err(e) = lb.clear_other_vip_gens() {
        log::warn!(
            "clearing the previous agent's VIP generations: {e}; flows of its VIPs that this \
             one has not got may be forwarded on"
        );
    }
    // Put back (or, with kept links, left on) when it goes out of scope, after the
    // program is detached.
    let _accept_local = AcceptLocal::enable(
        &config.agent.interfaces,
        pins.as_ref().map(Pins::dir),
        config.agent.keep_attached && pins.is_some(),
    );

    let listener = bind_socket(&socket_path)?;
    log::info!(
        "serving {} VIP(s); control socket {}",
        config.vips.len(),
        socket_path.display()
    );
    let (jobs_tx, mut jobs) = mpsc::channel::<Job>(64);
    tokio::spawn(accept_loop(listener, jobs_tx));
    let (health_tx, mut health) = mpsc::channel::<HealthEvent>(1024);
    let mut checker = Checker::new(health_tx);
    let mut checked = HashSet::new();
    sync_checks(&mut lb, &mut checker, &mut checked);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            Some((request, reply)) = jobs.recv() => {
                let started = std::time::Instant::now();
                let what = format!("{request:?}");
                let response = control::handle(&mut lb, request);
                log::debug!("control request applied in {:?}: {what}", started.elapsed());
                sync_checks(&mut lb, &mut checker, &mut checked);
                let _ = reply.send(response);
            }
            Some(event) = health.recv() => {
                if let Err(e) = lb.record_health(&event) {
                    log::error!("pool {}: backend {}: applying health {:?}: {e}", event.pool, event.backend, event.health);
                }
            }
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    // (Without keep_attached no link is pinned now: links taken over were unpinned at
    // once, see `Pins::take_over`.)
    if let (true, Some(pins)) = (config.agent.keep_attached, &pins) {
        log::info!(
            "leaving XDP attached: the data plane forwards with this configuration until \
             the next agent takes over (remove {} to detach it)",
            pins.dir().display()
        );
        // (`accept_local` stays on: the data plane still needs it.)
    }
    // Dropping the program detaches it from every interface whose link is not pinned.
    drop(lb);
    drop(ebpf);
    log::info!("stopped");
    Ok(())
}

/// Attaches the program to every configured interface: swapped into the link a previous
/// agent left there, or attached anew; with `keep_attached` the link is pinned.
fn attach_all(
    ebpf: &mut Ebpf,
    config: &config::Config,
    pins: Option<&Pins>,
    mode: XdpMode,
) -> anyhow::Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .expect("loaded above")
        .try_into()?;
    for iface in &config.agent.interfaces {
        let keep = config.agent.keep_attached;
        let taken = pins.and_then(|p| p.take_over(program, iface, link_mode(mode), keep));
        let (id, got) = match taken {
            Some((id, got)) => {
                let got_name = got.map_or("unrecorded", LinkMode::name);
                log::info!(
                    "{iface}: took over the XDP link the previous agent left ({got_name} mode)"
                );
                (id, got)
            }
            None => {
                let (id, got) = attach(program, iface, mode)?;
                log::info!("{iface}: XDP attached ({} mode)", got.name());
                (id, Some(got))
            }
        };
        check_forwarding(iface);
        // (A link taken over from an agent that did not record its mode stays pinned
        // under its old name.)
        if let (true, Some(pins), Some(got)) = (keep, pins, got) {
            pins.keep_link(program, id, iface, got)?;
        }
    }
    Ok(())
}

/// Raises the soft limit of open files to the hard limit, as HAProxy and nginx do: every
/// TCP-checked backend keeps a socket open (`health::Prober`), and the usual soft limit of
/// 1024 would end at about a thousand backends.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        log::warn!(
            "cannot read the open files limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let old = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads only the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        log::debug!("open files limit raised from {old} to {}", limit.rlim_cur);
    } else {
        log::warn!(
            "cannot raise the open files limit from {old}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Starts checks for backends that gained one and stops those of removed backends.
fn sync_checks<M: Maps>(
    lb: &mut Balancer<M>,
    checker: &mut Checker,
    running: &mut HashSet<(String, SocketAddrV4)>,
) {
    let wanted = lb.checks();
    let keys: HashSet<(String, SocketAddrV4)> = wanted
        .iter()
        .map(|(pool, addr, ..)| (pool.clone(), *addr))
        .collect();
    for (pool, addr) in running.difference(&keys) {
        checker.stop(pool, *addr);
    }
    for (pool, addr, check, health) in &wanted {
        if !running.contains(&(pool.clone(), *addr)) {
            if let Some(slot) = checker.start(pool, *addr, check, *health) {
                lb.set_latest_slot(pool, *addr, slot);
            }
        }
    }
    *running = keys;
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

async fn accept_loop(listener: UnixListener, jobs: mpsc::Sender<Job>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(stream, jobs.clone()));
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
async fn serve_client(stream: UnixStream, jobs: mpsc::Sender<Job>) {
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
                let (tx, rx) = oneshot::channel();
                if jobs.send((request, tx)).await.is_err() {
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
    use super::*;
    use tokio::io::AsyncReadExt;

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
        let (jobs, _queue) = mpsc::channel::<Job>(1);
        tokio::spawn(serve_client(server, jobs));
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
