//! What blk, vsock and net share on the device thread: identity, features, config space,
//! one notification eventfd per queue, the interrupt line, and what to do after a round of
//! queue work (interrupt the driver, or give up on a broken queue with DEVICE_NEEDS_RESET).

use std::sync::Arc;

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, QueueBroken, INTERRUPT_USED_RING};

/// The device-independent half of a `QueueWorker`.
#[derive(Debug)]
pub struct DeviceBase {
    name: String,
    device_type: u32,
    queue_sizes: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
}

impl DeviceBase {
    /// `name` prefixes the device's log lines ("virtio-blk \"root\""); one queue per entry
    /// of `queue_sizes`; `config` is the (read-only) configuration space.
    pub fn new(
        name: impl Into<String>,
        device_type: u32,
        queue_sizes: &[u16],
        features: u64,
        config: &[u8],
    ) -> std::io::Result<Self> {
        let new_evt = || EventFd::new(libc::EFD_NONBLOCK);
        Ok(Self {
            name: name.into(),
            device_type,
            queue_sizes: queue_sizes.to_vec(),
            features,
            config: config.to_vec(),
            queue_events: queue_sizes
                .iter()
                .map(|_| new_evt())
                .collect::<Result<_, _>>()?,
            interrupt: Arc::new(Interrupt::new(new_evt()?)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Virtio device ID (1 = net, 2 = block, 19 = vsock).
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// Largest size of each queue; the number of queues is the length.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// Features the device offers.
    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn config_space(&self) -> &[u8] {
        &self.config
    }

    /// One `EventFd` per queue, written (through KVM's ioeventfd) when the driver notifies.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Watches every queue's eventfd, tagged with the queue's index (devices tag their own
    /// fds from `queue_max_sizes().len()` up). Watched from the start: notifications before
    /// activation find no queues and are dropped.
    pub fn watch_queues(&self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("{}: cannot watch queue {i}: {e:?}", self.name);
            }
        }
    }

    /// The queue an event notifies, its counter drained; `None` for the device's own tags.
    pub fn notified_queue(&self, events: &Events) -> Option<usize> {
        let i = events.data() as usize;
        let evt = self.queue_events.get(i)?;
        // A failed read only means the counter was already drained.
        let _ = evt.read();
        Some(i)
    }

    /// Makes the device thread come back to queue `i` after serving the other devices (a
    /// device that stopped early to be fair).
    pub fn kick(&self, i: usize) {
        if let Some(evt) = self.queue_events.get(i) {
            if let Err(e) = evt.write(1) {
                log::error!("{}: cannot reschedule queue {i}: {e}", self.name);
            }
        }
    }

    /// After a round of queue work: interrupts the driver if it asked to hear about it, or,
    /// when a queue broke, logs it (once: the caller drops its queues) and sets
    /// DEVICE_NEEDS_RESET. Returns false when the caller must drop its queues.
    pub fn completed(&self, result: Result<bool, QueueBroken>) -> bool {
        match result {
            Ok(true) => self.interrupt.signal(INTERRUPT_USED_RING),
            Ok(false) => {}
            Err(e) => {
                log::warn!("{}: {e}; the device needs a reset", self.name);
                self.interrupt.set_needs_reset();
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::INTERRUPT_CONFIG_CHANGE;

    #[test]
    fn completion_interrupts_or_asks_for_a_reset() {
        let base = DeviceBase::new("virtio-test", 42, &[8, 8], 1, &[1, 2]).unwrap();
        assert_eq!(base.queue_events().len(), 2);
        assert!(base.completed(Ok(false)));
        assert_eq!(base.interrupt().status(), 0);
        assert!(base.completed(Ok(true)));
        assert_eq!(base.interrupt().status(), INTERRUPT_USED_RING);
        let broken = QueueBroken(virtio_queue::Error::QueueNotReady);
        assert!(!base.completed(Err(broken)));
        assert!(base.interrupt().needs_reset());
        assert_ne!(base.interrupt().status() & INTERRUPT_CONFIG_CHANGE, 0);
    }
}
