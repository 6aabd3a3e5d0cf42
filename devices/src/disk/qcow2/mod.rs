//! qcow2 version 3 images (QEMU's copy-on-write format): the writable overlay of a
//! sandbox's root disk and the sealed snapshots below it.
//!
//! Why our own engine: the Rust crates that read qcow2 (`qcow2`, `qcow2-core`, `qcow`)
//! cannot write, and `qcow2-rs` is async (tokio/io_uring) with its own device model. We
//! need synchronous positional I/O on `&self` straight into guest memory, crash-safe
//! metadata ordering, and a seal that turns the open overlay into a read-only layer
//! without reopening anything (live snapshots).
//!
//! Supported: cluster sizes 512 B to 2 MiB, refcounts of 1 to 64 bits, backing files
//! (raw or qcow2), zero clusters, discard. Version 2 images and images with internal
//! snapshots open read-only. Refused with a reason: encryption, compressed clusters,
//! external data files, extended L2 entries, unknown incompatible features, and images
//! marked corrupt or dirty.
//!
//! Files: `header` (parsing, new headers), `tables` (entries, L2 cache), `refcount`
//! (refcounts, allocation), `meta` (metadata in memory and its write-back order), `scan`
//! (open-time table checks), `engine` (open, read, extents), `write` (writes, zeroes),
//! `create` (new images).

mod create;
pub(crate) mod engine;
pub(crate) mod header;
mod meta;
mod refcount;
mod scan;
mod tables;
#[cfg(test)]
mod tests;
mod write;

use std::io;
use std::path::Path;
use std::sync::Arc;

use vm_memory::VolatileSlice;

use super::chain::{ChainOpener, Top};
use super::layer::Layer;
use super::storage::lock_image;
use super::{DiskEngine, Extent, ImageError, ImageFormat};
use engine::Qcow2File;

pub use create::create;

/// An open qcow2 image with its backing chain: the disk engine of a qcow2 drive.
pub struct Qcow2Image {
    file: Arc<Qcow2File>,
}

impl Qcow2Image {
    /// Opens the image and its whole backing chain (exclusive lock if `writable`, shared
    /// locks on everything else).
    pub fn open(path: &Path, writable: bool) -> Result<Self, ImageError> {
        match ChainOpener::open(path, writable, true, Some(ImageFormat::Qcow2))? {
            Top::Qcow2(file) => Ok(Self {
                file: Arc::new(*file),
            }),
            Top::Raw { .. } => Err(ImageError::corrupt(path, "it is not a qcow2 image")),
        }
    }

    /// Opens the overlay at `path` (made by [`create`] with the sealed layer's file as
    /// its backing file) writable, on top of the already open `backing` chain: no file
    /// below is reopened, so no lock is ever dropped.
    pub fn open_on(path: &Path, backing: Arc<Layer>) -> Result<Self, ImageError> {
        Ok(Self {
            file: Arc::new(super::chain::open_on(path, backing)?),
        })
    }

    /// Flushes the image and turns it into a read-only layer for a new overlay: every
    /// later write through this handle fails (EROFS), and its lock becomes shared on the
    /// same descriptor (Linux converts a flock in place; only a process that grabs the
    /// file exclusively in that instant could make the downgrade fail). O(1): nothing is
    /// reopened or copied. The caller drains in-flight requests first (a write already
    /// past its lookup would land in the sealed layer).
    pub fn seal(&self) -> Result<Arc<Layer>, ImageError> {
        self.file.seal()?;
        if let Some(lock) = &self.file.lock {
            lock_image(lock, true).map_err(|source| ImageError::Locked {
                path: self.file.path.clone(),
                source,
            })?;
        }
        Ok(Layer::qcow2(self.file.clone(), self.file.id))
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The layer below, if the image has a backing file.
    pub fn backing(&self) -> Option<&Arc<Layer>> {
        self.file.backing.as_ref()
    }

    pub fn cluster_size(&self) -> u64 {
        self.file.geo.cluster_size()
    }

    /// False once sealed, and for read-only opens.
    pub fn is_writable(&self) -> bool {
        self.file.meta().map(|m| m.writable).unwrap_or(false)
    }

    pub(crate) fn from_open(file: Qcow2File) -> Self {
        Self {
            file: Arc::new(file),
        }
    }
}

impl DiskEngine for Qcow2Image {
    fn size(&self) -> u64 {
        self.file.geo.size
    }

    fn read_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        self.file.write_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.file.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.file.write_zeroes(offset, len, unmap)
    }

    fn extent(&self, offset: u64) -> io::Result<Extent> {
        self.file.extent(offset)
    }
}
