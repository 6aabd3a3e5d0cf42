//! A test driver for split virtqueues: the driver's side of a queue in guest memory, for
//! device tests on a mock queue and for the fuzz targets (feature `test-utils`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The driver's side of a split virtqueue in guest memory: descriptor table, avail ring
/// and used ring at `base`. Chains are posted the way a driver does (free descriptors,
/// wrapping indexes); descriptors and the avail index can also be written raw.
pub struct TestRing {
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

impl TestRing {
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
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT as u16;
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
