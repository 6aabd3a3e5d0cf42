//! The `Agent` gRPC service: thin glue from requests to exec sessions and file ops.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::pb::agent_server::Agent;
use agent::pb::exec_input::Input;
use agent::pb::read_file_response::Part as ReadPart;
use agent::pb::write_file_request::Part as WritePart;
use agent::pb::{
    Empty, ExecInput, ExecOutput, FileInfo, FreezeRequest, FreezeResponse, ListRequest,
    ListResponse, MakeDirRequest, NetworkConfig, NetworkConfigured, PingRequest, PingResponse,
    ReadFileRequest, ReadFileResponse, RemoveRequest, RenameRequest, ShutdownRequest, StatRequest,
    ThawRequest, ThawResponse, WriteFileRequest, WriteFileResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::errors::path_status;
use super::freeze::{FreezeError, Freezer, DEFAULT_TIMEOUT};
use super::reaper::Reaper;
use super::sandbox_cgroup::SandboxCgroup;
use super::{exec, files, init, network, session};

/// Chunk size for ReadFile.
const READ_CHUNK: usize = 64 * 1024;

pub struct AgentService {
    started: Instant,
    reaper: Reaper,
    /// Where execs run, when the guest has cgroup v2.
    cgroup: Option<Arc<SandboxCgroup>>,
    /// Where user lookups read passwd and group, and ConfigureNetwork writes resolv.conf.
    etc: PathBuf,
    /// Tells `main` to shut down (after this RPC's reply has gone out).
    shutdown: mpsc::Sender<()>,
    freezer: Arc<Freezer>,
}

impl AgentService {
    pub fn new(
        reaper: Reaper,
        cgroup: Option<Arc<SandboxCgroup>>,
        shutdown: mpsc::Sender<()>,
    ) -> AgentService {
        AgentService {
            started: Instant::now(),
            reaper,
            cgroup,
            etc: PathBuf::from("/etc"),
            shutdown,
            freezer: Arc::default(),
        }
    }
}

/// How long one blocking file operation (an open, a read, a rename) may take before the
/// call fails: a hung filesystem (a FUSE daemon that never answers) must not hang it.
const FILE_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Blocking file operations at once. An operation stuck in the kernel keeps its thread
/// (and its permit) until the kernel lets go; the rest of the agent never waits for them.
const MAX_FILE_OPS: usize = 64;
static FILE_OPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_FILE_OPS);

fn too_slow() -> Status {
    Status::deadline_exceeded(format!(
        "the file operation did not finish within {FILE_OP_TIMEOUT:?} (a hung filesystem, \
         or {MAX_FILE_OPS} such operations already waiting)"
    ))
}

/// Runs blocking file-system work off the reactor, within `FILE_OP_TIMEOUT`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let work = async {
        let permit = FILE_OPS
            .acquire()
            .await
            .map_err(|_| Status::internal("file operations are closed"))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| Status::internal(format!("file operation failed: {e}")))?
    };
    tokio::time::timeout(FILE_OP_TIMEOUT, work)
        .await
        .map_err(|_| too_slow())?
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            hostname: init::hostname(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }))
    }

    type ExecStream = BoxStream<ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = request.into_inner();
        let start = match input.message().await? {
            Some(ExecInput {
                input: Some(Input::Start(start)),
            }) => start,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first Exec input must be `start`",
                ))
            }
            None => return Err(Status::invalid_argument("Exec input ended before `start`")),
        };
        // A plain exec outside a cgroup starts inline: posix_spawn holds this thread only
        // until the child has exec'd, less than a hand-off to a blocking thread costs.
        // Joining the sandbox cgroup, switching users (which reads /etc/passwd) and a PTY
        // need a fork: those go to a blocking thread.
        let (plan, child) = if start.user.is_empty() && !start.tty && self.cgroup.is_none() {
            let plan = exec::plan(start, &self.etc)?;
            let child = exec::spawn(&plan, &self.reaper, None)?;
            (plan, child)
        } else {
            let (etc, reaper, cgroup) =
                (self.etc.clone(), self.reaper.clone(), self.cgroup.clone());
            blocking(move || {
                let plan = exec::plan(start, &etc)?;
                let child = exec::spawn(&plan, &reaper, cgroup.as_ref())?;
                Ok((plan, child))
            })
            .await?
        };
        let label = exec::describe(&plan.argv);
        log::debug!("exec {} started: {label}", child.pid);
        let output = session::start(child, input, plan.timeout, label);
        Ok(Response::new(Box::pin(output)))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<WriteFileRequest>>,
    ) -> Result<Response<WriteFileResponse>, Status> {
        let mut input = request.into_inner();
        let header = match input.message().await? {
            Some(WriteFileRequest {
                part: Some(WritePart::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first WriteFile part must be `header`",
                ))
            }
        };
        let (path, mode, parents) = (header.path, header.mode, header.make_parents);
        let (temp, file) = blocking(move || files::TempFile::create(&path, mode, parents)).await?;
        let mut file = tokio::fs::File::from_std(file);
        let werr = |e: std::io::Error| path_status("write", temp.display(), &e);
        let mut size = 0u64;
        // Dropping `temp` on any early return (an error, or the client going away and
        // this future being dropped) removes the partial file.
        while let Some(part) = input.message().await? {
            match part.part {
                Some(WritePart::Data(data)) => {
                    file.write_all(&data).await.map_err(werr)?;
                    size += data.len() as u64;
                }
                Some(WritePart::Header(_)) => {
                    return Err(Status::invalid_argument("WriteFile got a second header"))
                }
                None => {}
            }
        }
        file.flush().await.map_err(werr)?;
        drop(file.into_std().await);
        blocking(move || temp.commit()).await?;
        Ok(Response::new(WriteFileResponse { size }))
    }

    type ReadFileStream = BoxStream<ReadFileResponse>;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let request = request.into_inner();
        let (path, max_bytes) = (request.path, request.max_bytes);
        let p = path.clone();
        let (file, info) = blocking(move || files::open_for_read(&p)).await?;
        let (tx, rx) = mpsc::channel(4);
        // The client going away ends this task at its next send: nothing keeps reading.
        tokio::spawn(async move {
            let first = ReadFileResponse {
                part: Some(ReadPart::Info(info)),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let mut file = tokio::fs::File::from_std(file);
            let mut left = if max_bytes == 0 { u64::MAX } else { max_bytes };
            while left > 0 {
                let mut buf =
                    vec![0u8; READ_CHUNK.min(usize::try_from(left).unwrap_or(READ_CHUNK))];
                let read = tokio::time::timeout(FILE_OP_TIMEOUT, file.read(&mut buf)).await;
                let msg = match read {
                    Ok(Ok(0)) => return,
                    // A pseudo file with nothing more to give now (O_NONBLOCK): its end.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Ok(Ok(n)) => {
                        buf.truncate(n);
                        left -= n as u64;
                        Ok(ReadFileResponse {
                            part: Some(ReadPart::Data(buf.into())),
                        })
                    }
                    Ok(Err(e)) => Err(path_status("read", &path, &e)),
                    Err(_) => Err(too_slow()),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn make_dir(&self, request: Request<MakeDirRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        blocking(move || files::make_dir(&r.path, r.mode, r.parents)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let path = request.into_inner().path;
        let entries = blocking(move || files::list(&path)).await?;
        Ok(Response::new(ListResponse { entries }))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<FileInfo>, Status> {
        let path = request.into_inner().path;
        Ok(Response::new(blocking(move || files::stat(&path)).await?))
    }

    async fn remove(&self, request: Request<RemoveRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        blocking(move || files::remove(&r.path, r.recursive)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn rename(&self, request: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        blocking(move || files::rename(&r.from, &r.to)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn shutdown(&self, _: Request<ShutdownRequest>) -> Result<Response<Empty>, Status> {
        log::info!("shutdown requested");
        let _ = self.shutdown.try_send(());
        Ok(Response::new(Empty {}))
    }

    async fn freeze(
        &self,
        request: Request<FreezeRequest>,
    ) -> Result<Response<FreezeResponse>, Status> {
        let request = request.into_inner();
        let timeout = match request.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let freezer = self.freezer.clone();
        // No time limit of our own: the sync may take long with much dirty data, and the
        // host's call has its deadline. Not under FILE_OPS either: a freeze is rare.
        let (generation, reply) =
            tokio::task::spawn_blocking(move || freezer.freeze(&request.disk_serial))
                .await
                .map_err(|e| Status::internal(format!("freeze failed: {e}")))?
                .map_err(|e| freeze_status(&e))?;
        log::info!("froze {:?} for a snapshot", reply.mountpoints);
        let freezer = self.freezer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = tokio::task::spawn_blocking(move || freezer.thaw_if(generation)).await;
        });
        Ok(Response::new(reply))
    }

    async fn thaw(&self, _: Request<ThawRequest>) -> Result<Response<ThawResponse>, Status> {
        let freezer = self.freezer.clone();
        let reply = tokio::task::spawn_blocking(move || freezer.thaw())
            .await
            .map_err(|e| Status::internal(format!("thaw failed: {e}")))?;
        Ok(Response::new(reply))
    }

    async fn configure_network(
        &self,
        request: Request<NetworkConfig>,
    ) -> Result<Response<NetworkConfigured>, Status> {
        let plan = network::plan(&request.into_inner()).map_err(|e| e.status())?;
        let resolv_conf = self.etc.join("resolv.conf");
        // Not under FILE_OPS or its time limit, like a freeze: rare, and a few ioctls and a
        // small file. Runs on a thread of this process: in the agent's network namespace.
        let interface =
            tokio::task::spawn_blocking(move || network::configure(&plan, &resolv_conf))
                .await
                .map_err(|e| Status::internal(format!("network configuration failed: {e}")))?
                .map_err(|e| e.status())?;
        Ok(Response::new(NetworkConfigured { interface }))
    }
}

fn freeze_status(e: &FreezeError) -> Status {
    let code = match e {
        FreezeError::AlreadyFrozen => tonic::Code::FailedPrecondition,
        FreezeError::Plan { source, .. } | FreezeError::Mount { source, .. } => {
            super::errors::io_code(source)
        }
    };
    Status::new(code, e.to_string())
}
