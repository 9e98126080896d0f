//! [`Maps`] on the kernel's maps of a loaded program.

use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use balancer_common::{
    map_names, stat, Backend, Conn, FlowKey, FlowStats, NatEntry, Settings, VipKey, VipMeta,
    BACKEND_F_RESCHEDULE, MAX_VIPS, RING_ENTRIES, V6,
};

use super::{
    batch::{self, KernelHash},
    clock, names_client, AnyBackend, AnyVipKey, FlowEntry, FlowTable, Maps, MapsError, PresentVips,
};

/// The `VIPS` map of `key`'s family.
fn vips_name(key: &AnyVipKey) -> &'static str {
    match key {
        AnyVipKey::V4(_) => map_names::VIPS,
        AnyVipKey::V6(_) => map_names::VIPS6,
    }
}

fn aya_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |source| MapsError::Aya { map, source }
}

/// The kernel maps of a loaded program.
pub struct AyaMaps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    vips6: HashMap<MapData, VipKey<V6>, VipMeta>,
    vip_addrs: Array<MapData, u32>,
    vip_gens: Array<MapData, u32>,
    present: PresentVips,
    ring: MappedRing,
    backends: Array<MapData, Backend>,
    backends6: Array<MapData, Backend<V6>>,
    settings: Array<MapData, Settings>,
    /// What `SETTINGS` holds (once written), with the `flow_epoch` this layer counts.
    written_settings: Option<Settings>,
    /// Changed after every write to `VIP_GENS` and every backend flagged to move its flows,
    /// see [`Settings::flow_epoch`].
    flow_epoch: u32,
    vip_stats: PerCpuArray<MapData, FlowStats>,
    backend_stats: PerCpuArray<MapData, FlowStats>,
    global_stats: PerCpuArray<MapData, u64>,
    /// `CONNS`, `CONNS6` and `NAT` (the program writes them; flow sync too).
    flows: Arc<KernelFlows>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
    T::try_from(map).map_err(aya_err(name))
}

impl AyaMaps {
    /// Takes the maps the agent owns out of a loaded program.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            vips: take(ebpf, map_names::VIPS)?,
            vips6: take(ebpf, map_names::VIPS6)?,
            vip_addrs: take(ebpf, map_names::VIP_ADDRS)?,
            vip_gens: take(ebpf, map_names::VIP_GENS)?,
            present: PresentVips::default(),
            ring: MappedRing::new(ebpf)?,
            backends: take(ebpf, map_names::BACKENDS)?,
            backends6: take(ebpf, map_names::BACKENDS6)?,
            settings: take(ebpf, map_names::SETTINGS)?,
            written_settings: None,
            flow_epoch: 0,
            vip_stats: take(ebpf, map_names::VIP_STATS)?,
            backend_stats: take(ebpf, map_names::BACKEND_STATS)?,
            global_stats: take(ebpf, map_names::GLOBAL_STATS)?,
            flows: Arc::new(KernelFlows::new(ebpf)?),
        })
    }
}

/// `CONNS`, `CONNS6` and `NAT` of a loaded program, each through a descriptor of its own
/// (the program keeps the maps): read whole by the census, written only by flow sync
/// (IPv4 flows only, so far).
struct KernelFlows {
    v4: KernelHash,
    v6: KernelHash,
    nat: KernelHash,
}

impl KernelFlows {
    fn new(ebpf: &Ebpf) -> Result<Self, MapsError> {
        Ok(KernelFlows {
            v4: kernel_hash::<FlowKey, Conn>(ebpf, map_names::CONNS)?,
            v6: kernel_hash::<FlowKey<V6>, Conn<V6>>(ebpf, map_names::CONNS6)?,
            nat: kernel_hash::<FlowKey, NatEntry>(ebpf, map_names::NAT)?,
        })
    }
}
/// Hash map `name` of a loaded program, through a descriptor of its own, checked to hold
/// `K` keys and `V` values.
fn kernel_hash<K, V>(ebpf: &Ebpf, name: &'static str) -> Result<KernelHash, MapsError> {
    let (aya::maps::Map::LruHashMap(map) | aya::maps::Map::HashMap(map)) =
        ebpf.map(name).ok_or(MapsError::Missing(name))?
    else {
        return Err(MapsError::Other {
            map: name,
            message: "is not a hash map".into(),
        });
    };
    let info = map.info().map_err(aya_err(name))?;
    let sizes = (info.key_size() as usize, info.value_size() as usize);
    let wanted = (size_of::<K>(), size_of::<V>());
    if sizes != wanted {
        return Err(MapsError::Other {
            map: name,
            message: format!("entry sizes {sizes:?} where this agent reads {wanted:?}"),
        });
    }
    let fd = map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| MapsError::Other {
            map: name,
            message: format!("duplicating its descriptor: {e}"),
        })?;
    // SAFETY: a hash map, not per-CPU (matched above), of these sizes.
    Ok(unsafe { KernelHash::new(fd, sizes.0, sizes.1) })
}

/// A failed element write of flow sync.
fn write_err(map: &'static str) -> impl FnOnce(std::io::Error) -> MapsError {
    move |e| MapsError::Other {
        map,
        message: e.to_string(),
    }
}

impl FlowTable for KernelFlows {
    fn now_ns(&self, settings: &Settings) -> Result<u64, MapsError> {
        clock::now_ns(settings.ns_per_tick).map_err(|e| MapsError::Other {
            map: map_names::CONNS,
            message: format!("reading the data plane's clock: {e}"),
        })
    }

    fn walk(&self, each: &mut dyn FnMut(&FlowEntry)) -> Result<usize, MapsError> {
        let failed = |map| {
            move |e| MapsError::Other {
                map,
                message: format!("BPF_MAP_LOOKUP_BATCH: {e}"),
            }
        };
        let v4 = batch::walk(&self.v4, batch::CHUNK, |key: &FlowKey, conn: &Conn| {
            each(&(key, conn).into());
        })
        .map_err(failed(map_names::CONNS))?;
        let v6 = batch::walk(
            &self.v6,
            batch::CHUNK,
            |key: &FlowKey<V6>, conn: &Conn<V6>| each(&(key, conn).into()),
        )
        .map_err(failed(map_names::CONNS6))?;
        Ok(v4 + v6)
    }

    fn put(
        &self,
        key: &FlowKey,
        conn: &Conn,
        reply: Option<&(FlowKey, NatEntry)>,
    ) -> Result<(), MapsError> {
        self.v4
            .update(key, conn)
            .map_err(write_err(map_names::CONNS))?;
        if let Some((reply_key, entry)) = reply {
            self.nat
                .update(reply_key, entry)
                .map_err(write_err(map_names::NAT))?;
        }
        Ok(())
    }

    fn remove(&self, key: &FlowKey, reply: Option<&FlowKey>) -> Result<(), MapsError> {
        self.v4
            .delete::<FlowKey, Conn>(key)
            .map_err(write_err(map_names::CONNS))?;
        let Some(reply) = reply else {
            return Ok(());
        };
        let holder: Option<NatEntry> = self.nat.lookup(reply).map_err(write_err(map_names::NAT))?;
        if holder.is_some_and(|h| names_client(&h, key)) {
            self.nat
                .delete::<FlowKey, NatEntry>(reply)
                .map_err(write_err(map_names::NAT))?;
        }
        Ok(())
    }
}

/// The `RING` array (created `BPF_F_MMAPABLE`) mapped into the agent's memory: a slot
/// write is a store, not a syscall, so a whole 65537-slot ring is written in well under a
/// millisecond. The VIP's flip to the new slice is a map update (a syscall, so a full
/// barrier): the kernel never reads a slice before it is complete.
struct MappedRing {
    /// Two slots per 8-byte element (`RING_SLOTS_PER_ELEMENT`): slot `i`'s u32 sits at
    /// byte `4 * i`.
    base: NonNull<u32>,
    len: usize,
    // Kept open for clarity; the mapping itself also holds a reference to the map.
    _map: MapData,
}

/// Bytes between two slots in the ring's memory.
const RING_STRIDE: usize = size_of::<u32>();

impl MappedRing {
    fn new(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let name = map_names::RING;
        let aya::maps::Map::Array(map) = ebpf.take_map(name).ok_or(MapsError::Missing(name))?
        else {
            return Err(MapsError::Other {
                map: name,
                message: "is not an array".into(),
            });
        };
        let len = RING_ENTRIES as usize;
        let bytes = len * RING_STRIDE;
        // SAFETY: a shared mapping of the map's fd; the kernel checks size and permissions.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(MapsError::Other {
                map: name,
                message: format!(
                    "mmap of {bytes} bytes failed (is the map BPF_F_MMAPABLE?): {}",
                    std::io::Error::last_os_error()
                ),
            });
        }
        Ok(MappedRing {
            base: NonNull::new(addr.cast()).expect("mmap returned a non-null address"),
            len,
            _map: map,
        })
    }

    fn set(&mut self, index: u32, value: u32) -> Result<(), MapsError> {
        if index as usize >= self.len {
            return Err(MapsError::Other {
                map: map_names::RING,
                message: format!("slot {index} out of range ({} slots)", self.len),
            });
        }
        // SAFETY: in bounds of a live mapping; an aligned u32 store is atomic for readers.
        unsafe {
            self.base.as_ptr().add(index as usize).write_volatile(value);
        };
        Ok(())
    }
}

impl Drop for MappedRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len * RING_STRIDE) };
    }
}

fn sum_stats(values: &PerCpuValues<FlowStats>) -> FlowStats {
    values.iter().fold(FlowStats::default(), |a, b| FlowStats {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
        new_flows: a.new_flows + b.new_flows,
        reply_packets: a.reply_packets + b.reply_packets,
        reply_bytes: a.reply_bytes + b.reply_bytes,
        snat_first_probes: a.snat_first_probes + b.snat_first_probes,
        snat_first_taken: a.snat_first_taken + b.snat_first_taken,
    })
}

fn zeroed_per_cpu<T: aya::Pod + Default>(map: &'static str) -> Result<PerCpuValues<T>, MapsError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Other {
        map,
        message: format!("cannot count CPUs: {e}"),
    })?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| MapsError::Other {
        map,
        message: e.to_string(),
    })
}

impl AyaMaps {
    /// Writes `VIP_GENS[id]` (0: no VIP holds the id), then starts a new `flow_epoch`.
    fn set_vip_gen(&mut self, id: u32, generation: u32) -> Result<(), MapsError> {
        self.vip_gens
            .set(id, generation, 0)
            .map_err(aya_err(map_names::VIP_GENS))?;
        self.new_flow_epoch()
    }

    /// Starts a new `flow_epoch` after a write to `VIP_GENS`, or of a backend whose flows
    /// must move: the data plane's per-CPU flow cache then uses no copy made before the
    /// write (each flow's next packet takes the connection-table path, which checks the
    /// VIP and the backend again).
    fn new_flow_epoch(&mut self) -> Result<(), MapsError> {
        self.flow_epoch = self.flow_epoch.wrapping_add(1);
        match self.written_settings {
            Some(settings) => self.set_settings(&settings),
            // Nothing reads the flow cache before SETTINGS exists.
            None => Ok(()),
        }
    }
}

impl Maps for AyaMaps {
    fn set_settings(&mut self, settings: &Settings) -> Result<(), MapsError> {
        let settings = Settings {
            flow_epoch: self.flow_epoch,
            ..*settings
        };
        self.settings
            .set(0, settings, 0)
            .map_err(aya_err(map_names::SETTINGS))?;
        self.written_settings = Some(settings);
        Ok(())
    }

    fn set_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<(), MapsError> {
        let writes = self.present.writes_for(*key, meta.vip_id, meta.generation);
        if let Some((id, generation)) = writes.generation {
            self.set_vip_gen(id, generation)?;
        }
        if let Some((slot, count)) = writes.count {
            self.vip_addrs
                .set(slot, count, 0)
                .map_err(aya_err(map_names::VIP_ADDRS))?;
        }
        // A failure here leaves at most a count one too high (a VIPS lookup more).
        match key {
            AnyVipKey::V4(k) => self.vips.insert(k, meta, 0),
            AnyVipKey::V6(k) => self.vips6.insert(k, meta, 0),
        }
        .map_err(aya_err(vips_name(key)))?;
        self.present.record(*key, meta.vip_id, meta.generation);
        if let Some(id) = writes.clear {
            self.set_vip_gen(id, 0)?;
        }
        Ok(())
    }

    fn del_vip(&mut self, key: &AnyVipKey) -> Result<(), MapsError> {
        let removed = match key {
            AnyVipKey::V4(k) => self.vips.remove(k),
            AnyVipKey::V6(k) => self.vips6.remove(k),
        };
        match removed {
            Ok(()) => {}
            // Absent already: only the bookkeeping (if any) is left.
            Err(aya::maps::MapError::SyscallError(ref e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(aya_err(vips_name(key))(e)),
        }
        if let Some((slot, count, vip_id)) = self.present.removed(*key) {
            self.set_vip_gen(vip_id, 0)?;
            self.vip_addrs
                .set(slot, count, 0)
                .map_err(aya_err(map_names::VIP_ADDRS))?;
        }
        Ok(())
    }

    fn set_backend(&mut self, id: u32, backend: &AnyBackend) -> Result<(), MapsError> {
        match backend {
            AnyBackend::V4(b) => self
                .backends
                .set(id, b, 0)
                .map_err(aya_err(map_names::BACKENDS))?,
            AnyBackend::V6(b) => self
                .backends6
                .set(id, b, 0)
                .map_err(aya_err(map_names::BACKENDS6))?,
        }
        // Of a backend's entry, the established path reads only this flag (its flows'
        // copies hold address and port): a new epoch is needed only when it is set.
        if backend.flags() & BACKEND_F_RESCHEDULE != 0 {
            self.new_flow_epoch()?;
        }
        Ok(())
    }

    fn clear_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.backends
            .set(id, Backend::default(), 0)
            .map_err(aya_err(map_names::BACKENDS))?;
        self.backends6
            .set(id, Backend::default(), 0)
            .map_err(aya_err(map_names::BACKENDS6))
    }

    fn set_ring_slot(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError> {
        self.ring.set(index, backend_id)
    }

    fn vip_stats(&self, vip_id: u32) -> Result<FlowStats, MapsError> {
        let values = self
            .vip_stats
            .get(&vip_id, 0)
            .map_err(aya_err(map_names::VIP_STATS))?;
        Ok(sum_stats(&values))
    }

    fn backend_stats(&self, backend_id: u32) -> Result<FlowStats, MapsError> {
        let values = self
            .backend_stats
            .get(&backend_id, 0)
            .map_err(aya_err(map_names::BACKEND_STATS))?;
        Ok(sum_stats(&values))
    }

    fn clear_vip_stats(&mut self, vip_id: u32) -> Result<(), MapsError> {
        let zero = zeroed_per_cpu(map_names::VIP_STATS)?;
        self.vip_stats
            .set(vip_id, zero, 0)
            .map_err(aya_err(map_names::VIP_STATS))
    }

    fn clear_backend_stats(&mut self, backend_id: u32) -> Result<(), MapsError> {
        let zero = zeroed_per_cpu(map_names::BACKEND_STATS)?;
        self.backend_stats
            .set(backend_id, zero, 0)
            .map_err(aya_err(map_names::BACKEND_STATS))
    }

    fn global_stats(&self) -> Result<Vec<u64>, MapsError> {
        (0..stat::COUNT)
            .map(|i| {
                self.global_stats
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(aya_err(map_names::GLOBAL_STATS))
            })
            .collect()
    }

    fn vip_gens(&self) -> Result<Vec<u32>, MapsError> {
        (0..MAX_VIPS)
            .map(|id| {
                self.vip_gens
                    .get(&id, 0)
                    .map_err(aya_err(map_names::VIP_GENS))
            })
            .collect()
    }

    fn write_vip_gen(&mut self, id: u32, generation: u32) -> Result<(), MapsError> {
        self.set_vip_gen(id, generation)
    }

    fn flow_table(&self) -> Arc<dyn FlowTable> {
        Arc::clone(&self.flows) as Arc<dyn FlowTable>
    }
}
