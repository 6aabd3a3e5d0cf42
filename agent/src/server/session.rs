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
use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::exec::{exited, Spawned, StdinSink};
use super::fdio::FdIo;
use super::pty;
use super::reaper::kill_group;

/// Largest output chunk.
pub const CHUNK: usize = 256 * 1024;
/// First read size of an output stream: most execs print little, and a large first
/// buffer costs page faults on every exec; reads that fill the buffer double it.
const FIRST_READ: usize = 16 * 1024;
/// Output messages buffered per exec between its pipes and the response stream.
const OUTPUT_QUEUE: usize = 4;
/// Stdin bytes held while the process does not read them; more input waits (flow
/// control back to the client), signals still get through up to this point.
const MAX_PENDING_STDIN: usize = 256 * 1024;
/// After the process exits, everything already in its pipe is delivered; beyond that,
/// output still arriving (from a PTY's buffers, or heirs that keep the pipe open, like a
/// daemon started in the background) is read until EOF, until none arrives for `idle`,
/// or up to `extra` more bytes, so heirs do not hold the exec open.
#[derive(Clone, Copy)]
struct Drain {
    idle: Duration,
    extra: usize,
}

const DRAIN: Drain = Drain {
    idle: Duration::from_millis(100),
    extra: 1 << 20,
};

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

/// Starts the session task and returns its response stream. `Started` is already in the
/// stream, so it goes out with the response headers rather than in a write of its own.
pub fn start(
    child: Spawned,
    input: Streaming<ExecInput>,
    time_limit: Option<Duration>,
    label: String,
) -> ReceiverStream<Result<ExecOutput, Status>> {
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    let started = message(Output::Started(Started {
        pid: u32::try_from(child.pid).unwrap_or(0),
    }));
    // A new channel has room for its first message.
    let _ = tx.try_send(started);
    tokio::spawn(run(child, input, tx, time_limit, label));
    ReceiverStream::new(rx)
}

/// Runs the session to its end.
async fn run(
    child: Spawned,
    input: Streaming<ExecInput>,
    tx: OutputTx,
    time_limit: Option<Duration>,
    label: String,
) {
    let pgid = child.pid;
    let mut exit = child.exit;
    let mut client_gone = false;

    let (exited_tx, exited_rx) = watch::channel(false);
    let mut readers = vec![tokio::spawn(pump(
        child.stdout,
        Stream::Stdout,
        tx.clone(),
        exited_rx.clone(),
        DRAIN,
    ))];
    if let Some(stderr) = child.stderr {
        readers.push(tokio::spawn(pump(
            stderr,
            Stream::Stderr,
            tx.clone(),
            exited_rx,
            DRAIN,
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
async fn pump(
    fd: Arc<FdIo>,
    stream: Stream,
    tx: OutputTx,
    mut exited: watch::Receiver<bool>,
    drain: Drain,
) {
    let mut buf = BytesMut::new();
    let mut read_size = FIRST_READ;
    // Bytes still to read once the process is gone; set when its exit is first seen,
    // before the next read, so it counts only bytes read after that moment.
    let mut budget: Option<usize> = None;
    loop {
        if budget.is_none() && *exited.borrow() {
            // The process is dead, so all it wrote is in the pipe now: that is owed.
            budget = Some(readable_bytes(&fd).saturating_add(drain.extra));
        }
        let result = match budget {
            Some(0) => break,
            Some(_) => match timeout(drain.idle, fd.read_buf(&mut buf, read_size)).await {
                Ok(r) => r,
                Err(_idle) => break,
            },
            None => tokio::select! {
                r = fd.read_buf(&mut buf, read_size) => r,
                _ = exited.changed() => continue,
            },
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
        if let Some(left) = &mut budget {
            *left = left.saturating_sub(n);
        }
        if n == read_size {
            read_size = (read_size * 2).min(CHUNK);
        }
        let data = buf.split().freeze();
        let out = match stream {
            Stream::Stdout => Output::Stdout(data),
            Stream::Stderr => Output::Stderr(data),
        };
        if tx.send(message(out)).await.is_err() {
            break;
        }
    }
}

/// Bytes waiting to be read from a pipe or PTY master (FIONREAD); 0 if unknown.
fn readable_bytes(fd: &FdIo) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to a valid local; the descriptor is open.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(fd), libc::FIONREAD, &mut n) };
    if rc < 0 {
        0
    } else {
        usize::try_from(n).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fdio::pipe;

    /// Everything in the pipe when the exit is seen is delivered, however much that is;
    /// a writer that outlives the process (an heir) is cut off after `extra` bytes.
    #[tokio::test]
    async fn output_in_the_pipe_at_exit_is_all_delivered() {
        let (r, w) = pipe().unwrap();
        let (r, w) = (Arc::new(FdIo::new(r).unwrap()), FdIo::new(w).unwrap());
        let size = pipe_capacity(&w);
        w.write_all(&vec![5u8; size]).await.unwrap();
        let (_exited_tx, exited_rx) = watch::channel(true);
        let (tx, mut rx) = mpsc::channel(OUTPUT_QUEUE);
        let drain = Drain {
            idle: Duration::from_secs(60),
            extra: 0,
        };
        let pumping = tokio::spawn(pump(r, Stream::Stdout, tx, exited_rx, drain));
        let mut total = 0;
        while let Some(msg) = rx.recv().await {
            match msg.unwrap().output {
                Some(Output::Stdout(d)) => total += d.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        // The pump ended on its budget, not on EOF (the write end is still open) nor on
        // the idle timeout (a minute).
        pumping.await.unwrap();
        assert_eq!(total, size);
        drop(w);
    }

    /// The pipe's capacity: fill it without blocking.
    fn pipe_capacity(w: &FdIo) -> usize {
        // SAFETY: F_GETPIPE_SZ reads the pipe's size; it touches no memory.
        let n = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(w), libc::F_GETPIPE_SZ) };
        usize::try_from(n).unwrap()
    }
}
