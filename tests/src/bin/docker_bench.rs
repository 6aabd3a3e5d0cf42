//! `make bench` (Docker part; where Linux boots: `make bench` runs it in the emulated KVM
//! host here). Sandboxes from build/rootfs-docker.ext4 with dockerd as the entrypoint, on
//! a NetLab network, one at a time:
//! - dockerd start to ready: from the sandbox's readiness (its entrypoint, dockerd, has
//!   just started) to the first `docker info` that answers, and from `vmm run` to then;
//! - the build time of the demo image (`docker build --no-cache`, the Dockerfile of
//!   `make demo-docker`, with its HTTP fetch);
//! - the pause of a live snapshot with /var/lib/docker populated (the builds' images
//!   and a 256 MiB layer) against one with it empty (`docker system prune -af`), in
//!   the same sandbox.
//!
//! VMM_BENCH_RUNS sets the runs per figure (default 3). Medians.

use std::time::{Duration, Instant};

use vmm_client::Client;
use vmm_tests::docker::{
    self, sh_ok, wait_for_docker, write_build_context, BASE_IMAGE, CONTEXT_DIR,
};
use vmm_tests::netlab::NetLab;
use vmm_tests::sandbox::{Backend, Sandbox};
use vmm_tests::stats::median;

fn runs() -> usize {
    std::env::var("VMM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Starts a Docker sandbox and waits for dockerd: (the sandbox, its client, seconds
/// from readiness to docker info, seconds from spawn to docker info).
async fn docker_sandbox(lab: &NetLab, dir: &std::path::Path) -> (Sandbox, Client, f64, f64) {
    let spawned = Instant::now();
    let sb = tokio::task::block_in_place(|| {
        docker::start_dockerd(Backend::Vm, lab, docker::fresh_overlay(dir))
    });
    let c = sb.client().await;
    let (_, waited) = wait_for_docker(&c).await.expect("dockerd answers");
    (sb, c, secs(waited), secs(spawned.elapsed()))
}

/// The size of the incompressible layer the populated case adds.
const BLOB_MIB: u32 = 256;

/// What /var/lib/docker holds, in MiB.
async fn docker_mib(c: &Client) -> String {
    sh_ok(c, "du -sm /var/lib/docker | cut -f1")
        .await
        .expect("du")
        .trim()
        .to_string()
}

/// `runs` live snapshots in a row: the guest's pause (freeze → thaw) of each, in ms.
async fn snapshot_pauses(c: &Client, dir: &std::path::Path, label: &str) -> Vec<f64> {
    let mut pauses = Vec::new();
    for i in 0..runs() {
        let path = dir.join(format!("{label}-{i}.qcow2"));
        let taken = c
            .snapshot("", &path.to_string_lossy(), false)
            .await
            .expect("snapshot");
        pauses.push(taken.pause_ms);
    }
    pauses
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    docker::docker_rootfs();
    let lab = NetLab::new("dbench");
    let mut ready = Vec::new();
    let mut total = Vec::new();
    for run in 0..runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (sb, c, to_ready, from_spawn) = docker_sandbox(&lab, dir.path()).await;
        println!("run {run}: dockerd ready {to_ready:.1} s after the sandbox, {from_spawn:.1} s after vmm run");
        ready.push(to_ready);
        total.push(from_spawn);
        let _ = c.terminate(Duration::from_secs(10)).await;
        drop(sb);
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let (_sb, c, _, _) = docker_sandbox(&lab, dir.path()).await;
    write_build_context(&c).await.expect("build context");
    let mut builds = Vec::new();
    for run in 0..runs() {
        let started = Instant::now();
        sh_ok(
            &c,
            &format!("docker build --no-cache -q -t bench:{run} {CONTEXT_DIR}"),
        )
        .await
        .expect("docker build");
        builds.push(secs(started.elapsed()));
        println!("build {run}: {:.1} s", builds[run]);
    }
    // A layer of incompressible data besides the builds' small ones.
    sh_ok(
        &c,
        &format!(
            "printf 'FROM {BASE_IMAGE}\\nRUN head -c {BLOB_MIB}M /dev/urandom >/blob\\n' \\
             | docker build -q -t bench:blob - && sync"
        ),
    )
    .await
    .expect("the blob image");
    let populated_mib = docker_mib(&c).await;
    let populated = snapshot_pauses(&c, dir.path(), "populated").await;
    // Then nothing: every image (the preloaded base too) removed.
    sh_ok(&c, "docker system prune -af >/dev/null && sync")
        .await
        .expect("docker system prune");
    let empty_mib = docker_mib(&c).await;
    let empty = snapshot_pauses(&c, dir.path(), "empty").await;
    let _ = c.terminate(Duration::from_secs(10)).await;

    println!("\n== Docker in a sandbox (medians of {} runs) ==", runs());
    println!(
        "dockerd start to ready: {:.1} s after the sandbox's readiness ({:.1} s after vmm run)",
        median(ready),
        median(total)
    );
    println!("demo image build (--no-cache): {:.1} s", median(builds));
    let (empty, populated) = (median(empty), median(populated));
    println!(
        "snapshot pause: {populated:.0} ms with /var/lib/docker populated ({populated_mib} MiB), \
         {empty:.0} ms with it empty ({empty_mib} MiB): ratio {:.2}",
        populated / empty
    );
}
