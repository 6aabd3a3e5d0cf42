//! Keeps sandboxed processes from starving the agent: every exec runs in a cgroup v2
//! group of its own (`vmm-sandbox`) whose pids.max and memory.max leave the agent
//! headroom, while the agent stays outside it with an OOM score of -1000. A fork bomb
//! then fails its forks, and a memory hog is OOM-killed inside the group; the agent keeps
//! answering, and can still start an exec to clean up (migrating into a group at its
//! pids.max is allowed; only forks are refused).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted (by the agent as init, or by systemd).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The group every exec joins.
pub const SANDBOX_GROUP: &str = "vmm-sandbox";
/// Where the agent moves itself when it is not at the root of the hierarchy (as a
/// systemd service with Delegate=yes, or in a cgroup namespace): cgroup v2 allows
/// processes only in leaves there.
const AGENT_GROUP: &str = "vmm-agent";
/// Tasks kept for the agent and the rest of the system: a tenth of the kernel's limit,
/// and at least this many.
const MIN_RESERVED_TASKS: u64 = 256;
/// Memory kept outside the group: a sixteenth of the guest's, and at least this much.
const MIN_RESERVED_MEMORY: u64 = 64 << 20;

/// The sandbox group, ready for children to join.
#[derive(Debug)]
pub struct SandboxCgroup {
    /// Its cgroup.procs, open for writing: a child joins by writing "0" before exec.
    procs: OwnedFd,
    pub path: PathBuf,
    pub pids_max: u64,
}

impl SandboxCgroup {
    /// Sets the group up and protects the agent; `pids_max` overrides the default limit.
    /// Fails where there is no writable cgroup v2 hierarchy with the pids controller
    /// (the test jail on a cgroup v1 host): execs then run unconfined.
    pub fn setup(pids_max: Option<u64>) -> io::Result<SandboxCgroup> {
        let cgroups = fs::read_to_string("/proc/self/cgroup")?;
        let own = own_cgroup(&cgroups)
            .ok_or_else(|| io::Error::other("no cgroup v2 hierarchy (cgroup v1 only)"))?;
        let base = Path::new(CGROUP_ROOT).join(own.trim_start_matches('/'));
        if !base.join("cgroup.controllers").exists() {
            return Err(io::Error::other(format!(
                "cgroup2 is not mounted at {CGROUP_ROOT}"
            )));
        }
        // Only the hierarchy's real root may hold processes next to child groups with
        // controllers; any other group (a systemd service, the test jail's cgroup
        // namespace, whose root has cgroup.type) would become a thread root, and its
        // children invalid domains that no process can join.
        if own != "/" || base.join("cgroup.type").exists() {
            let agent = base.join(AGENT_GROUP);
            make_group(&agent)?;
            write(&agent.join("cgroup.procs"), &std::process::id().to_string())?;
        }
        write(&base.join("cgroup.subtree_control"), "+pids")?;
        let memory = write(&base.join("cgroup.subtree_control"), "+memory");
        let path = base.join(SANDBOX_GROUP);
        make_group(&path)?;
        let pids_max = match pids_max {
            Some(n) => n,
            None => default_pids_max()?,
        };
        write(&path.join("pids.max"), &pids_max.to_string())?;
        match memory.and_then(|()| default_memory_max()) {
            Ok(bytes) => write(&path.join("memory.max"), &bytes.to_string())?,
            Err(e) => log::warn!("sandbox memory is not limited: {e}"),
        }
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))?
            .into();
        // Children reset theirs to 0 before exec (join_from_child).
        write(Path::new("/proc/self/oom_score_adj"), "-1000")?;
        Ok(SandboxCgroup {
            procs,
            path,
            pids_max,
        })
    }

    /// Moves the calling process into the group and gives it the default OOM score.
    /// Async-signal-safe: it runs in a forked child of the multi-threaded agent, before
    /// exec, and makes raw system calls on memory prepared before the fork.
    pub fn join_from_child(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor and a 1-byte buffer.
        if unsafe { libc::write(self.procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a static NUL-terminated path.
        let fd = unsafe { libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours, and the buffer is 1 byte long.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let error = io::Error::last_os_error();
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
        if written != 1 {
            return Err(error);
        }
        Ok(())
    }
}

/// The cgroup v2 path in /proc/self/cgroup ("0::/path").
fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

fn make_group(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(with_path(e, path)),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| with_path(e, path))
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read_number(path: &str) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{path}: not a number: {text:?}")))
}

/// The kernel's task limit less the agent's reserve.
fn default_pids_max() -> io::Result<u64> {
    let tasks =
        read_number("/proc/sys/kernel/threads-max")?.min(read_number("/proc/sys/kernel/pid_max")?);
    Ok(tasks - reserve(tasks, 10, MIN_RESERVED_TASKS))
}

/// The guest's memory less the agent's reserve.
fn default_memory_max() -> io::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no MemTotal in /proc/meminfo"))?;
    let total = total_kib * 1024;
    Ok(total - reserve(total, 16, MIN_RESERVED_MEMORY))
}

/// `total / fraction`, at least `min`, and never all of it.
fn reserve(total: u64, fraction: u64, min: u64) -> u64 {
    (total / fraction).max(min).min(total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_entry_of_proc_self_cgroup() {
        assert_eq!(own_cgroup("0::/\n"), Some("/"));
        assert_eq!(
            own_cgroup("1:name=systemd:/x\n0::/system.slice/vmm-agent.service\n"),
            Some("/system.slice/vmm-agent.service")
        );
        assert_eq!(own_cgroup("12:pids:/jail\n3:memory:/\n"), None);
    }

    #[test]
    fn the_reserve_is_a_fraction_with_a_floor_and_never_everything() {
        assert_eq!(reserve(8192, 10, 256), 819);
        assert_eq!(reserve(1000, 10, 256), 256);
        assert_eq!(reserve(300, 10, 256), 150);
        assert_eq!(reserve(1 << 30, 16, 64 << 20), 64 << 20);
        assert_eq!(reserve(4 << 30, 16, 64 << 20), 256 << 20);
    }
}
