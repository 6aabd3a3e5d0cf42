//! A raw image file: the disk's bytes at the same offsets in a file or block device.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::VolatileSlice;

use super::storage::{fallocate, pread_volatile, pwrite_volatile, unsupported, write_zero_bytes};
use super::{DiskEngine, Extent, ExtentKind};

/// A raw image file, accessed with positional I/O straight into guest memory.
pub struct RawFile {
    file: File,
    size: u64,
}

impl RawFile {
    pub fn new(file: File) -> io::Result<Self> {
        // Seeking to the end sizes block devices too (their st_size is 0); positional
        // I/O never uses the file offset.
        let size = (&file).seek(SeekFrom::End(0))?;
        Ok(Self { file, size })
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(
            &self.file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes the range and keeps it allocated.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(
            &self.file,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// lseek with SEEK_DATA or SEEK_HOLE. It moves the file offset, which positional I/O
    /// never uses.
    fn seek(&self, offset: libc::off_t, whence: i32) -> io::Result<u64> {
        // SAFETY: lseek only takes integers; the fd is owned by `self.file`.
        let ret = unsafe { libc::lseek(self.file.as_raw_fd(), offset, whence) };
        u64::try_from(ret).map_err(|_| io::Error::last_os_error())
    }
}

impl DiskEngine for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        if pread_volatile(self.file.as_raw_fd(), buf, offset)? < buf.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }

    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        pwrite_volatile(self.file.as_raw_fd(), buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.punch_hole(offset, len) {
            // Discard is advisory: a filesystem without hole punching keeps the data.
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Punches a hole when allowed to unmap, else zeroes the range in place; writes the
    /// zeroes only where the filesystem can do neither (the request parser bounds that).
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let refused = |r: &io::Result<()>| matches!(r, Err(e) if unsupported(e));
        let mut result = if unmap {
            self.punch_hole(offset, len)
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        if refused(&result) {
            result = self.zero_range(offset, len);
        }
        if refused(&result) {
            result = write_zero_bytes(&self.file, offset, len);
        }
        result
    }

    /// From SEEK_DATA and SEEK_HOLE; a file or device that cannot tell is all data.
    fn extent(&self, offset: u64) -> io::Result<Extent> {
        let remaining = self.size.saturating_sub(offset);
        let data = |len: u64| Extent {
            kind: ExtentKind::Data,
            len,
        };
        let Ok(start) = libc::off_t::try_from(offset) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        match self.seek(start, libc::SEEK_DATA) {
            // ENXIO: no data at or after `offset`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(Extent {
                kind: ExtentKind::Zero,
                len: remaining,
            }),
            Err(_) => Ok(data(remaining)),
            Ok(next_data) if next_data > offset => Ok(Extent {
                kind: ExtentKind::Zero,
                len: (next_data - offset).min(remaining),
            }),
            Ok(_) => match self.seek(start, libc::SEEK_HOLE) {
                Ok(hole) if hole > offset => Ok(data((hole - offset).min(remaining))),
                _ => Ok(data(remaining)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn image(bytes: &[u8]) -> (tempfile::NamedTempFile, RawFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        let raw = RawFile::new(f.reopen().unwrap()).unwrap();
        (f, raw)
    }

    #[test]
    fn reads_and_writes_go_straight_to_guest_memory() {
        let (f, raw) = image(&[7u8; 8192]);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let slice = mem.get_slice(GuestAddress(0x1000), 4096).unwrap();
        raw.read_at(&slice, 4096).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x1ff8)).unwrap(),
            0x0707070707070707
        );

        mem.write_slice(&[1u8; 512], GuestAddress(0x3000)).unwrap();
        let slice = mem.get_slice(GuestAddress(0x3000), 512).unwrap();
        raw.write_at(&slice, 512).unwrap();
        raw.flush().unwrap();
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[512..1024], &[1u8; 512]);
        assert_eq!(on_disk[1024], 7);
    }

    #[test]
    fn reading_past_the_end_fails() {
        let (_f, raw) = image(&[0u8; 512]);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let slice = mem.get_slice(GuestAddress(0), 1024).unwrap();
        assert!(raw.read_at(&slice, 0).is_err());
    }

    #[test]
    fn discard_punches_holes() {
        let (f, raw) = image(&vec![0xaa; 1 << 20]);
        let before = std::fs::metadata(f.path()).unwrap().blocks();
        raw.discard(0, 512 * 1024).unwrap();
        raw.write_zeroes(512 * 1024, 4096, true).unwrap();
        let after = std::fs::metadata(f.path()).unwrap();
        assert_eq!(after.len(), 1 << 20, "size is kept");
        assert!(after.blocks() < before, "{} !< {before}", after.blocks());
        let data = std::fs::read(f.path()).unwrap();
        assert!(data[..512 * 1024 + 4096].iter().all(|&b| b == 0));
        assert_eq!(data[512 * 1024 + 4096], 0xaa);
    }

    #[test]
    fn extents_follow_the_files_holes() {
        let (_f, raw) = image(&vec![0xaa; 1 << 20]);
        raw.discard(256 * 1024, 256 * 1024).unwrap();
        let data = |len| Extent {
            kind: ExtentKind::Data,
            len,
        };
        assert_eq!(raw.extent(0).unwrap(), data(256 * 1024));
        assert_eq!(raw.extent(4096).unwrap(), data(252 * 1024));
        assert_eq!(
            raw.extent(256 * 1024).unwrap(),
            Extent {
                kind: ExtentKind::Zero,
                len: 256 * 1024
            }
        );
        assert_eq!(raw.extent(512 * 1024).unwrap(), data(512 * 1024));
    }

    #[test]
    fn write_zeroes_without_unmap_keeps_the_range_allocated() {
        let (f, raw) = image(&vec![0xaa; 1 << 20]);
        let before = std::fs::metadata(f.path()).unwrap().blocks();
        raw.write_zeroes(0, 512 * 1024, false).unwrap();
        assert_eq!(std::fs::metadata(f.path()).unwrap().blocks(), before);
        let data = std::fs::read(f.path()).unwrap();
        assert!(data[..512 * 1024].iter().all(|&b| b == 0));
        assert_eq!(data[512 * 1024], 0xaa);
    }
}
