//! The seed's resource model, applied to the vmm process: memory is static (the guest's
//! RAM, plus what the VMM itself needs), CPU is elastic (a share in proportion to the
//! requested cores, bursting above it when the host is idle, and an optional hard cap).
//! The process moves into its cgroup before any thread starts, so every vCPU, device
//! and API thread is accounted there.

mod hierarchy;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::ResourceSpec;
pub use hierarchy::{detect, Hierarchy};

/// What the VMM needs beyond guest RAM, charged to the same cgroup: its binary, thread
/// stacks, device and API buffers, qcow2 tables and the host page cache of its disks
/// (which the kernel reclaims first). Measured: see the README's "Resources" section.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// cpu.max / cfs period: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("no cgroup hierarchy with the cpu and memory controllers is mounted (looked in /proc/self/mountinfo)")]
    NoHierarchy,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
    #[error("cgroup {path}: {action}: {source}")]
    Cgroup {
        path: PathBuf,
        action: String,
        source: io::Error,
    },
}

/// The values written, per hierarchy flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// v2 cpu.weight: 100 per core, 1..=10000.
    weight: u64,
    /// v1 cpu.shares: 1024 per core, at least 2.
    shares: u64,
    /// CPU time per period, µs (None: no cap).
    quota_us: Option<u64>,
    memory_bytes: u64,
}

impl Settings {
    fn of(spec: &ResourceSpec) -> Self {
        let milli = u64::from(spec.cpu_millicores);
        Self {
            weight: (milli / 10).clamp(1, 10_000),
            shares: (milli * 1024 / 1000).max(2),
            // 1 ms per period is the kernel's minimum quota.
            quota_us: spec
                .cpu_limit_millicores
                .map(|l| (u64::from(l) * CPU_PERIOD_US / 1000).max(1000)),
            memory_bytes: (spec.memory_mib + VMM_OVERHEAD_MIB) << 20,
        }
    }
}

/// How long the releaser retries removing a cgroup that the kernel still counts as busy
/// right after the vmm's exit.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

/// Moves this process into `spec.cgroup` with the CPU share, cap and memory limit. The
/// cgroups it creates are removed when the vmm ends, however it ends (crate::releaser).
pub fn place(spec: &ResourceSpec) -> Result<(), ResourcesError> {
    let hierarchy = detect()
        .map_err(ResourcesError::Mountinfo)?
        .ok_or(ResourcesError::NoHierarchy)?;
    let settings = Settings::of(spec);
    // Every directory is created (and its releaser started) before the process joins:
    // the releaser must stay outside, or the cgroup would never be empty.
    let mut created = Vec::new();
    match hierarchy {
        Hierarchy::Unified(root) => {
            let target = root.join(&spec.cgroup);
            if make_v2(&root, &spec.cgroup)? {
                created.push(target.clone());
            }
            start_releaser(&created)?;
            write(&target, "cpu.weight", &settings.weight.to_string())?;
            let max = match settings.quota_us {
                Some(q) => format!("{q} {CPU_PERIOD_US}"),
                None => format!("max {CPU_PERIOD_US}"),
            };
            write(&target, "cpu.max", &max)?;
            write(&target, "memory.max", &settings.memory_bytes.to_string())?;
            join(&target)?;
        }
        Hierarchy::Split { cpu, memory } => {
            for root in [&cpu, &memory] {
                let target = root.join(&spec.cgroup);
                if make_dirs(&target)? {
                    created.push(target);
                }
            }
            start_releaser(&created)?;
            let cpu_dir = cpu.join(&spec.cgroup);
            write(&cpu_dir, "cpu.shares", &settings.shares.to_string())?;
            write(&cpu_dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            let quota = settings
                .quota_us
                .map_or("-1".to_string(), |q| q.to_string());
            write(&cpu_dir, "cpu.cfs_quota_us", &quota)?;
            let memory_dir = memory.join(&spec.cgroup);
            write(
                &memory_dir,
                "memory.limit_in_bytes",
                &settings.memory_bytes.to_string(),
            )?;
            join(&cpu_dir)?;
            join(&memory_dir)?;
        }
    }
    log::info!(
        "resources: in cgroup {} ({} millicores, cap {:?}, memory.max {} MiB)",
        spec.cgroup.display(),
        spec.cpu_millicores,
        spec.cpu_limit_millicores,
        settings.memory_bytes >> 20
    );
    Ok(())
}

/// `vmm resources release DIR...`, which removes the cgroups we created once we end.
fn start_releaser(created: &[PathBuf]) -> Result<(), ResourcesError> {
    if created.is_empty() {
        return Ok(());
    }
    let failed = |source| ResourcesError::Cgroup {
        path: created[0].clone(),
        action: "start the releaser that removes it at exit".into(),
        source,
    };
    let vmm = std::env::current_exe().map_err(failed)?;
    let mut cmd = std::process::Command::new(vmm);
    cmd.args(["resources", "release"]).args(created);
    crate::releaser::spawn(cmd).map_err(failed)
}

/// The releaser's side: once the vmm has ended, removes its cgroups (empty by then; the
/// kernel may report one busy for a moment after the exit).
pub fn release_when_stdin_ends(dirs: &[PathBuf]) -> Result<(), ResourcesError> {
    crate::releaser::wait_for_stdin_to_end();
    for dir in dirs {
        let deadline = Instant::now() + REMOVE_PATIENCE;
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(ResourcesError::Cgroup {
                        path: dir.clone(),
                        action: "remove".into(),
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Creates the v2 cgroup and its missing ancestors, enabling cpu and memory for the
/// children of each ancestor. Returns whether the cgroup itself was created.
fn make_v2(root: &Path, relative: &Path) -> Result<bool, ResourcesError> {
    let mut dir = root.to_path_buf();
    for part in relative.iter() {
        let controls = read(&dir, "cgroup.subtree_control")?;
        let enabled = |c: &str| controls.split_whitespace().any(|x| x == c);
        if !(enabled("cpu") && enabled("memory")) {
            write(&dir, "cgroup.subtree_control", "+cpu +memory").map_err(|e| {
                match e {
                ResourcesError::Cgroup { path, source, .. }
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    ResourcesError::Cgroup {
                        path,
                        action: "enable cpu and memory for its children".into(),
                        source: io::Error::other(
                            "it holds processes itself (cgroup v2 keeps processes in leaves only); \
                             choose a cgroup outside it",
                        ),
                    }
                }
                other => other,
            }
            })?;
        }
        dir.push(part);
        if !dir.is_dir() {
            mkdir(&dir)?;
            if dir.as_path() == root.join(relative) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Creates a v1 cgroup and its missing ancestors; whether the last one was created.
fn make_dirs(target: &Path) -> Result<bool, ResourcesError> {
    if target.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = target.parent() {
        if !parent.is_dir() {
            make_dirs(parent)?;
        }
    }
    mkdir(target)?;
    Ok(true)
}

fn mkdir(dir: &Path) -> Result<(), ResourcesError> {
    fs::create_dir(dir).map_err(|source| ResourcesError::Cgroup {
        path: dir.to_path_buf(),
        action: "create".into(),
        source,
    })
}

fn read(dir: &Path, file: &str) -> Result<String, ResourcesError> {
    fs::read_to_string(dir.join(file)).map_err(|source| ResourcesError::Cgroup {
        path: dir.to_path_buf(),
        action: format!("read {file}"),
        source,
    })
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), ResourcesError> {
    fs::write(dir.join(file), value).map_err(|source| ResourcesError::Cgroup {
        path: dir.to_path_buf(),
        action: format!("write {value:?} to {file}"),
        source,
    })
}

/// Moves the whole process (every thread) into the cgroup at `dir`.
fn join(dir: &Path) -> Result<(), ResourcesError> {
    write(dir, "cgroup.procs", &std::process::id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cpu: u32, limit: Option<u32>, memory_mib: u64) -> ResourceSpec {
        ResourceSpec {
            cgroup: "sb".into(),
            cpu_millicores: cpu,
            cpu_limit_millicores: limit,
            memory_mib,
        }
    }

    #[test]
    fn shares_and_weights_follow_the_request() {
        let one = Settings::of(&spec(1000, None, 1024));
        let three = Settings::of(&spec(3000, Some(3500), 1024));
        assert_eq!((one.weight, one.shares, one.quota_us), (100, 1024, None));
        assert_eq!(
            (three.weight, three.shares, three.quota_us),
            (300, 3072, Some(350_000))
        );
        assert_eq!(one.memory_bytes, (1024 + VMM_OVERHEAD_MIB) << 20);
        // The smallest request still gets the kernel's smallest valid values.
        let tiny = Settings::of(&spec(10, Some(10), 16));
        assert_eq!(
            (tiny.weight, tiny.shares, tiny.quota_us),
            (1, 10, Some(1000))
        );
        let huge = Settings::of(&spec(100_000, None, 16));
        assert_eq!(huge.weight, 10_000);
    }
}
