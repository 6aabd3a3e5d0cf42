//! Giving up what the VMM no longer needs once a VM is set up: the right to gain
//! privileges (no_new_privs), every capability, and optionally the host's filesystem
//! (`--chroot`). Seccomp filters (crate::seccomp) come on top.

use std::io;
use std::path::Path;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets, two 32-bit words each.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Process-wide settings for a VMM about to be confined, before any thread is spawned:
/// no_new_privs (inherited by every thread), and one malloc arena. glibc reads
/// /proc/sys/vm/overcommit_memory the first time it shrinks a thread arena, an open
/// that no worker thread's filter allows; the main arena never needs it.
pub fn prepare_process() -> io::Result<()> {
    set_no_new_privs()?;
    // SAFETY: mallopt only changes a malloc tunable; no allocation is in flight on this
    // thread, and glibc serializes it against other threads.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    Ok(())
}

/// No execve of this process or its threads can gain privileges from now on.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability of the calling thread: ambient, bounding (when we may), and
/// effective, permitted and inheritable. Threads spawned afterwards inherit the empty
/// sets, so call it before spawning the VM's threads. Harmless when unprivileged.
pub fn drop_capabilities() -> io::Result<()> {
    // SAFETY: integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities (before 4.3) has none to clear.
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    // The bounding set needs CAP_SETPCAP to shrink; without it there is nothing to
    // protect (no_new_privs already stops file capabilities). EINVAL ends the list.
    for cap in 0..64 {
        // SAFETY: integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINVAL) | Some(libc::EPERM) => break,
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are valid for the call: a v3 header and the two
    // data words it describes; capset only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective capability set of the calling thread (a bit per capability).
pub fn effective_capabilities() -> io::Result<u64> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: as in drop_capabilities; capget writes the two data words.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// Makes `dir` the root of this process's filesystem view; every path the VM opens from
/// now on is inside it. Needs CAP_SYS_CHROOT.
pub fn chroot(dir: &Path) -> io::Result<()> {
    std::os::unix::fs::chroot(dir)?;
    std::env::set_current_dir("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_capabilities_empties_the_effective_set() {
        // In a thread of its own: capabilities are per thread, and the test harness
        // must keep its own.
        std::thread::spawn(|| {
            drop_capabilities().unwrap();
            assert_eq!(effective_capabilities().unwrap(), 0);
        })
        .join()
        .unwrap();
    }
}
