//! `make demo`: the mission's own example through the sandbox API. Start a sandbox with
//! 2 vCPUs and the product's default memory (1024 MiB), write a loop-mount script into it
//! through the files API, run it with bash, print its stdout, stderr and exit code, then
//! `df -h /mnt/loop`, terminate.
//! `demo vm` uses a Linux VM (make demo runs it inside the emulated KVM host where this
//! host cannot boot Linux directly); `demo jail` the test jail (the real agent as PID 1
//! of the real rootfs, in fresh namespaces). It prints how long each stage took.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmm_tests::sandbox::{Backend, Sandbox};

const SCRIPT: &str = "truncate -s 100M /tmp/disk.img
mkfs.ext4 -F /tmp/disk.img
mkdir -p /mnt/loop
mount -o loop /tmp/disk.img /mnt/loop
";

fn print_block(title: &str, bytes: &[u8]) {
    println!("--- {title} ---");
    print!("{}", String::from_utf8_lossy(bytes));
    if !bytes.ends_with(b"\n") && !bytes.is_empty() {
        println!();
    }
}

/// Set by tests/nested/runjob: this process runs inside the emulated KVM host.
const IN_EMULATED_HOST_VAR: &str = "VMM_IN_EMULATED_HOST";

/// Seconds since this (virtual) machine booted.
fn uptime_secs() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `demo vm` or `demo jail` (make demo picks one from `vmm doctor`).
fn backend_from_args() -> Option<Backend> {
    match std::env::args().nth(1).as_deref() {
        Some("vm") => Some(Backend::Vm),
        Some("jail") => Some(Backend::Jail),
        _ => None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let Some(backend) = backend_from_args() else {
        eprintln!("usage: demo vm|jail");
        return ExitCode::from(2);
    };
    match backend {
        Backend::Vm => {
            if std::env::var_os(IN_EMULATED_HOST_VAR).is_some() {
                let up = uptime_secs().unwrap_or(0.0);
                println!("stage: emulated KVM host up after {up:.1} s (its kernel's uptime)");
            }
            println!(
                "== Linux VM sandbox: build/vmlinux + build/rootfs.ext4, 2 vCPUs, {} MiB ==",
                vmm_tests::sandbox::VM_MEMORY_MIB
            );
        }
        Backend::Jail => {
            println!("== The sandbox runs in the TEST JAIL, not a VM: the real agent as PID 1 of");
            println!("   the real rootfs image, behind the same supervisor and API. ==");
        }
    }
    let started = Instant::now();
    let sb = match tokio::task::spawn_blocking(move || Sandbox::start(backend)).await {
        Ok(sb) => sb,
        Err(e) => {
            eprintln!("demo: the sandbox did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "stage: sandbox ready {:.1} s after the demo started (rootfs copy included): {}",
        started.elapsed().as_secs_f64(),
        sb.ready_line.trim()
    );
    let c = sb.client().await;
    if let Ok(about) = c
        .run(
            &[
                "sh",
                "-c",
                "cat /proc/version; echo \"nproc: $(nproc)\"; grep MemTotal /proc/meminfo",
            ],
            b"",
        )
        .await
    {
        print_block("the sandbox", &about.stdout);
    }
    let path = "/tmp/mount_loopback_filesystem.sh";
    if let Err(e) = c
        .write_file(
            path,
            0o755,
            std::io::Cursor::new(SCRIPT.as_bytes().to_vec()),
        )
        .await
    {
        eprintln!("demo: writing the script failed: {e}");
        return ExitCode::FAILURE;
    }
    println!("wrote {path} through the files API");
    let script_started = Instant::now();
    let run = match c.run(&["bash", path], b"").await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: running the script failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_block("stdout", &run.stdout);
    print_block("stderr", &run.stderr);
    println!("--- exit code: {:?} ---", run.code());
    println!(
        "stage: script ran in {:.1} s",
        script_started.elapsed().as_secs_f64()
    );
    match c.run(&["df", "-h", "/mnt/loop"], b"").await {
        Ok(df) => print_block("df -h /mnt/loop", &df.stdout),
        Err(e) => eprintln!("demo: df failed: {e}"),
    }
    let _ = c.terminate(Duration::from_secs(5)).await;
    let mut sb = sb;
    let code = tokio::task::spawn_blocking(move || sb.wait_exit(Duration::from_secs(30)))
        .await
        .ok()
        .flatten();
    println!("terminated; vmm exited with {code:?}");
    if run.code() == Some(0) && code == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
