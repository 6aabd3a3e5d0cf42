//! L1 and L2 entries (what a guest cluster maps to) and the cache of L2 tables.

/// Bits 9..=55: a host offset, which must also be cluster aligned.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount is exactly 1: the cluster may be written in place.
pub(crate) const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// v3: the cluster reads as zeroes.
const ZERO: u64 = 1;
const L1_RESERVED: u64 = !(OFFSET_MASK | COPIED);
const L2_RESERVED: u64 = !(OFFSET_MASK | COPIED | COMPRESSED | ZERO);

/// What an L2 entry says about one guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cluster {
    /// Not in this file: the backing chain decides (zeroes without one).
    Unallocated,
    /// Reads as zeroes, no storage.
    Zero,
    /// Reads as zeroes; the storage at `offset` stays allocated for a later write.
    ZeroAlloc {
        offset: u64,
        copied: bool,
    },
    Data {
        offset: u64,
        copied: bool,
    },
}

impl Cluster {
    pub(crate) fn decode(raw: u64, cluster_mask: u64, v3: bool) -> Result<Self, &'static str> {
        if raw & COMPRESSED != 0 {
            return Err("compressed");
        }
        if raw & L2_RESERVED != 0 || (!v3 && raw & ZERO != 0) {
            return Err("reserved bits are set");
        }
        let offset = raw & OFFSET_MASK;
        if offset & cluster_mask != 0 {
            return Err("its cluster offset is unaligned");
        }
        let copied = raw & COPIED != 0;
        Ok(match (raw & ZERO != 0, offset) {
            (false, 0) => Self::Unallocated,
            (false, offset) => Self::Data { offset, copied },
            (true, 0) => Self::Zero,
            (true, offset) => Self::ZeroAlloc { offset, copied },
        })
    }

    pub(crate) fn encode(self) -> u64 {
        let copied = |c: bool| if c { COPIED } else { 0 };
        match self {
            Self::Unallocated => 0,
            Self::Zero => ZERO,
            Self::ZeroAlloc { offset, copied: c } => offset | ZERO | copied(c),
            Self::Data { offset, copied: c } => offset | copied(c),
        }
    }

    /// The host cluster this entry holds on to, if any.
    pub(crate) fn storage(self) -> Option<u64> {
        match self {
            Self::ZeroAlloc { offset, .. } | Self::Data { offset, .. } => Some(offset),
            Self::Unallocated | Self::Zero => None,
        }
    }
}

/// The L2 table an L1 entry points to, if any.
pub(crate) fn decode_l1(raw: u64, cluster_mask: u64) -> Result<Option<u64>, &'static str> {
    if raw & L1_RESERVED != 0 {
        return Err("reserved bits are set");
    }
    let offset = raw & OFFSET_MASK;
    if offset & cluster_mask != 0 {
        return Err("its table offset is unaligned");
    }
    Ok((offset != 0).then_some(offset))
}

/// Big-endian table bytes to entries.
pub(crate) fn decode_table(bytes: &[u8]) -> Box<[u64]> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

pub(crate) fn encode_table(entries: &[u64], out: &mut Vec<u8>) {
    out.clear();
    out.extend(entries.iter().flat_map(|e| e.to_be_bytes()));
}

const NO_SLOT: u32 = u32::MAX;

/// A cached L2 table.
pub(crate) struct Slot {
    pub l1_index: usize,
    pub entries: Box<[u64]>,
    /// Changed since it was last written.
    pub dirty: bool,
    referenced: bool,
}

/// L2 tables by L1 index, evicted with CLOCK. A dirty table is never evicted: the caller
/// writes back the metadata first (see `Meta::make_room`).
pub(crate) struct L2Cache {
    /// Slot of each L1 index: one array read on the hot path, no hashing.
    slot_of: Vec<u32>,
    slots: Vec<Slot>,
    capacity: usize,
    hand: usize,
}

impl L2Cache {
    pub(crate) fn new(l1_len: usize, capacity: usize) -> Self {
        Self {
            slot_of: vec![NO_SLOT; l1_len],
            slots: Vec::new(),
            capacity: capacity.max(1),
            hand: 0,
        }
    }

    fn index(&self, l1_index: usize) -> Option<usize> {
        match self.slot_of.get(l1_index) {
            Some(&s) if s != NO_SLOT => Some(s as usize),
            _ => None,
        }
    }

    pub(crate) fn get(&mut self, l1_index: usize) -> Option<&[u64]> {
        let i = self.index(l1_index)?;
        let slot = &mut self.slots[i];
        slot.referenced = true;
        Some(&slot.entries)
    }

    /// The table, marked dirty.
    pub(crate) fn get_mut(&mut self, l1_index: usize) -> Option<&mut [u64]> {
        let i = self.index(l1_index)?;
        let slot = &mut self.slots[i];
        slot.referenced = true;
        slot.dirty = true;
        Some(&mut slot.entries)
    }

    /// Whether `insert` has a free slot or a clean one to evict.
    pub(crate) fn has_room(&mut self) -> bool {
        self.slots.len() < self.capacity || self.victim().is_some()
    }

    fn victim(&mut self) -> Option<usize> {
        let n = self.slots.len();
        for _ in 0..2 * n {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            let slot = &mut self.slots[i];
            if slot.dirty {
                continue;
            }
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            return Some(i);
        }
        None
    }

    /// Caches a table; the caller made room (`has_room`), else the cache grows.
    pub(crate) fn insert(&mut self, l1_index: usize, entries: Box<[u64]>, dirty: bool) {
        let slot = Slot {
            l1_index,
            entries,
            dirty,
            referenced: true,
        };
        let victim = if self.slots.len() < self.capacity {
            None
        } else {
            self.victim()
        };
        let at = match victim {
            Some(i) => {
                self.slot_of[self.slots[i].l1_index] = NO_SLOT;
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.slot_of[l1_index] = at as u32;
    }

    pub(crate) fn dirty_slots(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut().filter(|s| s.dirty)
    }

    pub(crate) fn has_dirty(&self) -> bool {
        self.slots.iter().any(|s| s.dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let mask = 0xffff;
        for c in [
            Cluster::Unallocated,
            Cluster::Zero,
            Cluster::ZeroAlloc {
                offset: 0x30000,
                copied: true,
            },
            Cluster::Data {
                offset: 0x7_0000,
                copied: false,
            },
        ] {
            assert_eq!(Cluster::decode(c.encode(), mask, true), Ok(c));
        }
        assert!(Cluster::decode(1 << 62, mask, true).is_err());
        assert!(Cluster::decode(0x10200, mask, true).is_err(), "unaligned");
        assert!(
            Cluster::decode(1, mask, false).is_err(),
            "no zero flag in v2"
        );
        assert!(Cluster::decode(1 << 57, mask, true).is_err(), "reserved");
        assert_eq!(decode_l1(0x20000 | COPIED, mask), Ok(Some(0x20000)));
        assert!(decode_l1(0x20001, mask).is_err());
    }

    #[test]
    fn the_cache_evicts_clean_tables_only() {
        let mut cache = L2Cache::new(8, 2);
        cache.insert(0, vec![1].into(), true);
        cache.insert(1, vec![2].into(), false);
        assert!(cache.has_room(), "table 1 is clean");
        cache.insert(2, vec![3].into(), false);
        assert!(cache.get(1).is_none());
        assert_eq!(cache.get(0), Some(&[1u64][..]));
        cache.get_mut(2).unwrap()[0] = 4;
        assert!(!cache.has_room(), "both dirty");
        for slot in cache.dirty_slots() {
            slot.dirty = false;
        }
        assert!(cache.has_room());
    }
}
