//! The virtio-vsock device: configuration, activation, and the event-manager glue that runs
//! its queues and its Unix-socket backend on the device thread (the `QueueWorker` half;
//! `VirtioFront` is the transport's).

use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::handler::{VsockHandler, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use super::muxer::{Muxer, MuxerError};
use crate::virtio::{
    ActivateError, Activation, Interrupt, QueueBroken, QueueWorker, INTERRUPT_USED_RING,
    VIRTIO_F_VERSION_1,
};

const VIRTIO_ID_VSOCK: u32 = 19;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Event-manager data tags.
const RX_EVENT: u32 = 1;
const TX_EVENT: u32 = 2;
const EVENT_QUEUE_EVENT: u32 = 3;
const BACKEND_EVENT: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more; 0-2 are reserved, u32::MAX means "any").
    pub guest_cid: u64,
    /// Host clients connect here; guest connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or out of range (3..=4294967294)")]
    InvalidCid(u64),
    #[error(transparent)]
    Backend(#[from] MuxerError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

pub struct Vsock {
    config_space: [u8; 8],
    queue_events: [EventFd; 3],
    interrupt: Arc<Interrupt>,
    handler: Option<VsockHandler>,
    muxer: Muxer,
}

impl Vsock {
    /// Validates the configuration and starts listening on `uds_path` (host clients can
    /// connect before the guest driver is up; their REQUESTs wait for it).
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        if !(3..=u64::from(u32::MAX - 1)).contains(&config.guest_cid) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let new_evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            config_space: config.guest_cid.to_le_bytes(),
            queue_events: [new_evt()?, new_evt()?, new_evt()?],
            interrupt: Arc::new(Interrupt::new(new_evt()?)),
            handler: None,
            muxer: Muxer::new(config.guest_cid, config.uds_path.clone())?,
        })
    }

    /// Live connections (for diagnostics and tests).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    #[cfg(test)]
    pub(crate) fn muxer_mut(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    fn process_tx(&mut self) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        // Answers to what the guest sent (RESPONSE, RST, credit) go out right away.
        let result = handler
            .process_tx(&mut self.muxer)
            .and_then(|tx| Ok(handler.process_rx(&mut self.muxer)? || tx));
        self.completed(result);
    }

    fn process_rx(&mut self) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let result = handler.process_rx(&mut self.muxer);
        self.completed(result);
    }

    /// Interrupts the driver when a queue moved; gives up on the queues when one broke.
    fn completed(&mut self, result: Result<bool, QueueBroken>) {
        match result {
            Ok(true) => self.interrupt.signal(INTERRUPT_USED_RING),
            Ok(false) => {}
            Err(e) => {
                // Logged once: the queues are dropped until the driver resets the device.
                log::warn!("virtio-vsock: {e}; the device needs a reset");
                self.handler = None;
                self.muxer.reset();
                self.interrupt.set_needs_reset();
            }
        }
    }
}

impl QueueWorker for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    fn config_space(&self) -> Vec<u8> {
        self.config_space.to_vec()
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation { mem, queues, .. } = activation;
        let n = queues.len();
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), Some(_event)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::QueueNotReady(n));
        };
        self.handler = Some(VsockHandler::new(mem, rx, tx));
        Ok(())
    }

    fn reset(&mut self) {
        self.handler = None;
        // The driver forgot every stream; close their host sides.
        self.muxer.reset();
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        // Watched from the start: notifications before activation find no handler.
        for (i, tag) in [
            (RX_QUEUE, RX_EVENT),
            (TX_QUEUE, TX_EVENT),
            (EVENT_QUEUE, EVENT_QUEUE_EVENT),
        ] {
            let evt = Events::with_data(&self.queue_events[i], tag, EventSet::IN);
            if let Err(e) = ops.add(evt) {
                log::error!("virtio-vsock: cannot watch queue {i}: {e:?}");
            }
        }
        // The listener, the host sockets and the handshake timer, behind one fd.
        let backend = Events::with_data_raw(self.muxer.epoll_fd(), BACKEND_EVENT, EventSet::IN);
        if let Err(e) = ops.add(backend) {
            log::error!("virtio-vsock: cannot watch the Unix sockets: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _: &mut EventOps) {
        // A failed eventfd read only means the counter was already drained.
        match events.data() {
            RX_EVENT => {
                let _ = self.queue_events[RX_QUEUE].read();
                self.process_rx();
            }
            TX_EVENT => {
                let _ = self.queue_events[TX_QUEUE].read();
                self.process_tx();
            }
            EVENT_QUEUE_EVENT => {
                let _ = self.queue_events[EVENT_QUEUE].read();
            }
            BACKEND_EVENT => {
                self.muxer.process_events();
                self.process_rx();
            }
            other => log::warn!("virtio-vsock: unexpected event tag {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::VirtioDevice;

    fn config(dir: &tempfile::TempDir, cid: u64) -> VsockConfig {
        VsockConfig {
            guest_cid: cid,
            uds_path: dir.path().join("v.sock"),
        }
    }

    #[test]
    fn config_space_features_and_queues() {
        let dir = tempfile::tempdir().unwrap();
        let vsock = Vsock::new(&config(&dir, 0x1_0000_0003 & 0xffff_ffff)).unwrap();
        let (dev, worker) = crate::virtio::VirtioFront::new(vsock).unwrap();
        assert_eq!(dev.device_type(), 19);
        assert_eq!(dev.features(), VIRTIO_F_VERSION_1);
        assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
        assert_eq!(dev.queue_events().len(), 3);
        let mut cid = [0u8; 8];
        dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 3);
        let mut high = [0xffu8; 4];
        dev.read_config(4, &mut high);
        assert_eq!(high, [0; 4]);
        assert!(dir.path().join("v.sock").exists());
        drop((dev, worker));
        assert!(
            !dir.path().join("v.sock").exists(),
            "socket removed on drop"
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
            assert!(matches!(
                Vsock::new(&config(&dir, cid)),
                Err(VsockError::InvalidCid(c)) if c == cid
            ));
        }
        let missing = VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("nope/v.sock"),
        };
        let err = Vsock::new(&missing).err().unwrap();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn activation_needs_three_queues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut dev, _) =
            crate::virtio::VirtioFront::new(Vsock::new(&config(&dir, 3)).unwrap()).unwrap();
        let mem = crate::virtio::vsock::test_utils::guest_memory();
        let act = Activation {
            mem,
            queues: vec![<virtio_queue::Queue as virtio_queue::QueueT>::new(256).unwrap()],
            acked_features: VIRTIO_F_VERSION_1,
        };
        assert!(matches!(
            dev.activate(act),
            Err(ActivateError::QueueNotReady(1))
        ));
    }
}
