//! Shared scaffolding of the fuzz targets: a reader that turns fuzz input into numbers,
//! guest memory, a driver-side split virtqueue in that memory, and an in-memory disk.
//! None of it parses guest data: the targets hand the bytes to the real device code.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `VRING_DESC_F_NEXT`
pub const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`
pub const DESC_F_WRITE: u16 = 2;

/// Reads little-endian numbers and byte strings off the fuzz input; past the end it
/// yields zeroes and empty slices, so every input decodes to something.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.le::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }

    /// A byte string with a one-byte length prefix.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }

    /// A byte string with a two-byte length prefix, at most `max` bytes.
    pub fn long_bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()).min(max);
        self.bytes(n)
    }
}

/// Ignores SIGPIPE, as the vmm binary does: Rust's runtime sets SIG_IGN before `main`, but
/// a fuzz target starts in libFuzzer's `main`, where a write to a socket whose peer is gone
/// would end the process instead of failing with EPIPE (which the device code handles).
pub fn ignore_sigpipe() {
    // SAFETY: installs the SIG_IGN disposition, no handler code; called once, before the
    // fuzzer runs anything.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// A directory for a target's fixture files, `fuzz/target/fixtures/<name>`: the same one
/// for every run, so that runs leave nothing behind in /tmp.
pub fn fixture_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fixtures")
        .join(name);
    std::fs::create_dir_all(&dir).expect("cannot create the fixture directory");
    dir
}

/// `size` bytes of zeroed guest memory at guest address 0.
pub fn guest_memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .expect("cannot map guest memory")
}

/// A zero-filled in-memory file of `size` bytes (a disk image without a filesystem).
pub fn memfd_disk(size: u64) -> File {
    // SAFETY: memfd_create reads a NUL-terminated name and takes flags; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"vmm-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("cannot size the memfd");
    file
}

/// The driver's side of a split virtqueue in guest memory: descriptor table, avail ring
/// and used ring at `base`. Chains are posted the way a driver does (free descriptors,
/// wrapping indexes); descriptors and the avail index can also be written raw.
pub struct Ring {
    mem: GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_idx: u16,
    free: VecDeque<u16>,
    chains: HashMap<u16, Vec<u16>>,
}

impl Ring {
    /// Bytes of guest memory a ring of `size` entries takes from its base.
    pub fn footprint(size: u16) -> u64 {
        let avail = 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        used + 6 + 8 * u64::from(size)
    }

    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let zeroes = vec![0u8; Self::footprint(size) as usize];
        mem.write_slice(&zeroes, GuestAddress(base))
            .expect("ring outside guest memory");
        Self {
            mem: mem.clone(),
            size,
            desc: base,
            avail,
            used,
            avail_idx: 0,
            used_idx: 0,
            free: (0..size).collect(),
            chains: HashMap::new(),
        }
    }

    pub fn desc_table(&self) -> u64 {
        self.desc
    }

    pub fn avail_ring(&self) -> u64 {
        self.avail
    }

    pub fn used_ring(&self) -> u64 {
        self.used
    }

    /// The device side, as the transport hands it over after DRIVER_OK.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size is a power of two");
        q.set_size(self.size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` as given (any flags, any `next`).
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.desc + 16 * u64::from(index % self.size);
        self.mem
            .write_slice(&raw, GuestAddress(at))
            .expect("descriptor table in guest memory");
    }

    /// Puts `head` in the next avail slot and publishes it.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail ring in guest memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Stores the avail index the device sees (a driver bug when it runs ahead).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .store(idx, GuestAddress(self.avail + 2), Ordering::Release)
            .expect("avail ring in guest memory");
    }

    /// Posts a chain of (address, length, device-writable); `None` when the table has no
    /// room for it (the device still holds the descriptors).
    pub fn post(&mut self, chain: &[(u64, u32, bool)]) -> Option<u16> {
        if chain.is_empty() || chain.len() > self.free.len() {
            return None;
        }
        let indexes: Vec<u16> = self.free.drain(..chain.len()).collect();
        for (i, &(addr, len, write)) in chain.iter().enumerate() {
            let next = indexes.get(i + 1).copied();
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if next.is_some() {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(indexes[i], addr, len, flags, next.unwrap_or(0));
        }
        let head = indexes[0];
        self.chains.insert(head, indexes);
        self.push_avail(head);
        Some(head)
    }

    /// New used entries as (id, length); the descriptors of chains this driver posted
    /// become free again.
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .expect("used ring in guest memory");
        let mut out = Vec::new();
        // A device never runs more than a ring ahead of what it was given.
        let mut budget = usize::from(self.size);
        while self.used_idx != idx && budget > 0 {
            budget -= 1;
            let at = self.used + 4 + 8 * u64::from(self.used_idx % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used ring");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used ring");
            if let Some(indexes) = u16::try_from(id).ok().and_then(|h| self.chains.remove(&h)) {
                self.free.extend(indexes);
            }
            out.push((id, len));
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        out
    }
}
