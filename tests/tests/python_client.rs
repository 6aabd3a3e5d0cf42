//! A Python orchestrator with the stock grpcio client (default channel options, a `unix:`
//! target) against the real agent in the test jail behind `vmm supervise` (tier 2).
//!
//! grpcio 1.57 and later send the socket path, percent-encoded, as `:authority`, which
//! the HTTP/2 layer under the API server rejects unless the server fixes it
//! (vmm/src/sandbox/server/h2_authority.rs). The stubs are generated here from
//! agent/protocol/proto with grpcio-tools; the client is tests/python/sandbox_client.py. grpcio
//! comes from the venv that `make deps` (mk/python-grpcio.sh) installs: without it the
//! test fails, it never skips.
//!
//! Also: a client whose header block the rewriter cannot decode loses its connection,
//! and only that.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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
    let proto = repo_file("agent/protocol/proto");
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

#[test]
fn a_malformed_header_block_closes_only_its_connection() {
    let sb = Sandbox::start(Backend::Jail);
    let bystander = UnixStream::connect(&sb.api_socket).expect("connect");
    let mut bad = UnixStream::connect(&sb.api_socket).expect("connect");
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
                                                           // HEADERS on stream 1 (END_HEADERS): :method GET, then an index past both tables.
    bytes.extend_from_slice(&[0, 0, 3, 1, 4, 0, 0, 0, 1, 0x82, 0xff, 0x7f]);
    bad.write_all(&bytes).expect("write");
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut from_server = Vec::new();
    match bad.read_to_end(&mut from_server) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection stayed open ({e}) after a malformed header block"),
    }
    // The server and its other connections go on.
    let status = Command::new(vmm_bin())
        .args(["status", "--api-sock"])
        .arg(&sb.api_socket)
        .output()
        .expect("vmm runs");
    assert!(status.status.success(), "{}", text(&status.stderr));
    // The bystander has the server's SETTINGS to read, then nothing: no end of stream.
    bystander.set_nonblocking(true).unwrap();
    let mut buf = [0; 256];
    loop {
        match (&bystander).read(&mut buf) {
            Ok(0) => panic!("a connection that sent nothing was closed too"),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("a connection that sent nothing failed too: {e}"),
        }
    }
}
