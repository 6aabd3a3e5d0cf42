//! Refcounts: the table, its blocks (any width from 1 to 64 bits), and the allocator.
//!
//! Allocation only appends: a new cluster comes from past the end of the file as it was
//! at open and past every cluster handed out since. So a cluster is never reused while
//! anything (an in-flight write, a stale on-disk table) may still point to it, and even
//! an image whose refcounts undercount cannot have live data overwritten. Freed clusters
//! get refcount 0 and a punched hole; the file's apparent size only grows.

use std::collections::{BTreeSet, HashMap};
use std::io;

use super::header::{MAX_REFTABLE_BYTES, REFTABLE_FIELDS_AT};
use super::tables::OFFSET_MASK;
use crate::disk::storage::Storage;

/// Clean blocks kept across write-backs.
const KEEP_BLOCKS: usize = 64;

struct Block {
    data: Box<[u8]>,
    dirty: bool,
}

pub(crate) struct Refcounts {
    cluster_bits: u32,
    /// log2 of the refcount width in bits.
    order: u32,
    /// log2 of the entries in one block.
    block_bits: u32,
    table: Vec<u64>,
    table_offset: u64,
    /// Table entries that changed in place (new blocks) since the last write-back.
    table_dirty: BTreeSet<usize>,
    /// Tables replaced by a larger one: freed once the header points at the new table.
    moved_from: Vec<(u64, u64)>,
    blocks: HashMap<usize, Block>,
    /// The next cluster index the allocator looks at.
    next_free: u64,
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Refcounts {
    pub(crate) fn new(
        cluster_bits: u32,
        order: u32,
        table: Vec<u64>,
        table_offset: u64,
        file_len: u64,
    ) -> Self {
        Self {
            cluster_bits,
            order,
            block_bits: cluster_bits + 3 - order,
            table,
            table_offset,
            table_dirty: BTreeSet::new(),
            moved_from: Vec::new(),
            blocks: HashMap::new(),
            next_free: file_len.div_ceil(1 << cluster_bits),
        }
    }

    fn cluster_size(&self) -> usize {
        1 << self.cluster_bits
    }

    /// The cached block for table entry `ti`, read if needed; None if unallocated.
    fn block(&mut self, file: &dyn Storage, ti: usize) -> io::Result<Option<&mut Block>> {
        let offset = self.table.get(ti).copied().unwrap_or(0) & OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        if !self.blocks.contains_key(&ti) {
            let mut data = vec![0u8; self.cluster_size()].into_boxed_slice();
            file.read_exact_at(&mut data, offset)?;
            self.blocks.insert(ti, Block { data, dirty: false });
        }
        Ok(self.blocks.get_mut(&ti))
    }

    fn split(&self, cluster: u64) -> (usize, usize) {
        let ti = (cluster >> self.block_bits) as usize;
        let i = (cluster & ((1 << self.block_bits) - 1)) as usize;
        (ti, i)
    }

    pub(crate) fn get(&mut self, file: &dyn Storage, cluster: u64) -> io::Result<u64> {
        let (ti, i) = self.split(cluster);
        let order = self.order;
        Ok(match self.block(file, ti)? {
            Some(b) => get_entry(&b.data, i, order),
            None => 0,
        })
    }

    fn set(&mut self, file: &dyn Storage, cluster: u64, value: u64) -> io::Result<()> {
        let (ti, i) = self.split(cluster);
        if ti >= self.table.len() {
            self.grow(file, ti)?;
        }
        if self.table[ti] == 0 {
            self.new_block(file, ti)?;
        }
        let order = self.order;
        let block = self
            .block(file, ti)?
            .ok_or_else(|| invalid("refcount block vanished"))?;
        set_entry(&mut block.data, i, order, value);
        block.dirty = true;
        Ok(())
    }

    /// A free cluster index, not yet counted.
    fn take_free(&mut self, file: &dyn Storage) -> io::Result<u64> {
        loop {
            let c = self.next_free;
            if (c + 1) << self.cluster_bits > OFFSET_MASK {
                return Err(io::Error::from_raw_os_error(libc::EFBIG));
            }
            self.next_free += 1;
            if self.get(file, c)? == 0 {
                return Ok(c);
            }
        }
    }

    fn new_block(&mut self, file: &dyn Storage, ti: usize) -> io::Result<()> {
        let at = self.take_free(file)?;
        self.table[ti] = at << self.cluster_bits;
        self.table_dirty.insert(ti);
        let data = vec![0u8; self.cluster_size()].into_boxed_slice();
        self.blocks.insert(ti, Block { data, dirty: true });
        // The block counts itself when it covers itself, else another block does.
        self.set(file, at, 1)
    }

    /// Replaces the table with a larger one past the end of the file (written by
    /// `write_table`, which then moves the header to it).
    fn grow(&mut self, file: &dyn Storage, min_index: usize) -> io::Result<()> {
        let per_cluster = (self.cluster_size() / 8) as u64;
        let mut entries = (self.table.len() as u64 * 2).max(min_index as u64 + 1);
        let clusters = loop {
            let clusters = entries.div_ceil(per_cluster);
            // It must also cover itself and the blocks that will count it.
            let reach = self.next_free + clusters + (clusters >> self.block_bits) + 2;
            if reach >> self.block_bits < entries {
                break clusters;
            }
            entries *= 2;
        };
        if clusters << self.cluster_bits > MAX_REFTABLE_BYTES {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        let start = self.next_free;
        self.next_free += clusters;
        let old_clusters = (self.table.len() * 8).div_ceil(self.cluster_size()) as u64;
        self.moved_from.push((self.table_offset, old_clusters));
        self.table.resize((clusters * per_cluster) as usize, 0);
        self.table_offset = start << self.cluster_bits;
        for c in start..start + clusters {
            self.set(file, c, 1)?;
        }
        Ok(())
    }

    /// Counts a new cluster; returns its offset.
    pub(crate) fn alloc(&mut self, file: &dyn Storage) -> io::Result<u64> {
        let c = self.take_free(file)?;
        self.set(file, c, 1)?;
        Ok(c << self.cluster_bits)
    }

    /// Drops one reference to the cluster at `offset`.
    pub(crate) fn release(&mut self, file: &dyn Storage, offset: u64) -> io::Result<()> {
        let c = offset >> self.cluster_bits;
        match self.get(file, c)? {
            0 => {
                log::warn!("qcow2: cluster {offset:#x} freed with refcount 0");
                Ok(())
            }
            v => self.set(file, c, v - 1),
        }
    }

    pub(crate) fn has_dirty(&self) -> bool {
        !self.moved_from.is_empty()
            || !self.table_dirty.is_empty()
            || self.blocks.values().any(|b| b.dirty)
    }

    /// Writes every changed block (new ones are not referenced yet; changed ones only
    /// count clusters that nothing on disk points to yet, or ones already released).
    pub(crate) fn write_blocks(&mut self, file: &dyn Storage) -> io::Result<()> {
        for (ti, block) in self.blocks.iter_mut().filter(|(_, b)| b.dirty) {
            file.write_all_at(&block.data, self.table[*ti] & OFFSET_MASK)?;
            block.dirty = false;
        }
        if self.blocks.len() > KEEP_BLOCKS {
            self.blocks.retain(|_, b| b.dirty);
        }
        Ok(())
    }

    /// Makes new blocks reachable, after they are durable: table entries in place, or a
    /// moved table and then the header. Returns the old tables' clusters to release.
    pub(crate) fn write_table(&mut self, file: &dyn Storage) -> io::Result<Vec<u64>> {
        if !self.moved_from.is_empty() {
            file.sync()?;
            let bytes: Vec<u8> = self.table.iter().flat_map(|e| e.to_be_bytes()).collect();
            file.write_all_at(&bytes, self.table_offset)?;
            file.sync()?;
            let clusters = (bytes.len() / self.cluster_size()) as u32;
            let mut fields = [0u8; 12];
            fields[..8].copy_from_slice(&self.table_offset.to_be_bytes());
            fields[8..].copy_from_slice(&clusters.to_be_bytes());
            file.write_all_at(&fields, REFTABLE_FIELDS_AT)?;
            self.table_dirty.clear();
            let cs = self.cluster_size() as u64;
            return Ok(std::mem::take(&mut self.moved_from)
                .into_iter()
                .flat_map(|(offset, n)| (0..n).map(move |i| offset + i * cs))
                .collect());
        }
        if !self.table_dirty.is_empty() {
            file.sync()?;
            for ti in std::mem::take(&mut self.table_dirty) {
                let at = self.table_offset + ti as u64 * 8;
                file.write_all_at(&self.table[ti].to_be_bytes(), at)?;
            }
        }
        Ok(Vec::new())
    }
}

fn get_entry(data: &[u8], i: usize, order: u32) -> u64 {
    let be = |n: usize| {
        data[i * n..i * n + n]
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    };
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = data[i / per_byte];
            u64::from(byte >> ((i % per_byte) * bits)) & ((1 << bits) - 1)
        }
        _ => be(1 << (order - 3)),
    }
}

fn set_entry(data: &mut [u8], i: usize, order: u32, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let byte = &mut data[i / per_byte];
            *byte = (*byte & !mask) | (((value as u8) << shift) & mask);
        }
        _ => {
            let n = 1usize << (order - 3);
            data[i * n..i * n + n].copy_from_slice(&value.to_be_bytes()[8 - n..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::storage::mem::MemStorage;

    #[test]
    fn entries_of_every_width_round_trip() {
        for order in 0..=6u32 {
            let mut data = vec![0u8; 512];
            let entries = (512 * 8) >> order;
            let max = u64::MAX >> (64 - (1u32 << order));
            for i in 0..entries {
                set_entry(&mut data, i, order, (i as u64 * 7) & max);
            }
            for i in 0..entries {
                assert_eq!(get_entry(&data, i, order), (i as u64 * 7) & max, "{order}");
            }
        }
        // QEMU's layout: sub-byte entries from the least significant bit; wider ones
        // big-endian.
        let mut data = vec![0u8; 8];
        set_entry(&mut data, 1, 0, 1);
        set_entry(&mut data, 1, 4, 0x0102);
        assert_eq!(&data[..4], &[0x02, 0x00, 0x01, 0x02]);
    }

    #[test]
    fn allocation_grows_the_table_and_counts_new_blocks() {
        // 512-byte clusters, 64-bit refcounts: a block covers 64 clusters, the table's
        // first cluster 64 blocks.
        let file = MemStorage::new(vec![0u8; 4 * 512]);
        let mut r = Refcounts::new(9, 6, vec![0; 64], 512, 4 * 512);
        for _ in 0..10_000 {
            r.alloc(&file).unwrap();
        }
        assert!(r.table.len() > 64);
        assert!(!r.moved_from.is_empty());
        // Every block and the new table count themselves.
        let table_at = r.table_offset >> 9;
        assert_eq!(r.get(&file, table_at).unwrap(), 1);
        for ti in 0..r.table.len() {
            if r.table[ti] != 0 {
                assert_eq!(r.get(&file, r.table[ti] >> 9).unwrap(), 1, "block {ti}");
            }
        }
        r.release(&file, 4 << 9).unwrap();
        assert_eq!(r.get(&file, 4).unwrap(), 0);
    }
}
