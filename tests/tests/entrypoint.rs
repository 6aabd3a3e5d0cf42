//! The sandbox's entrypoint (`vmm run … -- CMD`, `vmm supervise … -- CMD`): started once
//! the sandbox is ready, its output kept (a ring that never holds it back) and shown by
//! `vmm logs`, and its exit ending the sandbox with its status unless `--keep-running`.
//! On the test jail (tier 2) and on Linux VMs (tier 3).

use std::process::Command;
use std::time::Duration;

use vmm_tests::sandbox::{Backend, Sandbox};
use vmm_tests::vmm_bin;

/// Longest a tier-3 body may run (its guests run inside the emulated KVM host here).
const VM_TEST_TIMEOUT: Duration = Duration::from_secs(600);

fn start(backend: Backend, extra: &[&str]) -> Sandbox {
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

async fn its_exit_ends_the_sandbox_with_its_status_and_logs_keep_its_output(backend: Backend) {
    // It goes on once the test creates /tmp/go.
    let script = "echo out-1; echo err-1 >&2; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
                  echo out-2; exit 7";
    let mut sb = start(backend, &["--", "sh", "-c", script]);
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
    // `logs --follow`, attached while it runs, prints everything and ends with it (once
    // it has exited, the sandbox ends too, and nothing is left to ask).
    let follower = Command::new(vmm_bin())
        .arg("logs")
        .arg("--api-sock")
        .arg(&sb.api_socket)
        .arg("--follow")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("vmm logs runs");
    // Attached once its first output arrived; then let the entrypoint finish.
    let mut follower = follower;
    let mut first = [0u8; 6];
    let mut stdout = follower.stdout.take().unwrap();
    tokio::task::block_in_place(|| std::io::Read::read_exact(&mut stdout, &mut first)).unwrap();
    assert_eq!(&first, b"out-1\n");
    let out = c.run(&["touch", "/tmp/go"], b"").await.unwrap();
    assert_eq!(out.code(), Some(0));
    let mut rest = String::new();
    tokio::task::block_in_place(|| std::io::Read::read_to_string(&mut stdout, &mut rest)).unwrap();
    assert_eq!(rest, "out-2\n");
    let status = tokio::task::block_in_place(|| follower.wait()).unwrap();
    assert_eq!(status.code(), Some(0));
    drop(c);
    assert_eq!(wait_exit(&mut sb), Some(7));
}
vmm_tests::on_both_backends!(
    its_exit_ends_the_sandbox_with_its_status_and_logs_keep_its_output,
    super::VM_TEST_TIMEOUT
);

async fn keep_running_outlives_it_and_status_shows_its_exit(backend: Backend) {
    let sb = start(
        backend,
        &["--keep-running", "--", "sh", "-c", "kill -TERM $$"],
    );
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
        Some(vmm_protocol::pb::exited::Status::Signal(libc::SIGTERM))
    );
    // The sandbox is still there.
    let out = c.run(&["echo", "still-here"], b"").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
}
vmm_tests::on_both_backends!(
    keep_running_outlives_it_and_status_shows_its_exit,
    super::VM_TEST_TIMEOUT
);

async fn unread_output_never_holds_it_back(backend: Backend) {
    // More than the ring keeps (4 MiB a stream) plus any window, and nobody reads it.
    let mib = if backend == Backend::Vm { 12 } else { 64 };
    let script = format!("head -c {mib}M /dev/zero; echo written > /tmp/done; sleep 1000");
    let sb = start(backend, &["--", "sh", "-c", &script]);
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
vmm_tests::on_both_backends!(unread_output_never_holds_it_back, super::VM_TEST_TIMEOUT);

async fn a_missing_program_ends_the_sandbox_with_127(backend: Backend) {
    let mut sb = start(backend, &["--", "/no/such/program"]);
    assert_eq!(wait_exit(&mut sb), Some(127));
}
vmm_tests::on_both_backends!(
    a_missing_program_ends_the_sandbox_with_127,
    super::VM_TEST_TIMEOUT
);
