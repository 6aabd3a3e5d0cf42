//! Running the vmm as an unprivileged user who may open /dev/kvm, the way a deployment
//! does with the kvm group, without touching the host's /dev/kvm: the vmm gets a mount
//! namespace of its own where /dev/kvm is a node owned by that user.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// `nobody`.
pub const UNPRIVILEGED_ID: u32 = 65534;

#[derive(Debug, Clone)]
pub struct RunAs {
    /// Holds the private KVM node.
    dir: Arc<tempfile::TempDir>,
}

impl RunAs {
    /// `nobody` (uid and gid 65534, no supplementary groups), with a KVM node of its own.
    pub fn nobody() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = dir.path().join("kvm");
        make_kvm_node(&node);
        chown_to_unprivileged(&node);
        Self { dir: Arc::new(dir) }
    }

    /// Makes `cmd` drop to the user in a mount namespace where /dev/kvm is its node.
    pub fn apply(&self, cmd: &mut Command) {
        let node = CString::new(self.dir.path().join("kvm").as_os_str().as_bytes()).unwrap();
        let (root, dev_kvm) = (c"/", c"/dev/kvm");
        // SAFETY: the closure runs in the forked child before exec and makes only raw
        // syscalls on data prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                let null = std::ptr::null();
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Our mounts must not leak back into the host's namespace.
                check(libc::mount(
                    null,
                    root.as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    null as _,
                ))?;
                check(libc::mount(
                    node.as_ptr(),
                    dev_kvm.as_ptr(),
                    null,
                    libc::MS_BIND,
                    null as _,
                ))?;
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(UNPRIVILEGED_ID))?;
                check(libc::setuid(UNPRIVILEGED_ID))
            });
        }
    }
}

/// A character device node at `path` that opens the same KVM as /dev/kvm (mode 0600).
pub fn make_kvm_node(path: &Path) {
    let rdev = std::fs::metadata("/dev/kvm").expect("/dev/kvm").rdev();
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: a valid NUL-terminated path; mknod creates a character device node.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o600, rdev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Gives `path` to the unprivileged user.
pub fn chown_to_unprivileged(path: &Path) {
    std::os::unix::fs::chown(path, Some(UNPRIVILEGED_ID), Some(UNPRIVILEGED_ID))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}
