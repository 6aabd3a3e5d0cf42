//! Tier 3, sandbox behaviours that only a real Linux guest has: its size and CPU
//! features, systemd as init, the VMM's exit status when the guest reboots, powers off or
//! panics, and vsock from inside the guest. (The e2e bodies shared with the test jail are in sandbox.rs.)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use vmm_client::{collect, request, Client, ExecOutput};
use vmm_protocol::api::exec_request;
use vmm_protocol::pb::{self, ExecStart};
use vmm_tests::sandbox::{skip_tier3, Backend, Sandbox};

/// How long a guest may take to go down after it was asked to.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

async fn start(extra: &'static [&'static str]) -> Sandbox {
    start_sized(vmm_tests::sandbox::VM_MEMORY_MIB, extra).await
}

async fn start_sized(memory_mib: u32, extra: &'static [&'static str]) -> Sandbox {
    tokio::task::spawn_blocking(move || Sandbox::start_sized(Backend::Vm, memory_mib, extra))
        .await
        .unwrap()
}

async fn sh(c: &Client, script: &str) -> ExecOutput {
    c.run(&["sh", "-c", script], b"").await.expect("exec")
}

fn argv(args: &[&str]) -> ExecStart {
    ExecStart {
        argv: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `script`, which takes the guest down; the exec itself may be cut short.
async fn bring_down(c: &Client, script: &str) {
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, c.run(&["sh", "-c", script], b"")).await;
}

/// Waits for the VMM to end; panics with the guest's console when it does not end with 0.
async fn assert_exits_with_0(mut sb: Sandbox, after: &str) {
    let (code, console) = tokio::task::spawn_blocking(move || {
        let code = sb.wait_exit(SHUTDOWN_TIMEOUT);
        (code, sb.console_tail(40))
    })
    .await
    .unwrap();
    assert_eq!(
        code,
        Some(0),
        "vmm's exit status after {after}; the guest console ended with:\n{console}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_the_vm_has_its_vcpus_and_memory() {
    if skip_tier3("the_vm_has_its_vcpus_and_memory") {
        return;
    }
    let sb = start_sized(4096, &[]).await;
    let c = sb.client().await;
    let out = text(
        &sh(
            &c,
            "nproc; sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo",
        )
        .await
        .stdout,
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("2"), "{out}");
    let mem_kib: u64 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
    assert!(
        mem_kib > 3900 * 1024 && mem_kib <= 4096 * 1024,
        "MemTotal {mem_kib} kB of 4096 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_systemd_runs_the_agent_and_its_poweroff_ends_the_vm_with_0() {
    if skip_tier3("systemd_runs_the_agent_and_its_poweroff_ends_the_vm_with_0") {
        return;
    }
    let sb = start(&["--init", "system"]).await;
    let c = sb.client().await;
    let out = sh(
        &c,
        "cat /proc/1/comm; systemctl is-active vmm-agent.service",
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "systemd\nactive\n",
        "{}",
        text(&out.stderr)
    );
    // systemd's own shutdown (services stopped, filesystems unmounted), ending in a
    // power-off: the kernel writes S5 to the ACPI PM1a control block.
    bring_down(&c, "systemctl poweroff").await;
    assert_exits_with_0(sb, "systemctl poweroff").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_a_guest_reboot_ends_the_vm_with_0() {
    if skip_tier3("a_guest_reboot_ends_the_vm_with_0") {
        return;
    }
    let sb = start(&[]).await;
    let c = sb.client().await;
    // The agent is PID 1: no service manager to ask, so the immediate form.
    bring_down(&c, "sync; reboot -ff").await;
    assert_exits_with_0(sb, "reboot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_a_guest_connects_to_a_host_port_over_vsock() {
    if skip_tier3("a_guest_connects_to_a_host_port_over_vsock") {
        return;
    }
    let sb = start(&[]).await;
    // Hybrid vsock: the guest's connection to host port 5000 arrives at <uds>_5000.
    let mut path = sb.api_socket.clone().into_os_string();
    path.push(".vsock_5000");
    let listener = UnixListener::bind(&path).unwrap();
    let host = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        (&conn).write_all(b"hello, guest\n").unwrap();
        line
    });
    let c = sb.client().await;
    let out = sh(
        &c,
        "printf 'hello, host!\\n' | timeout 60 socat -t 30 - VSOCK-CONNECT:2:5000",
    )
    .await;
    assert_eq!(text(&out.stdout), "hello, guest\n", "{}", text(&out.stderr));
    assert_eq!(host.join().unwrap(), "hello, host!\n");
}

/// What a guest user prints on /dev/console ends nothing ("reboot: Power down", "Kernel
/// panic"); a real panic reaches the VMM through pvpanic and ends it with 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_console_lines_end_nothing_and_a_real_panic_exits_2() {
    if skip_tier3("console_lines_end_nothing_and_a_real_panic_exits_2") {
        return;
    }
    let mut sb = start(&[]).await;
    let c = sb.client().await;
    let out = sh(
        &c,
        "echo 'reboot: Power down' >/dev/console; \
         echo 'Kernel panic - not syncing: a guest user wrote this' >/dev/console; \
         sleep 3; echo alive",
    )
    .await;
    assert_eq!(text(&out.stdout), "alive\n", "{}", text(&out.stderr));
    bring_down(&c, "echo c >/proc/sysrq-trigger").await;
    let (code, console) = tokio::task::spawn_blocking(move || {
        let code = sb.wait_exit(SHUTDOWN_TIMEOUT);
        (code, sb.console_tail(40))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(2), "the guest console ended with:\n{console}");
    assert!(console.contains("sysrq triggered crash"), "{console}");
}

/// Reads a small sandbox file (a cgroup or /proc file) through the file API: it needs no
/// new process, so it works while the sandbox can fork no more.
async fn read_text(c: &Client, path: &str) -> String {
    let mut buf = Vec::new();
    c.read_file(path, &mut buf).await.expect("read_file");
    text(&buf)
}

/// A fork bomb fills its cgroup's pids.max and no more. The agent, outside the group and
/// out of the OOM killer's reach, keeps answering and starts an exec into the full group
/// (joining a group at its limit is allowed; only forks in it are refused), and the bomb
/// dies with its process group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_a_fork_bomb_fills_only_the_sandbox_cgroup() {
    if skip_tier3("a_fork_bomb_fills_only_the_sandbox_cgroup") {
        return;
    }
    let sb = start(&["--append", "-- --sandbox-pids-max=200"]).await;
    let c = sb.client().await;
    let group = "/sys/fs/cgroup/vmm-sandbox";
    assert_eq!(
        read_text(&c, &format!("{group}/pids.max")).await.trim(),
        "200"
    );
    let memory_max = read_text(&c, &format!("{group}/memory.max")).await;
    assert_ne!(memory_max.trim(), "max", "the sandbox's memory is limited");

    let bomb = c
        .exec(argv(&["bash", "-c", "while :; do sleep 1000 & done"]), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let events = read_text(&c, &format!("{group}/pids.events")).await;
        let refused: u64 = events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if refused > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bomb never reached pids.max: {events} (pids.current {})",
            read_text(&c, &format!("{group}/pids.current")).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let current: u64 = read_text(&c, &format!("{group}/pids.current"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 200, "pids.current {current} > pids.max 200");

    // The agent answers, and starts a process in the full group. (bash, unlike dash,
    // keeps looping when a fork fails.)
    let status = c.status().await.unwrap();
    assert!(
        status.execs.iter().any(|e| e.running),
        "the bomb runs: {status:?}"
    );
    let out = c
        .run(
            &[
                "cat",
                "/proc/self/cgroup",
                "/proc/self/oom_score_adj",
                "/proc/1/oom_score_adj",
            ],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "0::/vmm-sandbox\n0\n-1000\n",
        "the exec is in the group with the default OOM score; the agent (PID 1) is protected"
    );

    bomb.input
        .send(request(exec_request::Request::Signal(libc::SIGKILL)))
        .await
        .unwrap();
    let out = collect(bomb).await.unwrap();
    assert_eq!(
        out.exited.unwrap().status,
        Some(pb::exited::Status::Signal(libc::SIGKILL))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let current = read_text(&c, &format!("{group}/pids.current")).await;
        if current.trim() == "0" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bomb's processes did not all go: pids.current {current}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = sh(&c, "echo forks again").await;
    assert_eq!(text(&out.stdout), "forks again\n");
}

/// A memory hog in an exec is OOM-killed inside the sandbox group (at its memory.max,
/// which leaves the agent's reserve), and the agent, outside that group, keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_a_memory_hog_is_oom_killed_inside_the_sandbox_cgroup() {
    if skip_tier3("a_memory_hog_is_oom_killed_inside_the_sandbox_cgroup") {
        return;
    }
    let sb = start_sized(512, &[]).await;
    let c = sb.client().await;
    let group = "/sys/fs/cgroup/vmm-sandbox";
    // tail keeps the one endless "line" of /dev/zero in memory until it is killed.
    let out = c.run(&["tail", "/dev/zero"], b"").await.unwrap();
    assert_eq!(
        out.exited.unwrap().status,
        Some(pb::exited::Status::Signal(libc::SIGKILL)),
        "the hog was not killed: {}",
        text(&out.stderr)
    );
    let events = read_text(&c, &format!("{group}/memory.events")).await;
    let oom_kills: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(oom_kills >= 1, "no OOM kill in the sandbox group: {events}");
    let out = sh(&c, "echo still serving").await;
    assert_eq!(text(&out.stdout), "still serving\n");
}
