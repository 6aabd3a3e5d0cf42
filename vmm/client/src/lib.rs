//! Rust client of the sandbox API (vmm.sandbox.v1), used by the CLI, the tests and Rust
//! orchestrators. It depends on the protocol crate only: no KVM, no agent.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use vmm_protocol::api::sandbox_client::SandboxClient;
use vmm_protocol::api::{
    exec_event, exec_request, Attach, ExecEvent, ExecRequest, ExecStarted, SnapshotRequest,
    SnapshotResponse, StartExec, StatusRequest, StatusResponse, TerminateRequest,
};
use vmm_protocol::connect::Address;
use vmm_protocol::pb::{self, ExecStart, Exited};

/// File transfer chunk size.
const FILE_CHUNK: usize = 256 << 10;
/// Requests (stdin chunks, signals, resizes) queued toward one exec.
const INPUT_QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the sandbox API at {path}")]
    Connect {
        path: std::path::PathBuf,
        #[source]
        source: vmm_protocol::connect::ConnectError,
    },
    #[error("{}", .0.message())]
    Status(#[from] Status),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

#[derive(Clone)]
pub struct Client {
    api: SandboxClient<Channel>,
}

/// An exec's two directions: requests to send (stdin, signals, resizes) and its events.
pub struct ExecSession {
    pub exec_id: String,
    pub pid: u32,
    pub input: mpsc::Sender<ExecRequest>,
    pub events: Streaming<ExecEvent>,
}

/// What a finished exec produced, for callers that want it all at once.
#[derive(Debug, Default, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exited: Option<Exited>,
}

impl ExecOutput {
    /// The exit code, or 128 + signal for a process killed by a signal.
    pub fn code(&self) -> Option<i32> {
        match self.exited.as_ref()?.status? {
            pb::exited::Status::Code(c) => Some(c),
            pb::exited::Status::Signal(s) => Some(128 + s),
        }
    }
}

pub fn request(r: exec_request::Request) -> ExecRequest {
    ExecRequest { request: Some(r) }
}

impl Client {
    pub async fn connect(api_socket: &Path) -> Result<Self, ClientError> {
        let channel = vmm_protocol::connect::channel(Address::Unix(api_socket.to_path_buf()))
            .await
            .map_err(|source| ClientError::Connect {
                path: api_socket.to_path_buf(),
                source,
            })?;
        Ok(Self {
            api: SandboxClient::new(channel)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        })
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        Ok(self
            .api
            .clone()
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    /// Opens an exec stream whose first requests are `initial` (start or attach first);
    /// more input can follow through the session.
    async fn open(&self, initial: Vec<exec_request::Request>) -> Result<ExecSession, ClientError> {
        let (tx, rx) = queued(initial);
        let (started, events) = self.call(rx).await?;
        Ok(ExecSession {
            exec_id: started.exec_id,
            pid: started.pid,
            input: tx,
            events,
        })
    }

    /// Sends an exec stream's requests and waits for its `started` event.
    async fn call(
        &self,
        requests: ReceiverStream<ExecRequest>,
    ) -> Result<(ExecStarted, Streaming<ExecEvent>), ClientError> {
        let mut events = self.api.clone().exec(requests).await?.into_inner();
        match events.message().await? {
            Some(ExecEvent {
                event: Some(exec_event::Event::Started(s)),
            }) => Ok((s, events)),
            other => Err(ClientError::Protocol(format!(
                "expected `started`, got {other:?}"
            ))),
        }
    }

    /// Starts a process; `exec_id` may be chosen by the caller.
    pub async fn exec(
        &self,
        process: ExecStart,
        exec_id: Option<String>,
    ) -> Result<ExecSession, ClientError> {
        self.open(vec![exec_request::Request::Start(StartExec {
            process: Some(process),
            exec_id: exec_id.unwrap_or_default(),
        })])
        .await
    }

    /// Re-attaches to a running or finished exec, replaying output from the offsets.
    pub async fn attach(
        &self,
        exec_id: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<ExecSession, ClientError> {
        self.open(vec![exec_request::Request::Attach(Attach {
            exec_id: exec_id.to_string(),
            stdout_offset,
            stderr_offset,
            ..Default::default()
        })])
        .await
    }

    /// The output of exec `exec_id` from the oldest byte still kept: up to now, or
    /// (`follow`) until it exits.
    pub async fn logs(&self, exec_id: &str, follow: bool) -> Result<ExecSession, ClientError> {
        self.open(vec![exec_request::Request::Attach(Attach {
            exec_id: exec_id.to_string(),
            from_oldest: true,
            no_follow: !follow,
            ..Default::default()
        })])
        .await
    }

    /// Runs `argv` with `stdin` to completion and collects its output.
    pub async fn run(&self, argv: &[&str], stdin: &[u8]) -> Result<ExecOutput, ClientError> {
        let process = ExecStart {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        // Stdin, its end and the end of all input travel with the start, in one write.
        let mut initial = vec![exec_request::Request::Start(StartExec {
            process: Some(process),
            exec_id: String::new(),
        })];
        if !stdin.is_empty() {
            initial.push(exec_request::Request::Stdin(bytes::Bytes::copy_from_slice(
                stdin,
            )));
        }
        initial.push(exec_request::Request::CloseStdin(pb::CloseStdin {}));
        let (tx, rx) = queued(initial);
        drop(tx);
        let (_, events) = self.call(rx).await?;
        collect_events(events).await
    }

    /// Streams `reader` into `path` in the sandbox with `mode` (0 = 0644).
    pub async fn write_file(
        &self,
        path: &str,
        mode: u32,
        mut reader: impl AsyncRead + Unpin + Send + 'static,
    ) -> Result<u64, ClientError> {
        use pb::write_file_request::Part;
        let (tx, rx) = mpsc::channel(4);
        let header = pb::WriteFileHeader {
            path: path.to_string(),
            mode,
            make_parents: false,
        };
        let mut call = self.api.clone();
        let upload = tokio::spawn(async move { call.write_file(ReceiverStream::new(rx)).await });
        let _ = tx
            .send(pb::WriteFileRequest {
                part: Some(Part::Header(header)),
            })
            .await;
        loop {
            let mut buf = vec![0u8; FILE_CHUNK];
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if tx
                .send(pb::WriteFileRequest {
                    part: Some(Part::Data(buf.into())),
                })
                .await
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        let response = upload
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
        Ok(response.into_inner().size)
    }

    /// Streams the sandbox file `path` into `writer`; returns its info.
    pub async fn read_file(
        &self,
        path: &str,
        mut writer: impl AsyncWrite + Unpin,
    ) -> Result<pb::FileInfo, ClientError> {
        use pb::read_file_response::Part;
        let mut stream = self
            .api
            .clone()
            .read_file(pb::ReadFileRequest {
                path: path.to_string(),
                max_bytes: 0,
            })
            .await?
            .into_inner();
        let mut info = None;
        while let Some(msg) = stream.message().await? {
            match msg.part {
                Some(Part::Info(i)) => info = Some(i),
                Some(Part::Data(d)) => writer.write_all(&d).await?,
                None => {}
            }
        }
        writer.flush().await?;
        info.ok_or_else(|| ClientError::Protocol("no file info in ReadFile".into()))
    }

    pub fn api(&self) -> SandboxClient<Channel> {
        self.api.clone()
    }

    /// A live snapshot of drive `drive` (empty: the root disk) as `path`.
    pub async fn snapshot(
        &self,
        drive: &str,
        path: &str,
        no_freeze: bool,
    ) -> Result<SnapshotResponse, ClientError> {
        let reply = self
            .api
            .clone()
            .snapshot(SnapshotRequest {
                drive: drive.to_string(),
                path: path.to_string(),
                no_freeze,
            })
            .await?;
        Ok(reply.into_inner())
    }

    pub async fn terminate(&self, grace: Duration) -> Result<(), ClientError> {
        self.api
            .clone()
            .terminate(TerminateRequest {
                grace_ms: grace.as_millis() as u64,
            })
            .await?;
        Ok(())
    }
}

/// A request channel already holding `initial`.
fn queued(
    initial: Vec<exec_request::Request>,
) -> (mpsc::Sender<ExecRequest>, ReceiverStream<ExecRequest>) {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE.max(initial.len()));
    for r in initial {
        // The channel has room for all of them.
        let _ = tx.try_send(request(r));
    }
    (tx, ReceiverStream::new(rx))
}

/// Reads a session's events up to its exit.
pub async fn collect(session: ExecSession) -> Result<ExecOutput, ClientError> {
    collect_events(session.events).await
}

/// Reads an exec's events up to its exit.
async fn collect_events(mut events: Streaming<ExecEvent>) -> Result<ExecOutput, ClientError> {
    let mut out = ExecOutput::default();
    while let Some(ev) = events.message().await? {
        match ev.event {
            Some(exec_event::Event::Stdout(o)) => out.stdout.extend_from_slice(&o.data),
            Some(exec_event::Event::Stderr(o)) => out.stderr.extend_from_slice(&o.data),
            Some(exec_event::Event::Exited(e)) => {
                // The last event: no need to wait for the stream's end as well.
                out.exited = Some(e);
                break;
            }
            _ => {}
        }
    }
    Ok(out)
}
