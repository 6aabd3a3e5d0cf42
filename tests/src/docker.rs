//! The seed's Docker demo, stage by stage, through the sandbox API: a sandbox whose
//! entrypoint is dockerd (build/rootfs-docker.ext4, `make rootfs-docker`), `docker info`
//! polled until it answers, a Dockerfile written through the files API, `docker build`
//! streamed line by line, `docker run`, two containers on a user-defined bridge network,
//! and Docker's state carried by a disk snapshot into a new sandbox. `make demo-docker`
//! (src/bin/demo_docker.rs) and the tier-3 tests (tests/docker.rs) run these same stages.
//! Everything is offline: the base image is preloaded, and the build fetches over HTTP
//! only from the NetLab's world.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_client::{Client, ClientError, ExecOutput};

use crate::netlab::{NetLab, HTTP_PORT, WORLD_NAME};
use crate::sandbox::{repo_file, Backend, Networked, RootDisk, Sandbox};

/// The image with docker.io and the preloaded base image.
pub const DOCKER_ROOTFS: &str = "build/rootfs-docker.ext4";
/// The preloaded base image (a debootstrap minbase with curl, by `docker import`).
pub const BASE_IMAGE: &str = "local/debian:bookworm";
/// The seed's entrypoint.
pub const DOCKERD: [&str; 2] = ["/usr/bin/dockerd", "-D"];
/// Guest memory for Docker sandboxes: builds unpack layers in the page cache.
pub const DOCKER_MEMORY_MIB: u32 = 2048;
/// How long dockerd may take to answer `docker info` (it starts containerd first; in the
/// emulated KVM host this takes tens of seconds).
pub const DOCKERD_TIMEOUT: Duration = Duration::from_secs(300);
/// The demo image's tag.
pub const DEMO_TAG: &str = "vmm-demo/say:latest";
/// Where the build context goes in the sandbox.
pub const CONTEXT_DIR: &str = "/root/demo";

/// build/rootfs-docker.ext4, or a panic that says how to build it.
pub fn docker_rootfs() -> PathBuf {
    let p = repo_file(DOCKER_ROOTFS);
    assert!(
        p.is_file(),
        "{} is missing: run `make rootfs-docker`",
        p.display()
    );
    p
}

/// A sandbox with dockerd as its entrypoint, on the lab's network (open egress), on
/// `root`: for a VM a fresh overlay on the Docker image or a snapshot; for the jail the
/// Docker image itself (`RootDisk::Image`, which the jail copies).
pub fn start_dockerd(backend: Backend, lab: &NetLab, root: RootDisk) -> Sandbox {
    let mut extra = vec!["--"];
    extra.extend(DOCKERD);
    Sandbox::start_custom(
        backend,
        DOCKER_MEMORY_MIB,
        root,
        &Networked { lab, flags: &[] },
        &extra,
    )
}

/// A fresh overlay on the Docker image, in `dir`.
pub fn fresh_overlay(dir: &std::path::Path) -> RootDisk {
    RootDisk::Overlay {
        base: docker_rootfs(),
        overlay: dir.join("docker-overlay.qcow2"),
    }
}

/// Runs a shell script in the sandbox to its end.
pub async fn sh(c: &Client, script: &str) -> Result<ExecOutput, ClientError> {
    c.run(&["sh", "-c", script], b"").await
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `script`; its stdout, or an error with its exit code and stderr.
pub async fn sh_ok(c: &Client, script: &str) -> Result<String, String> {
    let out = sh(c, script).await.map_err(|e| format!("{script}: {e}"))?;
    match out.code() {
        Some(0) => Ok(text(&out.stdout)),
        code => Err(format!(
            "`{script}` exited with {code:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )),
    }
}

/// Polls `docker info` until it answers; returns its output (stdout then stderr, where
/// Docker prints its warnings) and how long that took.
pub async fn wait_for_docker(c: &Client) -> Result<(String, Duration), String> {
    let started = Instant::now();
    loop {
        let out = sh(c, "docker info").await.map_err(|e| e.to_string())?;
        if out.code() == Some(0) {
            let all = text(&out.stdout) + &text(&out.stderr);
            return Ok((all, started.elapsed()));
        }
        if started.elapsed() > DOCKERD_TIMEOUT {
            return Err(format!(
                "docker info did not answer in {DOCKERD_TIMEOUT:?}: {}",
                text(&out.stderr)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The lines of `docker info` that warn about something.
pub fn warnings(info: &str) -> Vec<&str> {
    info.lines().filter(|l| l.contains("WARNING")).collect()
}

/// The demo's Dockerfile: FROM the preloaded base, RUN steps, a fetch over HTTP through
/// the sandbox's network from `url`, COPY, and an ENTRYPOINT.
pub fn dockerfile(url: &str) -> String {
    format!(
        "FROM {BASE_IMAGE}\n\
         RUN echo \"built in a vmm sandbox on $(uname -r)\" > /etc/built-by\n\
         RUN curl -fsS --max-time 30 {url} -o /fetched.txt && cat /fetched.txt\n\
         COPY say.sh /usr/local/bin/say\n\
         RUN chmod 755 /usr/local/bin/say\n\
         ENTRYPOINT [\"/usr/local/bin/say\"]\n"
    )
}

/// The image's entrypoint: its arguments in a speech bubble, with what the build
/// fetched.
pub const SAY_SH: &str = r#"#!/bin/bash
msg="$*"
line=$(printf '%*s' $((${#msg} + 2)) '' | tr ' ' '-')
echo " $line"
echo "< $msg >"
echo " $line"
echo '    \   __'
echo '     \ (oo)____'
echo '       (__)    )\'
echo '          ||--|| *'
echo "fetched at build time: $(cat /fetched.txt)"
cat /etc/built-by
"#;

/// The URL the build fetches: the NetLab world's HTTP server, by name (DNS through the
/// sandbox's resolver).
pub fn fetch_url() -> String {
    format!("http://{WORLD_NAME}:{HTTP_PORT}/")
}

/// Writes the Dockerfile and say.sh into CONTEXT_DIR through the files API.
pub async fn write_build_context(c: &Client) -> Result<(), String> {
    sh_ok(c, &format!("mkdir -p {CONTEXT_DIR}")).await?;
    let files = [
        ("Dockerfile", dockerfile(&fetch_url()), 0o644),
        ("say.sh", SAY_SH.to_string(), 0o755),
    ];
    for (name, content, mode) in files {
        let path = format!("{CONTEXT_DIR}/{name}");
        c.write_file(&path, mode, std::io::Cursor::new(content.into_bytes()))
            .await
            .map_err(|e| format!("write {path}: {e}"))?;
    }
    Ok(())
}

/// `docker build -t TAG CONTEXT_DIR`, calling `on_line` with each line of its output as
/// it arrives; returns the whole output, or an error with its exit code.
pub async fn docker_build(
    c: &Client,
    tag: &str,
    mut on_line: impl FnMut(&str),
) -> Result<String, String> {
    use vmm_protocol::api::exec_event::Event;
    // The classic builder: one line per step and its output, as the seed's client prints.
    let script = format!("docker build -t {tag} {CONTEXT_DIR} 2>&1");
    let mut session = c
        .exec(
            vmm_protocol::pb::ExecStart {
                argv: ["sh", "-c", &script].map(String::from).to_vec(),
                env: [("DOCKER_BUILDKIT".to_string(), "0".to_string())].into(),
                ..Default::default()
            },
            None,
        )
        .await
        .map_err(|e| format!("docker build: {e}"))?;
    let mut all = String::new();
    let mut pending = Vec::new();
    while let Some(event) = session
        .events
        .message()
        .await
        .map_err(|e| format!("docker build: {e}"))?
    {
        match event.event {
            Some(Event::Stdout(o)) | Some(Event::Stderr(o)) => {
                pending.extend_from_slice(&o.data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = text(&line[..line.len() - 1]);
                    on_line(&line);
                    all.push_str(&line);
                    all.push('\n');
                }
            }
            Some(Event::Exited(e)) => {
                let rest = text(&pending);
                if !rest.is_empty() {
                    on_line(&rest);
                    all.push_str(&rest);
                }
                return match e.status {
                    Some(vmm_protocol::pb::exited::Status::Code(0)) => Ok(all),
                    status => Err(format!("docker build ended with {status:?}:\n{all}")),
                };
            }
            _ => {}
        }
    }
    Err(format!(
        "docker build: the stream ended without an exit:\n{all}"
    ))
}

/// `docker run --rm TAG ARGS…`: its output.
pub async fn docker_run(c: &Client, tag: &str, args: &str) -> Result<String, String> {
    sh_ok(c, &format!("docker run --rm {tag} {args} 2>&1")).await
}

/// The web server of the network stage: HTTP/1.0 with Perl's core sockets (the base
/// image has perl-base); it answers after reading the request's headers.
pub const WEB_PL: &str = r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalPort => 80, Listen => 5, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
    while (<$c>) { last if /^\r?$/ }
    print $c "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from web\n";
    close $c;
}
"#;

/// Two containers on a user-defined bridge network: "web" serves HTTP, and a second
/// container fetches from it by name (Docker's embedded DNS). Returns what it fetched.
pub async fn containers_talk_by_name(c: &Client) -> Result<String, String> {
    let server = format!("{CONTEXT_DIR}/web.pl");
    sh_ok(c, &format!("mkdir -p {CONTEXT_DIR}")).await?;
    c.write_file(
        &server,
        0o644,
        std::io::Cursor::new(WEB_PL.as_bytes().to_vec()),
    )
    .await
    .map_err(|e| format!("write {server}: {e}"))?;
    sh_ok(
        c,
        &format!(
            "docker network create demo-net >/dev/null && \
             docker run -d --name web --network demo-net -v {server}:/web.pl:ro \
             {BASE_IMAGE} perl /web.pl >/dev/null"
        ),
    )
    .await?;
    // The server may need a moment to listen: curl retries refused connections.
    sh_ok(
        c,
        &format!(
            "docker run --rm --network demo-net {BASE_IMAGE} \
             curl -fsS --retry 30 --retry-delay 1 --retry-connrefused --max-time 120 http://web/"
        ),
    )
    .await
}

/// The tags `docker images` lists.
pub async fn image_tags(c: &Client) -> Result<Vec<String>, String> {
    let out = sh_ok(c, "docker images --format '{{.Repository}}:{{.Tag}}'").await?;
    Ok(out.lines().map(str::to_string).collect())
}
