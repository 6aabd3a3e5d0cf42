//! The image's metadata in memory (L1 table, cached L2 tables, refcounts) and the order
//! in which it reaches the disk.
//!
//! Changes stay in memory until a flush, or until a dirty L2 table would have to leave
//! the cache; then `writeback` writes them so that a crash after any single write leaves
//! a consistent image (leaked clusters at most):
//! 1. refcount blocks, then what makes new blocks reachable (table entries, or a moved
//!    table and then the header), each step after a sync;
//! 2. sync (data and refcounts durable), the L2 tables; sync, the L1 entries;
//! 3. sync (no table on disk points to them any more), release freed clusters.

use std::collections::BTreeSet;
use std::io;

use super::refcount::Refcounts;
use super::tables::{decode_l1, decode_table, encode_table, Cluster, L2Cache, COPIED};
use crate::disk::storage::Storage;

/// Size, cluster size and version: what maps a guest offset to table indexes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub cluster_bits: u32,
    pub size: u64,
    pub v3: bool,
}

impl Geometry {
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub(crate) fn cluster_mask(&self) -> u64 {
        self.cluster_size() - 1
    }

    /// (L1 index, L2 index) of a guest cluster.
    fn split(&self, cluster: u64) -> (usize, usize) {
        let l2_bits = self.cluster_bits - 3;
        (
            (cluster >> l2_bits) as usize,
            (cluster & ((1 << l2_bits) - 1)) as usize,
        )
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

pub(crate) struct Meta {
    /// False for lower layers, read-only opens and sealed images.
    pub writable: bool,
    geo: Geometry,
    l1: Vec<u64>,
    l1_offset: u64,
    l1_dirty: BTreeSet<usize>,
    l2: L2Cache,
    refcounts: Refcounts,
    /// Clusters no longer referenced in memory, released after step 2 of `writeback`.
    freed: Vec<u64>,
    /// A cluster-sized buffer for copy-on-write (allocated on first use).
    pub bounce: Vec<u8>,
    scratch: Vec<u8>,
    /// L2 lookups so far (tests count what a read through a chain costs).
    #[cfg(test)]
    pub lookups: u64,
}

impl Meta {
    pub(crate) fn new(
        geo: Geometry,
        l1: Vec<u64>,
        l1_offset: u64,
        l2: L2Cache,
        refcounts: Refcounts,
        writable: bool,
    ) -> Self {
        Self {
            writable,
            geo,
            l1,
            l1_offset,
            l1_dirty: BTreeSet::new(),
            l2,
            refcounts,
            freed: Vec::new(),
            bounce: Vec::new(),
            scratch: Vec::new(),
            #[cfg(test)]
            lookups: 0,
        }
    }

    /// What guest cluster `cluster` maps to.
    pub(crate) fn lookup(&mut self, file: &dyn Storage, cluster: u64) -> io::Result<Cluster> {
        let (l1i, l2i) = self.geo.split(cluster);
        let (mask, v3) = (self.geo.cluster_mask(), self.geo.v3);
        #[cfg(test)]
        {
            self.lookups += 1;
        }
        if let Some(table) = self.l2.get(l1i) {
            return Cluster::decode(table[l2i], mask, v3)
                .map_err(|e| invalid(format!("L2 entry of cluster {cluster}: {e}")));
        }
        if !self.load(file, l1i)? {
            return Ok(Cluster::Unallocated);
        }
        let raw = self.l2.get(l1i).map_or(0, |t| t[l2i]);
        Cluster::decode(raw, mask, v3)
            .map_err(|e| invalid(format!("L2 entry of cluster {cluster}: {e}")))
    }

    /// Caches the L2 table of L1 entry `l1i`; false if there is none.
    fn load(&mut self, file: &dyn Storage, l1i: usize) -> io::Result<bool> {
        let raw = *self
            .l1
            .get(l1i)
            .ok_or_else(|| invalid(format!("L1 index {l1i} beyond the table")))?;
        let Some(offset) = decode_l1(raw, self.geo.cluster_mask())
            .map_err(|e| invalid(format!("L1 entry {l1i}: {e}")))?
        else {
            return Ok(false);
        };
        self.make_room(file)?;
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.resize(self.geo.cluster_size() as usize, 0);
        let read = file.read_exact_at(&mut bytes, offset);
        let entries = decode_table(&bytes);
        self.scratch = bytes;
        read?;
        self.l2.insert(l1i, entries, false);
        Ok(true)
    }

    /// Frees a cache slot; a cache full of dirty tables is written back first.
    fn make_room(&mut self, file: &dyn Storage) -> io::Result<()> {
        if !self.l2.has_room() {
            self.writeback(file)?;
        }
        Ok(())
    }

    /// Maps guest cluster `cluster` to `new`; returns the old mapping. The caller
    /// releases the old storage (`free`) only after this returns.
    pub(crate) fn set(
        &mut self,
        file: &dyn Storage,
        cluster: u64,
        new: Cluster,
    ) -> io::Result<Cluster> {
        let old = self.lookup(file, cluster)?;
        let (l1i, l2i) = self.geo.split(cluster);
        if self.l2.get(l1i).is_none() {
            // No L2 table yet: a zeroed one, cached before the L1 entry points to it
            // so that a write-back never writes the L1 entry first.
            self.make_room(file)?;
            let offset = self.refcounts.alloc(file)?;
            let entries = vec![0u64; self.geo.cluster_size() as usize / 8];
            self.l2.insert(l1i, entries.into_boxed_slice(), true);
            self.l1[l1i] = offset | COPIED;
            self.l1_dirty.insert(l1i);
        }
        let table = self
            .l2
            .get_mut(l1i)
            .ok_or_else(|| invalid("L2 table left the cache".into()))?;
        table[l2i] = new.encode();
        Ok(old)
    }

    /// A new cluster, counted (its refcount reaches the disk before any table
    /// referring to it).
    pub(crate) fn alloc(&mut self, file: &dyn Storage) -> io::Result<u64> {
        self.refcounts.alloc(file)
    }

    /// Releases a cluster once no table on disk refers to it.
    pub(crate) fn free(&mut self, offset: u64) {
        self.freed.push(offset);
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.refcounts.has_dirty()
            || self.l2.has_dirty()
            || !self.l1_dirty.is_empty()
            || !self.freed.is_empty()
    }

    /// Writes every change in the order above. The caller syncs for durability.
    pub(crate) fn writeback(&mut self, file: &dyn Storage) -> io::Result<()> {
        // 1. Refcounts.
        self.refcounts.write_blocks(file)?;
        let old_tables = self.refcounts.write_table(file)?;
        // 2. Mappings, once what they point to is durable.
        if self.l2.has_dirty() || !self.l1_dirty.is_empty() {
            file.sync()?;
            let mut bytes = std::mem::take(&mut self.scratch);
            let (l1, mask) = (&self.l1, self.geo.cluster_mask());
            let result = self.l2.dirty_slots().try_for_each(|slot| {
                encode_table(&slot.entries, &mut bytes);
                let offset = decode_l1(l1[slot.l1_index], mask)
                    .ok()
                    .flatten()
                    .ok_or_else(|| invalid("a cached L2 table has no L1 entry".into()))?;
                file.write_all_at(&bytes, offset)?;
                slot.dirty = false;
                Ok::<(), io::Error>(())
            });
            self.scratch = bytes;
            result?;
            if !self.l1_dirty.is_empty() {
                file.sync()?;
                for l1i in std::mem::take(&mut self.l1_dirty) {
                    let at = self.l1_offset + l1i as u64 * 8;
                    file.write_all_at(&self.l1[l1i].to_be_bytes(), at)?;
                }
            }
        }
        // 3. Releases.
        let mut freed = std::mem::take(&mut self.freed);
        freed.extend(old_tables);
        if !freed.is_empty() {
            file.sync()?;
            for &offset in &freed {
                self.refcounts.release(file, offset)?;
            }
            self.refcounts.write_blocks(file)?;
            for &offset in &freed {
                file.punch_hole(offset, self.geo.cluster_size())?;
            }
        }
        Ok(())
    }
}
