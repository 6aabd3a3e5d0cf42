//! Pseudo-terminals for `tty` execs: /dev/ptmx + TIOCGPTPEER (no glibc openpty/grantpt,
//! which may consult NSS for the tty group).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Rows and columns used when an exec asks for a PTY without a size.
pub const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// A master/slave pair; the slave goes to the child, the master stays in the agent.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

fn open_path(path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string; open(2) returns a new descriptor.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a new PTY with the given window size.
pub fn open(rows: u16, cols: u16) -> io::Result<Pty> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    let master = open_path("/dev/ptmx", flags).or_else(|_| open_path("/dev/pts/ptmx", flags))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let peer = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    let slave = if peer >= 0 {
        // SAFETY: the ioctl returned a new descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(peer) }
    } else {
        // Kernels before 4.13: open the slave by name.
        let mut n: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int to the valid pointer.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        open_path(&format!("/dev/pts/{n}"), flags)?
    };
    set_size(master.as_raw_fd(), rows, cols)?;
    Ok(Pty { master, slave })
}

/// Sets the window size (TIOCSWINSZ); the kernel sends SIGWINCH to the foreground group.
pub fn set_size(master: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the valid pointer.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clamps a requested size to what `winsize` holds; 0 means the default.
pub fn clamp_size(rows: u32, cols: u32) -> (u16, u16) {
    let pick = |v: u32, d: u16| {
        if v == 0 {
            d
        } else {
            u16::try_from(v).unwrap_or(u16::MAX)
        }
    };
    (pick(rows, DEFAULT_SIZE.0), pick(cols, DEFAULT_SIZE.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_sizes() {
        assert_eq!(clamp_size(0, 0), (24, 80));
        assert_eq!(clamp_size(50, 132), (50, 132));
        assert_eq!(clamp_size(100_000, 1), (u16::MAX, 1));
    }

    #[test]
    fn opens_a_pty_with_its_size() {
        let Ok(pty) = open(33, 99) else {
            // No /dev/ptmx where the unit tests run: nothing to check here.
            return;
        };
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a `winsize` to the valid pointer.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 99));
    }
}
