//! A Python orchestrator with the stock grpcio client (default channel options, a `unix:`
//! target) against the real agent in the test jail behind `vmm supervise` (tier 2).
//!
//! grpcio 1.57 and later send the socket path, percent-encoded, as `:authority`, which
//! the HTTP/2 layer under the API server rejects unless the server fixes it
//! (vmm/src/sandbox/server/h2_authority.rs). The stubs are generated here from
//! agent/proto with grpcio-tools; the client is tests/python/sandbox_client.py. grpcio
//! comes from the venv that `make deps` (mk/python-grpcio.sh) installs: without it the
//! test fails, it never skips.

use std::path::PathBuf;
use std::process::Command;

use vmm_tests::sandbox::{repo_file, Backend, Sandbox};
use vmm_tests::vmm_bin;

/// The venv's python, as mk/python-grpcio.sh installs it.
fn python() -> PathBuf {
    let cache = std::env::var_os("VMM_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/vmm")
        });
    let python = cache.join("python-grpcio/bin/python3");
    assert!(
        python.is_file(),
        "{} is missing: run `make deps` (mk/python-grpcio.sh installs grpcio there)",
        python.display()
    );
    python
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn stock_grpcio_over_unix_socket() {
    let python = python();
    let stubs = tempfile::tempdir().expect("temp dir");
    let proto = repo_file("agent/proto");
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(proto.join("sandbox.proto"))
        .arg(proto.join("agent.proto"))
        .output()
        .expect("python runs");
    assert!(
        generated.status.success(),
        "grpc_tools.protoc failed (run `make deps`?): {}",
        text(&generated.stderr)
    );

    let sb = Sandbox::start(Backend::Jail);
    let client = Command::new(&python)
        .arg(repo_file("tests/python/sandbox_client.py"))
        .arg(&sb.api_socket)
        .env("PYTHONPATH", stubs.path())
        .output()
        .expect("python runs");
    assert!(
        client.status.success(),
        "the grpcio client failed ({}):\n{}{}",
        client.status,
        text(&client.stdout),
        text(&client.stderr)
    );
    assert!(
        text(&client.stdout).contains("ok"),
        "{}",
        text(&client.stdout)
    );

    // The Rust client (the vmm CLI) still works beside it, and sees what Python wrote.
    let vmm = |args: &[&str]| {
        let out = Command::new(vmm_bin())
            .arg(args[0])
            .arg("--api-sock")
            .arg(&sb.api_socket)
            .args(&args[1..])
            .output()
            .expect("vmm runs");
        assert!(out.status.success(), "vmm {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let status = vmm(&["status"]);
    assert!(status.starts_with("state: ready"), "{status}");
    let sum = vmm(&["exec", "--", "sha256sum", "/tmp/from-python"]);
    let copy = stubs.path().join("from-python");
    vmm(&[
        "cp",
        ":/tmp/from-python",
        copy.to_str().expect("a UTF-8 temp path"),
    ]);
    let local = Command::new("sha256sum")
        .arg(&copy)
        .output()
        .expect("sha256sum runs");
    assert_eq!(
        sum.split_whitespace().next(),
        text(&local.stdout).split_whitespace().next()
    );
}
