//! The sandbox's main process: started as the exec "entrypoint" once the sandbox is
//! ready, its output kept as a ring (nobody has to read it), and its exit, unless the
//! sandbox keeps running, ends the sandbox with its exit status.

use std::sync::Arc;

use devices::bus::lock;
use vmm_protocol::api::StartExec;
use vmm_protocol::pb::{exited, ExecStart};

use super::{EndCause, Supervisor, DEFAULT_GRACE};

/// The exec id of the entrypoint (Status, `vmm logs`).
pub const ENTRYPOINT_ID: &str = "entrypoint";
/// The exit status for an entrypoint that could not start: the shell's "not found" when
/// the program or directory is missing, else "cannot execute".
const NOT_FOUND: i32 = 127;
const CANNOT_RUN: i32 = 126;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub argv: Vec<String>,
    /// The sandbox outlives the entrypoint.
    pub keep_running: bool,
}

/// Starts the entrypoint; then watches for its end on a task of its own.
pub async fn start(supervisor: &Arc<Supervisor>, entrypoint: &Entrypoint) {
    let start = StartExec {
        process: Some(ExecStart {
            argv: entrypoint.argv.clone(),
            ..Default::default()
        }),
        exec_id: ENTRYPOINT_ID.into(),
    };
    let code = match supervisor.start_exec(start, true).await {
        Ok(exec) => {
            log::info!(
                "entrypoint started: {:?} (pid {})",
                entrypoint.argv,
                lock(&exec.state).pid
            );
            let supervisor = supervisor.clone();
            let keep_running = entrypoint.keep_running;
            tokio::spawn(async move {
                let Some(code) = exec.wait_exit().await else {
                    return;
                };
                log::info!("the entrypoint exited with {code}");
                if !keep_running {
                    supervisor
                        .terminate(DEFAULT_GRACE, EndCause::Entrypoint(code))
                        .await;
                }
            });
            return;
        }
        Err(status) => {
            log::error!(
                "the entrypoint {:?} did not start: {}",
                entrypoint.argv,
                status.message()
            );
            if status.code() == tonic::Code::NotFound {
                NOT_FOUND
            } else {
                CANNOT_RUN
            }
        }
    };
    if !entrypoint.keep_running {
        // After the readiness line (the caller's next step): the sandbox did start.
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            supervisor
                .terminate(DEFAULT_GRACE, EndCause::Entrypoint(code))
                .await;
        });
    }
}

/// A process's exit status as a shell reports it: its code, or 128 + the signal.
pub fn status_code(status: Option<exited::Status>) -> i32 {
    match status {
        Some(exited::Status::Code(c)) => c,
        Some(exited::Status::Signal(s)) => 128 + s,
        None => CANNOT_RUN,
    }
}
