//! One running exec: pumps its output into the response stream, feeds its stdin from
//! the request stream, applies signals, resizes and the timeout, and ends with exactly
//! one `exited` after all output.
//!
//! Backpressure: each output pipe has its own reader task that sends into a small
//! bounded channel; the channel is the gRPC response stream, which HTTP/2 flow control
//! stops polling when the client does not read. Then the reader stops reading, the pipe
//! fills and the process blocks in write(2). Nothing else waits on that exec.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use agent::pb::exec_input::Input;
use agent::pb::exec_output::Output;
use agent::pb::{ExecInput, ExecOutput, Started};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tonic::{Status, Streaming};

use super::exec::{exited, Spawned, StdinSink};
use super::fdio::FdIo;
use super::pty;
use super::reaper::kill_group;

/// Largest output chunk.
pub const CHUNK: usize = 256 * 1024;
/// Output messages buffered per exec between its pipes and the response stream.
pub const OUTPUT_QUEUE: usize = 4;
/// Stdin bytes held while the process does not read them; more input waits (flow
/// control back to the client), signals still get through up to this point.
const MAX_PENDING_STDIN: usize = 256 * 1024;
/// After the process exits, output still arriving (from a PTY's buffers) is read until
/// EOF or until none arrives for this long: heirs that keep the pipe open (a daemon
/// started in the background) do not hold the exec open.
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// And at most this much of it.
const DRAIN_MAX: usize = 1 << 20;

pub type OutputTx = mpsc::Sender<Result<ExecOutput, Status>>;

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn message(output: Output) -> Result<ExecOutput, Status> {
    Ok(ExecOutput {
        output: Some(output),
    })
}

/// Runs the session to its end; spawned as a task per exec.
pub async fn run(
    child: Spawned,
    input: Streaming<ExecInput>,
    tx: OutputTx,
    time_limit: Option<Duration>,
    label: String,
) {
    let pgid = child.pid;
    let mut exit = child.exit;
    let mut client_gone = tx
        .send(message(Output::Started(Started {
            pid: u32::try_from(pgid).unwrap_or(0),
        })))
        .await
        .is_err();
    if client_gone {
        let _ = kill_group(pgid, libc::SIGKILL);
    }

    let (exited_tx, exited_rx) = watch::channel(false);
    let mut readers = vec![tokio::spawn(pump(
        child.stdout,
        Stream::Stdout,
        tx.clone(),
        exited_rx.clone(),
    ))];
    if let Some(stderr) = child.stderr {
        readers.push(tokio::spawn(pump(
            stderr,
            Stream::Stderr,
            tx.clone(),
            exited_rx,
        )));
    }
    let feeder = tokio::spawn(feed(input, child.stdin, child.pty, pgid));

    // A limit too far away to represent is no limit.
    let deadline = time_limit.and_then(|t| Instant::now().checked_add(t));
    let mut timed_out = false;
    let status = loop {
        tokio::select! {
            status = &mut exit => break status,
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)),
                if deadline.is_some() && !timed_out => {
                log::debug!("exec {pgid} ({label}): timed out, killing its group");
                timed_out = true;
                let _ = kill_group(pgid, libc::SIGKILL);
            }
            _ = tx.closed(), if !client_gone => {
                log::debug!("exec {pgid} ({label}): client gone, killing its group");
                client_gone = true;
                let _ = kill_group(pgid, libc::SIGKILL);
            }
        }
    };
    let _ = exited_tx.send(true);
    for r in readers {
        let _ = r.await;
    }
    feeder.abort();
    let last = match status {
        Ok(status) => {
            let e = exited(status, timed_out);
            log::debug!("exec {pgid} ({label}): {:?}", e.status);
            message(Output::Exited(e))
        }
        Err(_) => Err(Status::internal(format!(
            "lost the exit status of process {pgid}"
        ))),
    };
    let _ = tx.send(last).await;
}

/// Copies one output descriptor into the response stream.
async fn pump(fd: Arc<FdIo>, stream: Stream, tx: OutputTx, mut exited: watch::Receiver<bool>) {
    let mut buf = vec![0u8; CHUNK];
    let mut drained = 0usize;
    loop {
        let result = if *exited.borrow() {
            if drained >= DRAIN_MAX {
                break;
            }
            match timeout(DRAIN_IDLE, fd.read(&mut buf)).await {
                Ok(r) => r,
                Err(_idle) => break,
            }
        } else {
            tokio::select! {
                r = fd.read(&mut buf) => r,
                _ = exited.changed() => continue,
            }
        };
        let n = match result {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A PTY master reads EIO once every slave descriptor is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                log::warn!("reading process output: {e}");
                break;
            }
        };
        if *exited.borrow() {
            drained += n;
        }
        let data = bytes::Bytes::copy_from_slice(&buf[..n]);
        let out = match stream {
            Stream::Stdout => Output::Stdout(data),
            Stream::Stderr => Output::Stderr(data),
        };
        if tx.send(message(out)).await.is_err() {
            break;
        }
    }
}

/// Applies the client's inputs: stdin bytes, close_stdin, signals and resizes.
async fn feed(
    mut input: Streaming<ExecInput>,
    stdin: StdinSink,
    pty_master: Option<Arc<FdIo>>,
    pgid: libc::pid_t,
) {
    let mut sink = Some(stdin);
    let mut pending: Vec<u8> = Vec::new();
    let mut close_requested = false;
    let mut input_done = false;
    loop {
        if close_requested && pending.is_empty() {
            match sink.take() {
                // Dropping the write end: the process reads EOF.
                Some(StdinSink::Pipe(_)) | None => {}
                // On a terminal, EOF is the VEOF character (^D) at the start of a line.
                Some(StdinSink::Pty(m)) => {
                    let _ = m.write_all(&[0x04]).await;
                }
            }
        }
        if input_done && (sink.is_none() || pending.is_empty()) {
            return;
        }
        tokio::select! {
            msg = input.message(), if !input_done && pending.len() < MAX_PENDING_STDIN => {
                match msg {
                    Ok(Some(ExecInput { input: Some(i) })) => match i {
                        Input::Stdin(data) => {
                            if sink.is_some() && !close_requested {
                                pending.extend_from_slice(&data);
                            }
                        }
                        Input::CloseStdin(_) => close_requested = true,
                        Input::Signal(sig) => {
                            if (1..=64).contains(&sig) {
                                if let Err(e) = kill_group(pgid, sig) {
                                    log::debug!("signal {sig} to group {pgid}: {e}");
                                }
                            } else {
                                log::warn!("exec {pgid}: ignoring invalid signal {sig}");
                            }
                        }
                        Input::Resize(w) => {
                            if let Some(m) = &pty_master {
                                let (rows, cols) = pty::clamp_size(w.rows, w.cols);
                                if let Err(e) = pty::set_size(
                                    std::os::fd::AsRawFd::as_raw_fd(&**m),
                                    rows,
                                    cols,
                                ) {
                                    log::warn!("exec {pgid}: resize: {e}");
                                }
                            }
                        }
                        Input::Start(_) => log::warn!("exec {pgid}: ignoring a second start"),
                    },
                    Ok(Some(ExecInput { input: None })) => {}
                    Ok(None) => {
                        // The client finished sending: a pipe gets EOF, a PTY stays open.
                        input_done = true;
                        if matches!(sink, Some(StdinSink::Pipe(_))) {
                            close_requested = true;
                        }
                    }
                    Err(status) => {
                        // The call was reset or sent garbage: nobody will read the output.
                        log::debug!("exec {pgid}: input stream failed: {status}");
                        let _ = kill_group(pgid, libc::SIGKILL);
                        return;
                    }
                }
            }
            written = async {
                match &sink {
                    Some(StdinSink::Pipe(fd)) => fd.write(&pending).await,
                    Some(StdinSink::Pty(fd)) => fd.write(&pending).await,
                    None => std::future::pending().await,
                }
            }, if sink.is_some() && !pending.is_empty() => {
                match written {
                    Ok(n) => {
                        pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // EPIPE: the process closed its stdin; later input is dropped.
                        log::debug!("exec {pgid}: stdin: {e}");
                        pending.clear();
                        sink = None;
                    }
                }
            }
        }
    }
}
