//! The test harness itself: a test process that dies by SIGKILL (no destructors run)
//! leaves no jail, supervisor, mount or loop device behind.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::sandbox::{Backend, Sandbox};

const HOLD_ENV: &str = "VMM_TEST_HOLD_SANDBOX";
const TEST_NAME: &str = "a_killed_test_process_leaves_nothing_behind";
/// Starts the helper's report line: vmm pid, agent pid, jail directory.
const HOLDING: &str = "holding:";

/// Whether `pid` is gone (or a zombie, which holds no resources but its pid).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Loop devices whose backing file lies under `dir`.
fn loop_devices_under(dir: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|backing| backing.starts_with(dir))
        .collect()
}

/// The helper side: start a sandbox on the jail, say what runs, and wait to be killed.
fn hold_a_sandbox() {
    let sb = Sandbox::start(Backend::Jail);
    let jail = sb.jail().expect("a jail");
    let dir = jail
        .socket_path()
        .parent()
        .and_then(Path::parent)
        .expect("the jail's directory");
    println!(
        "{HOLDING} {} {} {}",
        sb.process.id(),
        jail.agent_pid().expect("the agent's pid"),
        dir.display()
    );
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_killed_test_process_leaves_nothing_behind() {
    if std::env::var_os(HOLD_ENV).is_some() {
        hold_a_sandbox();
        return;
    }
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(HOLD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the helper");
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let line = lines
        // libtest may have printed "test NAME ... " on the same line first.
        .find_map(|l| Some(l.ok()?.split_once(HOLDING)?.1.trim().to_owned()))
        .expect("the helper reports its sandbox");
    let mut words = line.split(' ');
    let vmm: u32 = words.next().unwrap().parse().unwrap();
    let agent: u32 = words.next().unwrap().parse().unwrap();
    let dir = words.next().unwrap().to_owned();
    assert!(!gone(vmm) && !gone(agent), "the sandbox runs: {line}");
    assert_eq!(
        loop_devices_under(&dir).len(),
        1,
        "the jail's image is on a loop device"
    );

    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(gone(vmm) && gone(agent) && loop_devices_under(&dir).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "left behind: vmm {vmm} gone {}, agent {agent} gone {}, loop devices {:?}",
            gone(vmm),
            gone(agent),
            loop_devices_under(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
