//! Tests of the net device: the queues on a test driver against the fake TAP (`tx`,
//! `rx`), the device on a real event loop (`device`), and one real TAP in a private
//! network namespace (`real_tap`).

mod device;
mod real_tap;
mod rx;
mod tx;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::handler::NetHandler;
use crate::virtio::test_ring::TestRing;
use crate::virtio::VIRTIO_F_VERSION_1;

pub const RX_RING: u64 = 0;
pub const TX_RING: u64 = 0x1_0000;
/// Buffers live above the rings.
pub const BUFS: u64 = 0x10_0000;

/// 32 MiB of guest memory.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
}

/// A virtio-net header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
/// (num_buffers left 0, as drivers send it).
pub fn net_hdr(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&off.to_le_bytes());
    h
}

/// A header and `len` bytes of frame whose bytes depend on `seed` and their position.
pub fn frame(hdr: [u8; 12], len: usize, seed: u8) -> Vec<u8> {
    let mut f = hdr.to_vec();
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

pub fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// Guest memory with an rx and a tx ring of `size` entries, as a driver sets them up.
pub struct Rings {
    pub mem: GuestMemoryMmap,
    pub rx: TestRing,
    pub tx: TestRing,
}

impl Rings {
    pub fn new(size: u16) -> Self {
        let mem = guest_memory();
        Self {
            rx: TestRing::new(&mem, RX_RING, size),
            tx: TestRing::new(&mem, TX_RING, size),
            mem,
        }
    }

    /// Posts `n` one-descriptor rx buffers of `len` bytes, buffer i at
    /// BUFS + i * 0x1_0000, from i = `first`.
    pub fn post_rx(&mut self, first: u64, n: u64, len: u32) {
        for i in first..first + n {
            self.rx.post(&[(BUFS + i * 0x1_0000, len, true)]).unwrap();
        }
    }

    /// A handler for a driver that acked `features` (besides VERSION_1).
    pub fn handler(&self, features: u64) -> NetHandler {
        NetHandler::new(
            self.mem.clone(),
            self.rx.queue(),
            self.tx.queue(),
            VIRTIO_F_VERSION_1 | features,
        )
    }
}
