//! A whole hash map read with `BPF_MAP_LOOKUP_BATCH`: thousands of entries per syscall
//! instead of a `BPF_MAP_GET_NEXT_KEY` and a lookup per entry (aya 0.14 has no batch
//! calls). The agent's census of live flows reads `CONNS` this way, off its event loop;
//! flow sync writes a peer's flows into `CONNS` and `NAT` one element at a time.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

/// `bpf(2)` command.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call at first: about 230 KiB of `CONNS` keys and values.
pub const CHUNK: usize = 4096;
/// A call fails with `ENOSPC` when the first bucket it meets holds more entries than it
/// may return: the chunk doubles, up to this.
const MAX_CHUNK: usize = 1 << 20;

/// What one call read: `count` entries, and where the next call starts (`None`: the map
/// has no more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub count: usize,
    pub next: Option<u64>,
}

/// One batch read of a map: up to `keys.len()` entries from the position `from` (`None`:
/// the start), with the kernel's semantics: an error of `ENOSPC` when one bucket holds
/// more entries than fit (nothing read), the end of the map as `next: None`.
pub trait BatchRead<K, V> {
    /// # Errors
    /// The syscall's.
    fn read(&self, from: Option<u64>, keys: &mut [K], values: &mut [V]) -> io::Result<Chunk>;
}

/// Calls `each` on every entry `map` holds, reading `chunk` entries per call at first;
/// returns how many there were. An entry written or deleted during the walk may be seen
/// or not (the map is not frozen); none is seen twice unless it moves between buckets.
///
/// # Errors
/// The first failed call's (`ENOSPC` only past the largest chunk).
pub fn walk<K: Copy + Default, V: Copy + Default>(
    map: &impl BatchRead<K, V>,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<usize> {
    let mut size = chunk.clamp(1, MAX_CHUNK);
    let mut keys = vec![K::default(); size];
    let mut values = vec![V::default(); size];
    let mut from = None;
    let mut total = 0;
    loop {
        match map.read(from, &mut keys, &mut values) {
            Ok(Chunk { count, next }) => {
                let count = count.min(size);
                for (key, value) in keys[..count].iter().zip(&values[..count]) {
                    each(key, value);
                }
                total += count;
                match next {
                    Some(next) => from = Some(next),
                    None => return Ok(total),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && size < MAX_CHUNK => {
                size = (size * 2).min(MAX_CHUNK);
                keys.resize(size, K::default());
                values.resize(size, V::default());
            }
            Err(e) => return Err(e),
        }
    }
}

/// The batch part of `union bpf_attr` (`BPF_MAP_*_BATCH`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A hash map of the kernel (`BPF_MAP_TYPE_HASH` or `LRU_HASH`, not per-CPU), read as keys
/// and values of its sizes.
#[derive(Debug)]
pub struct KernelHash {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl KernelHash {
    /// `fd`'s map, whose keys and values are `key_size` and `value_size` bytes.
    ///
    /// # Safety
    /// `fd` is a hash map that is not per-CPU (whose batch reads copy `value_size` bytes
    /// per entry) with those sizes: the kernel writes that much into the buffers.
    pub unsafe fn new(fd: OwnedFd, key_size: usize, value_size: usize) -> Self {
        KernelHash {
            fd,
            key_size,
            value_size,
        }
    }
}

/// `bpf(2)` commands of single elements.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// The element part of `union bpf_attr` (`BPF_MAP_*_ELEM`).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl KernelHash {
    fn check_sizes<K, V>(&self) -> io::Result<u32> {
        if (size_of::<K>(), size_of::<V>()) != (self.key_size, self.value_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the map's entries are {} + {} bytes, not {} + {}",
                    self.key_size,
                    self.value_size,
                    size_of::<K>(),
                    size_of::<V>()
                ),
            ));
        }
        u32::try_from(self.fd.as_raw_fd())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a negative descriptor"))
    }

    /// One element command on `key` (and `value`, which the kernel reads or writes).
    fn elem<K: aya::Pod, V: aya::Pod>(
        &self,
        cmd: libc::c_long,
        key: &K,
        value: Option<*mut V>,
    ) -> io::Result<()> {
        let map_fd = self.check_sizes::<K, V>()?;
        let mut attr = ElemAttr {
            map_fd,
            _pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value: value.map_or(0, |v| v as u64),
            flags: 0,
        };
        // SAFETY: a valid element attribute: key and value point at live `K` and `V` of
        // the map's sizes (checked above), which take any bytes (`Pod`).
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw mut attr, size_of::<ElemAttr>()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `map[key] = value` (created or replaced).
    ///
    /// # Errors
    /// The syscall's.
    pub fn update<K: aya::Pod, V: aya::Pod>(&self, key: &K, value: &V) -> io::Result<()> {
        let mut value = *value;
        self.elem(BPF_MAP_UPDATE_ELEM, key, Some(&raw mut value))
    }

    /// `map[key]`, if present.
    ///
    /// # Errors
    /// The syscall's, but for an absent key.
    pub fn lookup<K: aya::Pod, V: aya::Pod + Default>(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = V::default();
        match self.elem(BPF_MAP_LOOKUP_ELEM, key, Some(&raw mut value)) {
            Ok(()) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key` (absent already: fine).
    ///
    /// # Errors
    /// The syscall's, but for an absent key.
    pub fn delete<K: aya::Pod, V: aya::Pod>(&self, key: &K) -> io::Result<()> {
        match self.elem::<K, V>(BPF_MAP_DELETE_ELEM, key, None) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

impl<K: aya::Pod, V: aya::Pod> BatchRead<K, V> for KernelHash {
    fn read(&self, from: Option<u64>, keys: &mut [K], values: &mut [V]) -> io::Result<Chunk> {
        let map_fd = self.check_sizes::<K, V>()?;
        // A hash map's position is a bucket number (a u32): 8 bytes hold it.
        let start = from.unwrap_or(0);
        let mut next = 0u64;
        let count = keys.len().min(values.len());
        let mut attr = BatchAttr {
            in_batch: if from.is_some() {
                &raw const start as u64
            } else {
                0
            },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid batch attribute: the buffers hold `count` keys and
        // values of the map's sizes (checked above; `new`'s caller vouched for them and
        // for a map that is not per-CPU), `K` and `V` take any bytes (`Pod`), and the
        // tokens are 8 bytes; the kernel writes `count` back.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let count = attr.count as usize;
        if rc == 0 {
            return Ok(Chunk {
                count,
                next: Some(next),
            });
        }
        let e = io::Error::last_os_error();
        // The end of the map, with the last entries read.
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(Chunk { count, next: None });
        }
        Err(e)
    }
}

/// A new LRU hash map of `K` keys and `V` values (`BPF_MAP_CREATE`), for tests.
///
/// # Panics
/// When the kernel refuses (without root or `CAP_BPF`).
#[cfg(test)]
pub(crate) fn lru_hash<K, V>(max_entries: u32) -> KernelHash {
    use std::os::fd::FromRawFd;

    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let mut attr = CreateAttr {
        map_type: 9, // BPF_MAP_TYPE_LRU_HASH
        key_size: size_of::<K>() as u32,
        value_size: size_of::<V>() as u32,
        max_entries,
        map_flags: 0,
    };
    // SAFETY: a valid create attribute; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &raw mut attr, size_of::<CreateAttr>()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {} (this test needs root or CAP_BPF: run it with `cargo xtask test`)",
        io::Error::last_os_error()
    );
    // SAFETY: the kernel just gave us this descriptor, a hash map (not per-CPU) of these
    // sizes.
    unsafe {
        KernelHash::new(
            OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()),
            size_of::<K>(),
            size_of::<V>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A hash map as the kernel reads it in batches: buckets in order, a bucket whole or
    /// not at all, `ENOSPC` when the first bucket does not fit.
    struct Buckets {
        buckets: Vec<Vec<(u32, u64)>>,
        calls: RefCell<Vec<(Option<u64>, usize)>>,
    }

    impl BatchRead<u32, u64> for Buckets {
        fn read(
            &self,
            from: Option<u64>,
            keys: &mut [u32],
            values: &mut [u64],
        ) -> io::Result<Chunk> {
            self.calls.borrow_mut().push((from, keys.len()));
            let mut bucket = usize::try_from(from.unwrap_or(0)).unwrap();
            let mut count = 0;
            while let Some(entries) = self.buckets.get(bucket) {
                if count + entries.len() > keys.len() {
                    if count == 0 {
                        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                    }
                    return Ok(Chunk {
                        count,
                        next: Some(bucket as u64),
                    });
                }
                for (k, v) in entries {
                    keys[count] = *k;
                    values[count] = *v;
                    count += 1;
                }
                bucket += 1;
            }
            Ok(Chunk { count, next: None })
        }
    }

    fn buckets(sizes: &[usize]) -> Buckets {
        let mut n = 0;
        let buckets = sizes
            .iter()
            .map(|&size| {
                (0..size)
                    .map(|_| {
                        n += 1;
                        (n, u64::from(n) * 10)
                    })
                    .collect()
            })
            .collect();
        Buckets {
            buckets,
            calls: RefCell::new(Vec::new()),
        }
    }

    fn seen(map: &Buckets, chunk: usize) -> (usize, Vec<u32>) {
        let mut keys = Vec::new();
        let total = walk(map, chunk, |k: &u32, v: &u64| {
            assert_eq!(*v, u64::from(*k) * 10, "value of key {k}");
            keys.push(*k);
        })
        .unwrap();
        (total, keys)
    }

    #[test]
    fn every_entry_once_over_chunks_of_whole_buckets() {
        let map = buckets(&[1, 0, 3, 2, 0, 0, 1, 4]);
        let (total, keys) = seen(&map, 4);
        assert_eq!(total, 11);
        assert_eq!(keys, (1..=11).collect::<Vec<_>>());
        // Buckets 0-2 (4 entries), 3-6 (3: bucket 7's 4 would not fit), then 7: each
        // call starts at the bucket the last one stopped before.
        assert_eq!(*map.calls.borrow(), [(None, 4), (Some(3), 4), (Some(7), 4)]);
    }

    #[test]
    fn a_bucket_larger_than_the_chunk_grows_it() {
        let map = buckets(&[2, 9, 1]);
        let (total, keys) = seen(&map, 2);
        assert_eq!((total, keys.len()), (12, 12));
        assert_eq!(
            *map.calls.borrow(),
            [
                (None, 2),
                (Some(1), 2),
                (Some(1), 4),
                (Some(1), 8),
                (Some(1), 16)
            ],
            "the call that did not fit is made again, larger"
        );
    }

    /// A map whose every read fails.
    struct Broken;

    impl BatchRead<u32, u64> for Broken {
        fn read(&self, _: Option<u64>, _: &mut [u32], _: &mut [u64]) -> io::Result<Chunk> {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }

    #[test]
    fn an_empty_map_and_other_errors() {
        let (total, keys) = seen(&buckets(&[]), CHUNK);
        assert_eq!((total, keys.len()), (0, 0));
        let e = walk(&Broken, CHUNK, |_, _| panic!("nothing to see")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn a_kernel_lru_hash_is_read_whole_in_batches() {
        let map = lru_hash::<u32, u64>(4096);
        let n = 3000u32;
        for key in 0..n {
            map.update(&key, &(u64::from(key) * 7 + 1)).unwrap();
        }
        for chunk in [1, 64, CHUNK] {
            let mut seen = vec![false; n as usize];
            let total = walk(&map, chunk, |k: &u32, v: &u64| {
                assert_eq!(*v, u64::from(*k) * 7 + 1, "value of key {k}");
                assert!(
                    !std::mem::replace(&mut seen[*k as usize], true),
                    "key {k} twice"
                );
            })
            .unwrap_or_else(|e| panic!("walk in chunks of {chunk}: {e}"));
            assert_eq!(total, n as usize, "chunks of {chunk}");
            assert!(
                seen.iter().all(|s| *s),
                "chunks of {chunk}: a key was missed"
            );
        }
        let empty = lru_hash::<u32, u64>(16);
        assert_eq!(
            walk(&empty, CHUNK, |_: &u32, _: &u64| panic!("empty")).unwrap(),
            0
        );
    }
}
