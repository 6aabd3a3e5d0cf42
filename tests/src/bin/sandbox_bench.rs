//! `make bench` (sandbox part): exec round trip and stdout throughput through the
//! supervisor and the agent, next to plain fork+exec and a plain pipe on the host; and
//! the time until the agent is ready. Runs on the test jail (the VM backend where Linux
//! boots). Medians and percentiles.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm_protocol::api::exec_event;
use vmm_protocol::pb::ExecStart;
use vmm_tests::sandbox::{vm_unavailable, Backend, Sandbox};

const ROUND_TRIPS: usize = 1000;
const STREAM_BYTES: u64 = 256 << 20;
/// Throughput runs (sandbox and pipe interleaved), reported as medians.
const STREAM_RUNS: usize = 7;
const READY_RUNS: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One plain fork+exec of `true` on the host (std uses posix_spawn), waited for.
fn host_fork_exec() -> Duration {
    let t = Instant::now();
    let ok = Command::new("true").status().expect("true runs").success();
    assert!(ok);
    t.elapsed()
}

fn host_pipe_throughput() -> f64 {
    let t = Instant::now();
    let mut child = Command::new("head")
        .args(["-c", &STREAM_BYTES.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("head runs");
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    child.wait().unwrap();
    assert_eq!(total, STREAM_BYTES);
    total as f64 / t.elapsed().as_secs_f64()
}

/// Round-trip samples of `exec true`, sorted.
struct RoundTrips {
    /// Through the supervisor's API, as an orchestrator runs it.
    sandbox: Vec<Duration>,
    /// Straight to the agent, without the supervisor: tells the two hops' costs apart.
    agent: Vec<Duration>,
    /// Plain fork+exec on the host.
    host: Vec<Duration>,
}

/// The three kinds of round trip, interleaved so that drift in the machine's speed
/// affects each alike.
async fn round_trips(sb: &Sandbox) -> RoundTrips {
    use vmm_protocol::pb::agent_client::AgentClient;
    let c = sb.client().await;
    let channel = vmm_protocol::connect::channel(sb.agent_address())
        .await
        .expect("connect to the agent");
    let mut agent = AgentClient::new(channel);
    let mut r = RoundTrips {
        sandbox: Vec::with_capacity(ROUND_TRIPS),
        agent: Vec::with_capacity(ROUND_TRIPS),
        host: Vec::with_capacity(ROUND_TRIPS),
    };
    for _ in 0..ROUND_TRIPS {
        r.host.push(host_fork_exec());

        let t = Instant::now();
        let out = c.run(&["true"], b"").await.expect("exec true");
        assert_eq!(out.code(), Some(0));
        r.sandbox.push(t.elapsed());

        let t = Instant::now();
        agent_exec_true(&mut agent).await;
        r.agent.push(t.elapsed());
    }
    for v in [&mut r.sandbox, &mut r.agent, &mut r.host] {
        v.sort();
    }
    r
}

/// `exec true` on the agent's own API, until its exit arrives.
async fn agent_exec_true(
    agent: &mut vmm_protocol::pb::agent_client::AgentClient<tonic::transport::Channel>,
) {
    use vmm_protocol::pb::{exec_input, exec_output, ExecInput};
    let start = ExecInput {
        input: Some(exec_input::Input::Start(ExecStart {
            argv: vec!["true".into()],
            ..Default::default()
        })),
    };
    // The input side stays open until the exec ends (closing it cancels the exec).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(start).await.expect("queue start");
    let mut out = agent
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("agent exec")
        .into_inner();
    while let Some(msg) = out.message().await.expect("agent output") {
        if matches!(msg.output, Some(exec_output::Output::Exited(_))) {
            return;
        }
    }
    panic!("the agent's exec stream ended without an exit");
}

async fn sandbox_throughput(sb: &Sandbox) -> f64 {
    let c = sb.client().await;
    let t = Instant::now();
    let process = ExecStart {
        argv: ["head", "-c", &STREAM_BYTES.to_string(), "/dev/zero"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let mut session = c.exec(process, None).await.expect("exec head");
    let mut total = 0u64;
    while let Some(ev) = session.events.message().await.expect("events") {
        if let Some(exec_event::Event::Stdout(o)) = ev.event {
            total += o.data.len() as u64;
        }
    }
    assert_eq!(total, STREAM_BYTES);
    total as f64 / t.elapsed().as_secs_f64()
}

fn ready_ms(line: &str) -> f64 {
    let ready: serde_json::Value = serde_json::from_str(line).expect("a JSON readiness line");
    ready["ready_ms"]
        .as_f64()
        .expect("ready_ms in the readiness line")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let backend_name = match vm_unavailable() {
        None => "VM",
        Some(reason) => {
            println!("sandbox bench on the test jail (Linux guests cannot boot here: {reason})");
            "jail"
        }
    };
    let backend = move || {
        if backend_name == "VM" {
            Backend::Vm
        } else {
            Backend::Jail
        }
    };
    let sb = tokio::task::spawn_blocking(move || Sandbox::start(backend()))
        .await
        .unwrap();

    let r = round_trips(&sb).await;
    let p50 = |v: &[Duration]| percentile(v, 0.5);
    println!(
        "exec `true` round trip ({ROUND_TRIPS} runs, interleaved): sandbox p50 {:.3} ms p99 {:.3} ms | host fork+exec p50 {:.3} ms p99 {:.3} ms | p50 ratio {:.2}x",
        ms(p50(&r.sandbox)),
        ms(percentile(&r.sandbox, 0.99)),
        ms(p50(&r.host)),
        ms(percentile(&r.host, 0.99)),
        p50(&r.sandbox).as_secs_f64() / p50(&r.host).as_secs_f64()
    );
    println!(
        "  of which the agent alone (no supervisor hop): p50 {:.3} ms p99 {:.3} ms",
        ms(p50(&r.agent)),
        ms(percentile(&r.agent, 0.99))
    );

    let (mut pipes, mut streams) = (Vec::new(), Vec::new());
    for _ in 0..STREAM_RUNS {
        pipes.push(
            tokio::task::spawn_blocking(host_pipe_throughput)
                .await
                .unwrap(),
        );
        streams.push(sandbox_throughput(&sb).await);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (pipe, stream) = (median(pipes), median(streams));
    println!(
        "stdout throughput ({} MiB x {STREAM_RUNS}, medians): sandbox {:.0} MiB/s | host pipe {:.0} MiB/s | ratio {:.2}",
        STREAM_BYTES >> 20,
        stream / (1 << 20) as f64,
        pipe / (1 << 20) as f64,
        stream / pipe
    );
    drop(sb);

    let mut ready: Vec<f64> = Vec::new();
    for _ in 0..READY_RUNS {
        let sb = tokio::task::spawn_blocking(move || Sandbox::start(backend()))
            .await
            .unwrap();
        ready.push(ready_ms(&sb.ready_line));
    }
    ready.sort_by(|a, b| a.total_cmp(b));
    println!(
        "agent ready after start ({backend_name}, {READY_RUNS} starts): median {:.1} ms",
        ready[READY_RUNS / 2]
    );
}
