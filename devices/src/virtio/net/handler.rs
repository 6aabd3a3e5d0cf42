//! Queue processing for virtio-net: both queues against a backend, with no fds of its
//! own, so tests run it on a test driver with a fake TAP. Each call does a bounded amount
//! of work (`FRAME_BUDGET` frames) so that a flood on one device leaves the device thread
//! to the others; the caller comes back when told `Round::Budget`.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::backend::NetBackend;
use super::log_limit::LogLimit;
use super::rx::RxQueue;
use super::tx::TxQueue;
use crate::virtio::QueueBroken;

/// Frames moved per call and direction before yielding.
pub const FRAME_BUDGET: usize = 256;

/// Why a call stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Nothing left: tx, the queue is empty; rx, the backend has no frame.
    Drained,
    /// Waiting for the other side. tx: the backend would block (retry when its fd is
    /// writable). rx: the driver has to post buffers (it was asked to notify).
    Waiting,
    /// The budget ran out with work left: call again after serving the other devices.
    Budget,
}

/// What a call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Why it stopped.
    pub round: Round,
    /// The driver asked to be interrupted for what this call put in the used ring.
    pub interrupt: bool,
}

/// The active queues of a net device.
pub struct NetHandler {
    mem: GuestMemoryMmap,
    rx: RxQueue,
    tx: TxQueue,
    log: LogLimit,
}

impl NetHandler {
    /// Takes the driver's queues (event-idx already set on them) and the features it
    /// acked.
    pub fn new(mem: GuestMemoryMmap, rx: Queue, tx: Queue, acked_features: u64) -> Self {
        Self {
            mem,
            rx: RxQueue::new(rx, acked_features),
            tx: TxQueue::new(tx),
            log: LogLimit::default(),
        }
    }

    /// Writes the guest's frames to the backend. A broken avail ring is an error: the
    /// caller drops the queues.
    pub fn process_tx(&mut self, backend: &mut dyn NetBackend) -> Result<Outcome, QueueBroken> {
        let (round, interrupt) =
            self.tx
                .process(&self.mem, backend, FRAME_BUDGET, &mut self.log)?;
        Ok(Outcome { round, interrupt })
    }

    /// Reads the backend's frames into the guest's buffers. A broken avail ring is an
    /// error: the caller drops the queues.
    pub fn process_rx(&mut self, backend: &mut dyn NetBackend) -> Result<Outcome, QueueBroken> {
        let (round, interrupt) =
            self.rx
                .process(&self.mem, backend, FRAME_BUDGET, &mut self.log)?;
        Ok(Outcome { round, interrupt })
    }

    #[cfg(test)]
    pub(crate) fn rx_prepared(&self) -> usize {
        self.rx.prepared()
    }
}
