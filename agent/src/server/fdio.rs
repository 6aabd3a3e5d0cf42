//! Non-blocking pipes and PTY masters driven by tokio's reactor through `AsyncFd`, with
//! plain `read(2)`/`write(2)`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Creates a pipe, both ends close-on-exec: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Bigger pipes mean fewer, larger reads (and messages) for bulk output. Best effort:
    // an unprivileged agent may be capped by /proc/sys/fs/pipe-max-size.
    // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ touches no memory.
    unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok(pair)
}

/// Capacity asked for process pipes.
const PIPE_SIZE: libc::c_int = 1 << 20;

fn sys_write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking descriptor registered with the tokio reactor. Reads and writes take
/// `&self`, so one PTY master can be read by one task and written by another.
#[derive(Debug)]
pub struct FdIo {
    fd: AsyncFd<OwnedFd>,
}

impl FdIo {
    /// Registers `fd` (made non-blocking) with the reactor.
    pub fn new(fd: OwnedFd) -> io::Result<FdIo> {
        agent::socket::set_nonblocking(fd.as_raw_fd())?;
        // SAFETY: the OwnedFd is owned by the AsyncFd for its whole life, so the
        // descriptor stays open and refers to the same file description.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(FdIo { fd })
    }

    /// Reads up to `max` bytes into the spare capacity of `buf` (reserving it), appending
    /// them without zero-filling or copying: the bytes can then be split off and sent.
    pub async fn read_buf(&self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        buf.reserve(max);
        self.fd
            .async_io(Interest::READABLE, |fd| {
                let spare = buf.spare_capacity_mut();
                let len = spare.len().min(max);
                // SAFETY: the kernel writes at most `len` bytes into the spare capacity,
                // which is valid for writes of that many bytes during the call.
                let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), len) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = n as usize;
                // SAFETY: read(2) initialized the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                Ok(n)
            })
            .await
    }

    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| sys_write(fd.as_raw_fd(), buf))
            .await
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }
}

impl AsRawFd for FdIo {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_round_trip_and_eof() {
        let (r, w) = pipe().unwrap();
        let r = FdIo::new(r).unwrap();
        let w = FdIo::new(w).unwrap();
        w.write_all(b"hello").await.unwrap();
        drop(w);
        let mut out = BytesMut::new();
        assert_eq!(r.read_buf(&mut out, 64).await.unwrap(), 5);
        assert_eq!(r.read_buf(&mut out, 64).await.unwrap(), 0, "EOF");
        assert_eq!(&out[..], b"hello");
    }

    #[tokio::test]
    async fn large_write_completes_while_another_task_reads() {
        let (r, w) = pipe().unwrap();
        let (r, w) = (FdIo::new(r).unwrap(), FdIo::new(w).unwrap());
        // More than a pipe holds (1 MiB): the writer must wait for the reader.
        let size = 3 << 20;
        let writer = tokio::spawn(async move { w.write_all(&vec![7u8; size]).await });
        let mut total = 0;
        let mut buf = BytesMut::new();
        loop {
            let n = r.read_buf(&mut buf, 64 * 1024).await.unwrap();
            if n == 0 {
                break;
            }
            let chunk = buf.split();
            assert!(chunk.len() == n && n <= 64 * 1024);
            assert!(chunk.iter().all(|&b| b == 7));
            total += n;
        }
        writer.await.unwrap().unwrap();
        assert_eq!(total, size);
    }
}
