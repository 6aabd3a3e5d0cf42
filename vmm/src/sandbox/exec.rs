//! A process running in the sandbox as the supervisor tracks it: its output logs, its
//! exit, and the channel to its agent stream. `pump` moves agent output into the logs;
//! `attach` streams the logs to one client from given offsets. The two only meet through
//! the logs, so clients come and go while the process keeps running.

use std::sync::{Arc, Mutex};

use devices::bus::lock;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use vmm_protocol::api::{exec_event, ExecEvent, ExecStarted, Output};
use vmm_protocol::pb::{exec_output, ExecInput, ExecOutput, Exited};

use super::exec_id::ExecTable;
use super::output::{Budget, OutputError, OutputLog};

/// Bytes kept for re-attach after delivery, per stream (the sandbox's budget may evict
/// them sooner).
const RETAIN: u64 = 16 << 20;
/// Bytes an unpaced exec (the entrypoint) keeps per stream, read or not.
const RING_RETAIN: u64 = 4 << 20;
/// Largest output message sent to a client.
const CHUNK: usize = 256 << 10;

pub struct ExecState {
    pub pid: u32,
    pub stdout: OutputLog,
    pub stderr: OutputLog,
    pub exited: Option<Exited>,
    /// Why the process's fate is unknown (the agent connection broke).
    pub error: Option<String>,
    /// When it ended (exit or error): the oldest finished execs are forgotten first.
    pub finished_at: Option<std::time::Instant>,
}

pub struct Exec {
    pub id: String,
    pub argv: Vec<String>,
    pub state: Mutex<ExecState>,
    /// Bumped on every change; waiters re-check the state.
    changed: watch::Sender<u64>,
    /// Inputs for the agent's Exec stream (stdin, signals, resizes).
    pub input: mpsc::Sender<ExecInput>,
}

impl Exec {
    /// `ring`: its output is kept as a ring of the last RING_RETAIN bytes per stream and
    /// never waits for a reader (the entrypoint); otherwise readers pace the process.
    pub fn new(
        id: String,
        argv: Vec<String>,
        pid: u32,
        input: mpsc::Sender<ExecInput>,
        budget: &Arc<Budget>,
        ring: bool,
    ) -> Self {
        let log = || match ring {
            true => OutputLog::ring(RING_RETAIN, budget.clone()),
            false => OutputLog::new(RETAIN, budget.clone()),
        };
        Self {
            id,
            argv,
            state: Mutex::new(ExecState {
                pid,
                stdout: log(),
                stderr: log(),
                exited: None,
                error: None,
                finished_at: None,
            }),
            changed: watch::channel(0).0,
            input,
        }
    }

    /// Neither exited nor lost.
    pub fn is_running(&self) -> bool {
        lock(&self.state).finished_at.is_none()
    }

    /// Waits for the process to end: its exit status as a shell reports it, or None when
    /// its fate is unknown (the agent connection broke).
    pub async fn wait_exit(&self) -> Option<i32> {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let st = lock(&self.state);
                if let Some(exited) = &st.exited {
                    return Some(super::entrypoint::status_code(exited.status));
                }
                if st.error.is_some() {
                    return None;
                }
            }
            changes.changed().await.ok()?;
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Checks that an attach can start at these offsets.
    pub fn check_offsets(&self, stdout: u64, stderr: u64) -> Result<(), OutputError> {
        let st = lock(&self.state);
        for (log, at) in [(&st.stdout, stdout), (&st.stderr, stderr)] {
            if at < log.oldest() {
                return Err(OutputError::Dropped {
                    requested: at,
                    oldest: log.oldest(),
                });
            }
            if at > log.end() {
                return Err(OutputError::Beyond {
                    requested: at,
                    end: log.end(),
                });
            }
        }
        Ok(())
    }
}

/// Finished execs (and their retained output) kept for status and re-attach; beyond
/// this, the longest-finished are forgotten so a long-lived sandbox stays bounded.
pub const MAX_FINISHED_EXECS: usize = 128;
/// Forgetting waits until this many more execs have accumulated, so the scan it takes
/// runs once per that many execs rather than on every one.
const FORGET_SLACK: usize = 32;

/// Drops the longest-finished execs beyond `MAX_FINISHED_EXECS`, once there are
/// `FORGET_SLACK` more execs than that.
/// Returns whether any was forgotten.
pub fn forget_old(execs: &mut std::collections::HashMap<String, Arc<Exec>>) -> bool {
    if execs.len() <= MAX_FINISHED_EXECS + FORGET_SLACK {
        return false;
    }
    let mut finished: Vec<(std::time::Instant, String)> = execs
        .values()
        .filter_map(|e| lock(&e.state).finished_at.map(|t| (t, e.id.clone())))
        .collect();
    if finished.len() <= MAX_FINISHED_EXECS {
        return false;
    }
    finished.sort_unstable();
    let excess = finished.len() - MAX_FINISHED_EXECS;
    for (_, id) in finished.into_iter().take(excess) {
        execs.remove(&id);
    }
    true
}

/// Moves the agent's output into the logs until the process exits or the stream breaks.
pub async fn pump(exec: Arc<Exec>, mut from_agent: Streaming<ExecOutput>, table: Arc<ExecTable>) {
    let mut changes = exec.changed.subscribe();
    loop {
        // Backpressure: stop taking output while a client is this far behind.
        loop {
            let room = {
                let st = lock(&exec.state);
                st.stdout.has_room() && st.stderr.has_room()
            };
            if room {
                break;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
        let message = from_agent.message().await;
        {
            let mut st = lock(&exec.state);
            match message {
                Ok(Some(ExecOutput { output: Some(out) })) => match out {
                    exec_output::Output::Stdout(d) => st.stdout.push(d),
                    exec_output::Output::Stderr(d) => st.stderr.push(d),
                    exec_output::Output::Exited(e) => st.exited = Some(e),
                    exec_output::Output::Started(_) => {}
                },
                Ok(Some(ExecOutput { output: None })) => {}
                Ok(None) => {
                    if st.exited.is_none() {
                        st.error = Some("the agent ended the process stream early".into());
                    }
                }
                Err(status) => st.error = Some(format!("agent: {}", status.message())),
            }
            let done = st.exited.is_some() || st.error.is_some();
            if done {
                st.finished_at = Some(std::time::Instant::now());
                st.stdout.finish();
                st.stderr.finish();
            }
            drop(st);
            exec.notify();
            if table.budget.over() {
                table.evict();
            }
            if done {
                return;
            }
        }
    }
}

/// Events buffered toward one client: small, so a client that stops reading stalls its
/// own attachment quickly and the process is throttled.
const EVENT_QUEUE: usize = 4;

pub type EventStream = ReceiverStream<Result<ExecEvent, Status>>;

/// Where an attachment starts reading.
#[derive(Debug, Clone, Copy)]
pub enum Offsets {
    At(u64, u64),
    /// The oldest bytes still retained (a ring may have dropped the start).
    Oldest,
}

/// Attaches one client: returns its event stream, which starts with `started` (already
/// queued, so it leaves with the response headers), then output from the given offsets,
/// then the exit.
pub fn attach(
    exec: Arc<Exec>,
    from: Offsets,
    follow: bool,
    supervisor: Arc<super::Supervisor>,
) -> EventStream {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    let started = exec_event::Event::Started(ExecStarted {
        exec_id: exec.id.clone(),
        pid: lock(&exec.state).pid,
    });
    // A new channel has room for its first event.
    let _ = tx.try_send(Ok(ExecEvent {
        event: Some(started),
    }));
    let running = exec.is_running();
    let (stdout_at, stderr_at) = match from {
        Offsets::At(out, err) => (out, err),
        Offsets::Oldest => {
            let st = lock(&exec.state);
            (st.stdout.oldest(), st.stderr.oldest())
        }
    };
    // Without follow, the stream ends at the output's end as of now.
    let until = (!follow).then(|| {
        let st = lock(&exec.state);
        (st.stdout.end(), st.stderr.end(), st.finished_at.is_some())
    });
    tokio::spawn(async move {
        // A lost agent ends a running exec's client stream (UNAVAILABLE); the process stays
        // in the table, and its output, if it comes, can be re-attached to. A finished
        // exec's output is all here and needs no agent.
        tokio::select! {
            () = stream_output(exec, stdout_at, stderr_at, until, tx.clone()) => {}
            status = supervisor.agent_lost(), if running => {
                let _ = tx.send(Err(status)).await;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Streams output from the given offsets to one client, then the exit. Returns when the
/// process is done and everything was sent, or when the client goes away.
async fn stream_output(
    exec: Arc<Exec>,
    mut stdout_at: u64,
    mut stderr_at: u64,
    until: Option<(u64, u64, bool)>,
    to_client: mpsc::Sender<Result<ExecEvent, Status>>,
) {
    let mut changes = exec.changed.subscribe();
    let (out_end, err_end) = until.map_or((u64::MAX, u64::MAX), |(o, e, _)| (o, e));
    loop {
        changes.borrow_and_update();
        if until.is_some_and(|(_, _, finished)| !finished)
            && stdout_at >= out_end
            && stderr_at >= err_end
        {
            // Caught up with "now", and the process had not ended then.
            return;
        }
        let (out, err, end) = {
            let mut st = lock(&exec.state);
            stdout_at = st.stdout.resume_at(stdout_at);
            stderr_at = st.stderr.resume_at(stderr_at);
            let room = |at: u64, end: u64| CHUNK.min(end.saturating_sub(at) as usize);
            let out = st.stdout.read(stdout_at, room(stdout_at, out_end));
            let err = st.stderr.read(stderr_at, room(stderr_at, err_end));
            let end = match (&st.exited, &st.error) {
                (Some(e), _) => Some(Ok(*e)),
                (None, Some(msg)) => Some(Err(msg.clone())),
                (None, None) => None,
            };
            (out, err, end)
        };
        let (out, err) = match (out, err) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                let _ = to_client
                    .send(Err(Status::out_of_range(e.to_string())))
                    .await;
                return;
            }
        };
        let progressed = !out.is_empty() || !err.is_empty();
        if progressed {
            // Delivery frees window: the pump may be waiting for it.
            exec.notify();
        }
        for (data, at, wrap) in [
            (
                out,
                &mut stdout_at,
                exec_event::Event::Stdout as fn(Output) -> _,
            ),
            (err, &mut stderr_at, exec_event::Event::Stderr),
        ] {
            if data.is_empty() {
                continue;
            }
            let n = data.len() as u64;
            if send(&to_client, wrap(Output { offset: *at, data }))
                .await
                .is_err()
            {
                return;
            }
            *at += n;
        }
        if progressed {
            continue;
        }
        match end {
            Some(Ok(exited)) => {
                let _ = send(&to_client, exec_event::Event::Exited(exited)).await;
                return;
            }
            Some(Err(msg)) => {
                let _ = to_client.send(Err(Status::unavailable(msg))).await;
                return;
            }
            None => {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn send(
    to: &mpsc::Sender<Result<ExecEvent, Status>>,
    event: exec_event::Event,
) -> Result<(), ()> {
    to.send(Ok(ExecEvent { event: Some(event) }))
        .await
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_longest_finished_execs_are_forgotten() {
        let mut execs = std::collections::HashMap::new();
        let now = std::time::Instant::now();
        let add = |execs: &mut std::collections::HashMap<_, _>, i: usize, finished: bool| {
            let (tx, _) = mpsc::channel(1);
            let e = Arc::new(Exec::new(
                format!("e{i}"),
                vec![],
                1,
                tx,
                &Arc::default(),
                false,
            ));
            if finished {
                lock(&e.state).finished_at = Some(now + std::time::Duration::from_millis(i as u64));
            }
            execs.insert(e.id.clone(), e);
        };
        // 5 running, then finished ones up to the slack: nothing is forgotten yet.
        for i in 0..5 {
            add(&mut execs, i, false);
        }
        for i in 5..(MAX_FINISHED_EXECS + FORGET_SLACK) {
            add(&mut execs, i, true);
        }
        forget_old(&mut execs);
        assert_eq!(execs.len(), MAX_FINISHED_EXECS + FORGET_SLACK);
        // One more: the running ones stay, and the newest MAX_FINISHED_EXECS finished.
        add(&mut execs, MAX_FINISHED_EXECS + FORGET_SLACK, true);
        forget_old(&mut execs);
        assert_eq!(execs.len(), 5 + MAX_FINISHED_EXECS);
        assert!(execs.contains_key("e0") && execs.contains_key("e4"));
        let oldest_kept = MAX_FINISHED_EXECS + FORGET_SLACK + 1 - MAX_FINISHED_EXECS;
        assert!(!execs.contains_key(&format!("e{}", oldest_kept - 1)));
        assert!(execs.contains_key(&format!("e{oldest_kept}")));
    }
}
