//! `vmm exec` and `vmm shell`: run a process in the sandbox with our stdin, stdout and
//! stderr; Ctrl-C is forwarded as a signal (or, with a PTY, as a keystroke).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use vmm_protocol::api::{exec_event, exec_request};
use vmm_protocol::pb::{self, ExecStart, WindowSize};
use vmm_sys_util::terminal::Terminal;

use vmm_client::{request, Client, ClientError, ExecSession};

pub struct ExecOptions {
    pub argv: Vec<String>,
    pub env: HashMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub timeout: Option<Duration>,
}

/// The terminal size of our stdout, if it is a terminal.
fn window_size() -> Option<WindowSize> {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills; the fd is our stdout.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the ioctl writes only into `ws`.
    let ok = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (ok == 0).then_some(WindowSize {
        rows: u32::from(ws.ws_row),
        cols: u32::from(ws.ws_col),
    })
}

/// Raw mode on our terminal while a PTY session runs.
struct RawStdin(bool);

impl RawStdin {
    fn enter(tty: bool) -> Self {
        // SAFETY: isatty only inspects the descriptor.
        let is_tty = unsafe { libc::isatty(std::io::stdin().as_raw_fd()) } == 1;
        Self(tty && is_tty && std::io::stdin().lock().set_raw_mode().is_ok())
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}

/// Runs the process and returns its exit status (128 + N when killed by signal N).
pub async fn run(client: &Client, opts: ExecOptions) -> Result<i32, ClientError> {
    let process = ExecStart {
        argv: opts.argv,
        env: opts.env,
        cwd: opts.cwd.unwrap_or_default(),
        user: opts.user.unwrap_or_default(),
        tty: opts.tty,
        window: if opts.tty { window_size() } else { None },
        merge_stderr: false,
        timeout_ms: opts.timeout.map_or(0, |t| t.as_millis() as u64),
    };
    let session = client.exec(process, None).await?;
    let _raw = RawStdin::enter(opts.tty);
    tokio::spawn(forward_stdin(session.input.clone()));
    tokio::spawn(forward_signals(session.input.clone(), opts.tty));
    relay_events(session).await
}

async fn forward_stdin(input: tokio::sync::mpsc::Sender<vmm_protocol::api::ExecRequest>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let msg = request(exec_request::Request::Stdin(bytes::Bytes::copy_from_slice(
                    &buf[..n],
                )));
                if input.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = input
        .send(request(exec_request::Request::CloseStdin(
            pb::CloseStdin {},
        )))
        .await;
}

/// Without a PTY, our SIGINT/SIGTERM/SIGHUP go to the process; with one, window changes
/// become resizes (Ctrl-C arrives as a byte through raw stdin).
async fn forward_signals(
    input: tokio::sync::mpsc::Sender<vmm_protocol::api::ExecRequest>,
    tty: bool,
) {
    if tty {
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(w) = window_size() {
                if input
                    .send(request(exec_request::Request::Resize(w)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        return;
    }
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        log::warn!("cannot watch signals; Ctrl-C will not reach the process");
        return;
    };
    loop {
        let sig = tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        if input
            .send(request(exec_request::Request::Signal(sig)))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn relay_events(mut session: ExecSession) -> Result<i32, ClientError> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    // Whether our stdout's reader went away (`vmm exec -- yes | head -1`).
    let mut stdout_closed = false;
    while let Some(ev) = session.events.message().await? {
        match ev.event {
            Some(exec_event::Event::Stdout(o)) if !stdout_closed => {
                let written = stdout.write_all(&o.data).await;
                match written.and(stdout.flush().await) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        // What a local pipe does to its writer: SIGPIPE. The exit status
                        // then says so (141), and nothing more is written.
                        stdout_closed = true;
                        let sigpipe = request(exec_request::Request::Signal(libc::SIGPIPE));
                        let _ = session.input.send(sigpipe).await;
                    }
                    other => other?,
                }
            }
            Some(exec_event::Event::Stderr(o)) => {
                stderr.write_all(&o.data).await?;
                stderr.flush().await?;
            }
            Some(exec_event::Event::Exited(e)) => {
                if e.timed_out {
                    eprintln!("vmm: the process timed out and was killed");
                }
                return Ok(match e.status {
                    Some(pb::exited::Status::Code(c)) => c,
                    Some(pb::exited::Status::Signal(s)) => 128 + s,
                    None => super::EXIT_CLIENT_ERROR,
                });
            }
            _ => {}
        }
    }
    Err(ClientError::Protocol(
        "the exec stream ended without an exit status".into(),
    ))
}
