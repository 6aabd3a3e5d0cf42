//! The sandbox's entrypoint (`vmm run … -- CMD`, `vmm supervise … -- CMD`): started once
//! the sandbox is ready, its output kept (a ring that never holds it back) and shown by
//! `vmm logs`, and its exit ending the sandbox with its status unless `--keep-running`.
//! On the test jail (tier 2) and on Linux VMs (tier 3).

use std::process::Command;
use std::time::Duration;

use vmm_tests::sandbox::{skip_tier3, Backend, Sandbox};
use vmm_tests::vmm_bin;

#[derive(Clone, Copy)]
enum Kind {
    Jail,
    Vm,
}

macro_rules! both {
    ($body:ident) => {
        mod $body {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn jail() {
                super::$body(Kind::Jail).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tier3_vm() {
                if skip_tier3(stringify!($body)) {
                    return;
                }
                tokio::time::timeout(Duration::from_secs(600), super::$body(Kind::Vm))
                    .await
                    .expect("the test did not finish in time");
            }
        }
    };
}

fn start(kind: Kind, extra: &[&str]) -> Sandbox {
    let backend = match kind {
        Kind::Jail => Backend::Jail,
        Kind::Vm => Backend::Vm,
    };
    tokio::task::block_in_place(|| Sandbox::start_with(backend, extra))
}

/// `vmm logs [--follow]`: (stdout, stderr, exit code).
fn logs(sb: &Sandbox, follow: bool) -> (String, String, Option<i32>) {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("logs").arg("--api-sock").arg(&sb.api_socket);
    if follow {
        cmd.arg("--follow");
    }
    let out = tokio::task::block_in_place(|| cmd.output().expect("vmm logs runs"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

fn wait_exit(sb: &mut Sandbox) -> Option<i32> {
    tokio::task::block_in_place(|| sb.wait_exit(Duration::from_secs(120)))
}

async fn its_exit_ends_the_sandbox_with_its_status_and_logs_keep_its_output(kind: Kind) {
    // It goes on once the test creates /tmp/go.
    let script = "echo out-1; echo err-1 >&2; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
                  echo out-2; exit 7";
    let mut sb = start(kind, &["--", "sh", "-c", script]);
    let c = sb.client().await;
    // Running: Status lists it, and the logs so far end without --follow.
    let status = c.status().await.unwrap();
    let entry = status
        .execs
        .iter()
        .find(|e| e.exec_id == "entrypoint")
        .expect("Status lists the entrypoint");
    assert!(entry.running);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (out, err) = loop {
        let (out, err, code) = logs(&sb, false);
        assert_eq!(code, Some(0), "{err}");
        if out.contains("out-1") && err.contains("err-1") {
            break (out, err);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no output: {out:?} {err:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((out.as_str(), err.as_str()), ("out-1\n", "err-1\n"));
    // Let it finish: `logs --follow` prints everything and ends with it; the sandbox
    // ends with its status.
    let out = c.run(&["touch", "/tmp/go"], b"").await.unwrap();
    assert_eq!(out.code(), Some(0));
    let (out, _, code) = logs(&sb, true);
    assert_eq!((out.as_str(), code), ("out-1\nout-2\n", Some(0)));
    drop(c);
    assert_eq!(wait_exit(&mut sb), Some(7));
}
both!(its_exit_ends_the_sandbox_with_its_status_and_logs_keep_its_output);

async fn keep_running_outlives_it_and_status_shows_its_exit(kind: Kind) {
    let sb = start(kind, &["--keep-running", "--", "sh", "-c", "kill -TERM $$"]);
    let c = sb.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exited = loop {
        let status = c.status().await.unwrap();
        let entry = status.execs.into_iter().find(|e| e.exec_id == "entrypoint");
        if let Some(exited) = entry.and_then(|e| e.exited) {
            break exited;
        }
        assert!(std::time::Instant::now() < deadline, "it never exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        exited.status,
        Some(agent::pb::exited::Status::Signal(libc::SIGTERM))
    );
    // The sandbox is still there.
    let out = c.run(&["echo", "still-here"], b"").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
}
both!(keep_running_outlives_it_and_status_shows_its_exit);

async fn unread_output_never_holds_it_back(kind: Kind) {
    // More than the ring keeps (4 MiB a stream) plus any window, and nobody reads it.
    let mib = if matches!(kind, Kind::Vm) { 12 } else { 64 };
    let script = format!("head -c {mib}M /dev/zero; echo written > /tmp/done; sleep 1000");
    let sb = start(kind, &["--", "sh", "-c", &script]);
    let c = sb.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let out = c.run(&["cat", "/tmp/done"], b"").await.unwrap();
        if String::from_utf8_lossy(&out.stdout) == "written\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the entrypoint is held back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The logs hold the last 4 MiB, not all of it.
    let (out, _, code) = logs(&sb, false);
    assert_eq!(code, Some(0));
    assert!(
        out.len() as u64 <= (4 << 20) + (256 << 10),
        "{} bytes",
        out.len()
    );
    assert!(out.len() >= 1 << 20, "{} bytes", out.len());
}
both!(unread_output_never_holds_it_back);

async fn a_missing_program_ends_the_sandbox_with_127(kind: Kind) {
    let mut sb = start(kind, &["--", "/no/such/program"]);
    assert_eq!(wait_exit(&mut sb), Some(127));
}
both!(a_missing_program_ends_the_sandbox_with_127);
