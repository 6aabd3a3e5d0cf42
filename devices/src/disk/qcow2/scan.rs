//! The open-time check of every table the active L1 reaches: pointers aligned and inside
//! the file, no two metadata clusters sharing a place, no data cluster on metadata, no
//! compressed cluster. After it, a request can only fail on an I/O error.

use std::path::Path;

use super::header::Header;
use super::tables::{decode_l1, decode_table, Cluster, OFFSET_MASK};
use crate::disk::storage::Storage;
use crate::disk::ImageError;

pub(crate) struct Scan {
    /// Data clusters (storage that holds guest data, zero clusters excluded).
    pub allocated: u64,
    /// The first L2 tables read, to warm the cache: (L1 index, entries).
    pub tables: Vec<(usize, Box<[u64]>)>,
}

/// Checks the tables of an image whose header passed `Header::read`.
pub(crate) fn scan(
    file: &dyn Storage,
    path: &Path,
    h: &Header,
    l1: &[u64],
    reftable: &[u64],
    file_len: u64,
    keep: usize,
) -> Result<Scan, ImageError> {
    let cs = 1u64 << h.cluster_bits;
    let mask = cs - 1;
    let corrupt = |reason: String| ImageError::corrupt(path, reason);
    let check = |offset: u64, what: &str| {
        if offset & mask != 0 {
            Err(corrupt(format!("its {what} at {offset:#x} is unaligned")))
        } else if offset.saturating_add(cs) > file_len {
            Err(corrupt(format!(
                "its {what} at {offset:#x} lies past the end of the file"
            )))
        } else {
            Ok(())
        }
    };

    // Every metadata cluster, by cluster index.
    let mut metadata: Vec<(u64, &str)> = vec![(0, "header")];
    let span = |offset: u64, bytes: u64| (offset / cs)..(offset + bytes).div_ceil(cs);
    metadata.extend(span(h.l1_table_offset, u64::from(h.l1_size) * 8).map(|c| (c, "L1 table")));
    let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
    metadata.extend(span(h.refcount_table_offset, rt_bytes).map(|c| (c, "refcount table")));
    for &entry in reftable {
        if entry & !OFFSET_MASK != 0 {
            return Err(corrupt(format!(
                "its refcount table entry {entry:#x} is invalid"
            )));
        }
        if entry != 0 {
            check(entry, "refcount block")?;
            metadata.push((entry / cs, "refcount block"));
        }
    }
    let mut l2_tables = Vec::new();
    for (i, &entry) in l1.iter().enumerate() {
        let table = decode_l1(entry, mask)
            .map_err(|e| corrupt(format!("its L1 entry {i} is invalid: {e}")))?;
        if let Some(offset) = table {
            check(offset, "L2 table")?;
            metadata.push((offset / cs, "L2 table"));
            l2_tables.push((i, offset));
        }
    }
    metadata.sort_unstable();
    if let Some(w) = metadata.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(corrupt(format!(
            "its {} and its {} overlap at {:#x}",
            w[0].1,
            w[1].1,
            w[0].0 * cs
        )));
    }

    let mut result = Scan {
        allocated: 0,
        tables: Vec::new(),
    };
    let mut bytes = vec![0u8; cs as usize];
    for (l1i, offset) in l2_tables {
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| ImageError::io(path, e))?;
        let entries = decode_table(&bytes);
        for (j, &raw) in entries.iter().enumerate() {
            let cluster =
                match Cluster::decode(raw, mask, h.version == 3) {
                    Ok(c) => c,
                    Err("compressed") => return Err(ImageError::unsupported(
                        path,
                        "it has compressed clusters; expand them with `qemu-img convert -O qcow2`",
                    )),
                    Err(e) => {
                        return Err(corrupt(format!(
                            "entry {j} of its L2 table at {offset:#x} is invalid: {e}"
                        )))
                    }
                };
            let Some(data) = cluster.storage() else {
                continue;
            };
            if data >= file_len {
                return Err(corrupt(format!(
                    "its data cluster at {data:#x} lies past the end of the file"
                )));
            }
            if let Ok(i) = metadata.binary_search_by_key(&(data / cs), |m| m.0) {
                return Err(corrupt(format!(
                    "its data cluster at {data:#x} overlaps its {}",
                    metadata[i].1
                )));
            }
            if matches!(cluster, Cluster::Data { .. }) {
                result.allocated += 1;
            }
        }
        if result.tables.len() < keep {
            result.tables.push((l1i, entries));
        }
    }
    Ok(result)
}
