//! Sealing a drive's qcow2 overlay as a snapshot, in O(1) whatever the disk holds:
//!
//! 1. `Plan::new` (guest running): a new overlay `.NAME.next` beside the active one,
//!    backed by the snapshot's path, which does not exist yet.
//! 2. `Plan::switch` (the drive's I/O held): flush; hard-link the active overlay as the
//!    snapshot; seal it (read-only, shared lock); open the new overlay on it; rename the
//!    new overlay over the active name. The active path always names the writable top.
//! 3. `Plan::finish` (I/O flowing again): sync both directories, mark the snapshot
//!    read-only.
//!
//! A crash between the link and the rename leaves the active overlay with two names;
//! opening it then is refused (see `open::check_resumed`), so a torn snapshot is never
//! written, and the state before the snapshot is still whole in either name.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use devices::disk::{qcow2, DiskEngine, ImageFormat, Qcow2Image, MAX_LAYERS};

use super::open::absolute;
use crate::sandbox::SnapshotError;

pub struct Plan {
    active: PathBuf,
    snapshot: PathBuf,
    next: PathBuf,
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Failed(format!("cannot {what} {}: {e}", path.display()))
}

impl Plan {
    /// Checks the request and creates the overlay that will carry on.
    pub fn new(top: &Qcow2Image, active: &Path, snapshot: &Path) -> Result<Self, SnapshotError> {
        let snapshot = absolute(snapshot).map_err(|e| failed("resolve", snapshot, e))?;
        if snapshot.symlink_metadata().is_ok() {
            return Err(SnapshotError::Refused(format!(
                "{} exists: a snapshot is always a new file",
                snapshot.display()
            )));
        }
        // The sealed overlay and the new one join the chain below.
        let layers = top.backing().map_or(0, |l| l.depth()) + 2;
        if layers > MAX_LAYERS {
            return Err(SnapshotError::Refused(format!(
                "the chain of {} would have {layers} layers, more than {MAX_LAYERS}: \
                 flatten it with `vmm image flatten` and start from that",
                active.display()
            )));
        }
        let name = active.file_name().unwrap_or_default().to_string_lossy();
        let next = active.with_file_name(format!(".{name}.next"));
        // Left by a snapshot that was cut short before its rename: never in use.
        let _ = std::fs::remove_file(&next);
        qcow2::create(
            &next,
            top.size(),
            top.cluster_size().trailing_zeros(),
            Some((&snapshot.to_string_lossy(), ImageFormat::Qcow2)),
        )
        .map_err(|e| SnapshotError::Failed(e.to_string()))?;
        Ok(Self {
            active: active.to_path_buf(),
            snapshot,
            next,
        })
    }

    pub fn snapshot(&self) -> &Path {
        &self.snapshot
    }

    /// Seals `top` as the snapshot and returns the overlay that carries on. The caller
    /// holds the drive's I/O. On an error before the seal, `top` carries on as before.
    pub fn switch(&self, top: &Qcow2Image) -> Result<Qcow2Image, SnapshotError> {
        let undo = |e: SnapshotError, linked: bool| {
            if linked {
                let _ = std::fs::remove_file(&self.snapshot);
            }
            let _ = std::fs::remove_file(&self.next);
            e
        };
        top.flush()
            .map_err(|e| undo(failed("flush", &self.active, e), false))?;
        if let Err(e) = std::fs::hard_link(&self.active, &self.snapshot) {
            let e = match e.raw_os_error() {
                Some(libc::EEXIST) => SnapshotError::Refused(format!(
                    "{} exists: a snapshot is always a new file",
                    self.snapshot.display()
                )),
                Some(libc::EXDEV) => SnapshotError::Refused(format!(
                    "{} is not on the filesystem of the overlay {}: a snapshot must be",
                    self.snapshot.display(),
                    self.active.display()
                )),
                _ => failed("create", &self.snapshot, e),
            };
            return Err(undo(e, false));
        }
        let sealed = top
            .seal()
            .map_err(|e| undo(SnapshotError::Failed(e.to_string()), true))?;
        // From here `top` takes no writes: a failure leaves the drive read-only.
        let next = Qcow2Image::open_on(&self.next, sealed).map_err(|e| {
            log::error!("the drive's overlay is sealed but the new one cannot open: {e}");
            undo(SnapshotError::Failed(e.to_string()), true)
        })?;
        std::fs::rename(&self.next, &self.active).map_err(|e| {
            log::error!("the drive's overlay is sealed but the new one cannot take its name: {e}");
            undo(failed("rename", &self.next, e), true)
        })?;
        Ok(next)
    }

    /// Makes the snapshot and the switch durable; returns the bytes the snapshot takes.
    pub fn finish(&self) -> Result<u64, SnapshotError> {
        for path in [&self.active, &self.snapshot] {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            sync_dir(dir).map_err(|e| failed("sync", dir, e))?;
        }
        let meta =
            std::fs::metadata(&self.snapshot).map_err(|e| failed("stat", &self.snapshot, e))?;
        let mut perms = meta.permissions();
        perms.set_mode(perms.mode() & !0o222);
        std::fs::set_permissions(&self.snapshot, perms)
            .map_err(|e| failed("make read-only", &self.snapshot, e))?;
        Ok(meta.blocks() * 512)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `vmm snapshot --disk`: seals the overlay of a stopped sandbox. Its exclusive lock
/// refuses an overlay a running VM has open.
pub fn seal_stopped(active: &Path, snapshot: &Path) -> Result<(PathBuf, u64), SnapshotError> {
    let top = Qcow2Image::open(active, true).map_err(|e| SnapshotError::Refused(e.to_string()))?;
    let plan = Plan::new(&top, active, snapshot)?;
    let next = plan.switch(&top)?;
    drop(next);
    let size = plan.finish()?;
    Ok((plan.snapshot, size))
}
