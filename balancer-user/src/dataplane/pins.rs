//! State pinned in a bpf filesystem so that it outlives the agent: the flow tables
//! (`CONNS`, `NAT` and their IPv6 twins `CONNS6`, `NAT6`), which the next agent takes over
//! so that established flows keep their backend and SNAT port, and, with `keep_attached`, the XDP links, so that the data plane
//! forwards on while no agent runs and the next agent swaps its program in atomically
//! (`bpf_link_update`: no packet meets an interface without XDP).
use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapInfo, MapType},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        Xdp,
    },
    EbpfLoader,
};
use balancer_common::{
    map_names, Conn, FlowKey, NatEntry, CONN6_TABLE_SIZE, CONN_TABLE_SIZE, FLOW_TABLES_VERSION,
    MAX_VIPS, V6,
};

/// `statfs.f_type` of a bpf filesystem.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Pinned XDP links are named `link-<mode>-<interface>` (`link-<interface>` from agents
/// that did not record the mode): the kernel does not tell an XDP link's mode, and the
/// next agent needs it.
const LINK_PREFIX: &str = "link-";
/// An interface's `accept_local` from before an agent turned it on, recorded while that
/// agent's XDP link outlives it (`keep_attached`), so that a later agent can put it back:
/// an empty directory `accept_local-<value>-<interface>` (a bpf filesystem holds only pins
/// and directories), which goes with the links when the filesystem does.
const ACCEPT_LOCAL_PREFIX: &str = "accept_local-";
/// `bpf(2)` commands.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// How an XDP link is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Driver,
    Skb,
}

impl LinkMode {
    const ALL: [LinkMode; 2] = [LinkMode::Driver, LinkMode::Skb];

    pub fn name(self) -> &'static str {
        match self {
            LinkMode::Driver => "driver",
            LinkMode::Skb => "skb",
        }
    }
}

/// An XDP link a previous agent left pinned for an interface.
struct KeptLink {
    path: PathBuf,
    /// `None`: pinned by an agent that did not record it.
    mode: Option<LinkMode>,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{dir}: not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf), or set \
         agent.pin_dir = \"\" to pin nothing"
    )]
    NotBpffs { dir: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{dir}: another agent uses this pin directory; give each agent its own agent.pin_dir")]
    InUse { dir: PathBuf },
    #[error("{iface}: keeping the XDP link for the next agent: {reason}")]
    Link { iface: String, reason: String },
}

/// A flow table kept across agents, and the layout this build gives it.
struct Table {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    entries: u32,
}

/// The flow tables of both families, and `VIP_GENS`: the generations their flows name (a
/// VIP deleted and added again has another, and the next agent must know which is current).
const TABLES: [Table; 5] = [
    Table {
        name: map_names::CONNS,
        map_type: MapType::LruHash,
        key_size: size_of::<FlowKey>(),
        value_size: size_of::<Conn>(),
        entries: CONN_TABLE_SIZE,
    },
    Table {
        name: map_names::NAT,
        map_type: MapType::LruHash,
        key_size: size_of::<FlowKey>(),
        value_size: size_of::<NatEntry>(),
        entries: CONN_TABLE_SIZE,
    },
    Table {
        name: map_names::CONNS6,
        map_type: MapType::LruHash,
        key_size: size_of::<FlowKey<V6>>(),
        value_size: size_of::<Conn<V6>>(),
        entries: CONN6_TABLE_SIZE,
    },
    Table {
        name: map_names::NAT6,
        map_type: MapType::LruHash,
        key_size: size_of::<FlowKey<V6>>(),
        value_size: size_of::<NatEntry<V6>>(),
        entries: CONN6_TABLE_SIZE,
    },
    Table {
        name: map_names::VIP_GENS,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        entries: MAX_VIPS,
    },
];

/// The agent's pin directory, locked for as long as the value lives.
pub struct Pins {
    dir: PathBuf,
    /// The directory, `flock`ed: one agent per pin directory.
    _lock: File,
}

impl Pins {
    /// `dir`, created when missing; it must be on a bpf filesystem and not in use by
    /// another agent.
    pub fn open(dir: &Path) -> Result<Pins, PinError> {
        let io = |source| PinError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        if !on_bpffs(dir) {
            return Err(PinError::NotBpffs {
                dir: dir.to_path_buf(),
            });
        }
        let lock = File::open(dir).map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                PinError::InUse {
                    dir: dir.to_path_buf(),
                }
            } else {
                io(e)
            });
        }
        Ok(Pins {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Points `loader` at the pinned flow tables: one pinned with this build's layout is
    /// used (its flows carry on); one with another layout (an agent of another version) is
    /// unpinned, with a warning, and a new table pinned in its place.
    pub fn tables(&self, loader: &mut EbpfLoader<'_>) {
        for table in &TABLES {
            self.unpin_other_versions(table.name);
            let path = self
                .dir
                .join(format!("{}_v{FLOW_TABLES_VERSION}", table.name));
            match layout_problem(&path, table) {
                Some(problem) => {
                    log::warn!(
                        "{}: {problem}: its flows are forgotten, a new table is pinned there",
                        path.display()
                    );
                    unpin(&path);
                }
                None if path.exists() => log::info!(
                    "{}: taking the pinned flow table over (its flows carry on)",
                    path.display()
                ),
                None => {}
            }
            loader.map_pin_path(table.name, path);
        }
    }

    /// Unpins `name` tables of other versions ([`FLOW_TABLES_VERSION`]): this agent
    /// cannot read their flows, and they would hold their memory for nothing.
    fn unpin_other_versions(&self, name: &str) {
        let ours = format!("{name}_v{FLOW_TABLES_VERSION}");
        for (path, file) in self.entries() {
            // (The bare name: the first agents to pin tables pinned them so.)
            let versioned = file == name
                || file
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix("_v"))
                    .is_some_and(|v| v.parse::<u32>().is_ok());
            if versioned && file != ours {
                log::warn!(
                    "{}: flow table of another version (this agent's: {ours}): its flows \
                     are forgotten",
                    path.display()
                );
                unpin(&path);
            }
        }
    }

    /// What is pinned in the directory: (path, file name).
    fn entries(&self) -> Vec<(PathBuf, String)> {
        entries(&self.dir)
    }

    fn link_path(&self, iface: &str, mode: LinkMode) -> PathBuf {
        self.dir
            .join(format!("{LINK_PREFIX}{}-{iface}", mode.name()))
    }

    /// The link pinned for `iface`, if there is one.
    fn kept_link(&self, iface: &str) -> Option<KeptLink> {
        let recorded = LinkMode::ALL.into_iter().map(|mode| KeptLink {
            path: self.link_path(iface, mode),
            mode: Some(mode),
        });
        let unrecorded = KeptLink {
            path: self.dir.join(format!("{LINK_PREFIX}{iface}")),
            mode: None,
        };
        recorded
            .chain(std::iter::once(unrecorded))
            .find(|link| link.path.exists())
    }

    /// Whether an XDP link is pinned for `iface` (a previous agent's, to take over).
    pub fn has_link(&self, iface: &str) -> bool {
        self.kept_link(iface).is_some()
    }

    /// Unpins the link pinned for `iface`, whose interface is gone or was replaced: the
    /// kernel detached it with its interface, and a new one is pinned when the program
    /// is attached again.
    pub fn forget_link(&self, iface: &str) {
        while let Some(link) = self.kept_link(iface) {
            unpin(&link.path);
            if link.path.exists() {
                break;
            }
        }
    }

    /// Unpins the XDP links left on interfaces that are not in `ifaces` (no longer
    /// configured): the programs there would forward on with an old configuration.
    pub fn release_other_links(&self, ifaces: &[String]) {
        for (path, file) in self.entries() {
            let Some(rest) = file.strip_prefix(LINK_PREFIX) else {
                continue;
            };
            let iface = LinkMode::ALL
                .iter()
                .find_map(|mode| rest.strip_prefix(&format!("{}-", mode.name())))
                .unwrap_or(rest);
            if ifaces.iter().any(|i| i == iface) {
                continue;
            }
            log::warn!(
                "{iface}: no longer configured; detaching the XDP program a previous agent \
                 left there ({})",
                path.display()
            );
            detach(&path);
        }
    }

    /// Swaps `program` into the XDP link a previous agent left pinned on `iface`, if there
    /// is one that still works and is in the `wanted` mode (`None`: either). `None`: there
    /// is none (a broken one is unpinned, one in another mode detached). Unless `keep` the
    /// link is unpinned at once: it stays attached while this agent's program holds it,
    /// and goes when the agent does, even when it crashes.
    pub fn take_over(
        &self,
        program: &mut Xdp,
        iface: &str,
        wanted: Option<LinkMode>,
        keep: bool,
    ) -> Option<(XdpLinkId, Option<LinkMode>)> {
        let kept = self.kept_link(iface)?;
        if let (Some(wanted), Some(mode)) = (wanted, kept.mode) {
            if wanted != mode {
                log::warn!(
                    "{iface}: the XDP link a previous agent left is in {} mode where \
                     agent.xdp_mode asks for {}: detaching it to attach anew (for a moment \
                     no XDP program runs there)",
                    mode.name(),
                    wanted.name()
                );
                detach(&kept.path);
                return None;
            }
        }
        let taken = PinnedLink::from_pin(&kept.path)
            .map_err(|e| e.to_string())
            .and_then(|pinned| XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string()))
            .and_then(|link| program.attach_to_link(link).map_err(|e| e.to_string()));
        match taken {
            Ok(id) => {
                if !keep {
                    unpin(&kept.path);
                }
                Some((id, kept.mode))
            }
            Err(e) => {
                log::warn!(
                    "{iface}: the XDP link left at {} cannot be taken over ({e}); attaching anew",
                    kept.path.display()
                );
                unpin(&kept.path);
                None
            }
        }
    }

    /// Pins the link `id` of `program` on `iface`, attached in `mode`, (unless a link is
    /// pinned there already) so that it stays attached after the agent exits.
    pub fn keep_link(
        &self,
        program: &mut Xdp,
        id: XdpLinkId,
        iface: &str,
        mode: LinkMode,
    ) -> Result<(), PinError> {
        if self.kept_link(iface).is_some() {
            return Ok(());
        }
        let failed = |reason: String| PinError::Link {
            iface: iface.to_string(),
            reason,
        };
        let link = program.take_link(id).map_err(|e| failed(e.to_string()))?;
        let fd_link = FdLink::try_from(link)
            .map_err(|e| failed(format!("not a bpf_link (netlink attach?): {e}")))?;
        fd_link
            .pin(self.link_path(iface, mode))
            .map_err(|e| failed(e.to_string()))?;
        Ok(())
    }
}

/// What is in the directory `dir`: (path, file name).
fn entries(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(dir) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        let name = path.file_name()?.to_str()?.to_string();
        Some((path, name))
    })
    .collect()
}

/// The `accept_local` values recorded in the pin directory `dir`: (interface, value).
pub fn saved_accept_local(dir: &Path) -> Vec<(String, String)> {
    entries(dir)
        .into_iter()
        .filter_map(|(_, name)| {
            let (value, iface) = name.strip_prefix(ACCEPT_LOCAL_PREFIX)?.split_once('-')?;
            let number = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            (number && !iface.is_empty()).then(|| (iface.to_string(), value.to_string()))
        })
        .collect()
}

fn accept_local_path(dir: &Path, iface: &str, value: &str) -> PathBuf {
    dir.join(format!("{ACCEPT_LOCAL_PREFIX}{value}-{iface}"))
}

/// Records in `dir` that `iface`'s `accept_local` was `value` before an agent turned it on.
pub fn save_accept_local(dir: &Path, iface: &str, value: &str) -> Result<(), PinError> {
    let path = accept_local_path(dir, iface, value);
    match std::fs::create_dir(&path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(PinError::Io { path, source: e }),
        _ => Ok(()),
    }
}

/// Removes the record [`save_accept_local`] made.
pub fn forget_accept_local(dir: &Path, iface: &str, value: &str) {
    let path = accept_local_path(dir, iface, value);
    if let Err(e) = std::fs::remove_dir(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("{}: cannot remove it: {e}", path.display());
        }
    }
}

/// Detaches the XDP link pinned at `path` from its interface at once and unpins it.
/// (Unpinned alone, a link goes when its last reference does, later, from an RCU
/// callback and a work queue: a new attachment could still find it there.)
fn detach(path: &Path) {
    if let Err(e) = bpf_obj_get(path).and_then(|link| bpf_link_detach(&link)) {
        log::warn!("{}: cannot detach the link: {e}", path.display());
    }
    unpin(path);
}

/// `bpf(2)`'s attribute union, as far as these commands read it.
#[repr(C)]
#[derive(Default)]
struct BpfAttr {
    /// `pathname` (`BPF_OBJ_GET`) or `link_fd` (`BPF_LINK_DETACH`, the low half).
    first: u64,
    /// `bpf_fd` and `file_flags` (`BPF_OBJ_GET`).
    second: u64,
    /// `path_fd` (`BPF_OBJ_GET`).
    third: u64,
}

fn bpf(cmd: libc::c_long, attr: &BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: a valid attribute of the size passed; the kernel reads it, and reads the
    // memory it points to (a C string), only during the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size_of::<BpfAttr>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = BpfAttr {
        first: path.as_ptr() as u64,
        ..BpfAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Detaches the link `link` from its hook (`BPF_LINK_DETACH`, since Linux 5.9).
fn bpf_link_detach(link: &OwnedFd) -> io::Result<()> {
    let attr = BpfAttr {
        first: link.as_raw_fd() as u64,
        ..BpfAttr::default()
    };
    bpf(BPF_LINK_DETACH, &attr).map(|_| ())
}

/// Why the table pinned at `path` cannot serve as `table`; `None` when it can, or when
/// nothing is pinned there.
fn layout_problem(path: &Path, table: &Table) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let info = match MapInfo::from_pin(path) {
        Ok(info) => info,
        Err(e) => return Some(format!("not a map ({e})")),
    };
    let wanted = (
        Some(table.map_type),
        table.key_size as u32,
        table.value_size as u32,
        table.entries,
    );
    let found = (
        info.map_type().ok(),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    );
    (found != wanted).then(|| {
        format!("(type, key size, value size, entries) {found:?} where this agent needs {wanted:?}")
    })
}

fn on_bpffs(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid out-parameter; statfs writes only it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a valid out-pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &raw mut fs) };
    rc == 0 && fs.f_type as u32 == BPF_FS_MAGIC
}

/// Unpins what `path` names (its object goes when nothing else holds it); already gone is
/// fine, anything else is a warning.
fn unpin(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("{}: cannot unpin it: {e}", path.display()),
    }
}
