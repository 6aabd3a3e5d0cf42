//! `make demo-docker`: the seed's Docker demo, offline, in a real VM, through the sandbox
//! API (the stages are vmm_tests::docker's, which the tier-3 tests run too):
//!
//! 1. a sandbox from build/rootfs-docker.ext4 (on a fresh overlay) whose entrypoint is
//!    `/usr/bin/dockerd -D`, on a network of its own (a NetLab: the sandboxes' host and a
//!    "world" with an HTTP server, in network namespaces);
//! 2. `docker info`, polled until it answers;
//! 3. a Dockerfile written through the files API, `docker build` streamed line by line
//!    (one step fetches from the world's server through the sandbox's NAT);
//! 4. `docker run --rm IMAGE Hello!`;
//! 5. two containers on a user-defined bridge network, one fetching from the other by name;
//! 6. a snapshot of the disk, a new sandbox from it, `docker images` and `docker run`
//!    there without a rebuild.
//!
//! It prints how long each stage took, and exits non-zero if any stage fails.

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmm_client::Client;
use vmm_tests::docker::{
    self, containers_talk_by_name, docker_build, docker_run, image_tags, wait_for_docker, warnings,
    write_build_context, DEMO_TAG,
};
use vmm_tests::netlab::NetLab;
use vmm_tests::sandbox::{Backend, RootDisk, Sandbox};

/// Stage timings, printed as they finish and again at the end.
#[derive(Default)]
struct Stages(Vec<(String, Duration)>);

impl Stages {
    /// Runs one stage, printing its name, its time and its result's summary.
    async fn run<T, F: Future<Output = Result<T, String>>>(
        &mut self,
        name: &str,
        stage: F,
    ) -> Result<T, String> {
        println!("\n== {name} ==");
        let started = Instant::now();
        let result = stage.await;
        let took = started.elapsed();
        match &result {
            Ok(_) => println!("-- {name}: {:.1} s", took.as_secs_f64()),
            Err(e) => println!("-- {name}: FAILED after {:.1} s: {e}", took.as_secs_f64()),
        }
        self.0.push((name.to_string(), took));
        result
    }

    fn print(&self) {
        println!("\n== stage times ==");
        for (name, took) in &self.0 {
            println!("{:>8.1} s  {name}", took.as_secs_f64());
        }
    }
}

async fn start(lab: &NetLab, root: RootDisk) -> Result<(Sandbox, Client), String> {
    // Sandbox::start* panics with the reason (and the guest's console) when it fails.
    let sb = tokio::task::block_in_place(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            docker::start_dockerd(Backend::Vm, lab, root)
        }))
    })
    .map_err(|e| panic_text(&e))?;
    println!("sandbox ready: {}", sb.ready_line.trim());
    let c = sb.client().await;
    Ok((sb, c))
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the sandbox did not start".into())
}

async fn docker_ready(c: &Client) -> Result<(), String> {
    let (info, waited) = wait_for_docker(c).await?;
    for line in info.lines().filter(|l| {
        [
            "Server Version",
            "Storage Driver",
            "Cgroup Version",
            "Kernel Version",
        ]
        .iter()
        .any(|k| l.trim_start().starts_with(k))
    }) {
        println!("{}", line.trim());
    }
    let warned = warnings(&info);
    if !warned.is_empty() {
        println!("docker info warns:\n{}", warned.join("\n"));
    }
    println!(
        "docker info answered after {:.1} s of polling",
        waited.as_secs_f64()
    );
    Ok(())
}

async fn demo(stages: &mut Stages) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = NetLab::new("demo");
    let snapshot = dir.path().join("docker-state.qcow2");
    {
        let (_sb, c) = stages
            .run(
                "start a sandbox with dockerd as its entrypoint",
                start(&lab, docker::fresh_overlay(dir.path())),
            )
            .await?;
        stages
            .run("wait until docker info answers", docker_ready(&c))
            .await?;
        stages
            .run("write the Dockerfile through the files API", async {
                write_build_context(&c).await?;
                print!("{}", docker::dockerfile(&docker::fetch_url()));
                Ok(())
            })
            .await?;
        stages
            .run(
                &format!("docker build -t {DEMO_TAG}"),
                docker_build(&c, DEMO_TAG, |line| println!("build | {line}")),
            )
            .await?;
        stages
            .run(&format!("docker run --rm {DEMO_TAG} Hello!"), async {
                print!("{}", docker_run(&c, DEMO_TAG, "Hello!").await?);
                Ok(())
            })
            .await?;
        stages
            .run("two containers on a user-defined bridge network", async {
                let fetched = containers_talk_by_name(&c).await?;
                println!(
                    "the client container fetched http://web/: {}",
                    fetched.trim()
                );
                Ok(())
            })
            .await?;
        stages
            .run("snapshot the disk (Docker's state included)", async {
                let taken = c
                    .snapshot("", &snapshot.to_string_lossy(), false)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "{}: {} MiB, guest paused {:.0} ms",
                    taken.path,
                    taken.size >> 20,
                    taken.pause_ms
                );
                Ok(())
            })
            .await?;
        // The first sandbox ends before the second starts (one VM at a time).
        let _ = c.terminate(Duration::from_secs(10)).await;
    }
    let (_sb, c) = stages
        .run(
            "start a new sandbox from the snapshot",
            start(&lab, RootDisk::Image(snapshot.clone())),
        )
        .await?;
    stages
        .run("wait until docker info answers", docker_ready(&c))
        .await?;
    stages
        .run("docker images and docker run, no rebuild", async {
            let tags = image_tags(&c).await?;
            println!("docker images: {}", tags.join(", "));
            if !tags.iter().any(|t| t == DEMO_TAG) {
                return Err(format!("{DEMO_TAG} is not in the snapshot"));
            }
            print!(
                "{}",
                docker_run(&c, DEMO_TAG, "Hello from a snapshot!").await?
            );
            Ok(())
        })
        .await?;
    let _ = c.terminate(Duration::from_secs(10)).await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    println!(
        "== Docker in a Linux VM sandbox: build/vmlinux + {}, 2 vCPUs, {} MiB ==",
        docker::DOCKER_ROOTFS,
        docker::DOCKER_MEMORY_MIB
    );
    let mut stages = Stages::default();
    let result = demo(&mut stages).await;
    stages.print();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-docker: {e}");
            ExitCode::FAILURE
        }
    }
}
