//! The `vmm-agent` binary's parts: command line, PID 1 duties, process and file
//! services, and the listeners that carry the gRPC `Agent` service.

pub mod args;
pub mod errors;
pub mod exec;
pub mod fdio;
pub mod files;
pub mod freeze;
pub mod init;
pub mod listen;
pub mod logger;
pub mod network;
pub mod pty;
pub mod reaper;
pub mod sandbox_cgroup;
pub mod service;
pub mod session;
pub mod spawn;
pub mod user;

use std::sync::Arc;
use std::time::Duration;

use agent::pb::agent_server::AgentServer;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tonic::transport::Server;

use args::{Args, Listen};
use reaper::Reaper;
use service::AgentService;

/// Time for the Shutdown reply to reach the client before the agent goes away.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

use agent::connect::{CONNECTION_WINDOW, MAX_STREAMS, STREAM_WINDOW};

/// How the agent ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Sync, then end the VM (PID 1 on vsock).
    PowerOff,
    /// Sync, then exit 0 (the jail, or a service).
    Exit,
}

/// Serves until Shutdown or SIGTERM; returns how to end, or a fatal error.
pub async fn serve(args: &Args, is_init: bool) -> Result<Exit, Box<dyn std::error::Error>> {
    let reaper = Reaper::start(is_init)?;
    let cgroup = match sandbox_cgroup::SandboxCgroup::setup(args.sandbox_pids_max) {
        Ok(cgroup) => {
            log::info!(
                "execs run in {} (pids.max {})",
                cgroup.path.display(),
                cgroup.pids_max
            );
            Some(Arc::new(cgroup))
        }
        Err(e) => {
            log::warn!("execs run without a sandbox cgroup: {e}");
            None
        }
    };
    let mut sigterm = signal(SignalKind::terminate())?;
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel(1);
    let svc = AgentServer::new(AgentService::new(reaper.clone(), cgroup, shutdown_tx))
        .max_decoding_message_size(16 << 20);
    // Flow control: each stream may buffer STREAM_WINDOW of input the agent has not
    // consumed; the connection window is as large as HTTP/2 allows, so input held up
    // for one exec (a process not reading stdin) never starves the other streams.
    let builder = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS);
    let exit = if is_init && matches!(args.listen, Listen::Vsock(_)) {
        Exit::PowerOff
    } else {
        Exit::Exit
    };
    let server = async {
        match &args.listen {
            Listen::Vsock(port) => {
                let incoming = listen::vsock(*port)?;
                log::info!("listening on vsock port {port}");
                builder
                    .clone()
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await
            }
            Listen::Unix(path) => {
                let incoming = listen::unix(path)?;
                log::info!("listening on {}", path.display());
                builder
                    .clone()
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await
            }
        }
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
    };
    tokio::select! {
        r = server => {
            r?;
            Err("the server stopped".into())
        }
        _ = shutdown_rx.recv() => {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            stop_execs(&reaper);
            Ok(exit)
        }
        _ = sigterm.recv() => {
            log::info!("SIGTERM: shutting down");
            stop_execs(&reaper);
            Ok(exit)
        }
    }
}

/// Kills the process group of every exec still running.
fn stop_execs(reaper: &Reaper) {
    for pid in reaper.running() {
        let _ = reaper::kill_group(pid, libc::SIGKILL);
    }
}
