//! One qcow2 file: open, reads, extents, flush. Writes are in `write.rs`.
//!
//! The metadata sits behind one mutex. A request holds it to look mappings up and to
//! change them, and drops it before data I/O whenever the mapping is already known
//! (reads; writes to clusters it owns): the hot path is a cached L2 lookup and one
//! pread/pwrite straight into guest memory.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::VolatileSlice;

use super::header::{Header, AUTOCLEAR_AT};
use super::meta::{Geometry, Meta};
use super::refcount::Refcounts;
use super::scan::scan;
use super::tables::{decode_table, Cluster, L2Cache};
use crate::disk::layer::{FileId, Layer};
use crate::disk::storage::{fill_zeroes, to_io, Storage};
use crate::disk::{DiskEngine, Extent, ExtentKind, ImageError};

/// Bytes of L2 tables one image may cache (a 64 KiB-cluster image: 256 GiB mapped).
/// Tests cache 3 tables, so that evictions and their write-backs happen all the time.
const L2_CACHE_BYTES: u64 = if cfg!(test) { 0 } else { 32 << 20 };
const MIN_L2_CACHE_TABLES: u64 = if cfg!(test) { 3 } else { 16 };

/// How a run of guest bytes is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// Stored in this file, starting at this host offset.
    Data(u64),
    Zero,
    /// Not in this file: the backing chain's.
    Below,
    /// (Writes) needs allocation or copy-on-write.
    Slow,
}

pub(crate) struct Qcow2File {
    pub path: PathBuf,
    pub file: Box<dyn Storage>,
    /// A duplicate of the image's descriptor: `seal` downgrades its flock.
    pub lock: Option<File>,
    pub geo: Geometry,
    pub meta: Mutex<Meta>,
    pub backing: Option<Arc<Layer>>,
    pub backing_name: Option<String>,
    /// Data clusters when the image was opened.
    pub allocated_at_open: u64,
    pub id: FileId,
}

pub(crate) fn bad_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "request beyond the end of the disk",
    )
}

impl Qcow2File {
    /// Opens an image whose header was read and whose backing chain is open (the caller
    /// checked the backing layer's size).
    pub(crate) fn open(
        path: &Path,
        file: Box<dyn Storage>,
        h: Header,
        writable: bool,
        backing: Option<Arc<Layer>>,
        lock: Option<File>,
        id: FileId,
    ) -> Result<Self, ImageError> {
        if writable && h.version == 2 {
            return Err(ImageError::unsupported(
                path,
                "it is a qcow2 version 2 image, which opens read-only; upgrade it with `qemu-img amend -o compat=v3`",
            ));
        }
        if writable && h.nb_snapshots > 0 {
            return Err(ImageError::unsupported(
                path,
                format!("it has internal snapshots ({}), so it opens read-only; delete them with `qemu-img snapshot -d`", h.nb_snapshots),
            ));
        }
        let io_err = |e| ImageError::io(path, e);
        let file_len = file.len().map_err(io_err)?;
        let cs = 1u64 << h.cluster_bits;
        let mut bytes = vec![0u8; h.l1_size as usize * 8];
        file.read_exact_at(&mut bytes, h.l1_table_offset)
            .map_err(io_err)?;
        let l1 = decode_table(&bytes).into_vec();
        let mut bytes = vec![0u8; (u64::from(h.refcount_table_clusters) * cs) as usize];
        file.read_exact_at(&mut bytes, h.refcount_table_offset)
            .map_err(io_err)?;
        let reftable = decode_table(&bytes).into_vec();

        let capacity = (L2_CACHE_BYTES / cs)
            .max(MIN_L2_CACHE_TABLES)
            .min(u64::from(h.l1_size).max(1)) as usize;
        let found = scan(&*file, path, &h, &l1, &reftable, file_len, capacity)?;
        let mut l2 = L2Cache::new(l1.len(), capacity);
        for (l1i, entries) in found.tables {
            l2.insert(l1i, entries, false);
        }
        let geo = Geometry {
            cluster_bits: h.cluster_bits,
            size: h.size,
            v3: h.version == 3,
        };
        let refcounts = Refcounts::new(
            h.cluster_bits,
            h.refcount_order,
            reftable,
            h.refcount_table_offset,
            file_len,
        );
        let meta = Meta::new(geo, l1, h.l1_table_offset, l2, refcounts, writable);
        if writable && h.autoclear != 0 {
            // Bitmaps and the like that we would leave stale: QEMU drops them.
            file.write_all_at(&[0; 8], AUTOCLEAR_AT)
                .and_then(|()| file.sync())
                .map_err(io_err)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            lock,
            geo,
            meta: Mutex::new(meta),
            backing,
            backing_name: h.backing,
            allocated_at_open: found.allocated,
            id,
        })
    }

    pub(crate) fn meta(&self) -> io::Result<MutexGuard<'_, Meta>> {
        self.meta
            .lock()
            .map_err(|_| io::Error::other("qcow2 metadata lock poisoned"))
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.size => Ok(()),
            _ => Err(bad_range()),
        }
    }

    /// How the bytes at `pos` are served, and for how many of the next `want` bytes the
    /// same way (contiguous on the host for data). `write` asks for clusters this file
    /// owns outright (data with refcount 1), the rest being `Slow`.
    pub(crate) fn map_run(
        &self,
        meta: &mut Meta,
        pos: u64,
        want: u64,
        write: bool,
    ) -> io::Result<(Run, u64)> {
        let (bits, mask) = (self.geo.cluster_bits, self.geo.cluster_mask());
        let classify = |c: Cluster, guest: u64| match (c, write) {
            (
                Cluster::Data {
                    offset,
                    copied: true,
                },
                _,
            )
            | (Cluster::Data { offset, .. }, false) => Run::Data(offset + (guest & mask)),
            (_, true) => Run::Slow,
            (Cluster::Zero | Cluster::ZeroAlloc { .. }, false) => Run::Zero,
            (Cluster::Unallocated, false) => Run::Below,
        };
        let first = classify(meta.lookup(&*self.file, pos >> bits)?, pos);
        let mut len = (self.geo.cluster_size() - (pos & mask)).min(want);
        if first == Run::Slow {
            return Ok((first, len));
        }
        while len < want {
            let next = pos + len;
            let expect = match first {
                Run::Data(host) => Run::Data(host + len),
                other => other,
            };
            if classify(meta.lookup(&*self.file, next >> bits)?, next) != expect {
                break;
            }
            len = (len + self.geo.cluster_size()).min(want);
        }
        Ok((first, len))
    }

    pub(crate) fn read_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let (run, n) = self.map_run(&mut *self.meta()?, pos, len - done, false)?;
            let part = buf.subslice(done as usize, n as usize).map_err(to_io)?;
            match run {
                Run::Data(host) => self.file.read_volatile_at(&part, host)?,
                Run::Below => self.read_below(&part, pos)?,
                Run::Zero | Run::Slow => fill_zeroes(&part),
            }
            done += n;
        }
        Ok(())
    }

    /// Reads what the backing chain has (zeroes without one).
    pub(crate) fn read_below(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        match &self.backing {
            Some(layer) => layer.read_at(buf, offset),
            None => {
                fill_zeroes(buf);
                Ok(())
            }
        }
    }

    /// Data, zero or below for guest cluster of `offset`, as `extent` reports it.
    pub(crate) fn owner(&self, offset: u64) -> io::Result<Run> {
        let mut meta = self.meta()?;
        Ok(
            match meta.lookup(&*self.file, offset >> self.geo.cluster_bits)? {
                Cluster::Data { .. } => Run::Data(0),
                Cluster::Zero | Cluster::ZeroAlloc { .. } => Run::Zero,
                Cluster::Unallocated => Run::Below,
            },
        )
    }

    /// The extent at `offset` through this file and its backing chain. Scans at most
    /// one L2 table's worth of clusters per call.
    pub(crate) fn extent(&self, offset: u64) -> io::Result<Extent> {
        self.check_range(offset, 1)?;
        let cs = self.geo.cluster_size();
        let limit = (cs * (cs / 8)).min(self.geo.size - offset);
        let first = self.owner(offset)?;
        let mut len = (cs - (offset & (cs - 1))).min(limit);
        while len < limit && self.owner(offset + len)? == first {
            len = (len + cs).min(limit);
        }
        let kind = match first {
            Run::Data(_) => ExtentKind::Data,
            Run::Below if self.backing.is_some() => {
                let below = self.backing.as_ref().map(|b| b.extent(offset));
                let below = below.unwrap_or(Ok(Extent {
                    kind: ExtentKind::Zero,
                    len,
                }))?;
                return Ok(Extent {
                    kind: below.kind,
                    len: below.len.min(len),
                });
            }
            _ => ExtentKind::Zero,
        };
        Ok(Extent { kind, len })
    }

    /// Writes back the metadata and syncs (nothing to do for a read-only file).
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut meta = self.meta()?;
        if !meta.writable {
            return Ok(());
        }
        meta.writeback(&*self.file)?;
        self.file.sync()
    }

    /// Flushes and stops writing for good (see `Qcow2Image::seal`).
    pub(crate) fn seal(&self) -> Result<(), ImageError> {
        let mut meta = self.meta().map_err(|e| ImageError::io(&self.path, e))?;
        if !meta.writable {
            return Err(ImageError::ReadOnly {
                path: self.path.clone(),
            });
        }
        meta.writeback(&*self.file)
            .and_then(|()| self.file.sync())
            .map_err(|e| ImageError::io(&self.path, e))?;
        meta.writable = false;
        Ok(())
    }

    /// Bytes in data clusters when the file was opened (`image_info` opens it for this).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.allocated_at_open << self.geo.cluster_bits
    }

    pub(crate) fn facts(&self) -> crate::disk::image::Qcow2Facts {
        (
            self.path.clone(),
            self.geo.size,
            self.geo.cluster_size(),
            self.allocated_bytes(),
            self.backing_name.clone(),
        )
    }
}

impl Drop for Qcow2File {
    /// Metadata still in memory reaches the disk even if nobody flushed.
    fn drop(&mut self) {
        let Ok(mut meta) = self.meta.lock() else {
            return;
        };
        if meta.writable && meta.is_dirty() {
            if let Err(e) = meta.writeback(&*self.file).and_then(|()| self.file.sync()) {
                log::warn!(
                    "qcow2 {}: metadata not written back: {e}",
                    self.path.display()
                );
            }
        }
    }
}
