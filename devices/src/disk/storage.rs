//! The file underneath an image format, behind a small trait (positional read and write,
//! zeroing, sync, length) so tests can record every write and replay a crash after any
//! of them. Also the positional syscalls and the image lock shared with `RawFile`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

use vm_memory::VolatileSlice;

/// Positional I/O on an image file. Every method takes `&self`: data I/O runs outside
/// the format's metadata lock.
pub(crate) trait Storage: Send + Sync {
    /// Fills `buf` from `offset`; the end of the file there is an error (metadata).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Reads into guest memory; bytes past the end of the file read as zeroes (QEMU
    /// may leave a data cluster cut short by the file's end).
    fn read_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()>;
    fn write_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()>;
    /// Makes the range read as zeroes, extending the file if it ends before.
    fn write_zeroes_at(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Gives back the storage of a range nothing refers to any more (advisory).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Puts every completed write on stable storage.
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
}

/// A real file.
pub(crate) struct FileStorage(pub File);

impl Storage for FileStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn read_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        let done = pread_volatile(self.0.as_raw_fd(), buf, offset)?;
        if done < buf.len() {
            fill_zeroes(&buf.offset(done).map_err(to_io)?);
        }
        Ok(())
    }

    fn write_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
        pwrite_volatile(self.0.as_raw_fd(), buf, offset)
    }

    fn write_zeroes_at(&self, offset: u64, len: u64) -> io::Result<()> {
        match fallocate(&self.0, libc::FALLOC_FL_ZERO_RANGE, offset, len) {
            Err(e) if unsupported(&e) => write_zero_bytes(&self.0, offset, len),
            other => other,
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.0, mode, offset, len) {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

pub(crate) fn to_io(e: vm_memory::VolatileMemoryError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// Whether fallocate said the filesystem cannot do that mode.
pub(crate) fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

static ZEROES: [u8; 64 << 10] = [0; 64 << 10];

/// Writes zeroes into guest memory (a zero cluster, a hole in every layer).
pub(crate) fn fill_zeroes(buf: &VolatileSlice<'_>) {
    let mut done = 0;
    while done < buf.len() {
        let n = (buf.len() - done).min(ZEROES.len());
        if let Ok(part) = buf.subslice(done, n) {
            part.copy_from(&ZEROES[..n]);
        }
        done += n;
    }
}

pub(crate) fn write_zero_bytes(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(ZEROES.len() as u64) as usize;
        file.write_all_at(&ZEROES[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

pub(crate) fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only takes integers; the fd is owned by `file`.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs a positional syscall until `len` bytes are done or it returns 0 (end of file),
/// retrying on EINTR; returns the bytes done.
fn positional_loop(
    len: usize,
    offset: u64,
    mut op: impl FnMut(usize, u64) -> isize,
) -> io::Result<usize> {
    let mut done = 0usize;
    while done < len {
        let Ok(off) = libc::off_t::try_from(offset + done as u64) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        match op(done, off as u64) {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(done)
}

/// pread straight into guest memory; returns the bytes read (short only at end of file).
pub(crate) fn pread_volatile(fd: RawFd, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<usize> {
    let guard = buf.ptr_guard_mut();
    positional_loop(buf.len(), offset, |done, off| {
        // SAFETY: `guard` keeps the memory mapped; [done, len) lies inside the slice,
        // which vm-memory bounds-checked (guest memory or a buffer of ours).
        unsafe {
            libc::pread(
                fd,
                guard.as_ptr().add(done).cast(),
                buf.len() - done,
                off as libc::off_t,
            )
        }
    })
}

/// pwrite straight from guest memory, all of it.
pub(crate) fn pwrite_volatile(fd: RawFd, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
    let guard = buf.ptr_guard();
    let done = positional_loop(buf.len(), offset, |done, off| {
        // SAFETY: as in `pread_volatile`; pwrite only reads the slice.
        unsafe {
            libc::pwrite(
                fd,
                guard.as_ptr().add(done).cast(),
                buf.len() - done,
                off as libc::off_t,
            )
        }
    })?;
    if done < buf.len() {
        return Err(io::Error::from(io::ErrorKind::WriteZero));
    }
    Ok(())
}

/// An exclusive lock for a writable image, a shared one for a read-only image (flock:
/// per open file, so the same file as two drives of one VM conflicts too). Two writers,
/// or a writer and a reader, would corrupt each other's view of the filesystem.
pub fn lock_image(file: &File, read_only: bool) -> io::Result<()> {
    #[cfg(test)]
    let _no_tool_running = test_spawn::SPAWNING
        .read()
        .unwrap_or_else(|e| e.into_inner());
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock only takes the descriptor, owned by `file`, and flags.
    if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The unit tests run qemu-img while other tests open and close images. A child holds a
/// copy of every open file of the test process from fork until its exec has closed them
/// (which is after `spawn` returns: a vfork parent resumes first), so a lock that a test
/// just released by closing its file can still be held by that copy, and the test's next
/// lock on the file fails (seen in the kernel's filelock trace: the unlock came from
/// qemu-img). Running a tool (write side) and taking a lock (read side) therefore exclude
/// each other. vmm itself never starts a process once it has opened images.
#[cfg(test)]
pub(crate) mod test_spawn {
    use std::process::{Command, Output};
    use std::sync::RwLock;

    pub static SPAWNING: RwLock<()> = RwLock::new(());

    /// `cmd.output()`, with no lock taken anywhere in the process until the child is gone.
    pub fn output(cmd: &mut Command) -> std::io::Result<Output> {
        let _guard = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
        cmd.output()
    }
}

#[cfg(test)]
pub(crate) mod mem {
    //! An image in memory that logs every write and sync, so a test can rebuild the
    //! file as a crash after any write would have left it.
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone)]
    pub enum LogOp {
        Write(u64, Vec<u8>),
        Sync,
    }

    #[derive(Default)]
    pub struct MemState {
        pub data: Vec<u8>,
        pub log: Vec<LogOp>,
    }

    /// A handle: clones share the image.
    #[derive(Default, Clone)]
    pub struct MemStorage(pub Arc<Mutex<MemState>>);

    impl MemStorage {
        pub fn new(data: Vec<u8>) -> Self {
            Self(Arc::new(Mutex::new(MemState {
                data,
                log: Vec::new(),
            })))
        }

        fn write(&self, offset: u64, bytes: Vec<u8>) {
            let mut s = self.0.lock().unwrap();
            let op = LogOp::Write(offset, bytes);
            apply(&mut s.data, &op);
            s.log.push(op);
        }
    }

    /// Applies a logged write to a copy of the file (a sync changes nothing).
    pub fn apply(data: &mut Vec<u8>, op: &LogOp) {
        if let LogOp::Write(off, bytes) = op {
            let end = *off as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*off as usize..end].copy_from_slice(bytes);
        }
    }

    impl Storage for MemStorage {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let s = self.0.lock().unwrap();
            let end = offset as usize + buf.len();
            if end > s.data.len() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.copy_from_slice(&s.data[offset as usize..end]);
            Ok(())
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.write(offset, buf.to_vec());
            Ok(())
        }
        fn read_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
            let mut tmp = vec![0u8; buf.len()];
            let s = self.0.lock().unwrap();
            let start = (offset as usize).min(s.data.len());
            let end = (offset as usize + buf.len()).min(s.data.len());
            tmp[..end - start].copy_from_slice(&s.data[start..end]);
            buf.copy_from(&tmp);
            Ok(())
        }
        fn write_volatile_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> io::Result<()> {
            let mut tmp = vec![0u8; buf.len()];
            buf.copy_to(&mut tmp);
            self.write(offset, tmp);
            Ok(())
        }
        fn write_zeroes_at(&self, offset: u64, len: u64) -> io::Result<()> {
            self.write(offset, vec![0; len as usize]);
            Ok(())
        }
        fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
            let size = self.0.lock().unwrap().data.len() as u64;
            let end = (offset + len).min(size);
            if end > offset {
                self.write(offset, vec![0; (end - offset) as usize]);
            }
            Ok(())
        }
        fn sync(&self) -> io::Result<()> {
            self.0.lock().unwrap().log.push(LogOp::Sync);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().data.len() as u64)
        }
    }
}
