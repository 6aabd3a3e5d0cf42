//! The supervisor's side of the agent connection: the lazily connected client, the
//! readiness wait, the one-line readiness report, and the health watch that notices an
//! agent that stopped answering.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use vmm_protocol::api::status_response::State;
use vmm_protocol::connect::{Address, CONNECTION_WINDOW, STREAM_WINDOW};
use vmm_protocol::pb::agent_client::AgentClient;

use super::{thread_report, Supervisor};

const PROBE_INTERVAL_STARTING: Duration = Duration::from_millis(10);
const PROBE_INTERVAL_READY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive unanswered probes before the agent counts as lost. Calls that need the
/// agent fail once it is lost, so a busy guest must not get there: in the emulated KVM
/// host, with a debug build, 64 MiB of stdin left the agent unanswered for over 15 s.
/// With the timeout above a silent agent is lost within about 45 s.
const MISSES_BEFORE_LOST: u32 = 4;

/// A client whose connection is made on first use and re-made after it breaks.
pub fn client(address: Address) -> AgentClient<Channel> {
    let channel = Endpoint::from_static("http://agent.vmm")
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_timeout(PROBE_TIMEOUT)
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let address = address.clone();
            async move {
                vmm_protocol::connect::open_stream(&address)
                    .await
                    .map(TokioIo::new)
            }
        }));
    AgentClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// Probes the agent: quickly until it first answers, then once a second.
pub async fn watch(supervisor: Arc<Supervisor>) {
    let mut announced = false;
    let mut misses = 0;
    let mut network_configured = supervisor.options.network.is_none();
    let mut last_network_error = String::new();
    // The vCPU threads at the first missed probe, and when.
    let mut silent_since: Option<(Vec<thread_report::VcpuThread>, Instant)> = None;
    loop {
        let mut agent = supervisor.probe.clone();
        let probe =
            tokio::time::timeout(PROBE_TIMEOUT, agent.ping(vmm_protocol::pb::PingRequest {}));
        let failure = match probe.await {
            Ok(Ok(_)) if !announced && !network_configured => {
                // The sandbox is ready once its network is, too (--net auto).
                match configure_network(&supervisor).await {
                    Ok(()) => network_configured = true,
                    Err(e) if e != last_network_error => {
                        log::error!("{e}; retrying");
                        supervisor.set_health(State::Starting, e.clone());
                        last_network_error = e;
                    }
                    Err(_) => {}
                }
                None
            }
            Ok(Ok(_)) => {
                misses = 0;
                silent_since = None;
                supervisor.set_health(State::Ready, String::new());
                if !announced {
                    announced = true;
                    // Started before the readiness line, so that clients find it.
                    if let Some(entrypoint) = &supervisor.options.entrypoint {
                        super::entrypoint::start(&supervisor, entrypoint).await;
                    }
                    announce_ready(&supervisor);
                }
                None
            }
            Ok(Err(status)) => Some(format!("agent: {}", status.message())),
            Err(_) => Some(format!("no answer in {} s", PROBE_TIMEOUT.as_secs())),
        };
        if let (Some(reason), true) = (failure, announced) {
            misses += 1;
            if misses <= MISSES_BEFORE_LOST {
                // Whether the guest ran meanwhile: the vCPU threads' states and CPU time
                // (none in the test jail).
                let threads = thread_report::vcpu_threads();
                log::warn!(
                    "agent probe {misses} of {MISSES_BEFORE_LOST} failed ({reason}); vCPU threads: {}",
                    thread_report::summary(&threads)
                );
                match &silent_since {
                    None => silent_since = Some((threads, Instant::now())),
                    Some((before, since)) if misses == MISSES_BEFORE_LOST => {
                        for spun in thread_report::spinning(before, *since, &threads) {
                            log::warn!("while the agent was silent, {spun}: that vCPU spun without the guest answering");
                        }
                    }
                    Some(_) => {}
                }
            }
            if misses >= MISSES_BEFORE_LOST {
                supervisor.set_health(
                    State::AgentLost,
                    format!("agent stopped answering ({misses} probes in a row failed; the last: {reason})"),
                );
            }
        }
        let pause = if announced {
            PROBE_INTERVAL_READY
        } else {
            PROBE_INTERVAL_STARTING
        };
        tokio::time::sleep(pause).await;
    }
}

/// Has the agent configure the guest's NIC and resolver (ConfigureNetwork).
async fn configure_network(supervisor: &Supervisor) -> Result<(), String> {
    let Some(net) = &supervisor.options.network else {
        return Ok(());
    };
    let request = vmm_protocol::pb::NetworkConfig {
        mac: crate::hostnet::mac_text(net.mac),
        address: net.address.to_string(),
        prefix_len: net.prefix_len.into(),
        gateway: net.gateway.to_string(),
        mtu: net.mtu,
        nameservers: net.nameservers.iter().map(|a| a.to_string()).collect(),
    };
    let mut agent = supervisor.agent.clone();
    let call = tokio::time::timeout(PROBE_TIMEOUT, agent.configure_network(request));
    match call.await {
        Ok(Ok(done)) => {
            log::info!(
                "the guest's {} is {}/{} via {}",
                done.into_inner().interface,
                net.address,
                net.prefix_len,
                net.gateway
            );
            Ok(())
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(
            "the guest's agent predates --net auto (it has no ConfigureNetwork): \
             rebuild the image with this agent"
                .into(),
        ),
        Ok(Err(status)) => Err(format!(
            "the agent could not configure the network: {:?}: {}",
            status.code(),
            status.message()
        )),
        Err(_) => Err("the agent did not configure the network in time".into()),
    }
}

/// The readiness signal: one JSON line, on the ready fd if one was given, else stdout.
fn announce_ready(supervisor: &Supervisor) {
    // Milliseconds with a tenth: the jail is ready in well under one.
    let ready_ms = (supervisor.options.started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    let line = serde_json::json!({
        "event": "ready",
        "api_socket": supervisor.options.api_socket.display().to_string(),
        "ready_ms": ready_ms,
    })
    .to_string()
        + "\n";
    let written = match supervisor.options.ready_fd {
        // SAFETY: the fd was handed to us (--ready-fd) for this one line; we own it now
        // and close it after writing, which also tells the reader we are done.
        Some(fd) => unsafe { std::fs::File::from_raw_fd(fd) }.write_all(line.as_bytes()),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes()).and_then(|()| out.flush())
        }
    };
    if let Err(e) = written {
        log::error!("cannot write the readiness line: {e}");
    }
    log::info!("agent ready after {ready_ms} ms");
}
