//! One host-side change at a time across vmm processes: picking an address, installing
//! or releasing a sandbox's rules, collecting stale ones. An flock on a file in /run,
//! released when the holder ends, however it ends.

use std::fs::{self, File};
use std::os::fd::AsRawFd;

use super::HostNetError;

const DIR: &str = "/run/vmm";
const FILE: &str = "/run/vmm/net.lock";

/// Held until dropped.
pub struct HostLock {
    _file: File,
}

pub fn take() -> Result<HostLock, HostNetError> {
    fs::create_dir_all(DIR).map_err(HostNetError::io(format!("create {DIR}")))?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(FILE)
        .map_err(HostNetError::io(format!("open {FILE}")))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(HostLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(HostNetError::io(format!("lock {FILE}"))(e));
        }
    }
}
