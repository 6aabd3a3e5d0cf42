//! The virtio-blk device: configuration, features, activation, and the event-manager glue
//! that runs its queue on the device thread.

use std::fs::OpenOptions;
use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::handler::{BlockHandler, DiskInfo};
use super::request::MAX_RANGES;
use super::{DiskEngine, RawFile, DEVICE_ID_LEN, SECTOR_SIZE};
use crate::virtio::{
    ActivateError, Activation, Interrupt, PendingActivation, VirtioDevice, INTERRUPT_USED_RING,
    VIRTIO_F_VERSION_1,
};

const VIRTIO_ID_BLOCK: u32 = 2;
const QUEUE_SIZE: u16 = 256;

const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// `struct virtio_blk_config` up to and including `write_zeroes_may_unmap`.
const CONFIG_LEN: usize = 0x3c;
/// Largest discard / write-zeroes range we advertise, in sectors (4 GiB).
const MAX_DISCARD_SECTORS: u32 = 1 << 23;

/// Event-manager data tags.
const ACTIVATE_EVENT: u32 = 0;
const QUEUE_EVENT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Returned by GET_ID; at most 20 bytes (Linux shows it in /sys/block/vdX/serial).
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("disk image {path} is empty")]
    Empty { path: PathBuf },
    #[error("drive id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

pub struct Block {
    engine: Box<dyn DiskEngine>,
    read_only: bool,
    id: [u8; DEVICE_ID_LEN],
    features: u64,
    config_space: [u8; CONFIG_LEN],
    queue_events: [EventFd; 1],
    interrupt: Interrupt,
    activation: PendingActivation,
    handler: Option<BlockHandler>,
    queue_event_registered: bool,
}

impl Block {
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?;
        let engine = RawFile::new(file).map_err(|source| BlockError::Open {
            path: config.path.clone(),
            source,
        })?;
        let size = engine.size();
        if size == 0 {
            return Err(BlockError::Empty {
                path: config.path.clone(),
            });
        }
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::UnalignedSize {
                path: config.path.clone(),
                size,
            });
        }
        Self::with_engine(Box::new(engine), config.read_only, &config.id)
    }

    /// A device over any engine (copy-on-write layers, test fakes).
    pub fn with_engine(
        engine: Box<dyn DiskEngine>,
        read_only: bool,
        id: &str,
    ) -> Result<Self, BlockError> {
        if id.len() > DEVICE_ID_LEN {
            return Err(BlockError::IdTooLong(id.to_string()));
        }
        let mut id_bytes = [0u8; DEVICE_ID_LEN];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        let new_evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd);
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX;
        features |= if read_only {
            VIRTIO_BLK_F_RO
        } else {
            VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
        };
        Ok(Self {
            config_space: config_space(engine.size()),
            engine,
            read_only,
            id: id_bytes,
            features,
            queue_events: [new_evt()?],
            interrupt: Interrupt::new(new_evt()?),
            activation: PendingActivation::new().map_err(BlockError::EventFd)?,
            handler: None,
            queue_event_registered: false,
        })
    }

    /// Puts every completed write on stable storage (used when the VM stops).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.engine.flush()
    }

    fn process_queue(&mut self) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let disk = DiskInfo {
            id: &self.id,
            read_only: self.read_only,
        };
        if handler.process_queue(self.engine.as_mut(), &disk) {
            self.interrupt.signal(INTERRUPT_USED_RING);
        }
    }

    fn start_handler(&mut self, ops: &mut EventOps) {
        let Some(Activation {
            mem,
            mut queues,
            acked_features,
        }) = self.activation.take()
        else {
            return;
        };
        let Some(mut queue) = queues.pop() else {
            return;
        };
        virtio_queue::QueueT::set_event_idx(
            &mut queue,
            acked_features & VIRTIO_RING_F_EVENT_IDX != 0,
        );
        self.handler = Some(BlockHandler::new(mem, queue));
        if !self.queue_event_registered {
            let evt = Events::with_data(&self.queue_events[0], QUEUE_EVENT, EventSet::IN);
            match ops.add(evt) {
                Ok(()) => self.queue_event_registered = true,
                Err(e) => log::error!("virtio-blk: cannot watch the queue: {e:?}"),
            }
        }
        // The driver may have queued requests before we started watching.
        self.process_queue();
    }
}

fn config_space(size: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, &(size / SECTOR_SIZE).to_le_bytes()); // capacity
    put(
        0x0c,
        &(super::request::MAX_DATA_DESCRIPTORS as u32).to_le_bytes(),
    ); // seg_max
    put(0x14, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
    put(0x28, &(MAX_RANGES as u32).to_le_bytes()); // max_discard_seg
    put(0x2c, &1u32.to_le_bytes()); // discard_sector_alignment
    put(0x30, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(0x34, &(MAX_RANGES as u32).to_le_bytes()); // max_write_zeroes_seg
    put(0x38, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.activation.hand_over(activation, 1)
    }

    fn reset(&mut self) {
        self.activation.cancel();
        self.handler = None;
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.activation.watch(ops, ACTIVATE_EVENT, "virtio-blk");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_EVENT => {
                self.start_handler(ops);
            }
            QUEUE_EVENT => {
                // A failed read only means the counter was already drained.
                let _ = self.queue_events[0].read();
                self.process_queue();
            }
            other => log::warn!("virtio-blk: unexpected event tag {other}"),
        }
    }
}
