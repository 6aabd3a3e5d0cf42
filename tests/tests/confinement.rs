//! How the vmm confines itself once a VM is set up: every thread has no capabilities,
//! no_new_privs and its own seccomp filter; a syscall outside a thread's filter kills the
//! process with SIGSYS; and it runs as an unprivileged user with access to /dev/kvm.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_tests::disk::pattern_disk;
use vmm_tests::sandbox::repo_file;
use vmm_tests::unprivileged::{chown_to_unprivileged, make_kvm_node, RunAs};
use vmm_tests::{Running, Vmm, TINY_ELF};

/// A tiny guest that waits forever, with the sandbox API on (so a supervisor thread
/// runs; no agent ever answers it) and 2 vCPUs.
fn hanging_vm(dir: &Path) -> Vmm {
    Vmm::guest(TINY_ELF, "hang")
        .flag("--cpus", "2")
        .flag("--api-sock", dir.join("api.sock"))
}

/// `Name`, `Seccomp`, `NoNewPrivs` and `CapEff` of each thread of `pid`, except the
/// workers KVM itself adds to the process (`kvm-nx-lpage-recovery`, on some kernels).
fn thread_states(pid: u32) -> Vec<(String, String, String, String)> {
    let mut states = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
                .unwrap_or_default()
                .to_string()
        };
        if field("Name").starts_with("kvm-") {
            continue;
        }
        states.push((
            field("Name"),
            field("Seccomp"),
            field("NoNewPrivs"),
            field("CapEff"),
        ));
    }
    states.sort();
    states
}

/// Waits until the VM runs and all six threads have confined themselves (they do as
/// they start): a filter each, or with `--seccomp off` no capabilities left. Returns
/// their states.
fn confined_threads(vm: &mut Running) -> Vec<(String, String, String, String)> {
    threads_when(vm, |s| s.1 == "2")
}

fn threads_when(
    vm: &mut Running,
    confined: impl Fn(&(String, String, String, String)) -> bool,
) -> Vec<(String, String, String, String)> {
    vm.wait_for_stdout("info ready\n", Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let states = thread_states(vm.pid());
        if states.len() == 6 && states.iter().all(&confined) || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_thread_has_its_filter_no_new_privs_and_no_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = hanging_vm(dir.path()).spawn();
    let states = confined_threads(&mut vm);
    let names: Vec<&str> = states.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        ["devices", "signals", "supervisor", "vcpu0", "vcpu1", "vmm"],
        "{states:?}"
    );
    for (name, seccomp, no_new_privs, caps) in &states {
        assert_eq!(seccomp, "2", "{name}: seccomp mode");
        assert_eq!(no_new_privs, "1", "{name}: no_new_privs");
        assert_eq!(caps, "0000000000000000", "{name}: effective capabilities");
    }
    // Confined, it still stops cleanly.
    vm.signal(libc::SIGTERM);
    vm.wait_timeout(Duration::from_secs(5)).assert_code(143);
}

#[test]
fn seccomp_off_leaves_the_threads_unfiltered_but_without_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = hanging_vm(dir.path()).flag("--seccomp", "off").spawn();
    let states = threads_when(&mut vm, |s| s.3 == "0000000000000000");
    assert_eq!(states.len(), 6, "{states:?}");
    for (name, seccomp, no_new_privs, caps) in states {
        assert_eq!(seccomp, "0", "{name}: seccomp mode");
        assert_eq!(no_new_privs, "1", "{name}: no_new_privs");
        assert_eq!(caps, "0000000000000000", "{name}: effective capabilities");
    }
    vm.signal(libc::SIGTERM);
    vm.wait_timeout(Duration::from_secs(5)).assert_code(143);
}

/// The built-in policy with every rule for `syscalls` taken out of `thread`'s filter.
fn policy_without(dir: &Path, thread: &str, syscalls: &[&str]) -> PathBuf {
    let text = std::fs::read_to_string(repo_file("vmm/src/seccomp/x86_64.json")).unwrap();
    let mut policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rules = policy[thread]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| !syscalls.contains(&r["syscall"].as_str().unwrap()));
    assert!(rules.len() < before, "{thread} allows none of {syscalls:?}");
    let path = dir.join(format!("{thread}.json"));
    std::fs::write(&path, policy.to_string()).unwrap();
    path
}

/// Each thread kind, and a syscall it always makes once the VM runs.
const FORBIDDEN: [(&str, &[&str]); 5] = [
    ("main", &["futex"]),
    ("vcpu", &["ioctl"]),
    ("devices", &["epoll_wait", "epoll_pwait"]),
    ("supervisor", &["epoll_wait", "epoll_pwait"]),
    ("signals", &["rt_sigtimedwait"]),
];

#[test]
fn a_syscall_outside_its_threads_filter_kills_the_vmm_with_sigsys() {
    let dir = tempfile::tempdir().unwrap();
    for (thread, syscalls) in FORBIDDEN {
        let policy = policy_without(dir.path(), thread, syscalls);
        let out = hanging_vm(dir.path())
            .flag("--seccomp-filter", &policy)
            .timeout(Duration::from_secs(20))
            .run();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGSYS),
            "{thread} without {syscalls:?}\n{out}"
        );
    }
}

/// The sixth thread kind, `hostnet`, runs only with `--net auto`: the same VM on a lab's
/// network, once without epoll waits for it (killed) and once with the built-in policy
/// (the control: it runs until stopped).
#[test]
fn the_hostnet_threads_filter_is_enforced_as_well() {
    let dir = tempfile::tempdir().unwrap();
    let lab = vmm_tests::netlab::NetLab::new("seccomp");
    let run = |policy: &Path| {
        let mut cmd = lab.host_command(&vmm_tests::vmm_bin());
        cmd.args(["run", "--kernel", TINY_ELF, "--memory-mib", "128"])
            .args(["--append", "test=hang", "--net", "auto", "--seccomp-filter"])
            .arg(policy)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("vmm starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still running: the control. SIGTERM ends it as a stop signal.
        send_sigterm(child.id());
        child.wait().unwrap();
        None
    };
    let killed = run(&policy_without(
        dir.path(),
        "hostnet",
        &["epoll_wait", "epoll_pwait"],
    ));
    // ip netns exec's shell execs the vmm: its status is the vmm's.
    assert_eq!(
        killed.and_then(|s| s.signal()),
        Some(libc::SIGSYS),
        "hostnet without epoll waits: {killed:?}"
    );
    assert_eq!(
        run(&repo_file("vmm/src/seccomp/x86_64.json")),
        None,
        "the built-in policy as a file must run the VM"
    );
}

/// SIGTERM to a process this test spawned, through kill(1).
fn send_sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
}

/// The control for the test above: the built-in policy, as a file, runs the same VM.
#[test]
fn the_built_in_policy_as_a_file_runs_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = hanging_vm(dir.path())
        .flag("--seccomp-filter", repo_file("vmm/src/seccomp/x86_64.json"))
        .spawn();
    assert!(confined_threads(&mut vm).iter().all(|s| s.1 == "2"));
    vm.signal(libc::SIGTERM);
    vm.wait_timeout(Duration::from_secs(5)).assert_code(143);
}

#[test]
fn a_bad_policy_file_is_a_setup_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"main": {}}"#).unwrap();
    let out = hanging_vm(dir.path())
        .flag("--seccomp-filter", &policy)
        .run();
    out.assert_code(1).assert_stderr_mentions("policy.json");
}

#[test]
fn an_unprivileged_user_with_access_to_dev_kvm_runs_a_vm_with_a_disk() {
    let dir = tempfile::tempdir().unwrap();
    chown_to_unprivileged(dir.path());
    let disk = pattern_disk(dir.path(), "disk.img", 16);
    chown_to_unprivileged(&disk);
    let out = Vmm::guest(TINY_ELF, "blk")
        .drive(&disk)
        .run_as(RunAs::nobody())
        .run();
    out.assert_passed();
}

/// `--chroot DIR`: the kernel, the disk and /dev/kvm are found inside DIR, and a host path
/// is not.
#[test]
fn with_chroot_every_path_is_inside_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("dev")).unwrap();
    make_kvm_node(&root.join("dev/kvm"));
    std::fs::copy(TINY_ELF, root.join("tiny.elf")).unwrap();
    pattern_disk(root, "disk.img", 16);
    Vmm::guest("/tiny.elf", "blk")
        .drive("/disk.img")
        .flag("--chroot", root)
        .run()
        .assert_passed();

    Vmm::guest(TINY_ELF, "blk")
        .flag("--chroot", root)
        .run()
        .assert_code(1)
        .assert_stderr_mentions(TINY_ELF);
    Vmm::guest(TINY_ELF, "blk")
        .flag("--chroot", root.join("missing"))
        .run()
        .assert_code(1)
        .assert_stderr_mentions("cannot change the root directory to");
}

/// `--seccomp log` turns the kill into a log line: the same incomplete policies that kill
/// the vmm above leave it running.
#[test]
fn log_mode_lets_a_syscall_outside_the_filter_through() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_without(dir.path(), "main", &["futex"]);
    let mut vm = hanging_vm(dir.path())
        .flag("--seccomp-filter", &policy)
        .flag("--seccomp", "log")
        .spawn();
    assert!(confined_threads(&mut vm).iter().all(|s| s.1 == "2"));
    vm.signal(libc::SIGTERM);
    vm.wait_timeout(Duration::from_secs(5)).assert_code(143);
}
