//! Loading the embedded XDP program (taking over the flow tables a previous agent pinned),
//! attaching it to an interface (swapped into the link a previous agent left, or attached
//! anew) after checking that the interfaces exist and that no other program holds them, and
//! forwarding its log records to the agent's log.

use std::collections::HashMap;

use anyhow::{bail, Context};
use aya::{
    maps::ProgramArray,
    programs::{xdp::XdpLinkId, Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfLoader,
};
use balancer_common::{map_names, FAMILY_IPV6_SLOT, IPV6_PROGRAM_NAME, PROGRAM_NAME};

use super::{
    pins::{LinkMode, PinError, Pins},
    rtnetlink, AyaMaps, MapsError,
};
use crate::{
    config::{AgentConfig, XdpMode},
    sys,
};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer.bpf.o"));

/// The data plane's log records (aya-log) go to the agent's logger.
pub type DataPlaneLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Capabilities (bit numbers of `CapEff`) that can stand in for root.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Refuses to go on without the privileges that loading and attaching the program need,
/// before anything touches the pin directory or the kernel: without them every later step
/// fails with a less helpful error, or leaves warnings that are wrong. `command`: what
/// needs them, for the message (`balancer run`).
pub fn check_privileges(command: &str) -> anyhow::Result<()> {
    if is_root() {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if has_capabilities(&status) {
        return Ok(());
    }
    bail!(
        "`{command}` must run as root (or with the capabilities CAP_BPF and CAP_NET_ADMIN): \
         it loads and attaches an XDP program and pins its maps"
    )
}

/// Whether the process runs as root.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `/proc/self/status` text grants what loading and attaching need: `CAP_NET_ADMIN`,
/// and `CAP_BPF` or (on kernels before it existed) `CAP_SYS_ADMIN`.
fn has_capabilities(proc_status: &str) -> bool {
    let effective = proc_status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

/// Loads the embedded program into the kernel (maps created, none pinned, program
/// verified), for tests and benchmarks that run it with `BPF_PROG_TEST_RUN`.
pub fn load_program() -> anyhow::Result<Ebpf> {
    Program::load(None).map(|(program, _)| program.ebpf)
}

/// The agent's pin directory, if it has one that works. Without `keep_attached` a
/// directory that is not on a bpf filesystem only costs the flows at the next restart:
/// a warning. (`keep_attached` needs it: an error. A directory another agent uses is an
/// error either way.)
pub fn open_pins(agent: &AgentConfig) -> anyhow::Result<Option<Pins>> {
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

/// The loaded program. Dropping it detaches it from every interface whose link is not
/// pinned.
pub struct Program {
    ebpf: Ebpf,
    /// The links it holds (not those pinned for the next agent), by interface.
    held: HashMap<String, XdpLinkId>,
}

impl Program {
    /// Loads the embedded program with the flow tables pinned in `pins` (taken over when
    /// pinned already), also returning the reader of the program's log ring, which must be
    /// polled (see [`forward_logs`]) for the records to reach the agent's log.
    pub fn load(pins: Option<&Pins>) -> anyhow::Result<(Program, Option<DataPlaneLogger>)> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this balancer binary was built without its XDP program; build it with \
                 `cargo xtask build`"
            );
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
        let mut program = Program {
            ebpf,
            held: HashMap::new(),
        };
        program
            .xdp()?
            .load()
            .context("the kernel refused the XDP program (verifier)")?;
        program.load_families()?;
        Ok((program, logger))
    }

    /// Loads the IPv6 program and puts it where `balancer` tail-calls it.
    fn load_families(&mut self) -> anyhow::Result<()> {
        let ipv6: &mut Xdp = self
            .ebpf
            .program_mut(IPV6_PROGRAM_NAME)
            .context("the XDP object has no program named `balancer_ipv6`")?
            .try_into()
            .context("program `balancer_ipv6` is not an XDP program")?;
        ipv6.load()
            .context("the kernel refused the IPv6 XDP program (verifier)")?;
        let fd = ipv6.fd()?.try_clone()?;
        let mut families: ProgramArray<_> = self
            .ebpf
            .map_mut(map_names::FAMILIES)
            .context("the XDP object has no map `FAMILIES`")?
            .try_into()?;
        families
            .set(FAMILY_IPV6_SLOT, &fd, 0)
            .context("putting the IPv6 program in `FAMILIES`")?;
        Ok(())
    }

    fn xdp(&mut self) -> anyhow::Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .context("the XDP object has no program named `balancer`")?
            .try_into()
            .context("program `balancer` is not an XDP program")
    }

    /// Takes the maps the agent owns out of the program.
    pub fn maps(&mut self) -> Result<AyaMaps, MapsError> {
        AyaMaps::new(&mut self.ebpf)
    }

    /// Attaches the program to `iface`: swapped into the link a previous agent left
    /// there, or attached anew in `mode`; with `keep` (the agent's `keep_attached`) the
    /// link is pinned so that it outlives the agent. Returns the mode it got (`None`: a
    /// link taken over from an agent that did not record it).
    ///
    /// # Errors
    /// The interface does not exist, or the kernel refused (another program holds it: the
    /// error names that program).
    pub fn attach(
        &mut self,
        iface: &str,
        pins: Option<&Pins>,
        mode: XdpMode,
        keep: bool,
    ) -> anyhow::Result<Option<LinkMode>> {
        let program = self.xdp()?;
        let taken = pins.and_then(|p| p.take_over(program, iface, link_mode(mode), keep));
        let (id, got) = if let Some((id, got)) = taken {
            let got_name = got.map_or("unrecorded", LinkMode::name);
            log::info!("{iface}: took over the XDP link the previous agent left ({got_name} mode)");
            (id, got)
        } else {
            let (id, got) = attach(program, iface, mode)?;
            log::info!("{iface}: XDP attached ({} mode)", got.name());
            (id, Some(got))
        };
        // (A link taken over from an agent that did not record its mode stays pinned
        // under its old name, and held by the program too.)
        if let (true, Some(pins), Some(got)) = (keep, pins, got) {
            pins.keep_link(program, id, iface, got)?;
        } else {
            self.held.insert(iface.to_owned(), id);
        }
        Ok(got)
    }

    /// Lets go of the link on `iface`, whose interface is gone or was replaced (the
    /// kernel detached it with its interface): the one the program holds, and the one
    /// pinned in `pins` for the next agent.
    pub fn release(&mut self, iface: &str, pins: Option<&Pins>) {
        if let Some(id) = self.held.remove(iface) {
            match self.xdp() {
                Ok(program) => {
                    if let Err(e) = program.detach(id) {
                        log::warn!("{iface}: releasing its XDP link: {e}");
                    }
                }
                Err(e) => log::warn!("{iface}: releasing its XDP link: {e:#}"),
            }
        }
        if let Some(pins) = pins {
            pins.forget_link(iface);
        }
    }
}

/// Checks, before anything is loaded or pinned, that every interface of `agent` exists
/// (unless `wait_for_interfaces`): the error names the interface and where the
/// configuration lists it.
///
/// # Errors
/// The first interface that does not exist.
pub fn check_interfaces(agent: &AgentConfig) -> anyhow::Result<()> {
    if agent.wait_for_interfaces {
        return Ok(());
    }
    for (i, iface) in agent.interfaces.iter().enumerate() {
        if let Err(e) = sys::ifindex(iface) {
            let location = agent
                .interface_locations
                .get(i)
                .map_or_else(|| format!("agent.interfaces[{i}]"), Clone::clone);
            bail!(
                "{location}: interface {iface:?} does not exist ({e}); create it, fix the \
                 name, or set agent.wait_for_interfaces = true to start without it and attach \
                 when it appears"
            );
        }
    }
    Ok(())
}

/// Checks, before anything is loaded, that no other program holds an interface of
/// `interfaces` (one a previous agent left pinned in `pins` is taken over: not another).
///
/// # Errors
/// The first interface that holds another XDP program, named with its id and name.
pub fn check_free(interfaces: &[String], pins: Option<&Pins>) -> anyhow::Result<()> {
    for iface in interfaces {
        if pins.is_some_and(|p| p.has_link(iface)) {
            continue;
        }
        // The link of an agent that has just exited may take a moment to go.
        let deadline = std::time::Instant::now() + HOLDER_GRACE;
        while let Some(holder) = holder(iface) {
            if std::time::Instant::now() >= deadline {
                bail!("{holder}");
            }
            std::thread::sleep(HOLDER_GRACE / 10);
        }
    }
    Ok(())
}

/// How long [`check_free`] waits for a program found on an interface to go.
const HOLDER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// "eth1 already has an XDP program attached (...)": when `iface` holds one.
fn holder(iface: &str) -> Option<String> {
    let ifindex = sys::ifindex(iface).ok()?;
    let found = match rtnetlink::xdp_program(ifindex) {
        Ok(found) => found?,
        Err(e) => {
            log::debug!("{iface}: cannot ask which XDP program it holds: {e}");
            return None;
        }
    };
    let name = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == found.id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let hint = if name == PROGRAM_NAME {
        "is another agent running? (give each agent its own interfaces)".to_owned()
    } else {
        format!("detach it first (ip link set dev {iface} xdp off) if it is not needed")
    };
    Some(format!(
        "{iface} already has an XDP program attached (id {}, name {name}, {} mode): {hint}",
        found.id,
        found.mode_name(),
    ))
}

/// Copies the data plane's log records to the agent's log as they arrive.
pub async fn forward_logs(logger: DataPlaneLogger) {
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
/// Returns the link and the mode it got. A refusal because another program holds the
/// interface names that program.
/// Attaches `program` to `iface` in `mode` (driver, else skb for `auto`); an error names
/// the program that holds the interface, if one does.
pub(super) fn attach(
    program: &mut Xdp,
    iface: &str,
    mode: XdpMode,
) -> anyhow::Result<(XdpLinkId, LinkMode)> {
    let mut attach_as = |aya_mode: AyaXdpMode, got: LinkMode| {
        program
            .attach(iface, aya_mode)
            .with_context(|| format!("attaching XDP to {iface} in {} mode", got.name()))
            .map(|id| (id, got))
    };
    // (The kernel says only EBUSY or EEXIST: ask it who.)
    let held = |e: anyhow::Error| match holder(iface) {
        Some(holder) => e.context(holder),
        None => e,
    };
    match mode {
        XdpMode::Driver => attach_as(AyaXdpMode::Driver, LinkMode::Driver).map_err(held),
        XdpMode::Skb => attach_as(AyaXdpMode::Skb, LinkMode::Skb).map_err(held),
        XdpMode::Auto => attach_as(AyaXdpMode::Driver, LinkMode::Driver).or_else(|e| {
            if let Some(holder) = holder(iface) {
                return Err(e.context(holder));
            }
            log::warn!(
                "{iface}: driver-mode XDP unavailable ({e:#}); falling back to skb (generic) mode, which is slower"
            );
            attach_as(AyaXdpMode::Skb, LinkMode::Skb).map_err(held)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_that_stand_in_for_root() {
        let status = |cap_eff: &str| format!("Name:\tbalancer\nCapPrm:\t0\nCapEff:\t{cap_eff}\n");
        assert!(has_capabilities(&status("000001ffffffffff")), "all");
        // CAP_NET_ADMIN with CAP_BPF, or with CAP_SYS_ADMIN.
        assert!(has_capabilities(&status("0000008000001000")));
        assert!(has_capabilities(&status("0000000000201000")));
        assert!(
            !has_capabilities(&status("0000008000000000")),
            "CAP_BPF alone"
        );
        assert!(
            !has_capabilities(&status("0000000000001000")),
            "CAP_NET_ADMIN alone"
        );
        assert!(!has_capabilities(&status("0000000000000000")), "none");
        assert!(!has_capabilities("no CapEff line"));
    }
}
