//! Starting a process in the sandbox: for a client's Exec, and for the entrypoint.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use vmm_protocol::api::StartExec;
use vmm_protocol::pb::{self, exec_input, exec_output, ExecInput};

use super::exec::{pump, Exec};
use super::service::summarize_argv;
use super::{exec_id, Supervisor};

/// Client messages buffered toward the agent per exec.
const INPUT_QUEUE: usize = 16;

impl Supervisor {
    /// The agent client for a new call: none while terminating; a lost agent is caught
    /// by `unless_agent_lost` around the call.
    pub(super) fn agent_for_call(
        &self,
    ) -> Result<pb::agent_client::AgentClient<tonic::transport::Channel>, Status> {
        if self.terminating.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition("the sandbox is terminating"));
        }
        Ok(self.agent.clone())
    }

    /// Starts `start` through the agent and registers it (its id reserved first, so a
    /// second start with the same id fails before anything runs). `ring`: its output
    /// never waits for a reader (the entrypoint).
    pub(super) async fn start_exec(
        self: &Arc<Self>,
        start: StartExec,
        ring: bool,
    ) -> Result<Arc<Exec>, Status> {
        let process = start
            .process
            .ok_or_else(|| Status::invalid_argument("start.process is missing"))?;
        if process.argv.is_empty() {
            return Err(Status::invalid_argument("start.process.argv is empty"));
        }
        let table = &self.execs;
        let reservation = if start.exec_id.is_empty() {
            table.reserve_generated(|| self.next_exec.fetch_add(1, Ordering::SeqCst))?
        } else {
            exec_id::validate(&start.exec_id)?;
            table.reserve(start.exec_id)?
        };
        let argv = summarize_argv(&process.argv);
        let (input_tx, input_rx) = mpsc::channel(INPUT_QUEUE);
        input_tx
            .send(ExecInput {
                input: Some(exec_input::Input::Start(process)),
            })
            .await
            .map_err(|_| Status::internal("exec input closed"))?;
        let mut agent = self.agent_for_call()?;
        let started = async {
            let mut outputs = agent
                .exec(ReceiverStream::new(input_rx))
                .await?
                .into_inner();
            let first = outputs.message().await?;
            Ok((outputs, first))
        };
        let (outputs, first) = self.unless_agent_lost(started).await?;
        let pid = match first {
            Some(pb::ExecOutput {
                output: Some(exec_output::Output::Started(s)),
            }) => s.pid,
            _ => {
                return Err(Status::internal(
                    "the agent did not report the process start",
                ))
            }
        };
        let id = reservation.id().to_string();
        let exec = Arc::new(Exec::new(id, argv, pid, input_tx, &table.budget, ring));
        reservation.register(exec.clone());
        tokio::spawn(pump(exec.clone(), outputs, table.clone()));
        Ok(exec)
    }
}
