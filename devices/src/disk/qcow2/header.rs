//! The qcow2 header (QEMU's docs/interop/qcow2.txt): parsing with every check an open
//! needs before it trusts a field, the header extensions, and a new image's header.

use std::path::Path;

use super::super::storage::Storage;
use crate::disk::ImageError;

pub(crate) const MAGIC: [u8; 4] = crate::disk::QCOW2_MAGIC;
const V2_HEADER_LEN: u32 = 72;
const V3_HEADER_LEN: u32 = 104;
/// Our new images also carry the compression type byte, padded to 8.
const NEW_HEADER_LEN: u32 = 112;
pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limits: larger tables are refused by QEMU too.
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_BACKING_NAME: u32 = 1023;
/// Virtual sizes above this overflow the L2 arithmetic QEMU does, too.
const MAX_VIRTUAL_SIZE: u64 = 1 << 62;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Where `refcount_table_offset` (u64) and `refcount_table_clusters` (u32) sit, next to
/// each other: one 12-byte write inside the first sector moves the table atomically.
pub(crate) const REFTABLE_FIELDS_AT: u64 = 48;
pub(crate) const AUTOCLEAR_AT: u64 = 88;

/// The fields an open uses, all checked against the file.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub autoclear: u64,
    pub refcount_order: u32,
    /// The backing file's name as written in the image.
    pub backing: Option<String>,
    /// From the backing format extension ("raw", "qcow2", ...).
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(v)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// L1 entries a virtual size needs with this cluster size.
pub(crate) fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
    let clusters = size.div_ceil(1 << cluster_bits);
    clusters.div_ceil(1 << (cluster_bits - 3))
}

impl Header {
    /// Reads and checks the header of the image in `file`.
    pub(crate) fn read(file: &dyn Storage, path: &Path) -> Result<Self, ImageError> {
        let file_len = file.len().map_err(|e| ImageError::io(path, e))?;
        let mut fixed = vec![0u8; u64::from(V3_HEADER_LEN).min(file_len) as usize];
        file.read_exact_at(&mut fixed, 0)
            .map_err(|e| ImageError::io(path, e))?;
        if fixed.len() < V2_HEADER_LEN as usize {
            return Err(ImageError::corrupt(path, "its qcow2 header is truncated"));
        }
        if fixed[..4] != MAGIC {
            return Err(ImageError::corrupt(path, "it is not a qcow2 image"));
        }
        let cluster_bits = be32(&fixed, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(ImageError::corrupt(
                path,
                format!("its cluster_bits {cluster_bits} is outside 9..=21"),
            ));
        }
        let mut cluster = vec![0u8; (1u64 << cluster_bits).min(file_len) as usize];
        file.read_exact_at(&mut cluster, 0)
            .map_err(|e| ImageError::io(path, e))?;
        Self::parse(&cluster, file_len, path)
    }

    /// Parses the first cluster (or the whole file if shorter).
    fn parse(buf: &[u8], file_len: u64, path: &Path) -> Result<Self, ImageError> {
        let corrupt = |reason: String| ImageError::corrupt(path, reason);
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(ImageError::unsupported(
                path,
                format!("it is qcow2 version {version}; only versions 2 and 3 are supported"),
            ));
        }
        let cluster_bits = be32(buf, 20);
        let cluster_size = 1u64 << cluster_bits;
        let header_len = if version == 2 {
            V2_HEADER_LEN
        } else {
            if buf.len() < V3_HEADER_LEN as usize {
                return Err(corrupt("its qcow2 header is truncated".into()));
            }
            be32(buf, 100)
        };
        if version == 3
            && (header_len < V3_HEADER_LEN
                || !header_len.is_multiple_of(8)
                || u64::from(header_len) > cluster_size)
        {
            return Err(corrupt(format!(
                "its header length {header_len} is invalid"
            )));
        }
        if header_len as usize > buf.len() {
            return Err(corrupt("its qcow2 header is truncated".into()));
        }

        let mut h = Header {
            version,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            autoclear: 0,
            refcount_order: 4,
            backing: None,
            backing_format: None,
        };
        let crypt_method = be32(buf, 32);
        let (mut incompatible, mut compression_type) = (0, 0);
        if version == 3 {
            incompatible = be64(buf, 72);
            h.autoclear = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            if header_len > V3_HEADER_LEN {
                compression_type = buf[104];
            }
        }

        let extensions = Extensions::parse(buf, header_len, be64(buf, 8), path)?;
        if crypt_method != 0 {
            return Err(ImageError::unsupported(
                path,
                format!("it is encrypted (crypt_method {crypt_method}); decrypt it with `qemu-img convert`"),
            ));
        }
        check_features(incompatible, compression_type, &extensions, path)?;
        h.backing_format = extensions.backing_format;
        if h.refcount_order > 6 {
            return Err(corrupt(format!(
                "its refcount_order {} is above 6",
                h.refcount_order
            )));
        }
        h.check_tables(file_len, path)?;
        h.backing = read_backing_name(buf, path)?;
        Ok(h)
    }

    fn check_tables(&self, file_len: u64, path: &Path) -> Result<(), ImageError> {
        let corrupt = |reason: String| ImageError::corrupt(path, reason);
        let cluster_size = 1u64 << self.cluster_bits;
        let aligned = |off: u64| off.is_multiple_of(cluster_size);
        let inside = |off: u64, len: u64| off.checked_add(len).is_some_and(|end| end <= file_len);
        if self.size > MAX_VIRTUAL_SIZE {
            return Err(corrupt(format!(
                "its virtual size {} is too large",
                self.size
            )));
        }
        let needed = l1_entries_for(self.size, self.cluster_bits);
        if u64::from(self.l1_size) < needed {
            return Err(corrupt(format!(
                "its L1 table has {} entries but its virtual size {} needs {needed}",
                self.l1_size, self.size
            )));
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!(
                "its L1 table of {l1_bytes} bytes is too large"
            )));
        }
        if self.l1_size > 0
            && (self.l1_table_offset == 0
                || !aligned(self.l1_table_offset)
                || !inside(self.l1_table_offset, l1_bytes))
        {
            return Err(corrupt(format!(
                "its L1 table offset {:#x} is unaligned or past the end of the file",
                self.l1_table_offset
            )));
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cluster_size;
        if self.refcount_table_clusters == 0 || rt_bytes > MAX_REFTABLE_BYTES {
            return Err(corrupt(format!(
                "its refcount table size of {} clusters is invalid",
                self.refcount_table_clusters
            )));
        }
        if self.refcount_table_offset == 0
            || !aligned(self.refcount_table_offset)
            || !inside(self.refcount_table_offset, rt_bytes)
        {
            return Err(corrupt(format!(
                "its refcount table offset {:#x} is unaligned or past the end of the file",
                self.refcount_table_offset
            )));
        }
        Ok(())
    }
}

/// What the header extensions say (unknown ones are skipped, as the spec wants).
#[derive(Default)]
struct Extensions {
    backing_format: Option<String>,
    /// (type, bit, name) from the feature name table.
    feature_names: Vec<(u8, u8, String)>,
    data_file: bool,
}

impl Extensions {
    fn parse(
        buf: &[u8],
        header_len: u32,
        backing_offset: u64,
        path: &Path,
    ) -> Result<Self, ImageError> {
        let truncated = || ImageError::corrupt(path, "its header extensions are truncated");
        let mut ext = Extensions::default();
        // Extensions end where the backing name starts, or with the first cluster.
        let end = match usize::try_from(backing_offset) {
            Ok(b) if b > header_len as usize => b.min(buf.len()),
            _ => buf.len(),
        };
        let mut at = header_len as usize;
        loop {
            if at >= end {
                return Ok(ext);
            }
            if at + 8 > end {
                return Err(truncated());
            }
            let kind = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            let data_at = at + 8;
            if kind == EXT_END {
                return Ok(ext);
            }
            let data = buf
                .get(data_at..data_at.saturating_add(len))
                .filter(|_| data_at + len <= end)
                .ok_or_else(truncated)?;
            match kind {
                EXT_BACKING_FORMAT => {
                    let name = std::str::from_utf8(data).map_err(|_| {
                        ImageError::corrupt(path, "its backing format name is not UTF-8")
                    })?;
                    ext.backing_format = Some(name.trim_end_matches('\0').to_string());
                }
                EXT_FEATURE_TABLE => {
                    for entry in data.chunks_exact(48) {
                        let name = String::from_utf8_lossy(&entry[2..]);
                        let name = name.trim_end_matches('\0').to_string();
                        ext.feature_names.push((entry[0], entry[1], name));
                    }
                }
                EXT_DATA_FILE => ext.data_file = true,
                _ => {}
            }
            at = data_at + len.div_ceil(8) * 8;
        }
    }

    fn feature_name(&self, bit: u8) -> String {
        match self
            .feature_names
            .iter()
            .find(|(t, b, _)| *t == 0 && *b == bit)
        {
            Some((_, _, name)) => format!("'{name}' (bit {bit})"),
            None => format!("bit {bit}"),
        }
    }
}

/// Refuses every incompatible feature, each with what to do about it.
fn check_features(
    incompatible: u64,
    compression_type: u8,
    ext: &Extensions,
    path: &Path,
) -> Result<(), ImageError> {
    let refuse = |reason: String| Err(ImageError::unsupported(path, reason));
    let shown = path.display();
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(ImageError::corrupt(
            path,
            format!("QEMU marked it corrupt; inspect and repair it with `qemu-img check -r all {shown}`"),
        ));
    }
    if incompatible & INCOMPAT_DIRTY != 0 {
        return refuse(format!(
            "it was not closed cleanly and its refcounts are stale (lazy refcounts); repair it with `qemu-img check -r all {shown}`"
        ));
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 || ext.data_file {
        return refuse("it keeps its data in an external data file".into());
    }
    if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
        return refuse("it uses extended L2 entries (subclusters)".into());
    }
    if incompatible & INCOMPAT_COMPRESSION != 0 || compression_type != 0 {
        let name = match compression_type {
            1 => "zstd".to_string(),
            t => format!("type {t}"),
        };
        return refuse(format!("it uses {name} compression; only zlib images without compressed clusters are supported"));
    }
    let known = INCOMPAT_DIRTY
        | INCOMPAT_CORRUPT
        | INCOMPAT_DATA_FILE
        | INCOMPAT_COMPRESSION
        | INCOMPAT_EXTENDED_L2;
    let unknown = incompatible & !known;
    if unknown != 0 {
        let bit = unknown.trailing_zeros() as u8;
        return refuse(format!(
            "it uses the unknown incompatible feature {}",
            ext.feature_name(bit)
        ));
    }
    Ok(())
}

fn read_backing_name(buf: &[u8], path: &Path) -> Result<Option<String>, ImageError> {
    let offset = be64(buf, 8);
    let len = be32(buf, 16);
    if offset == 0 {
        return Ok(None);
    }
    if len == 0 || len > MAX_BACKING_NAME {
        return Err(ImageError::corrupt(
            path,
            format!("its backing file name length {len} is invalid"),
        ));
    }
    let name = usize::try_from(offset)
        .ok()
        .and_then(|at| buf.get(at..at.checked_add(len as usize)?))
        .ok_or_else(|| {
            ImageError::corrupt(path, "its backing file name lies outside the first cluster")
        })?;
    let name = std::str::from_utf8(name)
        .map_err(|_| ImageError::corrupt(path, "its backing file name is not UTF-8"))?;
    Ok(Some(name.to_string()))
}

/// The layout of a new, empty image: header cluster, L1 table, refcount table, refcount
/// blocks for those clusters, in this order.
pub(crate) struct NewLayout {
    pub l1_entries: u64,
    pub l1_offset: u64,
    pub reftable_offset: u64,
    pub reftable_clusters: u64,
    pub refblocks_offset: u64,
    pub refblocks: u64,
    pub clusters: u64,
}

impl NewLayout {
    /// Refcount blocks hold 16-bit entries.
    pub(crate) fn new(size: u64, cluster_bits: u32) -> Self {
        let cs = 1u64 << cluster_bits;
        let l1_entries = l1_entries_for(size, cluster_bits);
        let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
        let per_block = cs / 2;
        let (mut reftable_clusters, mut refblocks) = (1, 1);
        // The metadata must count itself: grow until the blocks cover every cluster.
        loop {
            let clusters = 1 + l1_clusters + reftable_clusters + refblocks;
            let blocks = clusters.div_ceil(per_block);
            let table = (blocks * 8).div_ceil(cs);
            if blocks == refblocks && table == reftable_clusters {
                return Self {
                    l1_entries,
                    l1_offset: cs,
                    reftable_offset: (1 + l1_clusters) * cs,
                    reftable_clusters,
                    refblocks_offset: (1 + l1_clusters + reftable_clusters) * cs,
                    refblocks,
                    clusters,
                };
            }
            (refblocks, reftable_clusters) = (blocks.max(refblocks), table.max(reftable_clusters));
        }
    }

    /// The header cluster: v3, 16-bit refcounts, no features, zlib; the backing format
    /// extension and the backing name follow when there is a backing file.
    pub(crate) fn header(
        &self,
        size: u64,
        cluster_bits: u32,
        backing: Option<(&str, &str)>,
    ) -> Option<Vec<u8>> {
        let cs = 1usize << cluster_bits;
        let mut h = vec![0u8; NEW_HEADER_LEN as usize];
        let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &MAGIC);
        put(4, &3u32.to_be_bytes());
        put(20, &cluster_bits.to_be_bytes());
        put(24, &size.to_be_bytes());
        put(36, &(self.l1_entries as u32).to_be_bytes());
        put(40, &self.l1_offset.to_be_bytes());
        put(48, &self.reftable_offset.to_be_bytes());
        put(56, &(self.reftable_clusters as u32).to_be_bytes());
        put(96, &4u32.to_be_bytes());
        put(100, &NEW_HEADER_LEN.to_be_bytes());
        if let Some((name, format)) = backing {
            h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            h.extend_from_slice(&(format.len() as u32).to_be_bytes());
            h.extend_from_slice(format.as_bytes());
            h.resize(h.len().div_ceil(8) * 8, 0);
            h.extend_from_slice(&[0; 8]); // end of extensions
            let at = h.len() as u64;
            h[8..16].copy_from_slice(&at.to_be_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            h.extend_from_slice(name.as_bytes());
        } else {
            h.extend_from_slice(&[0; 8]);
        }
        (h.len() <= cs).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_layout_counts_its_own_metadata() {
        for (size, bits) in [(1 << 20, 16), (1 << 30, 9), (128 << 30, 9), (1 << 40, 21)] {
            let l = NewLayout::new(size, bits);
            let cs = 1u64 << bits;
            assert!(l.refblocks * (cs / 2) >= l.clusters, "{size} {bits}");
            assert!(l.reftable_clusters * cs / 8 >= l.refblocks);
            assert_eq!(l.refblocks_offset + l.refblocks * cs, l.clusters * cs);
        }
    }

    #[test]
    fn backing_names_that_do_not_fit_the_first_cluster_are_refused() {
        let l = NewLayout::new(1 << 20, 9);
        assert!(l
            .header(1 << 20, 9, Some((&"a".repeat(300), "raw")))
            .is_some());
        assert!(l
            .header(1 << 20, 9, Some((&"a".repeat(400), "raw")))
            .is_none());
    }
}
