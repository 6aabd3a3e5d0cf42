//! PID 1 duties: the API file systems, `lo`, the hostname, and powering off.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
    /// Mode for a directory created for the mount point.
    dir_mode: u32,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// In order: later mounts live inside earlier ones. /tmp stays on the root file
/// system (memory is fixed in a VM; a tmpfs /tmp would eat it).
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        dir_mode: 0o555,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        dir_mode: 0o555,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "",
        dir_mode: 0o755,
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        dir_mode: 0o755,
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        dir_mode: 0o1777,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
        dir_mode: 0o755,
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        dir_mode: 0o555,
    },
];

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A mount point already: a different device than its parent directory.
fn is_mount_point(path: &Path) -> bool {
    let Ok(m) = fs::metadata(path) else {
        return false;
    };
    let Some(parent) = path.parent() else {
        return true;
    };
    fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev() || p.ino() == m.ino())
}

fn mount(m: &Mount) -> io::Result<()> {
    let target = Path::new(m.target);
    if !target.exists() {
        fs::create_dir_all(target)?;
        fs::set_permissions(target, fs::Permissions::from_mode(m.dir_mode))?;
    }
    let (src, tgt, fstype, data) = (
        cstr(m.source)?,
        cstr(m.target)?,
        cstr(m.fstype)?,
        cstr(m.data)?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data.as_ptr().cast(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts the API file systems, skipping (with a warning) what exists or is refused.
pub fn mount_all() {
    for m in MOUNTS {
        if is_mount_point(Path::new(m.target)) {
            log::info!("{} is already mounted", m.target);
            continue;
        }
        match mount(m) {
            Ok(()) => log::debug!("mounted {} on {}", m.fstype, m.target),
            Err(e) => log::warn!("cannot mount {} on {}: {e}", m.fstype, m.target),
        }
    }
    // With a devtmpfs /dev, /dev/ptmx is the multiplexer of the devpts at /dev/pts;
    // elsewhere point it at the new instance.
    if fs::symlink_metadata("/dev/ptmx").is_err() {
        if let Err(e) = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx") {
            log::warn!("cannot create /dev/ptmx: {e}");
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
    // Kept on the root file system: make sure anyone can use it.
    if let Ok(m) = fs::metadata("/tmp") {
        if m.is_dir() && m.mode() & 0o7777 != 0o1777 {
            let _ = fs::set_permissions("/tmp", fs::Permissions::from_mode(0o1777));
        }
    }
    let _ = fs::create_dir_all("/run/lock");
}

/// Brings the loopback interface up (SIOCGIFFLAGS / SIOCSIFFLAGS).
pub fn loopback_up() -> io::Result<()> {
    super::network::Socket::open()?.set_up("lo")
}

/// The hostname to set: `--hostname`, else the first word of /etc/hostname.
pub fn pick_hostname(flag: Option<&str>, etc_hostname: Option<&str>) -> Option<String> {
    flag.map(str::to_owned).or_else(|| {
        etc_hostname
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned)
    })
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes to the valid buffer.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } < 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Everything PID 1 sets up before serving.
pub fn setup(hostname_flag: Option<&str>) {
    mount_all();
    if let Err(e) = loopback_up() {
        log::warn!("cannot bring up lo: {e}");
    }
    let etc = fs::read_to_string("/etc/hostname").ok();
    if let Some(name) = pick_hostname(hostname_flag, etc.as_deref()) {
        if let Err(e) = set_hostname(&name) {
            log::warn!("cannot set the hostname to '{name}': {e}");
        }
    }
}

pub fn sync() {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Ends the VM: every other process is killed, file systems synced, then the restart
/// request that our VMM (no ACPI) sees as an i8042 reset and ends with exit 0.
pub fn power_off() -> ! {
    // SAFETY: kill(-1) signals every process but init itself; no memory involved.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    sync();
    // SAFETY: reboot(2) with a valid command; only returns on failure.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    log::error!("reboot: {}", io::Error::last_os_error());
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_from_flag_or_file() {
        assert_eq!(pick_hostname(Some("a"), Some("b\n")).as_deref(), Some("a"));
        assert_eq!(
            pick_hostname(None, Some("  vmm-guest\n")).as_deref(),
            Some("vmm-guest")
        );
        assert_eq!(pick_hostname(None, Some("\n")), None);
        assert_eq!(pick_hostname(None, None), None);
    }

    #[test]
    fn root_and_proc_mount_points() {
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/no/such/dir")));
    }
}
