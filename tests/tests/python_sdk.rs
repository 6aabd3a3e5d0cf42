//! The Python SDK (sdk/python) with real Linux VMs (tier 3): the seed's two demos from
//! sdk/python/examples, run as a user runs them, and the pytest tests marked `vm`. The
//! rest of the SDK's suite runs against the test jail in `make test-sdk`, whose venv
//! (with the SDK installed) these tests use; tests/run-tier3 shares it with the emulated
//! KVM host.

use std::path::PathBuf;
use std::process::{Command, Output};

use vmm_tests::netlab::{NetLab, HTTP_PORT, WORLD_NAME};
use vmm_tests::sandbox::{repo_file, skip_tier3};
use vmm_tests::vmm_bin;

/// The venv of `make test-sdk` (mk/python-sdk.sh).
fn sdk_python() -> PathBuf {
    let cache = std::env::var_os("VMM_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/vmm")
        });
    let python = cache.join("python-sdk/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `make test-sdk` (or mk/python-sdk.sh) first",
        python.display()
    );
    python
}

/// Runs the SDK's python from the checkout with the real vmm: in `lab`'s host namespace
/// (where `--net auto` sandboxes get their network), or as it is (pytest's conftest
/// makes a lab of its own).
fn run_python(lab: Option<&NetLab>, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = match lab {
        Some(lab) => lab.host_command(&sdk_python()),
        None => Command::new(sdk_python()),
    };
    cmd.args(args)
        .current_dir(repo_file(""))
        .env("VMM_BIN", vmm_bin())
        .env("PYTHONUNBUFFERED", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("python runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tier3_the_seeds_loop_mount_demo_runs_through_the_sdk() {
    if skip_tier3("the_seeds_loop_mount_demo_runs_through_the_sdk") {
        return;
    }
    let lab = NetLab::new("sdkloop");
    let out = run_python(Some(&lab), &["sdk/python/examples/loop_mount_demo.py"], &[]);
    let all = text(&out);
    eprintln!("{all}");
    assert!(out.status.success(), "{all}");
    // mkfs.ext4's report, printed from p.stdout.read().
    assert!(all.contains("Writing superblocks"), "{all}");
    assert!(
        all.contains("vmm_sandbox: sandbox"),
        "no progress output: {all}"
    );
}

/// `tier3docker_`: with the other Docker stages, outside `make test` (tests/tests/docker.rs
/// says why); `make test-docker-tier3` runs it.
#[test]
fn tier3docker_the_seeds_docker_demo_runs_through_the_sdk_offline() {
    if skip_tier3("the_seeds_docker_demo_runs_through_the_sdk_offline") {
        return;
    }
    let lab = NetLab::new("sdkdocker");
    let url = format!("http://{WORLD_NAME}:{HTTP_PORT}/docker.cow");
    let out = run_python(
        Some(&lab),
        &["sdk/python/examples/docker_demo.py"],
        &[("DEMO_FETCH_URL", url)],
    );
    let all = text(&out);
    eprintln!("{all}");
    assert!(out.status.success(), "{all}");
    // The build's steps streamed, then the container's bubble and the fetched "cow" (the
    // world's server names the address it saw the request come from).
    assert!(
        all.contains("Step 1/5 : FROM local/debian:bookworm"),
        "{all}"
    );
    assert!(all.contains("< Hello! >"), "{all}");
    assert!(all.contains("world ") && all.contains(" saw "), "{all}");
}

#[test]
fn tier3_the_sdk_tests_that_need_a_vm_pass_with_vms() {
    if skip_tier3("the_sdk_tests_that_need_a_vm_pass_with_vms") {
        return;
    }
    let out = run_python(
        None,
        &["-m", "pytest", "-q", "-m", "vm", "sdk/python/tests"],
        &[],
    );
    let all = text(&out);
    eprintln!("{all}");
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(" skipped"), "a vm test skipped: {all}");
}
