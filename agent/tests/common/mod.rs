//! Shared by the agent's integration tests: runs the real `vmm-agent` on a Unix socket
//! (`--no-init`) and talks to it with the generated tonic client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agent::pb::agent_client::AgentClient;
use agent::pb::exec_input::Input;
use agent::pb::exec_output::Output;
use agent::pb::exited::Status as ExitStatusPb;
use agent::pb::{ExecInput, ExecOutput, ExecStart, Exited};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Status, Streaming};

pub type Client = AgentClient<Channel>;

/// HTTP/2 windows of the test client, as the supervisor sets them (agent::connect):
/// a stream that is not read holds at most its own window of connection credit.
pub use agent::connect::{CONNECTION_WINDOW, STREAM_WINDOW};

/// A tonic client over the Unix socket at `path`.
pub async fn connect(path: &Path) -> Client {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://[::]:50051")
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect to the agent");
    AgentClient::new(channel)
}

/// A client whose connection the test can cut (as if the supervisor died).
pub async fn connect_cuttable(path: &Path) -> (Client, std::os::unix::net::UnixStream) {
    let sock = std::os::unix::net::UnixStream::connect(path).expect("connect to the agent");
    sock.set_nonblocking(true).unwrap();
    let handle = sock.try_clone().unwrap();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(sock)));
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = slot.lock().unwrap().take();
            async move {
                let sock = sock.ok_or_else(|| std::io::Error::other("one connection only"))?;
                Ok::<_, std::io::Error>(TokioIo::new(UnixStream::from_std(sock)?))
            }
        }))
        .await
        .expect("connect to the agent");
    (AgentClient::new(channel), handle)
}

/// Waits until `path` exists, or panics after `timeout` (with `why` for context).
pub fn wait_for_socket(
    path: &Path,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Err(e) = alive() {
            panic!("agent died before creating {}: {e}", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "no agent socket at {} after {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real agent binary, `--no-init`, on a socket in a temporary directory.
pub struct TestAgent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl TestAgent {
    pub fn start() -> TestAgent {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> TestAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmm-agent"))
            .arg("--unix")
            .arg(&socket)
            .arg("--no-init")
            .args(extra)
            .env("VMM_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("start vmm-agent");
        wait_for_socket(&socket, Duration::from_secs(10), || {
            match child.try_wait() {
                Ok(Some(s)) => Err(format!("exited with {s}")),
                _ => Ok(()),
            }
        });
        TestAgent { child, dir, socket }
    }

    pub async fn client(&self) -> Client {
        connect(&self.socket).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the agent to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for the agent") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM lets the agent kill its execs' process groups first.
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill(2) on our own unreaped child; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn start(argv: &[&str]) -> ExecStart {
    ExecStart {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> ExecStart {
    start(&["sh", "-c", script])
}

pub fn input(i: Input) -> ExecInput {
    ExecInput { input: Some(i) }
}

/// What an exec produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exited: Option<Exited>,
    /// Messages after `exited` (must stay 0).
    pub after_exit: usize,
}

impl Outcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        match self.exited.and_then(|e| e.status) {
            Some(ExitStatusPb::Code(c)) => Some(c),
            _ => None,
        }
    }

    pub fn signal(&self) -> Option<i32> {
        match self.exited.and_then(|e| e.status) {
            Some(ExitStatusPb::Signal(s)) => Some(s),
            _ => None,
        }
    }

    pub fn timed_out(&self) -> bool {
        self.exited.is_some_and(|e| e.timed_out)
    }
}

/// An exec whose input stays open until `close_input` or drop.
pub struct Running {
    pub input: Option<mpsc::Sender<ExecInput>>,
    pub output: Streaming<ExecOutput>,
}

impl Running {
    pub async fn send(&self, i: Input) {
        self.input
            .as_ref()
            .expect("input open")
            .send(input(i))
            .await
            .expect("exec input accepted");
    }

    pub fn close_input(&mut self) {
        self.input = None;
    }

    /// Next message, panicking on errors.
    pub async fn next(&mut self) -> Option<Output> {
        self.output
            .message()
            .await
            .expect("exec output")
            .map(|m| m.output.expect("output set"))
    }

    /// Reads stdout until it contains `needle`; returns everything read.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> String {
        let mut text = String::new();
        let fut = async {
            while !text.contains(needle) {
                match self.next().await {
                    Some(Output::Stdout(d)) => text.push_str(&String::from_utf8_lossy(&d)),
                    Some(Output::Started(_)) | Some(Output::Stderr(_)) => {}
                    other => {
                        panic!("waiting for {needle:?}, got {other:?}; output so far: {text:?}")
                    }
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} after {timeout:?}; got {text:?}"));
        text
    }

    /// Reads everything up to the end of the stream.
    pub async fn finish(mut self) -> Outcome {
        let mut out = Outcome::default();
        while let Some(o) = self.next().await {
            if out.exited.is_some() {
                out.after_exit += 1;
            }
            match o {
                Output::Started(s) => out.pid = s.pid,
                Output::Stdout(d) => out.stdout.extend(d),
                Output::Stderr(d) => out.stderr.extend(d),
                Output::Exited(e) => out.exited = Some(e),
            }
        }
        assert!(
            out.exited.is_some(),
            "exec output ended without `exited`: {out:?}"
        );
        assert_eq!(out.after_exit, 0, "messages after `exited`");
        out
    }
}

/// Starts an exec; its input stays open (stdin open) until closed or dropped.
pub async fn spawn(client: &mut Client, s: ExecStart) -> Result<Running, Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(input(Input::Start(s))).await.expect("queue start");
    let output = client.exec(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Running {
        input: Some(tx),
        output,
    })
}

/// Runs to the end with stdin closed right away.
pub async fn run(client: &mut Client, s: ExecStart) -> Result<Outcome, Status> {
    let mut r = spawn(client, s).await?;
    r.close_input();
    Ok(tokio::time::timeout(Duration::from_secs(30), r.finish())
        .await
        .expect("exec finished within 30 s"))
}

/// Runs a shell script and asserts exit 0; returns stdout.
pub async fn run_ok(client: &mut Client, script: &str) -> String {
    let out = run(client, sh(script)).await.expect("exec starts");
    assert_eq!(
        out.code(),
        Some(0),
        "`{script}` failed: {out:?} stderr {}",
        out.stderr_text()
    );
    out.stdout_text()
}

/// Whether a host process is alive (these tests share the agent's PID namespace).
pub fn alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence; no memory involved.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}
