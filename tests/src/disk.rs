//! Disk image files with a known content, and host-side views of them.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const SECTOR: u64 = 512;

/// The byte at `offset` of a pattern disk: differs between sectors and within one,
/// and is never zero (so a zeroed range is easy to tell apart).
pub fn pattern_byte(offset: u64) -> u8 {
    let sector = offset / SECTOR;
    let v = (sector.wrapping_mul(131) + (offset % SECTOR).wrapping_mul(7)) % 255;
    u8::try_from(v).expect("below 255") + 1
}

/// `len` bytes of the pattern starting at `offset`.
pub fn pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len).map(pattern_byte).collect()
}

/// Writes `dir/name` holding `sectors` sectors of the pattern (fully allocated).
pub fn pattern_disk(dir: &Path, name: &str, sectors: u64) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, pattern(0, sectors * SECTOR)).expect("write disk image");
    path
}

/// Reads `len` bytes at `offset` of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).expect("open disk image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).expect("read disk image");
    buf
}

/// Bytes the file occupies on the host file system (st_blocks * 512).
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("stat disk image").blocks() * 512
}

/// 32-bit FNV-1a, as computed by the guests for sector and initrd checksums.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The 512 bytes the blk guest writes to sector 2: "vmm-test-write-" repeated.
pub fn write_pattern() -> Vec<u8> {
    b"vmm-test-write-"
        .iter()
        .copied()
        .cycle()
        .take(512)
        .collect()
}

/// A loop device over an image file, detached on drop (`losetup`, needs root).
pub struct LoopDevice(PathBuf);

impl LoopDevice {
    pub fn attach(image: &Path) -> Self {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("losetup runs");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("--detach")
            .arg(&self.0)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn pattern_is_nonzero_and_differs_between_sectors() {
        let p = pattern(0, 4 * SECTOR);
        assert!(p.iter().all(|&b| b != 0));
        assert_ne!(p[..512], p[512..1024]);
        assert_eq!(pattern(512, 16), p[512..528]);
    }

    #[test]
    fn pattern_disk_has_the_pattern_and_is_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = pattern_disk(dir.path(), "d.img", 64);
        assert_eq!(fs::metadata(&path).unwrap().len(), 64 * SECTOR);
        assert_eq!(read_at(&path, 1000, 24), pattern(1000, 24));
        assert!(allocated_bytes(&path) >= 64 * SECTOR);
    }

    #[test]
    fn write_pattern_starts_with_the_marker() {
        let w = write_pattern();
        assert_eq!(w.len(), 512);
        assert!(w.starts_with(b"vmm-test-write-vmm"));
    }
}
