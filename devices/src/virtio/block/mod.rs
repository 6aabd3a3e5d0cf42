//! virtio-blk (virtio 1.2, section 5.2): parse a chain, execute it on a disk engine,
//! complete it. `device` is the transport-facing side, `handler` runs on the device thread.

mod device;
mod handler;
mod request;

pub use crate::disk::{DiskEngine, RawFile};
pub use device::{Block, BlockConfig, BlockError};
pub use handler::{BlockHandler, DiskInfo};
pub use request::{ParseError, Request, RequestKind};

/// Sector size of the virtio-blk protocol, independent of the backing file.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device ID returned by VIRTIO_BLK_T_GET_ID.
pub const DEVICE_ID_LEN: usize = 20;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
