//! Virtio devices over the MMIO transport: block, vsock and net.

mod base;
pub mod block;
mod front;
mod mmio;
pub mod net;
mod queue;
pub mod segments;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_ring;
pub mod vsock;

pub use base::DeviceBase;
pub use front::{QueueWorker, VirtioFront};
pub use mmio::{regs as mmio_regs, MmioTransport, MMIO_WINDOW_SIZE};
pub use queue::{
    collect_chain, notifications_off, notifications_on, pop_chain, ring_state, ChainTooLong,
    QueueBroken,
};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the only (modern) interface we offer.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Chains may hold indirect descriptor tables (virtio-queue follows them).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Notification suppression by ring indexes (`used_event` / `avail_event`).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Interrupt status bit: a queue's used ring was updated.
pub const INTERRUPT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration space changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// The device's interrupt line: the status register the driver reads plus the irqfd that
/// injects the interrupt, and the device thread's DEVICE_NEEDS_RESET. Shared by the
/// transport (vCPU threads) and the device thread without a lock.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// Sets `bits` in the interrupt status and raises the line.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            log::error!("virtio: failed to raise the interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device gave up on the driver's queues (virtio 1.2, 2.1.2): the status register
    /// shows DEVICE_NEEDS_RESET and the driver gets a configuration-change interrupt.
    /// Returns false when it was already set.
    pub fn set_needs_reset(&self) -> bool {
        let first = !self.needs_reset.swap(true, Ordering::SeqCst);
        if first {
            self.signal(INTERRUPT_CONFIG_CHANGE);
        }
        first
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The driver reset the device: no pending interrupt, no pending reset request.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub acked_features: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver did not set up queue {0}")]
    QueueNotReady(usize),
    #[error("failed to signal the device thread")]
    Signal(#[source] std::io::Error),
}

/// A virtio device as the transport sees it. These calls come from vCPU threads and never
/// wait for device I/O: queue processing happens on the device thread (`QueueWorker`).
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 = net, 2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the number of queues is the length.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn features(&self) -> u64;
    /// One `EventFd` per queue, written (through KVM's ioeventfd) when the driver notifies.
    fn queue_events(&self) -> &[EventFd];
    fn interrupt(&self) -> &Interrupt;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Config writes are ignored unless a device has writable fields.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: drop the queues and stop processing.
    fn reset(&mut self);
}

/// Copies `data.len()` bytes of `config` at `offset`; out-of-range bytes read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
