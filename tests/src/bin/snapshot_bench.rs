//! `make bench` (snapshot part).
//!
//! Without arguments (a tiny guest, on this host's KVM): the pause of a live snapshot
//! after 100 MiB and after 2 GiB were written to the overlay, while the guest keeps
//! writing. The overlay's data is written by `qemu-io` and synced before the VM starts,
//! as a guest's flushes would have; what the seal itself costs is what is measured: the
//! drive's I/O held (`io_pause_ms`) and the whole `vmm snapshot` call. Aim: a ratio of
//! about 1 between the two sizes.
//!
//! With `--linux` (where Linux boots; `make bench` runs it in the emulated KVM host):
//! time to agent-ready of a sandbox started from a snapshot against one started from its
//! base on a fresh overlay, interleaved.
//!
//! VMM_BENCH_RUNS sets the runs per case (default 5).

use std::process::Command;
use std::time::{Duration, Instant};

use vmm_tests::sandbox::{repo_file, RootDisk, Sandbox};
use vmm_tests::stats::median;
use vmm_tests::{Vmm, TINY_ELF};

const SIZES_MIB: [u64; 2] = [100, 2048];
const BASE_BYTES: u64 = 3 << 30;

fn runs() -> usize {
    std::env::var("VMM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One live snapshot of an overlay holding `mib` MiB: (I/O held, whole call) in ms.
fn pause_after(mib: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (base, overlay, api) = (
        dir.path().join("base.img"),
        dir.path().join("sandbox.qcow2"),
        dir.path().join("api.sock"),
    );
    std::fs::File::create(&base)
        .unwrap()
        .set_len(BASE_BYTES)
        .unwrap();
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay));
    // qemu-io writes at most 2 GiB - 512 at once.
    let mut fill = Command::new("qemu-io");
    for at in (0..mib).step_by(256) {
        let len = (mib - at).min(256);
        fill.args(["-c", &format!("write -q -P 0x5a {at}M {len}M")]);
    }
    run(fill.arg(&overlay));
    // SAFETY: sync has no arguments.
    unsafe { libc::sync() };
    let mut vm = Vmm::guest(TINY_ELF, "blkwrite sectors=64")
        .memory_mib(64)
        .flag("--rootfs", &base)
        .flag("--overlay", &overlay)
        .flag("--api-sock", &api)
        .spawn();
    vm.wait_for_stdout("info pass 2\n", Duration::from_secs(30));
    let started = Instant::now();
    let out = Command::new(vmm_tests::vmm_bin())
        .args(["snapshot", "--json", "--no-freeze", "--api-sock"])
        .arg(&api)
        .arg(dir.path().join("snap.qcow2"))
        .output()
        .expect("vmm snapshot runs");
    let call = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    vm.signal(libc::SIGTERM);
    vm.wait_timeout(Duration::from_secs(10));
    (
        reply["io_pause_ms"].as_f64().expect("io_pause_ms"),
        call.as_secs_f64() * 1e3,
    )
}

fn pause_bench() {
    let runs = runs();
    println!("== live snapshot pause (tiny guest writing; {runs} runs per size, interleaved) ==");
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); SIZES_MIB.len()];
    for _ in 0..runs {
        for (i, &mib) in SIZES_MIB.iter().enumerate() {
            let (held, call) = pause_after(mib);
            results[i].0.push(held);
            results[i].1.push(call);
        }
    }
    let first = median(results[0].0.clone());
    println!(
        "{:>14}  {:>16}  {:>16}  {:>8}",
        "data written", "I/O held (ms)", "vmm snapshot (ms)", "ratio"
    );
    for (i, &mib) in SIZES_MIB.iter().enumerate() {
        let held = median(results[i].0.clone());
        println!(
            "{:>10} MiB  {held:>16.2}  {:>16.2}  {:>8.2}",
            mib,
            median(results[i].1.clone()),
            held / first
        );
    }
}

fn ready_ms(sb: &Sandbox) -> f64 {
    let v: serde_json::Value = serde_json::from_str(&sb.ready_line).expect("ready JSON");
    v["ready_ms"].as_f64().expect("ready_ms")
}

async fn stop(mut sb: Sandbox) {
    let c = sb.client().await;
    let _ = c.terminate(Duration::from_secs(10)).await;
    tokio::task::spawn_blocking(move || sb.wait_exit(Duration::from_secs(120)))
        .await
        .unwrap();
}

async fn start(root: RootDisk) -> Sandbox {
    tokio::task::spawn_blocking(move || Sandbox::start_vm_on(root, &[]))
        .await
        .unwrap()
}

async fn ready_bench() {
    let runs = runs();
    let dir = tempfile::tempdir().expect("temp dir");
    let base = repo_file("build/rootfs.ext4");
    // The snapshot: a sandbox that wrote 64 MiB of files.
    let first = start(RootDisk::Overlay {
        base: base.clone(),
        overlay: dir.path().join("first.qcow2"),
    })
    .await;
    let c = first.client().await;
    c.run(
        &[
            "sh",
            "-c",
            "head -c 64M /dev/urandom > /root/data.bin && sync",
        ],
        b"",
    )
    .await
    .expect("write");
    let snap = dir.path().join("snap.qcow2");
    c.snapshot("", snap.to_str().unwrap(), false)
        .await
        .expect("snapshot");
    stop(first).await;

    println!("== time to agent-ready: from a snapshot vs from its base ({runs} runs each, interleaved) ==");
    let (mut from_base, mut from_snap) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let overlay = dir.path().join(format!("base-{i}.qcow2"));
        let sb = start(RootDisk::Overlay {
            base: base.clone(),
            overlay: overlay.clone(),
        })
        .await;
        from_base.push(ready_ms(&sb));
        stop(sb).await;
        let _ = std::fs::remove_file(overlay);
        let sb = start(RootDisk::Image(snap.clone())).await;
        from_snap.push(ready_ms(&sb));
        stop(sb).await;
    }
    let (b, s) = (median(from_base), median(from_snap));
    println!("from the base (new overlay):   {b:>9.1} ms");
    println!(
        "from a snapshot (temporary):   {s:>9.1} ms   ratio {:.2}",
        s / b
    );
}

fn main() {
    if std::env::args().any(|a| a == "--linux") {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(ready_bench());
    } else {
        pause_bench();
    }
}
