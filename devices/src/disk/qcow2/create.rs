//! New, empty qcow2 images.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{
    NewLayout, MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFTABLE_BYTES, MIN_CLUSTER_BITS,
};
use crate::disk::{ImageError, ImageFormat};

/// Creates an empty qcow2 v3 image at `path` (which must not exist): `virtual_size`
/// bytes (a multiple of 512), clusters of `1 << cluster_bits` bytes (9..=21; 16 is
/// QEMU's default), 16-bit refcounts, and optionally a backing file named as given
/// (relative names are resolved against `path`'s folder when the image is opened) with
/// its format recorded. The file and its folder are synced before this returns.
pub fn create(
    path: &Path,
    virtual_size: u64,
    cluster_bits: u32,
    backing: Option<(&str, ImageFormat)>,
) -> Result<(), ImageError> {
    let bad = |reason: String| ImageError::BadCreate {
        path: path.to_path_buf(),
        reason,
    };
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(bad(format!(
            "cluster_bits {cluster_bits} is outside 9..=21"
        )));
    }
    if virtual_size == 0 || !virtual_size.is_multiple_of(512) {
        return Err(bad(format!(
            "the virtual size {virtual_size} is not a positive multiple of 512"
        )));
    }
    let cs = 1u64 << cluster_bits;
    let layout = NewLayout::new(virtual_size, cluster_bits);
    if layout.l1_entries * 8 > MAX_L1_BYTES || layout.reftable_clusters * cs > MAX_REFTABLE_BYTES {
        return Err(bad(format!(
            "the virtual size {virtual_size} is too large for {cs}-byte clusters"
        )));
    }
    let backing = backing.map(|(name, format)| (name, format.name()));
    let header = layout
        .header(virtual_size, cluster_bits, backing)
        .filter(|_| backing.is_none_or(|(name, _)| name.len() <= 1023))
        .ok_or_else(|| bad("the backing file name does not fit in the first cluster".into()))?;

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| ImageError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    write_layout(&file, &layout, &header, cs)
        .and_then(|()| sync_folder(path))
        .map_err(|source| {
            // Our file, half written: nobody may mistake it for an image.
            let _ = std::fs::remove_file(path);
            ImageError::Create {
                path: path.to_path_buf(),
                source,
            }
        })
}

fn write_layout(file: &File, layout: &NewLayout, header: &[u8], cs: u64) -> io::Result<()> {
    file.set_len(layout.clusters * cs)?;
    file.write_all_at(header, 0)?;
    let table: Vec<u8> = (0..layout.refblocks)
        .flat_map(|i| (layout.refblocks_offset + i * cs).to_be_bytes())
        .collect();
    file.write_all_at(&table, layout.reftable_offset)?;
    // Every metadata cluster has refcount 1 (16-bit big-endian entries).
    let blocks: Vec<u8> = (0..layout.clusters).flat_map(|_| [0u8, 1]).collect();
    file.write_all_at(&blocks, layout.refblocks_offset)?;
    file.sync_all()
}

fn sync_folder(path: &Path) -> io::Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(folder)?.sync_all()
}
