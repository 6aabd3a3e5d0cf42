//! The rx queue. The device takes the driver's buffers ahead of time ("prepared"), reads
//! a frame from the backend straight into them, and returns the ones the frame filled.
//!
//! With VIRTIO_NET_F_MRG_RXBUF a frame spreads over as many buffers as it needs
//! (`num_buffers` in its header), so before reading the device holds buffers for the
//! largest frame there is (Linux keeps far more posted, and a driver whose whole ring
//! holds less gets what fits in it); without it, each frame goes into one buffer. What
//! does not fit goes to a spill buffer and the frame is dropped (a frame larger than the
//! guest said it takes). With too few buffers the device stops reading the backend and
//! asks the driver for a notification; the frames wait in the TAP.
//!
//! A frame's used entries are published together (elements first, then the index once):
//! Linux drops a merged frame whose later buffers are not there yet when it looks.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::NetBackend;
use super::handler::Round;
use super::log_limit::LogLimit;
use super::{features, MAX_FRAME_LEN, NET_HDR_LEN};
use crate::virtio::segments::{checked_segments, pieces, total_len};
use crate::virtio::{collect_chain, notifications_off, notifications_on, pop_chain, QueueBroken};

/// Descriptors one rx buffer may span: Linux's "big packets" (no MRG_RXBUF, GSO) chains
/// are a header and MAX_SKB_FRAGS + 1 pages.
pub const MAX_RX_DESCS: usize = 64;
/// Guest ranges prepared at most: with the spill buffer well under IOV_MAX (1024).
const MAX_RX_RANGES: usize = 512;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_AT: usize = 10;

/// A buffer taken from the rx queue; its ranges are the next `ranges` in `RxQueue::ranges`.
#[derive(Debug, Clone, Copy)]
struct RxBuffer {
    head: u16,
    ranges: usize,
    descs: usize,
    capacity: u64,
}

pub struct RxQueue {
    queue: Queue,
    mergeable: bool,
    guest_csum: bool,
    prepared: VecDeque<RxBuffer>,
    /// The prepared buffers' ranges, in order.
    ranges: Vec<(GuestAddress, u32)>,
    capacity: u64,
    prepared_descs: usize,
    /// Whether the driver was asked to notify (we ran out of buffers).
    notifying: bool,
    /// `next_used` when the driver was last considered for an interrupt.
    last_signalled: Wrapping<u16>,
    /// Reused for every chain and frame: no allocation on the hot path.
    descs: Vec<Descriptor>,
    segs: Vec<(GuestAddress, u32)>,
    used: Vec<(u16, u32)>,
    spill: Vec<u8>,
}

impl RxQueue {
    pub fn new(queue: Queue, acked: u64) -> Self {
        Self {
            last_signalled: Wrapping(queue.next_used()),
            queue,
            mergeable: acked & features::VIRTIO_NET_F_MRG_RXBUF != 0,
            guest_csum: acked & features::VIRTIO_NET_F_GUEST_CSUM != 0,
            prepared: VecDeque::new(),
            ranges: Vec::new(),
            capacity: 0,
            prepared_descs: 0,
            notifying: true,
            descs: Vec::new(),
            segs: Vec::new(),
            used: Vec::new(),
            spill: vec![0; MAX_FRAME_LEN],
        }
    }

    /// Moves up to `budget` frames from the backend to the guest; returns why it stopped
    /// and whether the driver must be interrupted. A broken avail ring is an error: the
    /// caller drops the queues.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn NetBackend,
        budget: usize,
        log: &mut LogLimit,
    ) -> Result<(Round, bool), QueueBroken> {
        let mut frames = 0;
        let round = loop {
            if frames == budget {
                break Round::Budget;
            }
            if !self.fill(mem, log)? {
                break Round::Waiting;
            }
            let (bufs, ranges, room) = self.offer();
            match backend.read_frame(mem, &self.ranges[..ranges], &mut self.spill) {
                // A TAP whose interface went away reads as empty: not a frame, and not
                // something to retry at once.
                Ok(0) => break Round::Drained,
                Ok(len) => self.deliver(mem, len, bufs, room, log),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Round::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Retried on the next event; nothing is lost on our side.
                    log.warn(format_args!("virtio-net: cannot read from the TAP: {e}"));
                    break Round::Drained;
                }
            }
            frames += 1;
        };
        Ok((round, self.needs_interrupt(mem)))
    }

    /// Whether enough buffers are prepared for the next frame.
    fn enough(&self) -> bool {
        if self.mergeable {
            self.capacity >= MAX_FRAME_LEN as u64 || self.ranges.len() >= MAX_RX_RANGES
        } else {
            !self.prepared.is_empty()
        }
    }

    /// Takes buffers off the queue until the next frame fits; false when the driver must
    /// post more first (it was asked to notify).
    fn fill(&mut self, mem: &GuestMemoryMmap, log: &mut LogLimit) -> Result<bool, QueueBroken> {
        loop {
            if self.enough() {
                if self.notifying {
                    notifications_off(&mut self.queue, mem, "virtio-net rx");
                    self.notifying = false;
                }
                return Ok(true);
            }
            if let Some(chain) = pop_chain(&mut self.queue, mem)? {
                let head = chain.head_index();
                if let Err(e) = self.prepare(chain, head, mem) {
                    log.warn(format_args!("virtio-net: rx buffer returned unused: {e}"));
                    self.publish(mem, &[(head, 0)]);
                }
                continue;
            }
            // Out of buffers. A driver that cannot post more (every descriptor is ours)
            // gets the frame in what it gave, or the frame is dropped; otherwise wait.
            let ring_full = self.prepared_descs >= usize::from(self.queue.size());
            if !self.prepared.is_empty() && ring_full {
                return Ok(true);
            }
            self.notifying = true;
            // It may have posted in between: look again before sleeping.
            if !notifications_on(&mut self.queue, mem, "virtio-net rx") {
                return Ok(false);
            }
        }
    }

    /// Takes one chain as a prepared buffer.
    fn prepare(
        &mut self,
        chain: impl Iterator<Item = Descriptor>,
        head: u16,
        mem: &GuestMemoryMmap,
    ) -> Result<(), String> {
        collect_chain(chain, &mut self.descs, MAX_RX_DESCS).map_err(|e| e.to_string())?;
        checked_segments(&self.descs, mem, true, &mut self.segs).map_err(|e| e.to_string())?;
        let capacity = total_len(&self.segs);
        if capacity < NET_HDR_LEN as u64 {
            return Err(format!("{capacity} bytes cannot hold a header"));
        }
        self.ranges.extend_from_slice(&self.segs);
        self.capacity += capacity;
        self.prepared_descs += self.descs.len();
        self.prepared.push_back(RxBuffer {
            head,
            ranges: self.segs.len(),
            descs: self.descs.len(),
            capacity,
        });
        Ok(())
    }

    /// The buffers a read may fill: (buffers, ranges, bytes). One buffer without
    /// MRG_RXBUF; with it, enough for the largest frame.
    fn offer(&self) -> (usize, usize, u64) {
        let (mut bufs, mut ranges, mut room) = (0, 0, 0);
        for b in &self.prepared {
            bufs += 1;
            ranges += b.ranges;
            room += b.capacity;
            if !self.mergeable || room >= MAX_FRAME_LEN as u64 {
                break;
            }
        }
        (bufs, ranges, room)
    }

    /// A frame of `len` bytes was read into the first `bufs` prepared buffers (`room`
    /// bytes) and the spill buffer: hand the buffers it filled to the driver.
    fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        len: usize,
        bufs: usize,
        room: u64,
        log: &mut LogLimit,
    ) {
        if len as u64 > room || len < NET_HDR_LEN {
            // The buffers keep no trace of it: they stay prepared for the next frame.
            log.warn(format_args!(
                "virtio-net: dropped a {len}-byte frame: the guest's buffers hold {room}"
            ));
            return;
        }
        self.used.clear();
        let mut left = len as u64;
        for b in self.prepared.iter().take(bufs) {
            if left == 0 {
                break;
            }
            let n = b.capacity.min(left);
            // n <= MAX_FRAME_LEN.
            self.used.push((b.head, n as u32));
            left -= n;
        }
        let count = self.used.len();
        // The TAP skips `num_buffers` (it writes a 10-byte header into the 12), and a
        // guest without GUEST_CSUM must see no checksum flags (virtio 1.2, 5.1.6.4.1).
        let first = &self.ranges[..self.prepared[0].ranges];
        write_at(mem, first, NUM_BUFFERS_AT, &(count as u16).to_le_bytes());
        if !self.guest_csum {
            write_at(mem, first, 0, &[0]);
        }
        let used = std::mem::take(&mut self.used);
        self.publish(mem, &used);
        self.used = used;
        for _ in 0..count {
            if let Some(b) = self.prepared.pop_front() {
                self.ranges.drain(..b.ranges);
                self.capacity -= b.capacity;
                self.prepared_descs -= b.descs;
            }
        }
    }

    /// Puts `entries` in the used ring and only then moves the used index past all of
    /// them, so the driver sees a frame's buffers together.
    fn publish(&mut self, mem: &GuestMemoryMmap, entries: &[(u16, u32)]) {
        let size = self.queue.size();
        let ring = GuestAddress(self.queue.used_ring());
        let next = Wrapping(self.queue.next_used());
        for (i, &(head, len)) in entries.iter().enumerate() {
            let slot = u64::from((next + Wrapping(i as u16)).0 % size);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            // 4 bytes of flags and index, then 8 per element.
            if let Err(e) = mem.write_slice(&elem, ring.unchecked_add(4 + 8 * slot)) {
                log::warn!("virtio-net: cannot write the rx used ring: {e}");
                return;
            }
        }
        let idx = next + Wrapping(entries.len() as u16);
        match mem.store(idx.0.to_le(), ring.unchecked_add(2), Ordering::Release) {
            Ok(()) => self.queue.set_next_used(idx.0),
            Err(e) => log::warn!("virtio-net: cannot write the rx used index: {e}"),
        }
    }

    /// Whether the driver asked to hear about the entries published since the last call
    /// (VIRTIO_RING_F_EVENT_IDX's `used_event`, the same test as virtio-queue's).
    fn needs_interrupt(&mut self, mem: &GuestMemoryMmap) -> bool {
        let new = Wrapping(self.queue.next_used());
        let old = std::mem::replace(&mut self.last_signalled, new);
        if new == old {
            return false;
        }
        if !self.queue.event_idx_enabled() {
            return true;
        }
        // The used index must be visible before the driver's used_event is read.
        fence(Ordering::SeqCst);
        let at = self.queue.avail_ring() + 4 + 2 * u64::from(self.queue.size());
        match mem.load::<u16>(GuestAddress(at), Ordering::Acquire) {
            Ok(event) => new - Wrapping(u16::from_le(event)) - Wrapping(1) < new - old,
            Err(_) => true,
        }
    }

    #[cfg(test)]
    pub fn prepared(&self) -> usize {
        self.prepared.len()
    }
}

/// Writes `bytes` at `offset` into the ranges of one buffer (a header may straddle them).
fn write_at(mem: &GuestMemoryMmap, ranges: &[(GuestAddress, u32)], offset: usize, bytes: &[u8]) {
    let mut done = 0;
    for (addr, n) in pieces(ranges, offset, bytes.len()) {
        // The ranges were checked against guest memory when the buffer was prepared.
        if mem.write_slice(&bytes[done..done + n], addr).is_err() {
            return;
        }
        done += n;
    }
}
