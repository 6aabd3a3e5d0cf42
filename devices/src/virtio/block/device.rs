//! The virtio-blk device: configuration, features, activation, and the event-manager glue
//! that runs its queue on the device thread (the `QueueWorker` half; `VirtioFront` is the
//! transport's).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::handler::{BlockHandler, DiskInfo};
use super::request::{
    MAX_DATA_DESCRIPTORS, MAX_DISCARD_RANGES, MAX_DISCARD_SECTORS, MAX_SEGMENT_BYTES,
    MAX_WRITE_ZEROES_RANGES, MAX_WRITE_ZEROES_SECTORS,
};
use super::{DiskEngine, RawFile, DEVICE_ID_LEN, SECTOR_SIZE};
use crate::disk::lock_image;
use crate::virtio::{
    ActivateError, Activation, DeviceBase, QueueWorker, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

const VIRTIO_ID_BLOCK: u32 = 2;
const QUEUE_SIZE: u16 = 256;

const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// `struct virtio_blk_config` up to and including `write_zeroes_may_unmap`.
const CONFIG_LEN: usize = 0x3c;

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
    #[error("disk image {path} is in use: another drive or VM has it open{}",
        if source.kind() == std::io::ErrorKind::WouldBlock { "" } else { " (or it cannot be locked)" })]
    Locked {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    UnalignedSize { path: PathBuf, size: u64 },
    #[error("disk image {path} is empty")]
    Empty { path: PathBuf },
    #[error("the disk cannot change its size from {from} to {to} bytes while the guest runs")]
    SizeChanged { from: u64, to: u64 },
    #[error("drive id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

pub struct Block {
    engine: Arc<dyn DiskEngine>,
    read_only: bool,
    id: [u8; DEVICE_ID_LEN],
    base: DeviceBase,
    handler: Option<BlockHandler>,
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
        lock_image(&file, config.read_only).map_err(|source| BlockError::Locked {
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
        Self::with_engine(Arc::new(engine), config.read_only, &config.id)
    }

    /// A device over any engine (copy-on-write layers, test fakes).
    pub fn with_engine(
        engine: Arc<dyn DiskEngine>,
        read_only: bool,
        id: &str,
    ) -> Result<Self, BlockError> {
        if id.len() > DEVICE_ID_LEN {
            return Err(BlockError::IdTooLong(id.to_string()));
        }
        let mut id_bytes = [0u8; DEVICE_ID_LEN];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_SIZE_MAX
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
        let base = DeviceBase::new(
            format!("virtio-blk {id:?}"),
            VIRTIO_ID_BLOCK,
            &[QUEUE_SIZE],
            features,
            &config_space(engine.size()),
        )
        .map_err(BlockError::EventFd)?;
        Ok(Self {
            engine,
            read_only,
            id: id_bytes,
            base,
            handler: None,
        })
    }

    /// Puts every completed write on stable storage (used when the VM stops).
    pub fn flush(&self) -> std::io::Result<()> {
        self.engine.flush()
    }

    /// Sends every later request to `engine` (a live snapshot's fresh overlay). Whoever
    /// holds `&mut self` holds the device thread between two requests, so none is in
    /// flight. The guest was told the disk's size: the new engine must have it.
    pub fn replace_engine(&mut self, engine: Arc<dyn DiskEngine>) -> Result<(), BlockError> {
        if engine.size() != self.engine.size() {
            return Err(BlockError::SizeChanged {
                from: self.engine.size(),
                to: engine.size(),
            });
        }
        self.engine = engine;
        Ok(())
    }

    fn process_queue(&mut self) {
        let Some(handler) = self.handler.as_mut() else {
            return;
        };
        let disk = DiskInfo {
            id: &self.id,
            read_only: self.read_only,
        };
        let result = handler.process_queue(self.engine.as_ref(), &disk);
        if !self.base.completed(result) {
            self.handler = None;
        }
    }
}

fn config_space(size: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0x00, &(size / SECTOR_SIZE).to_le_bytes()); // capacity
    put(0x08, &MAX_SEGMENT_BYTES.to_le_bytes()); // size_max
    put(0x0c, &(MAX_DATA_DESCRIPTORS as u32).to_le_bytes()); // seg_max
    put(0x14, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
    put(0x28, &(MAX_DISCARD_RANGES as u32).to_le_bytes()); // max_discard_seg
    put(0x2c, &1u32.to_le_bytes()); // discard_sector_alignment
    put(0x30, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(0x34, &(MAX_WRITE_ZEROES_RANGES as u32).to_le_bytes()); // max_write_zeroes_seg
    put(0x38, &[1]); // write_zeroes_may_unmap
    c
}

impl QueueWorker for Block {
    fn base(&self) -> &DeviceBase {
        &self.base
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            mut queues,
            acked_features,
        } = activation;
        let mut queue = queues.pop().ok_or(ActivateError::QueueNotReady(0))?;
        virtio_queue::QueueT::set_event_idx(
            &mut queue,
            acked_features & VIRTIO_RING_F_EVENT_IDX != 0,
        );
        self.handler = Some(BlockHandler::new(mem, queue));
        Ok(())
    }

    fn reset(&mut self) {
        self.handler = None;
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.base.watch_queues(ops);
    }

    fn process(&mut self, events: Events, _: &mut EventOps) {
        match self.base.notified_queue(&events) {
            Some(_) => self.process_queue(),
            None => log::warn!("virtio-blk: unexpected event tag {}", events.data()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::virtio::block::handler::tests::{guest_memory, header, post};
    use crate::virtio::{MmioTransport, VirtioDevice, VirtioFront};
    use event_manager::SubscriberOps;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::time::Duration;
    use vm_memory::VolatileSlice;

    /// A disk whose flush takes as long as the test wants: an fsync on a slow host disk.
    struct SlowFlush {
        entered: Sender<()>,
        release: std::sync::Mutex<Receiver<()>>,
    }

    impl DiskEngine for SlowFlush {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, _: &VolatileSlice<'_>, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &VolatileSlice<'_>, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            self.entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn extent(&self, offset: u64) -> std::io::Result<crate::disk::Extent> {
            Ok(crate::disk::Extent {
                kind: crate::disk::ExtentKind::Data,
                len: self.size() - offset,
            })
        }
    }

    /// The interrupt path reads INTERRUPT_STATUS on a vCPU; it must not wait for a flush
    /// that the device thread is in the middle of.
    #[test]
    fn register_reads_do_not_wait_for_the_device_threads_io() {
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel();
        let engine = SlowFlush {
            entered: entered_tx,
            release: std::sync::Mutex::new(release_rx),
        };
        let block = Block::with_engine(Arc::new(engine), false, "slow").unwrap();
        let (mut front, worker) = VirtioFront::new(block).unwrap();
        let mem = guest_memory();
        let queue = virtio_queue::mock::MockSplitQueue::create(&mem, vm_memory::GuestAddress(0), 8);
        header(&mem, 0x10_0000, 4, 0); // FLUSH
        post(
            &queue,
            &[vec![(0x10_0000, 16, false), (0x30_0000, 1, true)]],
            0,
        );
        front
            .activate(Activation {
                mem: mem.clone(),
                queues: vec![queue.create_queue().unwrap()],
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        let mut transport = MmioTransport::new(mem, Box::new(front));
        let mut em = event_manager::EventManager::<Arc<std::sync::Mutex<Block>>>::new().unwrap();
        em.add_subscriber(worker);
        let device_thread = std::thread::spawn(move || {
            em.run_with_timeout(5000).unwrap();
        });
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the device thread never started the flush");

        let (done_tx, done) = channel();
        let vcpu = std::thread::spawn(move || {
            let mut isr = [0u8; 4];
            transport.read(0x60, &mut isr);
            let mut capacity = [0u8; 8];
            transport.read(0x100, &mut capacity);
            done_tx.send(u64::from_le_bytes(capacity)).unwrap();
            transport
        });
        let capacity = done.recv_timeout(Duration::from_secs(5));
        release.send(()).unwrap();
        device_thread.join().unwrap();
        vcpu.join().unwrap();
        assert_eq!(
            capacity.expect("a register read waited for the flush"),
            (1 << 20) / SECTOR_SIZE
        );
    }
}
