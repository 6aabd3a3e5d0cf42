//! `make bench` (sandbox part): exec round trip and stdout throughput through the
//! supervisor and the agent, next to plain fork+exec and a plain pipe on the host; and
//! the time until the agent is ready. Runs on the test jail (the VM backend where Linux
//! boots). Medians and percentiles.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::api::exec_event;
use agent::pb::ExecStart;
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

fn host_fork_exec() -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..ROUND_TRIPS)
        .map(|_| {
            let t = Instant::now();
            let ok = Command::new("true").status().expect("true runs").success();
            assert!(ok);
            t.elapsed()
        })
        .collect();
    v.sort();
    v
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

async fn sandbox_round_trips(sb: &Sandbox) -> Vec<Duration> {
    let c = sb.client().await;
    let mut v = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        let out = c.run(&["true"], b"").await.expect("exec true");
        assert_eq!(out.code(), Some(0));
        v.push(t.elapsed());
    }
    v.sort();
    v
}

/// The same round trip straight to the agent, without the supervisor: tells the two
/// hops' costs apart.
async fn agent_round_trips(sb: &Sandbox) -> Vec<Duration> {
    use agent::pb::{agent_client::AgentClient, exec_input, exec_output, ExecInput};
    let channel = agent::connect::channel(sb.agent_address())
        .await
        .expect("connect to the agent");
    let mut agent = AgentClient::new(channel);
    let mut v = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
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
        let mut exited = false;
        while let Some(msg) = out.message().await.expect("agent output") {
            exited |= matches!(msg.output, Some(exec_output::Output::Exited(_)));
        }
        assert!(exited);
        v.push(t.elapsed());
        drop(tx);
    }
    v.sort();
    v
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
    line.split("\"ready_ms\":")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches('}').parse().ok())
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

    let host = tokio::task::spawn_blocking(host_fork_exec).await.unwrap();
    let ours = sandbox_round_trips(&sb).await;
    println!(
        "exec `true` round trip ({ROUND_TRIPS} runs): sandbox p50 {:.3} ms p99 {:.3} ms | host fork+exec p50 {:.3} ms p99 {:.3} ms | p50 ratio {:.1}x",
        ms(percentile(&ours, 0.5)),
        ms(percentile(&ours, 0.99)),
        ms(percentile(&host, 0.5)),
        ms(percentile(&host, 0.99)),
        percentile(&ours, 0.5).as_secs_f64() / percentile(&host, 0.5).as_secs_f64()
    );

    let direct = agent_round_trips(&sb).await;
    println!(
        "  of which the agent alone (no supervisor hop): p50 {:.3} ms p99 {:.3} ms",
        ms(percentile(&direct, 0.5)),
        ms(percentile(&direct, 0.99))
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
