//! A connected stream socket (Unix or vsock) for the gRPC connections, registered with
//! tokio's reactor for readability only.
//!
//! tokio registers its own sockets for readability and writability at once. On a Unix
//! socket the kernel then reports writability every time the peer reads anything we
//! sent, so each message costs its sender an extra wake-up (a context switch) when the
//! peer consumes it: on an exec's round trip that is about one wake-up in three. Here a
//! write is simply tried; only when it would block is a duplicate of the descriptor
//! registered for writability, until the write goes through.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Most buffers one `sendmsg` takes (the kernel's UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

pub struct Socket {
    /// Registered for readability only.
    io: AsyncFd<OwnedFd>,
    /// A duplicate of the descriptor registered for writability while a write waits.
    write_wait: Option<AsyncFd<OwnedFd>>,
}

/// What a server learns about a `Socket` peer (nothing beyond the connection itself).
#[derive(Debug, Clone, Copy)]
pub struct SocketInfo;

impl tonic::transport::server::Connected for Socket {
    type ConnectInfo = SocketInfo;

    fn connect_info(&self) -> SocketInfo {
        SocketInfo
    }
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; F_GETFL/F_SETFL touch no memory.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is owned by the AsyncFd for its whole life, so the descriptor
    // stays open and refers to the same file description.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix; sendmsg only reads the buffers.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast();
    msg.msg_iovlen = bufs.len().min(MAX_IOVECS);
    // SAFETY: `msg` points at `bufs`, valid for the call. MSG_NOSIGNAL: a closed peer is
    // an EPIPE error, not a SIGPIPE.
    result(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })
}

impl Socket {
    /// Takes over a connected stream socket (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<Socket> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Socket {
            io: register(fd, Interest::READABLE)?,
            write_wait: None,
        })
    }

    /// Takes over a tokio Unix stream (taking it off tokio's own registration).
    pub fn from_unix(stream: tokio::net::UnixStream) -> io::Result<Socket> {
        Socket::new(OwnedFd::from(stream.into_std()?))
    }

    /// Tries `send` now; while it would block, waits for writability on the duplicate.
    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            match send(self.io.as_raw_fd(), bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.write_wait.is_none() {
                        let dup = self.io.get_ref().try_clone()?;
                        // Registering reports writability at once if space has appeared
                        // since the failed send, so no wake-up is lost.
                        self.write_wait = Some(register(dup, Interest::WRITABLE)?);
                    }
                    let waiting = self.write_wait.as_ref().expect("registered above");
                    ready!(waiting.poll_write_ready(cx))?.clear_ready();
                }
                done => {
                    // Back to no writability reports until a write would block again.
                    self.write_wait = None;
                    return Poll::Ready(done);
                }
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            // SAFETY: read(2) only writes to the unfilled part, and we mark as
            // initialized exactly the bytes it wrote.
            let unfilled = unsafe { buf.unfilled_mut() };
            let got = guard.try_io(|fd| {
                // SAFETY: `unfilled` is valid for writes of its length during the call.
                result(unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                })
            });
            match got {
                Ok(Ok(n)) => {
                    // SAFETY: the kernel initialized `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown(2) on the socket we own; it touches no memory.
        let rc = unsafe { libc::shutdown(self.io.as_raw_fd(), libc::SHUT_WR) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOTCONN) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (Socket, Socket) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (
            Socket::new(OwnedFd::from(a)).unwrap(),
            Socket::new(OwnedFd::from(b)).unwrap(),
        )
    }

    #[tokio::test]
    async fn carries_more_than_the_socket_buffer_both_ways() {
        let (mut a, mut b) = pair();
        // Far beyond the socket buffer: the writer must wait for space several times.
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "the stream arrived intact");
        b.write_all(b"done").await.unwrap();
        drop(b);
        assert_eq!(writer.await.unwrap(), b"done");
    }

    #[tokio::test]
    async fn a_closed_peer_is_a_broken_pipe_error() {
        let (mut a, b) = pair();
        // Closing alone is not enough in a test process: a child another test forked
        // holds a copy of b's descriptor until it execs, and the socket stays open.
        // A shutdown acts on the socket itself, whoever holds copies.
        // SAFETY: shutdown(2) on b's descriptor, which b still owns; no memory.
        let rc = unsafe { libc::shutdown(b.io.as_raw_fd(), libc::SHUT_RDWR) };
        assert_eq!(rc, 0);
        drop(b);
        let e = a.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
