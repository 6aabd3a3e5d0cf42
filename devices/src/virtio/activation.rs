//! Hands a device's activation from the vCPU thread (where the driver writes DRIVER_OK)
//! to the device thread (where its queues run), through an EventFd.

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Activation};

pub struct PendingActivation {
    event: EventFd,
    pending: Option<Activation>,
}

impl PendingActivation {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            event: EventFd::new(libc::EFD_NONBLOCK)?,
            pending: None,
        })
    }

    /// vCPU side: keeps the activation and wakes the device thread.
    pub fn hand_over(
        &mut self,
        activation: Activation,
        queues: usize,
    ) -> Result<(), ActivateError> {
        if activation.queues.len() != queues {
            return Err(ActivateError::QueueNotReady(activation.queues.len()));
        }
        self.pending = Some(activation);
        self.event.write(1).map_err(ActivateError::Signal)
    }

    /// The driver reset the device before the device thread took the activation.
    pub fn cancel(&mut self) {
        self.pending = None;
    }

    /// Device side: watch for hand-overs, tagged with `tag`.
    pub fn watch(&self, ops: &mut EventOps, tag: u32, device: &str) {
        if let Err(e) = ops.add(Events::with_data(&self.event, tag, EventSet::IN)) {
            log::error!("{device}: cannot watch for activation: {e:?}");
        }
    }

    /// Device side: the activation, once handed over.
    pub fn take(&mut self) -> Option<Activation> {
        // A failed read only means the counter was already drained.
        let _ = self.event.read();
        self.pending.take()
    }
}
