//! `make demo`: the mission's own example through the sandbox API. Start a sandbox with
//! 2 vCPUs and 4096 MiB, write a loop-mount script into it through the files API, run it
//! with bash, print its stdout, stderr and exit code, then `df -h /mnt/loop`, terminate.
//! In a VM where this host can boot Linux; otherwise in the test jail (the real agent as
//! PID 1 of the real rootfs, in fresh namespaces), saying plainly which.

use std::process::{Command, ExitCode};
use std::time::Duration;

use vmm_tests::sandbox::{vm_unavailable, Backend, Sandbox};
use vmm_tests::vmm_bin;

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let backend = match vm_unavailable() {
        None => {
            println!(
                "== Linux VM sandbox: build/vmlinux + build/rootfs.ext4, 2 vCPUs, 4096 MiB =="
            );
            Backend::Vm
        }
        Some(_) => {
            println!("== This host cannot boot Linux guests. `vmm doctor` says: ==");
            let doctor = Command::new(vmm_bin()).arg("doctor").output();
            if let Ok(out) = doctor {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("  {line}");
                }
            }
            println!("== So this demo runs the sandbox in the TEST JAIL, not a VM: the real agent");
            println!(
                "   as PID 1 of the real rootfs image, behind the same supervisor and API. =="
            );
            Backend::Jail
        }
    };
    let sb = match tokio::task::spawn_blocking(move || Sandbox::start(backend)).await {
        Ok(sb) => sb,
        Err(e) => {
            eprintln!("demo: the sandbox did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready: {}", sb.ready_line.trim());
    let c = sb.client().await;
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
