//! The virtio-vsock device: configuration, activation, and the event-manager glue that runs
//! its queues and its Unix-socket backend on the device thread (the `QueueWorker` half;
//! `VirtioFront` is the transport's).

use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::handler::{VsockHandler, RX_QUEUE, TX_QUEUE};
use super::muxer::{Muxer, MuxerError};
use crate::virtio::{
    ActivateError, Activation, DeviceBase, QueueBroken, QueueWorker, VIRTIO_F_VERSION_1,
};

const VIRTIO_ID_VSOCK: u32 = 19;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// Event-manager data tag of the Unix sockets (the queues are tagged with their index).
const BACKEND_EVENT: u32 = 3;

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
    base: DeviceBase,
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
        let base = DeviceBase::new(
            "virtio-vsock",
            VIRTIO_ID_VSOCK,
            &QUEUE_SIZES,
            VIRTIO_F_VERSION_1,
            &config.guest_cid.to_le_bytes(),
        )
        .map_err(VsockError::EventFd)?;
        Ok(Self {
            base,
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
        if !self.base.completed(result) {
            self.handler = None;
            self.muxer.reset();
        }
    }
}

impl QueueWorker for Vsock {
    fn base(&self) -> &DeviceBase {
        &self.base
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
        self.base.watch_queues(ops);
        // The listener, the host sockets and the handshake timer, behind one fd.
        let backend = Events::with_data_raw(self.muxer.epoll_fd(), BACKEND_EVENT, EventSet::IN);
        if let Err(e) = ops.add(backend) {
            log::error!("virtio-vsock: cannot watch the Unix sockets: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _: &mut EventOps) {
        match self.base.notified_queue(&events) {
            Some(RX_QUEUE) => self.process_rx(),
            Some(TX_QUEUE) => self.process_tx(),
            // The event queue: nothing we do needs its buffers.
            Some(_) => {}
            None if events.data() == BACKEND_EVENT => {
                self.muxer.process_events();
                self.process_rx();
            }
            None => log::warn!("virtio-vsock: unexpected event tag {}", events.data()),
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
