//! Disk engines: where a block device's bytes live. `RawFile` is a plain image file;
//! `qcow2::Qcow2Image` a copy-on-write overlay with its backing chain (`Layer`s).
//! `open_image` opens either, detected by magic, with the whole chain.
//!
//! Every operation takes `&self` and an explicit offset (positional I/O), so one engine
//! can be shared by the device thread and whoever inspects or snapshots the disk; an
//! engine with metadata (qcow2) keeps its own locking inside.
//!
//! Files: `raw`, `qcow2/`, `layer` (read-only chain layers), `chain` (opening chains),
//! `image` (formats, `open_image`, `image_info`), `storage` (file I/O trait, locks),
//! `error`.

mod chain;
mod error;
mod image;
mod layer;
pub mod qcow2;
mod raw;
mod storage;

use std::io;

use vm_memory::VolatileSlice;

pub use chain::MAX_LAYERS;
pub use error::ImageError;
pub use image::{
    detect_format, image_info, open_image, open_image_as, DiskImage, ImageFormat, LayerInfo,
};
pub use layer::Layer;
pub use qcow2::Qcow2Image;
pub use raw::RawFile;
pub use storage::lock_image;

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Storage behind a virtio-blk device. Offsets and lengths are already checked against
/// `size()` by the request parser.
pub trait DiskEngine: Send + Sync {
    /// The virtual size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from the disk at `offset`.
    fn read_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()>;
    /// Stores `buf` on the disk at `offset`.
    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()>;
    /// Puts every completed write on stable storage.
    fn flush(&self) -> io::Result<()>;
    /// Releases the range's storage; it reads back as zeroes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the range read as zeroes; with `unmap`, its storage may be released.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// What the disk holds from `offset` on (below `size()`): the kind of the extent that
    /// starts there and its length, at least 1 byte. Copies and flattening skip zeroes.
    fn extent(&self, offset: u64) -> io::Result<Extent>;
}

/// A run of bytes with one allocation status, as seen through every layer of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub kind: ExtentKind,
    /// Bytes from the queried offset on.
    pub len: u64,
}

/// Whether an extent holds data or reads as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Stored data (which may happen to be zeroes).
    Data,
    /// Reads as zeroes without storage: a hole, a zero cluster, or unallocated everywhere.
    Zero,
}
