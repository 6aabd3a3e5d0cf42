//! The tx queue: each chain is a header and a frame, all device-readable, written to the
//! backend in one gather straight from guest memory. A frame the backend cannot take yet
//! stays on the queue; a malformed chain, or a frame the host refuses, is completed and
//! dropped.

use std::io;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::backend::NetBackend;
use super::handler::Round;
use super::log_limit::LogLimit;
use super::{MAX_FRAME_LEN, NET_HDR_LEN};
use crate::virtio::segments::{checked_segments, total_len, SegmentError};
use crate::virtio::{
    collect_chain, notifications_off, notifications_on, pop_chain, ChainTooLong, QueueBroken,
};

/// Descriptors one tx frame may span: Linux uses one for the header and linear part and
/// one per page fragment (MAX_SKB_FRAGS, 17 by default, at most 45).
pub const MAX_TX_DESCS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    #[error(transparent)]
    TooLong(#[from] ChainTooLong),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("chain of {0} bytes holds no frame after the {NET_HDR_LEN}-byte header")]
    NoFrame(u64),
    #[error("chain of {0} bytes is larger than the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(u64),
}

pub struct TxQueue {
    queue: Queue,
    /// Reused for every chain: no allocation per frame.
    descs: Vec<Descriptor>,
    segs: Vec<(GuestAddress, u32)>,
}

impl TxQueue {
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            descs: Vec::new(),
            segs: Vec::new(),
        }
    }

    /// Sends up to `budget` frames; returns why it stopped and whether the driver must be
    /// interrupted. A broken avail ring is an error: the caller drops the queues.
    pub fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn NetBackend,
        budget: usize,
        log: &mut LogLimit,
    ) -> Result<(Round, bool), QueueBroken> {
        let mut used = false;
        let mut sent = 0;
        let round = 'drain: loop {
            notifications_off(&mut self.queue, mem, "virtio-net tx");
            while let Some(chain) = pop_chain(&mut self.queue, mem)? {
                if sent == budget {
                    self.queue.go_to_previous_position();
                    break 'drain Round::Budget;
                }
                let head = chain.head_index();
                let parsed = collect_chain(chain, &mut self.descs, MAX_TX_DESCS)
                    .map_err(TxError::from)
                    .and_then(|()| parse(&self.descs, mem, &mut self.segs));
                match parsed {
                    Err(e) => {
                        log.warn(format_args!("virtio-net: tx chain dropped: {e}"));
                    }
                    Ok(()) => match backend.write_frame(mem, &self.segs) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // Left on the queue, notifications off: EPOLLOUT resumes us.
                            self.queue.go_to_previous_position();
                            break 'drain Round::Waiting;
                        }
                        Err(e) => {
                            log.warn(format_args!("virtio-net: the TAP refused a frame: {e}"));
                        }
                    },
                }
                // The device writes nothing into a tx chain.
                if let Err(e) = self.queue.add_used(mem, head, 0) {
                    log::warn!("virtio-net: cannot return tx descriptor {head}: {e}");
                }
                used = true;
                sent += 1;
            }
            if !notifications_on(&mut self.queue, mem, "virtio-net tx") {
                break Round::Drained;
            }
        };
        Ok((
            round,
            used && self.queue.needs_notification(mem).unwrap_or(true),
        ))
    }
}

/// A tx chain's ranges into `segs`: readable, in guest memory, a header and at least one
/// byte of frame, at most `MAX_FRAME_LEN` in all.
fn parse(
    descs: &[Descriptor],
    mem: &GuestMemoryMmap,
    segs: &mut Vec<(GuestAddress, u32)>,
) -> Result<(), TxError> {
    checked_segments(descs, mem, false, segs)?;
    let len = total_len(segs);
    if len <= NET_HDR_LEN as u64 {
        return Err(TxError::NoFrame(len));
    }
    if len > MAX_FRAME_LEN as u64 {
        return Err(TxError::TooLarge(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn readable(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    #[test]
    fn chains_are_checked_before_the_backend_sees_them() {
        let m = mem();
        let mut segs = Vec::new();
        let ok = [
            readable(0x1000, 12),
            readable(0x2000, 0),
            readable(0x3000, 60),
        ];
        assert_eq!(parse(&ok, &m, &mut segs), Ok(()));
        assert_eq!(
            segs,
            vec![(GuestAddress(0x1000), 12), (GuestAddress(0x3000), 60)],
            "empty descriptors are left out"
        );
        assert_eq!(
            parse(&[readable(0x1000, 12)], &m, &mut segs),
            Err(TxError::NoFrame(12))
        );
        let big = [readable(0x1000, 0x8000), readable(0x9000, 0x8000 + 27)];
        assert_eq!(parse(&big, &m, &mut segs), Err(TxError::TooLarge(65563)));
        let writable = Descriptor::new(0x1000, 64, VRING_DESC_F_WRITE as u16, 0);
        assert_eq!(
            parse(&[readable(0x1000, 12), writable], &m, &mut segs),
            Err(TxError::Segment(SegmentError::DeviceWritable))
        );
        assert!(matches!(
            parse(&[readable(0xF_FFF0, 64)], &m, &mut segs),
            Err(TxError::Segment(SegmentError::OutOfMemory { .. }))
        ));
    }
}
