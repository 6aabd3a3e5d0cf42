//! One task waits for children and hands each exit status to the exec that spawned it.
//!
//! Spawning and reaping share one lock: a child is registered before the reaper can
//! possibly see its exit, so a fast-exiting process never loses its status. As init the
//! reaper also collects orphans reparented to PID 1 (`waitpid(-1)`); otherwise it waits
//! only for the pids it registered and leaves every other child alone.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// A raw `wait` status, decoded by the exec.
pub type WaitStatus = libc::c_int;

#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

struct Inner {
    /// pid -> where its exit status goes.
    waiting: Mutex<HashMap<libc::pid_t, oneshot::Sender<WaitStatus>>>,
    reap_all: bool,
}

impl Reaper {
    /// Starts the reaper task on the current tokio runtime. `reap_all`: init duties.
    pub fn start(reap_all: bool) -> io::Result<Reaper> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper {
            inner: Arc::new(Inner {
                waiting: Mutex::new(HashMap::new()),
                reap_all,
            }),
        };
        let inner = reaper.inner.clone();
        tokio::spawn(async move {
            // Children that exited before the handler was installed.
            inner.reap();
            while sigchld.recv().await.is_some() {
                inner.reap();
            }
        });
        Ok(reaper)
    }

    /// Starts a process with `start` (which returns its pid) and registers the pid under
    /// the reaper's lock, so its exit cannot be collected before it is registered.
    pub fn spawn(
        &self,
        start: impl FnOnce() -> io::Result<libc::pid_t>,
    ) -> io::Result<(libc::pid_t, oneshot::Receiver<WaitStatus>)> {
        let mut waiting = self.inner.lock();
        let pid = start()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Spawns `cmd` (forked by std) and registers its pid. The caller must not wait for
    /// the `Child` itself.
    pub fn spawn_command(
        &self,
        cmd: &mut Command,
    ) -> io::Result<(libc::pid_t, oneshot::Receiver<WaitStatus>)> {
        self.spawn(|| {
            let child = cmd.spawn()?;
            // Dropping a std Child neither kills nor waits for it.
            libc::pid_t::try_from(child.id())
                .map_err(|_| io::Error::other("child pid out of range"))
        })
    }

    /// The pids of every running exec (their process groups have the same ids).
    pub fn running(&self) -> Vec<libc::pid_t> {
        self.inner.lock().keys().copied().collect()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<libc::pid_t, oneshot::Sender<WaitStatus>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reap(&self) {
        let mut waiting = self.lock();
        if self.reap_all {
            loop {
                let mut status: WaitStatus = 0;
                // SAFETY: waitpid writes the status to a valid local.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                match waiting.remove(&pid) {
                    Some(tx) => {
                        let _ = tx.send(status);
                    }
                    None => log::debug!("reaped orphan {pid} (status {status:#x})"),
                }
            }
        } else {
            let pids: Vec<libc::pid_t> = waiting.keys().copied().collect();
            for pid in pids {
                let mut status: WaitStatus = 0;
                // SAFETY: waitpid writes the status to a valid local.
                let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if rc == pid {
                    if let Some(tx) = waiting.remove(&pid) {
                        let _ = tx.send(status);
                    }
                } else if rc < 0 {
                    // Someone else reaped it: the exec learns it lost the status.
                    log::error!("waitpid({pid}): {}", io::Error::last_os_error());
                    waiting.remove(&pid);
                }
            }
        }
    }
}

/// Sends `sig` to the process group `pgid` (each exec leads its own group).
pub fn kill_group(pgid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
    if unsafe { libc::kill(-pgid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[tokio::test]
    async fn delivers_exit_status_of_fast_children() {
        let reaper = Reaper::start(false).unwrap();
        let mut waits = Vec::new();
        for code in 0..20 {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(format!("exit {code}"));
            waits.push((code, reaper.spawn_command(&mut cmd).unwrap().1));
        }
        for (code, rx) in waits {
            let status = std::process::ExitStatus::from_raw(rx.await.unwrap());
            assert_eq!(status.code(), Some(code));
        }
        assert!(reaper.running().is_empty());
    }
}
