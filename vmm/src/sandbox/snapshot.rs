//! The Snapshot call: quiesce the guest's filesystems on a drive through the agent, have
//! the VM seal the drive's overlay, thaw. The guest always thaws, also when the seal
//! fails or the client goes away mid-call (the agent's own timeout is the last resort).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::Status;
use vmm_protocol::api::{SnapshotRequest, SnapshotResponse};
use vmm_protocol::pb::{FreezeRequest, ThawRequest};

use super::Supervisor;

/// The drive a request names when it names none.
pub const DEFAULT_DRIVE: &str = "rootfs";
/// How long the guest's filesystems may stay frozen if we never get to thaw them.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// The sync before the freeze writes out the guest's dirty data: allow for a lot of it.
const FREEZE_CALL_TIMEOUT: Duration = Duration::from_secs(120);
const THAW_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A drive's overlay sealed as a snapshot.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub path: PathBuf,
    /// Bytes the snapshot file takes on the host.
    pub size: u64,
    /// How long the drive's I/O was held.
    pub io_pause: Duration,
}

/// The VM's part of a live snapshot. `Err` is a one-line reason for the client.
pub trait DriveSnapshots: Send + Sync {
    /// Seals drive `id`'s writable overlay as `path` and carries on with a fresh overlay
    /// backed by it, holding the drive's I/O meanwhile.
    fn seal(&self, id: &str, path: &Path) -> Result<Sealed, SnapshotError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The request cannot be met (no such drive, not an overlay, path taken).
    #[error("{0}")]
    Refused(String),
    /// The seal failed on the host; the drive carries on as before.
    #[error("{0}")]
    Failed(String),
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Refused(m) => Status::failed_precondition(m),
            SnapshotError::Failed(m) => Status::internal(m),
        }
    }
}

impl Supervisor {
    pub(super) async fn snapshot(
        self: &Arc<Self>,
        request: SnapshotRequest,
    ) -> Result<SnapshotResponse, Status> {
        let drives = self.options.drives.clone().ok_or_else(|| {
            Status::failed_precondition("this sandbox has no VM drives to snapshot")
        })?;
        let drive = match request.drive.as_str() {
            "" => DEFAULT_DRIVE.to_string(),
            id => id.to_string(),
        };
        if request.path.is_empty() {
            return Err(Status::invalid_argument("the snapshot path is empty"));
        }
        let path = PathBuf::from(&request.path);
        let _one_at_a_time = self.snapshot_lock.lock().await;
        if request.no_freeze {
            let sealed = seal_inline(drives, drive, path).await?;
            return Ok(response(&sealed, sealed.io_pause, Vec::new()));
        }
        let mut agent = self.agent.clone();
        let freeze = agent.freeze(FreezeRequest {
            disk_serial: drive.clone(),
            timeout_ms: FREEZE_TIMEOUT.as_millis() as u64,
        });
        let frozen = match tokio::time::timeout(FREEZE_CALL_TIMEOUT, self.unless_agent_lost(freeze))
            .await
        {
            Ok(Ok(reply)) => reply.into_inner(),
            failed => {
                // The freeze may have happened with its answer lost: thaw to be sure,
                // unless the agent said a freeze was already in place (not ours).
                let not_ours =
                    matches!(&failed, Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition);
                if !not_ours {
                    let _ = self.thaw().await;
                }
                return Err(match failed {
                    Ok(Err(s)) => Status::new(
                        s.code(),
                        format!("cannot freeze the guest: {}", s.message()),
                    ),
                    _ => Status::deadline_exceeded(
                        "the agent did not freeze the filesystems in time",
                    ),
                });
            }
        };
        let froze_at = Instant::now();
        // Thaw whatever happened to the seal: a task of its own, so that a client that
        // drops this call does not leave the guest frozen until the agent's timeout.
        let supervisor = self.clone();
        let sealed = tokio::spawn(async move {
            let sealed = seal_inline(drives, drive, path).await;
            let thawed = supervisor.thaw().await;
            (sealed, thawed)
        });
        let (sealed, thawed) = sealed
            .await
            .map_err(|e| Status::internal(format!("the snapshot task failed: {e}")))?;
        let sealed = sealed?;
        let pause = match thawed {
            Ok(us) => Duration::from_micros(us),
            Err(e) => {
                log::warn!("{e}");
                froze_at.elapsed()
            }
        };
        Ok(response(&sealed, pause, frozen.mountpoints))
    }

    /// Thaws the guest; returns how long it was frozen, as the agent measured it.
    async fn thaw(&self) -> Result<u64, String> {
        let mut agent = self.agent.clone();
        match tokio::time::timeout(THAW_CALL_TIMEOUT, agent.thaw(ThawRequest {})).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                if reply.timed_out {
                    log::warn!(
                        "the guest thawed by itself before we asked: the seal took too long"
                    );
                }
                Ok(reply.frozen_us)
            }
            Ok(Err(s)) => Err(format!("cannot thaw the guest: {}", s.message())),
            Err(_) => Err("the agent did not answer the thaw in time; it thaws by itself".into()),
        }
    }
}

/// Seals on the supervisor's own thread: it blocks the API for the few milliseconds of
/// the switch (and whatever request the drive is finishing), but needs no thread of its
/// own, which the supervisor's seccomp filter could not create.
async fn seal_inline(
    drives: Arc<dyn DriveSnapshots>,
    drive: String,
    path: PathBuf,
) -> Result<Sealed, Status> {
    drives.seal(&drive, &path).map_err(Status::from)
}

fn response(sealed: &Sealed, pause: Duration, frozen: Vec<String>) -> SnapshotResponse {
    SnapshotResponse {
        path: sealed.path.display().to_string(),
        size: sealed.size,
        pause_ms: pause.as_secs_f64() * 1e3,
        io_pause_ms: sealed.io_pause.as_secs_f64() * 1e3,
        frozen,
    }
}
