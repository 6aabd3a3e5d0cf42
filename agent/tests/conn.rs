//! Connections and lifecycle of the real agent binary: Ping, several clients, garbage
//! on the socket, Shutdown, SIGTERM, the vsock listener and the command line.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::pb::exec_output::Output;
use agent::pb::{PingRequest, ShutdownRequest};
use common::*;

fn host_hostname() -> String {
    let out = Command::new("hostname").output().expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_identity() {
    let agent = TestAgent::start();
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let mut c = agent.client().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let p = c.ping(PingRequest {}).await.unwrap().into_inner();
    assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(p.pid, agent.pid());
    assert_eq!(p.hostname, host_hostname());
    assert!(
        p.uptime_ms >= 20 && p.uptime_ms < 60_000,
        "uptime {}",
        p.uptime_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_that_connection_only() {
    let agent = TestAgent::start();
    let mut good = agent.client().await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(garbage).unwrap();
        let mut buf = Vec::new();
        // The agent answers with at most an HTTP/2 GOAWAY, then closes.
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connection not closed after garbage {garbage:?}: {e}"),
        }
        // The established client and new clients keep working.
        assert_eq!(run_ok(&mut good, "echo still").await, "still\n");
        let mut fresh = agent.client().await;
        fresh.ping(PingRequest {}).await.unwrap();
    }
    // A client that connects and leaves at once.
    drop(std::os::unix::net::UnixStream::connect(&agent.socket).unwrap());
    good.ping(PingRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_at_once() {
    let agent = TestAgent::start();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(agent.client().await);
    }
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            assert_eq!(
                run_ok(&mut c, &format!("echo conn-{i}")).await,
                format!("conn-{i}\n")
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_execs_and_exits_0() {
    let mut agent = TestAgent::start();
    let mut c = agent.client().await;
    let mut r = spawn(&mut c, start(&["sleep", "100"])).await.unwrap();
    let Some(Output::Started(s)) = r.next().await else {
        panic!("no started")
    };
    c.shutdown(ShutdownRequest {}).await.unwrap();
    let status = agent.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(s.pid) {
        assert!(
            Instant::now() < deadline,
            "exec {} outlived the agent",
            s.pid
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn sigterm_exits_0() {
    let mut agent = TestAgent::start();
    // SAFETY: kill(2) on our own child; no memory involved.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(agent.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn listens_on_vsock_by_default() {
    // Binding AF_VSOCK works without a hypervisor transport; nobody can connect here,
    // but the agent must come up and stay up.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm-agent"))
        .args(["--no-init", "--vsock-port", "47321"])
        .env("VMM_AGENT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let state = child.try_wait().unwrap();
    // SAFETY: kill(2) on our own child; no memory involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    if log.contains("Address family not supported") {
        eprintln!("skipping: this kernel has no AF_VSOCK");
        return;
    }
    assert!(state.is_none(), "agent exited: {log}");
    assert!(log.contains("listening on vsock port 47321"), "{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
}

#[test]
fn bad_command_line_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm-agent"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument '--bogus'"));
    let out = Command::new(env!("CARGO_BIN_EXE_vmm-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--vsock-port"));
}
