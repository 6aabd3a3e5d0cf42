//! The `vmm.sandbox.v1.Sandbox` service: status, exec/attach, file relays, terminate.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use devices::bus::lock;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use vmm_protocol::api::sandbox_server::Sandbox;
use vmm_protocol::api::{
    exec_request, status_response::State, Attach, ExecEvent, ExecInfo, ExecRequest,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, TerminateRequest,
    TerminateResponse,
};
use vmm_protocol::pb::{self, exec_input, ExecInput};

use super::exec::{attach, Exec, Offsets};
use super::{EndCause, Supervisor, DEFAULT_GRACE};

type EventStream = Pin<Box<dyn Stream<Item = Result<ExecEvent, Status>> + Send>>;
type FileStream = Pin<Box<dyn Stream<Item = Result<pb::ReadFileResponse, Status>> + Send>>;

pub struct SandboxService {
    supervisor: Arc<Supervisor>,
}

impl SandboxService {
    pub fn new(supervisor: Arc<Supervisor>) -> Self {
        Self { supervisor }
    }

    /// The agent client for a new call: none while terminating; a lost agent is caught
    /// by `unless_agent_lost` around the call.
    fn agent(&self) -> Result<pb::agent_client::AgentClient<tonic::transport::Channel>, Status> {
        self.supervisor.agent_for_call()
    }

    fn find_attach(&self, a: &Attach) -> Result<Arc<Exec>, Status> {
        let exec = self
            .supervisor
            .exec(&a.exec_id)
            .ok_or_else(|| Status::not_found(format!("no exec with id {:?}", a.exec_id)))?;
        if !a.from_oldest {
            exec.check_offsets(a.stdout_offset, a.stderr_offset)
                .map_err(|e| Status::out_of_range(e.to_string()))?;
        }
        Ok(exec)
    }
}

/// How much of an exec's argv Status repeats: every exec is listed, so the answer stays
/// small whatever the clients ran.
const STATUS_ARGV_BYTES: usize = 1024;

/// The argv as Status shows it: whole arguments up to `STATUS_ARGV_BYTES`, then "…".
pub fn summarize_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = 0;
    for arg in argv {
        if used + arg.len() > STATUS_ARGV_BYTES {
            let room = STATUS_ARGV_BYTES.saturating_sub(used);
            let cut = (0..=room.min(arg.len()))
                .rev()
                .find(|&i| arg.is_char_boundary(i))
                .unwrap_or(0);
            out.push(format!("{}…", &arg[..cut]));
            break;
        }
        used += arg.len();
        out.push(arg.clone());
    }
    out
}

/// The exec's events, ended early by an error about the client's input. The stream ends
/// when the events do, whether or not the client still holds its input stream open.
fn until_input_error(
    mut events: super::exec::EventStream,
    mut input_errors: mpsc::Receiver<Result<ExecEvent, Status>>,
) -> ReceiverStream<Result<ExecEvent, Status>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut input_open = true;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(event) => {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                error = input_errors.recv(), if input_open => match error {
                    Some(error) => {
                        let _ = tx.send(error).await;
                        return;
                    }
                    None => input_open = false,
                },
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Highest signal number Linux has (SIGRTMAX).
const MAX_SIGNAL: i32 = 64;

/// Forwards a client's stdin/signals/resizes to the process until the client goes. A
/// message the process cannot get (a signal out of range, a second start or attach) ends
/// this client's stream with INVALID_ARGUMENT, sent through `errors`; the process runs on
/// and can be attached again.
async fn forward_input(
    mut from_client: Streaming<ExecRequest>,
    exec: Arc<Exec>,
    errors: mpsc::Sender<Result<ExecEvent, Status>>,
) {
    while let Ok(Some(req)) = from_client.message().await {
        let input = match req.request {
            Some(exec_request::Request::Stdin(d)) => exec_input::Input::Stdin(d),
            Some(exec_request::Request::CloseStdin(c)) => exec_input::Input::CloseStdin(c),
            Some(exec_request::Request::Signal(s)) if (1..=MAX_SIGNAL).contains(&s) => {
                exec_input::Input::Signal(s)
            }
            Some(exec_request::Request::Signal(s)) => {
                let msg = format!("signal {s} is out of range (1-{MAX_SIGNAL})");
                let _ = errors.send(Err(Status::invalid_argument(msg))).await;
                return;
            }
            Some(exec_request::Request::Resize(w)) => exec_input::Input::Resize(w),
            Some(exec_request::Request::Start(_) | exec_request::Request::Attach(_)) => {
                let msg = "start and attach may only be the first message of an exec stream";
                let _ = errors.send(Err(Status::invalid_argument(msg))).await;
                return;
            }
            None => continue,
        };
        if exec
            .input
            .send(ExecInput { input: Some(input) })
            .await
            .is_err()
        {
            return;
        }
    }
}

#[tonic::async_trait]
impl Sandbox for SandboxService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = &self.supervisor;
        let (state, ready_after, detail) = {
            let h = lock(&s.health);
            (h.state, h.ready_after, h.detail.clone())
        };
        let mut execs: Vec<ExecInfo> = lock(&s.execs.execs)
            .values()
            .map(|e| {
                let st = lock(&e.state);
                ExecInfo {
                    exec_id: e.id.clone(),
                    argv: e.argv.clone(),
                    pid: st.pid,
                    running: st.exited.is_none() && st.error.is_none(),
                    exited: st.exited,
                    stdout_bytes: st.stdout.end(),
                    stderr_bytes: st.stderr.end(),
                }
            })
            .collect();
        execs.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
        Ok(Response::new(StatusResponse {
            state: state as i32,
            uptime_ms: s.options.started.elapsed().as_millis() as u64,
            ready_after_ms: ready_after.map_or(0, |d| d.as_millis() as u64),
            execs,
            detail,
        }))
    }

    type ExecStream = EventStream;

    async fn exec(
        &self,
        request: Request<Streaming<ExecRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let mut from_client = request.into_inner();
        let first = from_client
            .message()
            .await?
            .and_then(|r| r.request)
            .ok_or_else(|| Status::invalid_argument("the first message must be start or attach"))?;
        let (exec, from, follow) = match first {
            exec_request::Request::Start(start) => (
                self.supervisor.start_exec(start, false).await?,
                Offsets::At(0, 0),
                true,
            ),
            exec_request::Request::Attach(a) => {
                let exec = self.find_attach(&a)?;
                let from = match a.from_oldest {
                    true => Offsets::Oldest,
                    false => Offsets::At(a.stdout_offset, a.stderr_offset),
                };
                (exec, from, !a.no_follow)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be start or attach",
                ))
            }
        };
        let (errors, input_errors) = mpsc::channel(1);
        tokio::spawn(forward_input(from_client, exec.clone(), errors));
        let events = attach(exec, from, follow, self.supervisor.clone());
        Ok(Response::new(Box::pin(until_input_error(
            events,
            input_errors,
        ))))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<pb::WriteFileRequest>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        let mut from_client = request.into_inner();
        let mut agent = self.agent()?;
        // Chunks go to the agent as they arrive. If the client's stream breaks, the agent
        // call is dropped (cancelled), so a partial upload is never taken as complete.
        let (tx, rx) = mpsc::channel(4);
        let (broken_tx, broken_rx) = oneshot::channel::<Status>();
        tokio::spawn(async move {
            loop {
                match from_client.message().await {
                    Ok(Some(chunk)) => {
                        if tx.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = broken_tx.send(status);
                        return;
                    }
                }
            }
        });
        let upload = async {
            tokio::select! {
                result = agent.write_file(ReceiverStream::new(rx)) => result,
                Ok(status) = broken_rx => Err(Status::cancelled(format!("upload interrupted: {}", status.message()))),
            }
        };
        self.supervisor.unless_agent_lost(upload).await
    }

    type ReadFileStream = FileStream;

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<FileStream>, Status> {
        let mut agent = self.agent()?;
        let supervisor = &self.supervisor;
        let mut from_agent = supervisor
            .unless_agent_lost(agent.read_file(request.into_inner()))
            .await?
            .into_inner();
        // Relayed chunk by chunk, so a download stuck on a lost agent ends with UNAVAILABLE.
        let (tx, rx) = mpsc::channel(4);
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            loop {
                let next = supervisor.unless_agent_lost(from_agent.message()).await;
                let item = match next {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn make_dir(
        &self,
        request: Request<pb::MakeDirRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let mut agent = self.agent()?;
        let call = agent.make_dir(request.into_inner());
        self.supervisor.unless_agent_lost(call).await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let mut agent = self.agent()?;
        let call = agent.list(request.into_inner());
        self.supervisor.unless_agent_lost(call).await
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        let mut agent = self.agent()?;
        let call = agent.stat(request.into_inner());
        self.supervisor.unless_agent_lost(call).await
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let mut agent = self.agent()?;
        let call = agent.remove(request.into_inner());
        self.supervisor.unless_agent_lost(call).await
    }

    async fn rename(
        &self,
        request: Request<pb::RenameRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let mut agent = self.agent()?;
        let call = agent.rename(request.into_inner());
        self.supervisor.unless_agent_lost(call).await
    }

    async fn terminate(
        &self,
        request: Request<TerminateRequest>,
    ) -> Result<Response<TerminateResponse>, Status> {
        let grace = match request.into_inner().grace_ms {
            0 => DEFAULT_GRACE,
            ms => Duration::from_millis(ms),
        };
        let supervisor = self.supervisor.clone();
        lock(&supervisor.health).state = State::Terminating;
        tokio::spawn(async move { supervisor.terminate(grace, EndCause::Terminated).await });
        Ok(Response::new(TerminateResponse {}))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        if self.supervisor.terminating.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition("the sandbox is terminating"));
        }
        let reply = self.supervisor.snapshot(request.into_inner()).await?;
        Ok(Response::new(reply))
    }
}
