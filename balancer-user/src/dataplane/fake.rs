//! [`Maps`] in memory, with the kernel's semantics that matter to the agent, for unit tests.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use balancer_common::{
    stat, Backend, Conn, FlowKey, FlowStats, NatEntry, Settings, VipMeta, BACKEND_F_PRESENT,
    MAX_VIPS, V6,
};

use super::{
    family::{v4_addr, v6_addr},
    names_client, AnyBackend, AnyVipKey, FlowEntry, FlowTable, Maps, MapsError, PresentVips,
};

/// In-memory maps with the kernel's semantics that matter to the agent.
#[derive(Debug, Default)]
pub struct FakeMaps {
    pub settings: Settings,
    /// `VIPS` and `VIPS6`.
    pub vips: HashMap<AnyVipKey, VipMeta>,
    pub present: PresentVips,
    pub ring: HashMap<u32, u32>,
    pub backends: HashMap<u32, Backend>,
    pub backends6: HashMap<u32, Backend<V6>>,
    pub vip_stats: HashMap<u32, FlowStats>,
    pub backend_stats: HashMap<u32, FlowStats>,
    /// `VIP_GENS` by id (absent: 0); set it before the balancer starts to play the
    /// generations a previous agent left in the pinned map.
    pub vip_gens: HashMap<u32, u32>,
    /// Number of ring slot writes (to check that ring updates write only what changed).
    pub ring_writes: usize,
    /// `Some(n)`: the next `n` writes succeed, the one after fails, and later ones
    /// succeed again (a transient failure, to test how the balancer recovers).
    pub fail_write: Option<usize>,
    /// `CONNS` and `CONNS6`, and the data plane's clock their flows are judged by.
    pub flows: Arc<FakeFlows>,
}

/// A connection table in memory (with its reply entries, which flow sync writes), and the
/// data plane's clock (set by the test).
#[derive(Debug, Default)]
pub struct FakeFlows {
    pub entries: Mutex<Vec<(FlowKey, Conn)>>,
    pub entries6: Mutex<Vec<(FlowKey<V6>, Conn<V6>)>>,
    pub nat: Mutex<HashMap<FlowKey, NatEntry>>,
    pub now_ns: Mutex<u64>,
}

impl FakeFlows {
    /// Adds a flow.
    pub fn insert(&self, key: FlowKey, conn: Conn) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((key, conn));
    }

    /// Adds an IPv6 flow.
    pub fn insert6(&self, key: FlowKey<V6>, conn: Conn<V6>) {
        self.entries6
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((key, conn));
    }

    /// Sets the data plane's clock.
    pub fn set_now(&self, ns: u64) {
        *self.now_ns.lock().unwrap_or_else(PoisonError::into_inner) = ns;
    }
}

impl FlowTable for FakeFlows {
    fn now_ns(&self, _: &Settings) -> Result<u64, MapsError> {
        Ok(*self.now_ns.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn walk(&self, each: &mut dyn FnMut(&FlowEntry)) -> Result<usize, MapsError> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, conn) in entries.iter() {
            each(&(key, conn).into());
        }
        let entries6 = self.entries6.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, conn) in entries6.iter() {
            each(&(key, conn).into());
        }
        Ok(entries.len() + entries6.len())
    }

    fn put(
        &self,
        key: &FlowKey,
        conn: &Conn,
        reply: Option<&(FlowKey, NatEntry)>,
    ) -> Result<(), MapsError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, c)) => *c = *conn,
            None => entries.push((*key, *conn)),
        }
        if let Some((reply_key, entry)) = reply {
            let mut nat = self.nat.lock().unwrap_or_else(PoisonError::into_inner);
            nat.insert(*reply_key, *entry);
        }
        Ok(())
    }

    fn remove(&self, key: &FlowKey, reply: Option<&FlowKey>) -> Result<(), MapsError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(k, _)| k != key);
        if let Some(reply) = reply {
            let mut nat = self.nat.lock().unwrap_or_else(PoisonError::into_inner);
            if nat.get(reply).is_some_and(|h| names_client(h, key)) {
                nat.remove(reply);
            }
        }
        Ok(())
    }
}

impl FakeMaps {
    /// The address and port of backend `id`, in whichever family's map holds it.
    pub fn backend_addr(&self, id: u32) -> Option<SocketAddr> {
        let present = |flags| flags & BACKEND_F_PRESENT != 0;
        let v4 = self
            .backends
            .get(&id)
            .filter(|b| present(b.flags))
            .map(|b| SocketAddr::new(v4_addr(b.addr).into(), u16::from_be(b.port)));
        v4.or_else(|| {
            let b = self.backends6.get(&id).filter(|b| present(b.flags))?;
            Some(SocketAddr::new(
                v6_addr(b.addr).into(),
                u16::from_be(b.port),
            ))
        })
    }

    /// The backend ids a packet of this VIP can be scheduled to, slot by slot.
    pub fn active_ring(&self, key: &AnyVipKey) -> Vec<u32> {
        let Some(meta) = self.vips.get(key) else {
            return Vec::new();
        };
        (0..meta.ring_size)
            .map(|slot| {
                self.ring
                    .get(&(meta.ring_base + slot))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl FakeMaps {
    /// Counts one write against [`FakeMaps::fail_write`].
    fn write(&mut self, map: &'static str) -> Result<(), MapsError> {
        match &mut self.fail_write {
            Some(0) => {
                self.fail_write = None;
                Err(MapsError::Other {
                    map,
                    message: "injected failure".into(),
                })
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Maps for FakeMaps {
    fn set_settings(&mut self, settings: &Settings) -> Result<(), MapsError> {
        self.write("SETTINGS")?;
        self.settings = *settings;
        Ok(())
    }
    fn set_vip(&mut self, key: &AnyVipKey, meta: &VipMeta) -> Result<(), MapsError> {
        self.write("VIPS")?;
        let writes = self.present.writes_for(*key, meta.vip_id, meta.generation);
        if let Some((id, generation)) = writes.generation {
            self.vip_gens.insert(id, generation);
        }
        self.vips.insert(*key, *meta);
        self.present.record(*key, meta.vip_id, meta.generation);
        if let Some(id) = writes.clear {
            self.vip_gens.remove(&id);
        }
        Ok(())
    }
    fn del_vip(&mut self, key: &AnyVipKey) -> Result<(), MapsError> {
        self.write("VIPS")?;
        self.vips.remove(key);
        if let Some((_, _, id)) = self.present.removed(*key) {
            self.vip_gens.remove(&id);
        }
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: &AnyBackend) -> Result<(), MapsError> {
        match backend {
            AnyBackend::V4(b) => {
                self.write("BACKENDS")?;
                self.backends.insert(id, *b);
            }
            AnyBackend::V6(b) => {
                self.write("BACKENDS6")?;
                self.backends6.insert(id, *b);
            }
        }
        Ok(())
    }
    fn clear_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.write("BACKENDS")?;
        self.backends.insert(id, Backend::default());
        self.backends6.insert(id, Backend::default());
        Ok(())
    }
    fn set_ring_slot(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError> {
        self.write("RING")?;
        self.ring_writes += 1;
        self.ring.insert(index, backend_id);
        Ok(())
    }
    fn vip_stats(&self, vip_id: u32) -> Result<FlowStats, MapsError> {
        Ok(self.vip_stats.get(&vip_id).copied().unwrap_or_default())
    }
    fn backend_stats(&self, backend_id: u32) -> Result<FlowStats, MapsError> {
        Ok(self
            .backend_stats
            .get(&backend_id)
            .copied()
            .unwrap_or_default())
    }
    fn clear_vip_stats(&mut self, vip_id: u32) -> Result<(), MapsError> {
        self.write("VIP_STATS")?;
        self.vip_stats.remove(&vip_id);
        Ok(())
    }
    fn clear_backend_stats(&mut self, backend_id: u32) -> Result<(), MapsError> {
        self.write("BACKEND_STATS")?;
        self.backend_stats.remove(&backend_id);
        Ok(())
    }
    fn global_stats(&self) -> Result<Vec<u64>, MapsError> {
        Ok(vec![0; stat::COUNT as usize])
    }
    fn vip_gens(&self) -> Result<Vec<u32>, MapsError> {
        Ok((0..MAX_VIPS)
            .map(|id| self.vip_gens.get(&id).copied().unwrap_or(0))
            .collect())
    }
    fn write_vip_gen(&mut self, id: u32, generation: u32) -> Result<(), MapsError> {
        self.write("VIP_GENS")?;
        match generation {
            0 => self.vip_gens.remove(&id),
            g => self.vip_gens.insert(id, g),
        };
        Ok(())
    }
    fn flow_table(&self) -> Arc<dyn FlowTable> {
        Arc::clone(&self.flows) as Arc<dyn FlowTable>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tests::key;

    #[test]
    fn fake_maps_keep_the_counts() {
        let mut m = FakeMaps::default();
        let web = key([10, 0, 100, 7], 80);
        m.set_vip(&web, &VipMeta::default()).unwrap();
        m.set_vip(&web, &VipMeta::default()).unwrap();
        assert_eq!(m.present.count(web.slot()), 1);
        m.del_vip(&web).unwrap();
        assert_eq!(m.present.count(web.slot()), 0);
    }
}
