//! `--ready-fd N`: checked before the process opens anything of its own, so a wrong number
//! is an error instead of a write to (and a close of) one of the VMM's own descriptors.

use std::os::fd::RawFd;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadyFdError {
    #[error("--ready-fd {0}: 0-2 are stdin, stdout and stderr (without --ready-fd the line goes to stdout)")]
    Standard(RawFd),
    #[error("--ready-fd {0} is not an open file descriptor")]
    NotOpen(RawFd),
    #[error("--ready-fd {0} is a {1}; give a pipe, a socket or a file")]
    WrongKind(RawFd, &'static str),
}

/// Checks that `fd` was inherited open and can carry a line, and marks it close-on-exec.
/// Call it before opening any descriptor.
pub fn claim(fd: RawFd) -> Result<RawFd, ReadyFdError> {
    if (0..=2).contains(&fd) {
        return Err(ReadyFdError::Standard(fd));
    }
    if fd < 0 {
        return Err(ReadyFdError::NotOpen(fd));
    }
    // SAFETY: fstat writes into the zeroed struct; an invalid fd only makes it fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(ReadyFdError::NotOpen(fd));
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFREG | libc::S_IFCHR => None,
        libc::S_IFDIR => Some("directory"),
        libc::S_IFBLK => Some("block device"),
        _ => Some("descriptor that cannot carry a line (an eventfd, epoll or the like)"),
    };
    if let Some(kind) = kind {
        return Err(ReadyFdError::WrongKind(fd, kind));
    }
    // SAFETY: F_SETFD on a descriptor just checked to be open; only flags change.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn open_pipes_and_files_are_claimed_and_the_rest_refused() {
        let (read, write) = std::io::pipe().unwrap();
        assert_eq!(claim(write.as_raw_fd()), Ok(write.as_raw_fd()));
        drop(read);
        let file = tempfile::tempfile().unwrap();
        assert!(claim(file.as_raw_fd()).is_ok());
        let dir = std::fs::File::open("/").unwrap();
        assert!(matches!(
            claim(dir.as_raw_fd()),
            Err(ReadyFdError::WrongKind(_, "directory"))
        ));
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        assert!(matches!(
            claim(evt.as_raw_fd()),
            Err(ReadyFdError::WrongKind(..))
        ));
        assert_eq!(claim(1), Err(ReadyFdError::Standard(1)));
        assert_eq!(claim(-1), Err(ReadyFdError::NotOpen(-1)));
        assert_eq!(claim(100_000), Err(ReadyFdError::NotOpen(100_000)));
    }
}
