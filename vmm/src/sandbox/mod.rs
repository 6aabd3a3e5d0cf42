//! The supervisor: serves the orchestrator's API (vmm.sandbox.v1) on a Unix socket and
//! relays it to the guest agent, keeping exec output so clients can re-attach.
//! It runs on its own tokio runtime; the VM (or the test jail) is told to end through
//! the `on_end` callback.

mod agent_link;
pub mod entrypoint;
mod exec;
mod exec_id;
mod output;
mod server;
mod service;
mod snapshot;
mod start;
pub mod thread_report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::bus::lock;
use tonic::transport::Channel;
use vmm_protocol::api::status_response::State;
use vmm_protocol::connect::Address;
use vmm_protocol::pb::agent_client::AgentClient;

/// What the supervisor does with a client's exec request before it reaches the agent, and
/// the log that keeps an exec's output for re-attach: public for the fuzz targets.
pub use exec_id::validate as validate_exec_id;
pub use output::{Budget, OutputError, OutputLog};
pub use server::ServeError;
pub use service::summarize_argv;
pub use snapshot::{DriveSnapshots, Sealed, SnapshotError};

use crate::seccomp::{Filters, ThreadKind};
use exec::Exec;

/// Why the supervisor ended the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// A client called Terminate.
    Terminated,
    /// The configured lifetime ran out.
    LifetimeExpired,
    /// The supervisor could not confine itself (its seccomp filter), so it never served.
    Unconfined,
    /// The entrypoint ended with this exit status (or could not start: 126/127).
    Entrypoint(i32),
}

pub struct Options {
    pub api_socket: PathBuf,
    pub agent: Address,
    /// End the sandbox this long after start.
    pub lifetime: Option<Duration>,
    /// Where to write the readiness line; stdout when None.
    pub ready_fd: Option<i32>,
    /// Process start, for "ready after".
    pub started: Instant,
    /// The supervisor thread installs its filter from these before it serves anyone.
    pub seccomp: Arc<Filters>,
    /// The VM's drives, for live snapshots; None in the test jail.
    pub drives: Option<Arc<dyn DriveSnapshots>>,
    /// With --net auto: what the agent configures before the sandbox is ready.
    pub network: Option<crate::hostnet::attach::GuestNetwork>,
    /// The sandbox's main process, started once it is ready.
    pub entrypoint: Option<entrypoint::Entrypoint>,
}

/// Default time the guest gets to sync and power off on Terminate.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

struct Health {
    state: State,
    ready_after: Option<Duration>,
    detail: String,
}

pub struct Supervisor {
    options: Options,
    agent: AgentClient<Channel>,
    /// A connection of its own for the health probes, so that they never queue behind
    /// the data of busy execs on `agent`'s connection.
    probe: AgentClient<Channel>,
    health: Mutex<Health>,
    /// True while the agent is lost: calls that wait for it end with UNAVAILABLE.
    agent_lost: tokio::sync::watch::Sender<bool>,
    execs: Arc<exec_id::ExecTable>,
    next_exec: AtomicU64,
    terminating: AtomicBool,
    end_cause: Arc<Mutex<Option<EndCause>>>,
    on_end: Box<dyn Fn(EndCause) + Send + Sync>,
    /// Set to stop the API server gracefully (answers in flight still go out).
    stop_serving: tokio::sync::watch::Sender<bool>,
    /// Becomes true once the API server has stopped.
    served: tokio::sync::watch::Receiver<bool>,
    /// One snapshot at a time: the agent holds one freeze.
    snapshot_lock: tokio::sync::Mutex<()>,
}

/// How long in-flight API answers (the Terminate reply itself) get before the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What the VMM keeps of a running supervisor.
pub struct Handle {
    end_cause: Arc<Mutex<Option<EndCause>>>,
}

impl Handle {
    /// Why the supervisor is ending the sandbox, once it started to: a guest that powers
    /// off at our request is a termination, not a guest decision.
    pub fn end_cause(&self) -> Option<EndCause> {
        *lock(&self.end_cause)
    }
}

impl Supervisor {
    fn set_health(&self, state: State, detail: String) {
        let mut h = lock(&self.health);
        if h.state == State::Terminating {
            return;
        }
        if state == State::Ready && h.ready_after.is_none() {
            h.ready_after = Some(self.options.started.elapsed());
        }
        h.state = state;
        h.detail = detail;
        self.agent_lost.send_replace(state == State::AgentLost);
    }

    /// Resolves once the agent is lost (at once if it is): the error for calls that were
    /// waiting on it.
    async fn agent_lost(&self) -> tonic::Status {
        let mut lost = self.agent_lost.subscribe();
        let _ = lost.wait_for(|lost| *lost).await;
        let detail = lock(&self.health).detail.clone();
        tonic::Status::unavailable(format!(
            "the agent is not answering ({detail}); retry once Status says READY"
        ))
    }

    /// `call`, unless the agent is or becomes lost first.
    async fn unless_agent_lost<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        tokio::select! {
            result = call => result,
            status = self.agent_lost() => Err(status),
        }
    }

    fn exec(&self, id: &str) -> Option<Arc<Exec>> {
        self.execs.get(id)
    }

    /// Asks the agent to sync and power off, then ends the sandbox after `grace` at most.
    async fn terminate(self: &Arc<Self>, grace: Duration, cause: EndCause) {
        if self.terminating.swap(true, Ordering::SeqCst) {
            return;
        }
        *lock(&self.end_cause) = Some(cause);
        lock(&self.health).state = State::Terminating;
        let mut agent = self.agent.clone();
        let shutdown = agent.shutdown(vmm_protocol::pb::ShutdownRequest {});
        match tokio::time::timeout(grace, shutdown).await {
            Ok(Ok(_)) => log::info!("agent synced and is shutting down"),
            // The guest powering off may cut the answer short: it synced first.
            Ok(Err(status)) => log::info!("agent shutdown: {}", status.message()),
            Err(_) => log::warn!("agent did not answer shutdown within {grace:?}"),
        }
        // Let the API answer what it was asked (Terminate included) before we go.
        let _ = self.stop_serving.send(true);
        let mut served = self.served.clone();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, served.wait_for(|done| *done)).await;
        (self.on_end)(cause);
    }
}

/// Starts the supervisor on its own runtime thread. Returns once the API socket is bound
/// (so a setup error is reported before the VM runs); readiness comes later.
pub fn spawn(
    options: Options,
    on_end: Box<dyn Fn(EndCause) + Send + Sync>,
) -> Result<Handle, ServeError> {
    // One thread, like the agent's: cross-thread wake-ups cost more than they spread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .thread_name("supervisor")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let listener = runtime.block_on(server::bind(&options.api_socket))?;
    // The lazy channel spawns its connection task on the runtime it is created in.
    let (agent, probe) = {
        let _runtime = runtime.enter();
        (
            agent_link::client(options.agent.clone()),
            agent_link::client(options.agent.clone()),
        )
    };
    let (stop_serving, stop_rx) = tokio::sync::watch::channel(false);
    let (served_tx, served) = tokio::sync::watch::channel(false);
    let supervisor = Arc::new(Supervisor {
        options,
        agent,
        probe,
        health: Mutex::new(Health {
            state: State::Starting,
            ready_after: None,
            detail: String::new(),
        }),
        agent_lost: tokio::sync::watch::channel(false).0,
        execs: Arc::default(),
        next_exec: AtomicU64::new(1),
        terminating: AtomicBool::new(false),
        end_cause: Arc::new(Mutex::new(None)),
        on_end,
        stop_serving,
        served,
        snapshot_lock: tokio::sync::Mutex::new(()),
    });
    let handle = Handle {
        end_cause: supervisor.end_cause.clone(),
    };
    std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            if let Err(e) = supervisor.options.seccomp.confine(ThreadKind::Supervisor) {
                log::error!("{e}");
                (supervisor.on_end)(EndCause::Unconfined);
                return;
            }
            runtime.block_on(async move {
                let s = supervisor.clone();
                tokio::spawn(agent_link::watch(s));
                if let Some(lifetime) = supervisor.options.lifetime {
                    let s = supervisor.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(lifetime).await;
                        log::warn!("sandbox lifetime of {lifetime:?} reached; terminating");
                        s.terminate(DEFAULT_GRACE, EndCause::LifetimeExpired).await;
                    });
                }
                if let Err(e) = server::serve(listener, supervisor, stop_rx).await {
                    log::error!("API server stopped: {e}");
                }
                let _ = served_tx.send(true);
                // The runtime (and its agent connection) lives until the process ends.
                std::future::pending::<()>().await;
            })
        })
        .map_err(ServeError::Runtime)?;
    Ok(handle)
}

impl EndCause {
    pub fn exit_reason(self) -> crate::exit::ExitReason {
        match self {
            Self::Terminated => crate::exit::ExitReason::Terminated,
            Self::LifetimeExpired => crate::exit::ExitReason::LifetimeExpired,
            Self::Unconfined => crate::exit::ExitReason::Vmm(
                "the supervisor could not install its seccomp filter".into(),
            ),
            Self::Entrypoint(code) => crate::exit::ExitReason::Entrypoint(code),
        }
    }
}

/// Runs only the supervisor against an agent that is already listening (the test jail,
/// or an agent reached by other means), until the sandbox ends or a signal stops it.
pub fn supervise(options: Options) -> Result<crate::exit::ExitReason, ServeError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let set = crate::signals::block_stop_signals();
    let seccomp = options.seccomp.clone();
    // No VM, no devices to report on.
    crate::signals::spawn_signal_thread(set, tx.clone(), seccomp.clone(), || {})
        .map_err(ServeError::Runtime)?;
    let exit = std::sync::Mutex::new(tx);
    let _handle = spawn(
        options,
        Box::new(move |cause| {
            let _ = lock(&exit).send(cause.exit_reason());
        }),
    )?;
    seccomp.confine(ThreadKind::Main)?;
    Ok(rx
        .recv()
        .unwrap_or(crate::exit::ExitReason::Vmm("supervisor ended".into())))
}
