//! The two halves of a virtio device. `VirtioFront` is what the transport talks to on vCPU
//! threads: identity, features, config space, interrupt status. It holds no lock that the
//! device thread holds across I/O. The device thread runs the `QueueWorker`, which owns the
//! backend (a disk, host sockets); vCPUs lock it only when the driver activates or resets
//! the device.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Activation, DeviceBase, Interrupt, VirtioDevice};
use crate::bus::lock;

/// The device-thread half of a virtio device.
pub trait QueueWorker: Send + 'static {
    /// Identity, features, config space (read-only for the devices we have), queue
    /// events and interrupt.
    fn base(&self) -> &DeviceBase;
    /// Takes the driver's queues. The front kicks every queue event afterwards, so work
    /// the driver queued earlier is picked up on the device thread.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Drops the queues: after this returns, the device touches no guest memory.
    fn reset(&mut self);
}

pub struct VirtioFront<W: QueueWorker> {
    device_type: u32,
    queue_max_sizes: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    queue_events: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    worker: Arc<Mutex<W>>,
}

impl<W: QueueWorker> VirtioFront<W> {
    /// Splits a device into the front for the transport and the worker for the device
    /// thread.
    pub fn new(worker: W) -> std::io::Result<(Self, Arc<Mutex<W>>)> {
        let base = worker.base();
        let queue_events = base
            .queue_events()
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<_, _>>()?;
        let front = Self {
            device_type: base.device_type(),
            queue_max_sizes: base.queue_max_sizes().to_vec(),
            features: base.features(),
            config: base.config_space().to_vec(),
            queue_events,
            interrupt: Arc::clone(base.interrupt()),
            worker: Arc::new(Mutex::new(worker)),
        };
        let worker = Arc::clone(&front.worker);
        Ok((front, worker))
    }
}

impl<W: QueueWorker> VirtioDevice for VirtioFront<W> {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != self.queue_max_sizes.len() {
            return Err(ActivateError::QueueNotReady(activation.queues.len()));
        }
        lock(&self.worker).activate(activation)?;
        for evt in &self.queue_events {
            evt.write(1).map_err(ActivateError::Signal)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.worker).reset();
    }
}
