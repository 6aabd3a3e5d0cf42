//! Writes, write-zeroes and discard on one qcow2 file.
//!
//! A write to a cluster the file owns goes straight to it, outside the metadata lock.
//! Anything else (unallocated, zero, or shared cluster) takes the slow path under the
//! lock: a cluster (new, or the one a zero cluster kept), filled with what the guest saw
//! there for the bytes the write does not cover, the new data, then the L2 entry (in
//! memory; `Meta::writeback` orders it after the data on disk).

use std::io;

use vm_memory::VolatileSlice;

use super::engine::{Qcow2File, Run};
use super::meta::Meta;
use super::tables::Cluster;
use crate::disk::storage::to_io;

/// What a slow-path write puts in its part of a cluster.
#[derive(Clone, Copy)]
enum Source<'a, 'b> {
    Guest(&'a VolatileSlice<'b>),
    Zeroes(u64),
}

impl Source<'_, '_> {
    fn len(&self) -> u64 {
        match self {
            Self::Guest(s) => s.len() as u64,
            Self::Zeroes(n) => *n,
        }
    }
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

impl Qcow2File {
    pub(crate) fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let mut meta = self.meta()?;
            if !meta.writable {
                return Err(read_only());
            }
            let (run, n) = self.map_run(&mut meta, pos, len - done, true)?;
            let part = buf.subslice(done as usize, n as usize).map_err(to_io)?;
            if let Run::Data(host) = run {
                drop(meta);
                self.file.write_volatile_at(&part, host)?;
            } else {
                self.write_slow(&mut meta, pos, Source::Guest(&part))?;
            }
            done += n;
        }
        Ok(())
    }

    /// Zeroes the range: whole clusters become zero clusters (keeping their storage
    /// unless `unmap`), partial ones get zeroes written.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.check_range(offset, len)?;
        let mut meta = self.meta()?;
        if !meta.writable {
            return Err(read_only());
        }
        let (bits, cs) = (self.geo.cluster_bits, self.geo.cluster_size());
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let cluster = pos >> bits;
            let start = cluster << bits;
            let cluster_end = (start + cs).min(self.geo.size);
            let n = end.min(cluster_end) - pos;
            if n < cluster_end - start {
                self.write_slow(&mut meta, pos, Source::Zeroes(n))?;
            } else {
                self.zero_cluster(&mut meta, cluster, unmap)?;
            }
            pos += n;
        }
        Ok(())
    }

    fn zero_cluster(&self, meta: &mut Meta, cluster: u64, unmap: bool) -> io::Result<()> {
        let old = meta.lookup(&*self.file, cluster)?;
        let new = match old {
            Cluster::Data {
                offset,
                copied: true,
            }
            | Cluster::ZeroAlloc {
                offset,
                copied: true,
            } if !unmap => Cluster::ZeroAlloc {
                offset,
                copied: true,
            },
            // Already zeroes with nothing below.
            Cluster::Unallocated if self.backing.is_none() => return Ok(()),
            _ => Cluster::Zero,
        };
        if new != old {
            let old = meta.set(&*self.file, cluster, new)?;
            if let Some(offset) = old.storage().filter(|&o| new.storage() != Some(o)) {
                meta.free(offset);
            }
        }
        Ok(())
    }

    /// Writes `src` at `pos`, inside one cluster, whatever that cluster maps to now.
    fn write_slow(&self, meta: &mut Meta, pos: u64, src: Source<'_, '_>) -> io::Result<()> {
        let file = &*self.file;
        let (bits, cs) = (self.geo.cluster_bits, self.geo.cluster_size());
        let cluster = pos >> bits;
        let start = cluster << bits;
        let cluster_len = (start + cs).min(self.geo.size) - start;
        let within = pos - start;
        let n = src.len();
        let old = meta.lookup(file, cluster)?;
        let reads_zero = match old {
            Cluster::Zero | Cluster::ZeroAlloc { .. } => true,
            Cluster::Unallocated => self.backing.is_none(),
            Cluster::Data { .. } => false,
        };
        if let Cluster::Data {
            offset,
            copied: true,
        } = old
        {
            return self.put(src, offset + within);
        }
        if reads_zero && matches!(src, Source::Zeroes(_)) {
            return Ok(());
        }
        let (target, fresh) = match old {
            Cluster::ZeroAlloc {
                offset,
                copied: true,
            } => (offset, false),
            _ => (meta.alloc(file)?, true),
        };
        // A fresh cluster lies past everything ever written: it reads as zeroes already.
        if n == cluster_len || (fresh && reads_zero) {
            self.put(src, target + within)?;
        } else {
            let mut bounce = std::mem::take(&mut meta.bounce);
            bounce.resize(cs as usize, 0);
            let result = self.fill(old, start, &mut bounce[..cluster_len as usize], within, src);
            let result =
                result.and_then(|()| file.write_all_at(&bounce[..cluster_len as usize], target));
            meta.bounce = bounce;
            result?;
        }
        let new = Cluster::Data {
            offset: target,
            copied: true,
        };
        let old = meta.set(file, cluster, new)?;
        if let Some(offset) = old.storage().filter(|&o| o != target) {
            meta.free(offset);
        }
        Ok(())
    }

    /// The cluster at guest `start` as the guest sees it now (`old` maps it), with `src`
    /// laid over it at `within`.
    fn fill(
        &self,
        old: Cluster,
        start: u64,
        buf: &mut [u8],
        within: u64,
        src: Source<'_, '_>,
    ) -> io::Result<()> {
        match old {
            Cluster::Data { offset, .. } => self
                .file
                .read_volatile_at(&VolatileSlice::from(&mut *buf), offset)?,
            Cluster::Unallocated => self.read_below(&VolatileSlice::from(&mut *buf), start)?,
            Cluster::Zero | Cluster::ZeroAlloc { .. } => buf.fill(0),
        }
        let part = &mut buf[within as usize..(within + src.len()) as usize];
        match src {
            Source::Guest(s) => {
                s.copy_to(part);
            }
            Source::Zeroes(_) => part.fill(0),
        }
        Ok(())
    }

    /// Puts `src` at host offset `at`.
    fn put(&self, src: Source<'_, '_>, at: u64) -> io::Result<()> {
        match src {
            Source::Guest(s) => self.file.write_volatile_at(s, at),
            Source::Zeroes(n) => self.file.write_zeroes_at(at, n),
        }
    }
}
