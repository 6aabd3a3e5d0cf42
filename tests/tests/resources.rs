//! The seed's resource model on the vmm process (`--cgroup`, `--cpu-request`,
//! `--cpu-limit`): CPU shares in proportion to the request under contention, bursting
//! above the request on an idle host, a hard cap, memory.max from the guest's RAM, and
//! the cgroups removed when the vmm ends (kill -9 included).
//!
//! This host has cgroup v1 (cpu.shares, CFS quota); the emulated KVM host has cgroup v2
//! (cpu.weight, cpu.max), where the tier-3 tests run the same checks and a Linux guest.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vmm::resources::{detect, Hierarchy};
use vmm_tests::sandbox::{skip_tier3, Backend, Sandbox};
use vmm_tests::{Running, Vmm, TINY_ELF};

/// Guest RAM of the spinning tiny guests.
const SPIN_MEMORY_MIB: u64 = 64;
const READY: Duration = Duration::from_secs(30);

/// A parent cgroup of this test process's own, removed at the end.
struct TestCgroups {
    name: String,
}

impl TestCgroups {
    fn new(label: &str) -> Self {
        Self {
            name: format!("vmm-tests-{}-{label}", std::process::id()),
        }
    }

    fn child(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }

    /// The cgroup's directories (one for v2; the cpu and memory trees' for v1).
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        let relative = self.child(name);
        match hierarchy() {
            Hierarchy::Unified(root) => vec![root.join(relative)],
            Hierarchy::Split { cpu, memory } => vec![cpu.join(&relative), memory.join(relative)],
        }
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        let roots = match hierarchy() {
            Hierarchy::Unified(root) => vec![root],
            Hierarchy::Split { cpu, memory } => vec![cpu, memory],
        };
        for root in roots {
            let _ = std::fs::remove_dir(root.join(&self.name));
        }
    }
}

fn hierarchy() -> Hierarchy {
    detect()
        .expect("mountinfo readable")
        .expect("this host has a cgroup hierarchy with cpu and memory")
}

/// A tiny guest that keeps its one vCPU busy, in its own cgroup.
fn spinner(cgroup: &str, flags: &[&str]) -> Running {
    let mut vmm = Vmm::guest(TINY_ELF, "spin")
        .memory_mib(SPIN_MEMORY_MIB as u32)
        .flag("--cgroup", cgroup);
    for f in flags {
        vmm = vmm.arg(f);
    }
    let mut running = vmm.timeout(Duration::from_secs(120)).spawn();
    running.wait_for_stdout("info ready", READY);
    running
}

/// CPU time of every thread of `pid` so far, in seconds (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux/x86_64
    let mut ticks = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the vmm runs") {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12th and 13th after ')'.
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ticks as f64 / ticks_per_second
}

/// Cores each process used over `window`.
fn cores_over(pids: &[u32], window: Duration) -> Vec<f64> {
    let before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let start = Instant::now();
    std::thread::sleep(window);
    let elapsed = start.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(&p, b)| (cpu_seconds(p) - b) / elapsed)
        .collect()
}

/// Pins every thread of `pid` to CPU 0, so that two spinners contend for one core.
fn pin_to_cpu0(pid: u32) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .output()
        .expect("taskset runs");
    assert!(ok.status.success(), "taskset: {ok:?}");
}

/// Waits until the releaser has removed the cgroup's directories.
fn assert_removed(cgroups: &TestCgroups, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cgroups.dirs(name).iter().any(|d| d.exists()) {
        assert!(
            Instant::now() < deadline,
            "cgroup {} still exists after its vmm ended",
            cgroups.child(name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Shares, burst, cap, memory limit and cleanup, in one test: the measurements need the
/// host to themselves (the other tests of this file do not run vCPUs).
fn cpu_shares_burst_cap_and_cleanup(label: &str) {
    let cgroups = TestCgroups::new(label);

    // Contention: two busy vCPUs on one core, asking for 1 and 3 cores.
    let one = spinner(&cgroups.child("one"), &["--cpu-request", "1"]);
    let three = spinner(&cgroups.child("three"), &["--cpu-request", "3"]);
    pin_to_cpu0(one.pid());
    pin_to_cpu0(three.pid());
    let cores = cores_over(&[one.pid(), three.pid()], Duration::from_secs(3));
    let ratio = cores[1] / cores[0];
    eprintln!(
        "one core contended: asked 1 got {:.2}, asked 3 got {:.2}: ratio {ratio:.2} (ideal 3)",
        cores[0], cores[1]
    );
    assert!(
        (2.2..=4.0).contains(&ratio),
        "CPU split {:.2}:{:.2} is not about 1:3",
        cores[0],
        cores[1]
    );
    // kill -9: no exit path of the vmm runs, the releaser still removes the cgroups.
    one.signal(libc::SIGKILL);
    three.signal(libc::SIGKILL);
    one.wait();
    three.wait();
    assert_removed(&cgroups, "one");
    assert_removed(&cgroups, "three");

    // A core free: a request of a quarter core bursts to whatever is free (a whole core
    // on an idle host; at least twice its request even beside a busy process), while a
    // sandbox capped at a quarter core gets no more.
    let burst = spinner(&cgroups.child("burst"), &["--cpu-request", "0.25"]);
    let capped = spinner(
        &cgroups.child("capped"),
        &["--cpu-request", "1", "--cpu-limit", "0.25"],
    );
    let cores = cores_over(&[burst.pid(), capped.pid()], Duration::from_secs(3));
    eprintln!(
        "a core free: asked 0.25 got {:.2} cores; capped at 0.25 got {:.2}",
        cores[0], cores[1]
    );
    assert!(
        cores[0] > 0.5,
        "no burst above the request: {:.2} cores",
        cores[0]
    );
    assert!(
        cores[1] < 0.32,
        "the cap did not hold: {:.2} cores",
        cores[1]
    );

    // memory.max = guest RAM + the VMM's overhead.
    let expected = (SPIN_MEMORY_MIB + vmm::resources::VMM_OVERHEAD_MIB) << 20;
    let limit_file = match hierarchy() {
        Hierarchy::Unified(_) => "memory.max",
        Hierarchy::Split { .. } => "memory.limit_in_bytes",
    };
    let memory_dir = cgroups.dirs("capped").pop().unwrap();
    let limit = std::fs::read_to_string(memory_dir.join(limit_file)).unwrap();
    assert_eq!(limit.trim(), expected.to_string(), "{limit_file}");

    // SIGTERM: the vmm's own exit path; the cgroups go as well.
    burst.signal(libc::SIGTERM);
    capped.signal(libc::SIGTERM);
    burst.wait();
    capped.wait();
    assert_removed(&cgroups, "burst");
    assert_removed(&cgroups, "capped");
}

#[test]
fn cpu_requests_share_a_contended_core_burst_when_idle_and_obey_a_cap() {
    cpu_shares_burst_cap_and_cleanup("host");
}

/// The same under cgroup v2, in the emulated KVM host.
#[test]
fn tier3_cpu_requests_share_a_contended_core_under_cgroup_v2() {
    if skip_tier3("cpu_requests_share_a_contended_core_under_cgroup_v2") {
        return;
    }
    cpu_shares_burst_cap_and_cleanup("v2");
}

/// The seed's promise with a real guest: a sandbox that asks for one core, with two
/// vCPUs busy, uses more than one core when nothing else wants the CPU.
#[test]
fn tier3_a_one_core_sandbox_bursts_above_one_core_on_an_idle_host() {
    if skip_tier3("a_one_core_sandbox_bursts_above_one_core_on_an_idle_host") {
        return;
    }
    let cgroups = TestCgroups::new("burst");
    let cgroup = cgroups.child("sandbox");
    let sb = Sandbox::start_with(Backend::Vm, &["--cgroup", &cgroup, "--cpu-request", "1"]);
    let Hierarchy::Unified(root) = hierarchy() else {
        panic!("the emulated KVM host has cgroup v2");
    };
    let usage = || {
        let stat = std::fs::read_to_string(root.join(&cgroup).join("cpu.stat")).unwrap();
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("cpu.stat has usage_usec")
            / 1e6
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = sb.client().await;
        // Two busy loops for 8 s, one per vCPU.
        let spin = "for i in 1 2; do (end=$(($(date +%s) + 8)); \
                    while [ $(date +%s) -lt $end ]; do :; done) & done; wait";
        let argv = ["sh", "-c", spin];
        let exec = client.run(&argv, b"");
        let measure = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (u0, t0) = (usage(), Instant::now());
            tokio::time::sleep(Duration::from_secs(4)).await;
            (usage() - u0) / t0.elapsed().as_secs_f64()
        };
        let (out, cores) = tokio::join!(exec, measure);
        out.expect("the busy loops ran");
        eprintln!("a sandbox asking for 1 core used {cores:.2} cores on an idle host");
        assert!(cores > 1.2, "no burst above 1 core: {cores:.2}");
    });
    // What memory.max adds to the guest's RAM must cover the VMM's own memory.
    let overhead_mib = vmm_overhead_mib(sb.process.id());
    eprintln!(
        "the vmm's memory beyond guest RAM: {overhead_mib:.1} MiB (memory.max allows {} MiB)",
        vmm::resources::VMM_OVERHEAD_MIB
    );
    assert!(overhead_mib < vmm::resources::VMM_OVERHEAD_MIB as f64);
}

/// Resident memory of the vmm process outside guest RAM (its largest mapping), in MiB.
fn vmm_overhead_mib(pid: u32) -> f64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (mut total_kib, mut largest) = (0u64, (0u64, 0u64)); // (size, rss) of the largest
    let mut size = 0u64;
    for line in smaps.lines() {
        let kib = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        };
        if let Some(s) = kib("Size:") {
            size = s;
        } else if let Some(rss) = kib("Rss:") {
            total_kib += rss;
            if size > largest.0 {
                largest = (size, rss);
            }
        }
    }
    (total_kib - largest.1) as f64 / 1024.0
}

#[test]
fn bad_resource_settings_are_refused_by_name() {
    for (flags, message) in [
        (
            &["--cgroup", "../escape"][..],
            "resources: cgroup ../escape: `..` is not allowed",
        ),
        (
            &["--cgroup", "x", "--cpu-request", "0"][..],
            "resources: cpu = 0: must be between 0.01 and 100 cores",
        ),
        (
            &["--cgroup", "x", "--cpu-limit", "1000"][..],
            "resources: cpu_limit = 1000",
        ),
    ] {
        let mut vmm = Vmm::guest(TINY_ELF, "boot");
        for f in flags {
            vmm = vmm.arg(f);
        }
        let out = vmm.run();
        assert_eq!(out.code(), Some(1), "{flags:?}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{flags:?}: {}", out.stderr);
    }
    let dir = tempfile::tempdir().unwrap();
    for (text, message) in [
        ("[resources]\ncpu = 2\n", "need a cgroup"),
        (
            "[resources]\ncgroup = \"x\"\nweight = 5\n",
            "unknown field `weight`",
        ),
    ] {
        let config = dir.path().join("vm.toml");
        std::fs::write(&config, format!("kernel = \"{TINY_ELF}\"\n{text}")).unwrap();
        let out = Vmm::raw(["run", "--config"]).arg(&config).run();
        assert_eq!(out.code(), Some(1), "{text}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{text}: {}", out.stderr);
    }
}
