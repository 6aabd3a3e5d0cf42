//! Where connections come from: AF_VSOCK inside a VM, a Unix socket in the test jail.
//! Both become a stream of accepted connections for tonic's `serve_with_incoming`.

use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use agent::socket::Socket;

/// Accepted connections, in the shape `serve_with_incoming` wants.
pub type Incoming<T> = ReceiverStream<io::Result<T>>;

/// Pause after an accept error (EMFILE...) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The peer of a vsock connection.
#[derive(Debug, Clone, Copy)]
pub struct VsockPeer {
    pub cid: u32,
    pub port: u32,
}

/// An accepted AF_VSOCK stream.
pub struct VsockStream {
    io: Socket,
    peer: VsockPeer,
}

impl Connected for VsockStream {
    type ConnectInfo = VsockPeer;

    fn connect_info(&self) -> VsockPeer {
        self.peer
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Binds and listens on AF_VSOCK `port`, any CID.
fn vsock_listener(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_vm is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: `addr` is a valid sockaddr_vm and the length matches it.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on the socket we own.
    if unsafe { libc::listen(sock.as_raw_fd(), 128) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn vsock_accept(listener: &OwnedFd) -> io::Result<VsockStream> {
    // SAFETY: an all-zero sockaddr_vm is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr`/`len` are valid for accept4 to fill; it returns a new descriptor.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_vm).cast(),
            &mut len,
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor owned by nobody else.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(VsockStream {
        io: Socket::new(conn)?,
        peer: VsockPeer {
            cid: addr.svm_cid,
            port: addr.svm_port,
        },
    })
}

/// Listens on vsock `port` and accepts connections in a task.
pub fn vsock(port: u32) -> io::Result<Incoming<VsockStream>> {
    let sock = vsock_listener(port)?;
    // SAFETY: the OwnedFd is owned by the AsyncFd for its whole life, so the
    // descriptor stays open and refers to the same socket.
    let listener = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener.async_io(Interest::READABLE, vsock_accept).await;
            let failed = accepted.is_err();
            if let Ok(c) = &accepted {
                log::debug!(
                    "vsock connection from cid {} port {}",
                    c.peer.cid,
                    c.peer.port
                );
            }
            if let Err(e) = &accepted {
                log::warn!("vsock accept: {e}");
            }
            if tx.send(accepted).await.is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Listens on a Unix socket at `path` (replacing a stale one), mode 0600. The socket is
/// bound and made private under a temporary name and then renamed, so that `path` appears
/// only once it listens: whoever waits for it never connects too early, and never while
/// others may.
pub fn unix(path: &Path) -> io::Result<Incoming<Socket>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let binding = path.with_file_name(format!(".{name}.{}", std::process::id()));
    match std::fs::remove_file(&binding) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&binding)?;
    std::fs::set_permissions(&binding, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&binding, path)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener
                .accept()
                .await
                .and_then(|(s, _)| Socket::from_unix(s));
            let failed = accepted.is_err();
            if let Err(e) = &accepted {
                log::warn!("unix accept: {e}");
            }
            if tx.send(accepted).await.is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: socketpair succeeded; both descriptors are new and unowned.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[tokio::test]
    async fn stream_wrapper_reads_writes_and_shuts_down() {
        let (a, b) = socketpair();
        let mut a = VsockStream {
            io: Socket::new(a).unwrap(),
            peer: VsockPeer { cid: 3, port: 5 },
        };
        let mut b = VsockStream {
            io: Socket::new(b).unwrap(),
            peer: VsockPeer { cid: 2, port: 6 },
        };
        assert_eq!(a.connect_info().cid, 3);
        let big = vec![9u8; 1 << 20];
        let writer = tokio::spawn(async move {
            a.write_all(&big).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 1 << 20);
        let mut a = writer.await.unwrap();
        b.write_all(b"back").await.unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
    }

    #[tokio::test]
    async fn unix_listener_is_private_and_replaces_stale_sockets() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/agent.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"stale").unwrap();
        let _incoming = unix(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        UnixStream::connect(&path).await.unwrap();
        // Bound under a temporary name, then renamed: nothing else is left.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
