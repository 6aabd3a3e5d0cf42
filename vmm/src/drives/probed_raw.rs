//! A raw image whose format was detected, not given: the guest must not make it look like
//! another format. A guest that wrote the qcow2 magic and a backing file name into the
//! first sector would, at the next start, have the host open that file for it (QEMU
//! restricts its probed raw images the same way).

use std::io;

use devices::disk::{DiskEngine, Extent, RawFile, QCOW2_MAGIC};
use vm_memory::VolatileSlice;

pub struct ProbedRaw(RawFile);

impl ProbedRaw {
    pub fn new(raw: RawFile) -> Self {
        Self(raw)
    }
}

impl DiskEngine for ProbedRaw {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }

    /// Refuses (EPERM) a write that would leave a format's magic at the start of the disk,
    /// also one that writes only part of it (a request's first segment may be a byte).
    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        if offset < QCOW2_MAGIC.len() as u64 && !buf.is_empty() {
            // The first bytes as they would be after this write.
            let mut head = [0u8; 4];
            self.0.read_at(&VolatileSlice::from(&mut head[..]), 0)?;
            let start = offset as usize;
            let n = buf.len().min(head.len() - start);
            buf.subslice(0, n)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
                .copy_to(&mut head[start..start + n]);
            if head == QCOW2_MAGIC {
                log::warn!("refused a guest write of the qcow2 magic to sector 0 of a raw disk");
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        self.0.write_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.0.write_zeroes(offset, len, unmap)
    }

    fn extent(&self, offset: u64) -> io::Result<Extent> {
        self.0.extent(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn the_guest_cannot_write_a_qcow2_header_into_a_probed_raw_disk() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4096).unwrap();
        let disk = ProbedRaw::new(RawFile::new(f.reopen().unwrap()).unwrap());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_slice(&QCOW2_MAGIC, GuestAddress(0)).unwrap();
        let slice = mem.get_slice(GuestAddress(0), 512).unwrap();
        let e = disk.write_at(&slice, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // Elsewhere, and anything else at sector 0, is written.
        disk.write_at(&slice, 512).unwrap();
        mem.write_slice(b"QFI\0", GuestAddress(0)).unwrap();
        disk.write_at(&mem.get_slice(GuestAddress(0), 512).unwrap(), 0)
            .unwrap();
        let bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(&bytes[..4], b"QFI\0");
        assert_eq!(&bytes[512..516], &QCOW2_MAGIC);
        // The magic's last byte alone, on top of "QFI": refused too.
        mem.write_slice(&[0xfb], GuestAddress(0x100)).unwrap();
        let last = mem.get_slice(GuestAddress(0x100), 1).unwrap();
        let e = disk.write_at(&last, 3).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert_eq!(&std::fs::read(f.path()).unwrap()[..4], b"QFI\0");
    }
}
