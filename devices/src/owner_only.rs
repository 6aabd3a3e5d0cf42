//! Unix sockets that only the VMM's own user (and root) may use: the API socket and the
//! vsock socket both reach the agent, so both get mode 0600 and a peer-uid check. The
//! mode alone depends on the directory and on who creates files there; the check does not.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds `path` with mode 0600 from the first instant (the umask decides the mode `bind`
/// gives the socket file, so it is narrowed around the call).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's file creation mask. The VMM binds its
    // sockets while setting up, before any thread that creates files runs.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    bound
}

/// Whether the process at the other end of a connected Unix socket runs as our user or as
/// root (SO_PEERCRED: the credentials at connect time, which the peer cannot forge).
pub fn peer_allowed(socket: &impl AsRawFd) -> bool {
    // SAFETY: ucred is plain data; getsockopt fills at most `len` bytes of it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and describe the buffer's size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == me || cred.uid == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_socket_is_0600_whatever_the_umask_and_we_are_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // SAFETY: test-only; restores the mask right after.
        let old = unsafe { libc::umask(0) };
        let listener = bind(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = listener.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(peer_allowed(&server) && peer_allowed(&client));
    }
}
