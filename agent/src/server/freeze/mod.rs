//! Quiescing a disk for a live snapshot: sync, then FIFREEZE every filesystem on it, and
//! thaw them again on request or when the freeze's time runs out (a host that went away
//! mid-snapshot must not leave the guest's disk frozen).

mod plan;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent::pb::{FreezeResponse, ThawResponse};

pub use plan::{parse_mountinfo, plan, DevNum, Mount, System};

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from linux/fs.h.
const FIFREEZE: libc::c_ulong = 0xc004_5877;
const FITHAW: libc::c_ulong = 0xc004_5878;

/// How long a freeze lasts when the request does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("a freeze is already in place")]
    AlreadyFrozen,
    #[error("cannot find the filesystems of disk {serial:?}: {source}")]
    Plan {
        serial: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {}: {source}", path.display())]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

struct Frozen {
    generation: u64,
    /// Open directories of the frozen filesystems, in freeze order.
    mounts: Vec<(PathBuf, File)>,
    since: Instant,
}

/// At most one freeze at a time.
#[derive(Default)]
pub struct Freezer {
    state: Mutex<FreezerState>,
}

#[derive(Default)]
struct FreezerState {
    frozen: Option<Frozen>,
    generation: u64,
    /// The last freeze ended by its timeout, not by Thaw: Thaw says so.
    timed_out: Option<Duration>,
}

impl Freezer {
    /// Syncs and freezes the filesystems of the disk with this serial; returns the freeze's
    /// generation (for `thaw_if`) and the reply. Blocking: run it off the reactor.
    pub fn freeze(&self, serial: &str) -> Result<(u64, FreezeResponse), FreezeError> {
        let mut state = lock(&self.state);
        if state.frozen.is_some() {
            return Err(FreezeError::AlreadyFrozen);
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| {
            FreezeError::Plan {
                serial: serial.into(),
                source,
            }
        })?;
        let system = System {
            sys_block: Path::new("/sys/block"),
            mountinfo: &mountinfo,
        };
        let mounts = plan(&system, serial).map_err(|source| FreezeError::Plan {
            serial: serial.into(),
            source,
        })?;
        let mut opened = Vec::with_capacity(mounts.len());
        let sync_start = Instant::now();
        for m in mounts {
            let dir = File::open(&m.mountpoint).map_err(mount_err("open", &m.mountpoint))?;
            // The bulk of the writing happens here, while the guest still runs: the freeze
            // that follows has little left to flush, so the pause stays short.
            // SAFETY: syncfs only takes the descriptor, owned by `dir`.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(mount_err("sync", &m.mountpoint)(io::Error::last_os_error()));
            }
            opened.push((m.mountpoint, dir));
        }
        let sync_ms = millis(sync_start.elapsed());
        let since = Instant::now();
        for i in 0..opened.len() {
            let (path, dir) = &opened[i];
            if let Err(e) = ioctl(dir, FIFREEZE) {
                let err = mount_err("freeze", path)(e);
                thaw_all(&opened[..i]);
                return Err(err);
            }
        }
        state.generation += 1;
        state.timed_out = None;
        let reply = FreezeResponse {
            mountpoints: opened
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect(),
            sync_ms,
        };
        state.frozen = Some(Frozen {
            generation: state.generation,
            mounts: opened,
            since,
        });
        Ok((state.generation, reply))
    }

    /// Thaws what is frozen, if anything.
    pub fn thaw(&self) -> ThawResponse {
        let mut state = lock(&self.state);
        match state.frozen.take() {
            Some(frozen) => {
                let mountpoints = thaw_all(&frozen.mounts);
                ThawResponse {
                    mountpoints,
                    frozen_us: micros(frozen.since.elapsed()),
                    timed_out: false,
                }
            }
            None => {
                let timed_out = state.timed_out.take();
                ThawResponse {
                    mountpoints: Vec::new(),
                    frozen_us: timed_out.map_or(0, micros),
                    timed_out: timed_out.is_some(),
                }
            }
        }
    }

    /// Thaws freeze `generation` if it is still in place: its time ran out.
    pub fn thaw_if(&self, generation: u64) {
        let mut state = lock(&self.state);
        if state.frozen.as_ref().map(|f| f.generation) != Some(generation) {
            return;
        }
        if let Some(frozen) = state.frozen.take() {
            log::warn!(
                "a freeze was not thawed in time; thawing {} filesystems",
                frozen.mounts.len()
            );
            thaw_all(&frozen.mounts);
            state.timed_out = Some(frozen.since.elapsed());
        }
    }
}

/// Thaws in reverse freeze order; returns the mount points thawed. A failure is logged:
/// the rest still thaw.
fn thaw_all(mounts: &[(PathBuf, File)]) -> Vec<String> {
    let mut thawed = Vec::with_capacity(mounts.len());
    for (path, dir) in mounts.iter().rev() {
        match ioctl(dir, FITHAW) {
            Ok(()) => thawed.push(path.display().to_string()),
            Err(e) => log::error!("cannot thaw {}: {e}", path.display()),
        }
    }
    thawed
}

fn ioctl(dir: &File, request: libc::c_ulong) -> io::Result<()> {
    // SAFETY: FIFREEZE and FITHAW take an unused int argument; the fd is owned by `dir`.
    if unsafe { libc::ioctl(dir.as_raw_fd(), request, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mount_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FreezeError + 'a {
    move |source| FreezeError::Mount {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn lock(m: &Mutex<FreezerState>) -> std::sync::MutexGuard<'_, FreezerState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
