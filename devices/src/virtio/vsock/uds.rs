//! Unix-socket plumbing of the hybrid vsock convention: the listening socket at
//! `uds_path`, the `CONNECT <port>\n` line a host client starts with, and non-blocking
//! connects to `<uds_path>_<port>` for guest-initiated connections.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest `CONNECT <port>\n` line we wait for ("CONNECT 4294967295\n" is 19 bytes).
pub const CONNECT_LINE_MAX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum UdsError {
    #[error("the directory of vsock socket {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("vsock socket {0} is in use by a live listener")]
    InUse(PathBuf),
    #[error("cannot replace the stale vsock socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on vsock socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds a non-blocking listener at `path`, replacing a stale socket left by an earlier run
/// (but not one somebody still listens on).
pub fn bind_listener(path: &Path) -> Result<UnixListener, UdsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(UdsError::NoDirectory(path.to_path_buf()));
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // EAGAIN: a listener with a full backlog, alive all the same.
            let live = match connect_nonblocking(path) {
                Ok(_) => true,
                Err(e) => e.raw_os_error() == Some(libc::EAGAIN),
            };
            if live {
                return Err(UdsError::InUse(path.to_path_buf()));
            }
            fs::remove_file(path).map_err(|source| UdsError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => return Err(UdsError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(UdsError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let bind_err = |source| UdsError::Bind {
        path: path.to_path_buf(),
        source,
    };
    // Connecting to it reaches the agent: only our user may (the muxer checks peers too).
    let listener = crate::owner_only::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// `<uds_path>_<port>`, where a host service for guest connections to `port` listens.
pub fn service_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects without blocking: a Unix-socket connect either succeeds at once or fails
/// (ECONNREFUSED / ENOENT: nobody listens; EAGAIN: the listener's backlog is full), so the
/// device thread never waits on a slow host service.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    // Leave room for the terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns; OwnedFd closes it on error.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call, and `len` covers only
    // its family and the NUL-terminated path inside it.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (without the newline; a trailing CR is tolerated).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[derive(Debug, PartialEq, Eq)]
pub enum LineStatus {
    /// Waiting for more bytes.
    Incomplete,
    Port(u32),
    /// Malformed, too long, or the client went away: close it.
    Invalid,
}

/// A host client that connected to `uds_path` and has not finished its CONNECT line.
pub struct PendingClient {
    pub stream: UnixStream,
    pub id: u64,
    line: Vec<u8>,
}

impl PendingClient {
    pub fn new(stream: UnixStream, id: u64) -> Self {
        Self {
            stream,
            id,
            line: Vec::with_capacity(CONNECT_LINE_MAX),
        }
    }

    /// Reads what is available of the line, one byte at a time so that nothing after the
    /// newline (the start of the data stream) is consumed. Never blocks.
    pub fn read_line(&mut self) -> LineStatus {
        let mut byte = [0u8; 1];
        loop {
            match (&self.stream).read(&mut byte) {
                Ok(0) => return LineStatus::Invalid,
                Ok(_) if byte[0] == b'\n' => {
                    return parse_connect_line(&self.line)
                        .map_or(LineStatus::Invalid, LineStatus::Port)
                }
                Ok(_) => {
                    self.line.push(byte[0]);
                    if self.line.len() >= CONNECT_LINE_MAX {
                        return LineStatus::Invalid;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineStatus::Incomplete,
                Err(_) => return LineStatus::Invalid,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT +5",
            b"CONNECT -5",
            b"connect 5",
            b"CONNECT 5 6",
            b"OK 5",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lines_are_read_without_blocking_or_overreading() {
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut pending = PendingClient::new(server, 1);
        assert_eq!(pending.read_line(), LineStatus::Incomplete);
        client.write_all(b"CONN").unwrap();
        assert_eq!(pending.read_line(), LineStatus::Incomplete);
        client.write_all(b"ECT 77\ndata").unwrap();
        assert_eq!(pending.read_line(), LineStatus::Port(77));
        let mut rest = [0u8; 4];
        (&pending.stream).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"data");

        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut pending = PendingClient::new(server, 2);
        client.write_all(&[b'C'; 40]).unwrap();
        assert_eq!(pending.read_line(), LineStatus::Invalid);
        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        drop(client);
        assert_eq!(
            PendingClient::new(server, 3).read_line(),
            LineStatus::Invalid
        );
    }

    #[test]
    fn bind_replaces_stale_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let first = bind_listener(&path).unwrap();
        assert!(matches!(bind_listener(&path), Err(UdsError::InUse(_))));
        drop(first);
        let _second = bind_listener(&path).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"keep me").unwrap();
        assert!(matches!(bind_listener(&file), Err(UdsError::NotASocket(_))));
        assert_eq!(fs::read(&file).unwrap(), b"keep me");
        assert!(matches!(
            bind_listener(&dir.path().join("missing/v.sock")),
            Err(UdsError::NoDirectory(_))
        ));
    }

    #[test]
    fn nonblocking_connects_succeed_or_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("v.sock");
        let service = service_path(&base, 5000);
        assert!(service.to_string_lossy().ends_with("v.sock_5000"));
        assert!(connect_nonblocking(&service).is_err());
        let listener = UnixListener::bind(&service).unwrap();
        let mut stream = connect_nonblocking(&service).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        stream.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        let long = dir.path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
