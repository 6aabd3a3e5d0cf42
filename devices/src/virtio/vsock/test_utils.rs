//! Test doubles: a minimal split-virtqueue driver that posts chains and collects used
//! entries, wrapping around the rings the way a real driver does (so tests can run
//! thousands of packets through a small queue), and a fake host stream.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};

use super::connection::HostStream;

/// 64 MiB of guest memory; queues live in the first MiB, buffers above it.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
}

pub struct TestDriver {
    mem: GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: VecDeque<u16>,
    avail_idx: u16,
    used_idx: u16,
    chains: HashMap<u16, Vec<u16>>,
}

impl TestDriver {
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let end = used + 6 + 8 * u64::from(size);
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        Self {
            mem: mem.clone(),
            size,
            desc: base,
            avail,
            used,
            free: (0..size).collect(),
            avail_idx: 0,
            used_idx: 0,
            chains: HashMap::new(),
        }
    }

    /// The device side of this queue, as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
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

    /// Posts a chain of (address, length, device-writable); returns its head index.
    pub fn post(&mut self, chain: &[(u64, u32, bool)]) -> u16 {
        let indexes: Vec<u16> = (0..chain.len())
            .map(|_| {
                self.free
                    .pop_front()
                    .expect("test driver out of descriptors")
            })
            .collect();
        for (i, &(addr, len, write)) in chain.iter().enumerate() {
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let next = indexes.get(i + 1).copied();
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = GuestAddress(self.desc + 16 * u64::from(indexes[i]));
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            self.mem.write_slice(&raw, at).unwrap();
        }
        let head = indexes[0];
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx,
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .unwrap();
        self.chains.insert(head, indexes);
        head
    }

    /// New used entries as (head, length); their descriptors become free again.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let idx: u16 = self
            .mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap();
        let mut out = Vec::new();
        while self.used_idx != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_idx % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            let head = id as u16;
            if let Some(indexes) = self.chains.remove(&head) {
                self.free.extend(indexes);
            }
            out.push((head, len));
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        out
    }
}

/// A host stream that takes `room` bytes before it would block and reads from `input`.
#[derive(Debug, Default)]
pub struct FakeStream {
    pub written: Vec<u8>,
    pub room: usize,
    pub input: VecDeque<u8>,
    /// Reads return end-of-stream once `input` is empty (instead of EAGAIN).
    pub eof: bool,
    /// Writes fail with EPIPE.
    pub broken: bool,
}

impl FakeStream {
    pub fn with_room(room: usize) -> Self {
        Self {
            room,
            ..Self::default()
        }
    }

    fn take(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = data.len().min(self.room);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.written.extend_from_slice(&data[..n]);
        Ok(n)
    }
}

impl Write for FakeStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.take(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteVolatile for FakeStream {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut data = vec![0; buf.len()];
        buf.copy_to(&mut data[..]);
        self.take(&data).map_err(VolatileMemoryError::IOError)
    }
}

impl ReadVolatile for FakeStream {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(VolatileMemoryError::IOError(
                    io::ErrorKind::WouldBlock.into(),
                ))
            };
        }
        let n = buf.len().min(self.input.len());
        let data: Vec<u8> = self.input.drain(..n).collect();
        buf.copy_from(&data[..]);
        Ok(n)
    }
}

impl HostStream for FakeStream {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}
