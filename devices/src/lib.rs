//! Device models for the vmm. Nothing here knows about KVM: devices get guest memory,
//! `EventFd`s for notifications and interrupts, and are driven through [`bus::Bus`] by the
//! vCPU threads and through `event-manager` by the device thread.

pub mod bus;
pub mod disk;
pub mod legacy;
pub mod owner_only;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An `EventFd` that a device writes to raise an interrupt or to signal the VMM.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
