//! A sandbox under test, behind the same API socket whatever runs it: the real agent in
//! the test jail with `vmm supervise` (tier 2, runs here), or a Linux VM with `vmm run
//! --api-sock` (tier 3, where `vmm doctor` says Linux boots). The e2e test bodies take
//! a `Sandbox` and never know which.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_client::Client;

use crate::jail::Jail;
use crate::vmm_bin;

/// The VMM's stdout (a VM's serial console), in the sandbox's directory.
const CONSOLE_FILE: &str = "console.log";

/// A VM sandbox's memory unless a test asks for more: the product's default. (In the
/// emulated KVM host under `-cpu max`, 4096 MiB guests failed below our VMM far more
/// often.)
pub const VM_MEMORY_MIB: u32 = 1024;
/// How long a sandbox may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The fd number the child sees for --ready-fd.
const READY_FD: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The agent as PID 1 of a chroot of the rootfs image, in fresh namespaces.
    Jail,
    /// A Linux guest booted from build/vmlinux and build/rootfs.ext4.
    Vm,
}

/// A sandbox on the host side of `--net auto`: its vmm runs in the lab's host namespace
/// (where `vmm net setup` ran), with these flags (`--allow`, `--publish`). A VM gets
/// `--net auto`; the jail gets `--net-ns` (a veth into it).
pub struct Networked<'a> {
    pub lab: &'a crate::netlab::NetLab,
    pub flags: &'a [&'a str],
}

/// A VM sandbox's root disk.
pub enum RootDisk {
    /// A private copy of build/rootfs.ext4 (the jail's default image).
    Copy,
    /// A qcow2 overlay (created or resumed) on a base image.
    Overlay { base: PathBuf, overlay: PathBuf },
    /// An image as it is: a qcow2 snapshot boots on a temporary overlay.
    Image(PathBuf),
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub api_socket: PathBuf,
    pub process: Child,
    /// The readiness line the VMM printed.
    pub ready_line: String,
    _jail: Option<Jail>,
}

/// A file of the repository (build outputs live in `build/`).
pub fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// `Some(reason)` when this host cannot boot Linux guests (from `vmm doctor`).
pub fn vm_unavailable() -> Option<String> {
    let out = Command::new(vmm_bin())
        .args(["doctor", "--json"])
        .output()
        .expect("vmm doctor runs");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    if report.contains("\"linux_guests_boot\":true") {
        return None;
    }
    Some(
        report
            .split("\"reason\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("vmm doctor gave no reason")
            .to_string(),
    )
}

/// Set by `make test-tier3` (directly or in the emulated KVM host): a tier-3 test that
/// cannot boot its guest then fails instead of skipping.
pub const REQUIRE_TIER3_VAR: &str = "VMM_REQUIRE_TIER3";

/// True when tier-3 test `test` must be skipped here; it then prints why. Where
/// VMM_REQUIRE_TIER3 is set it panics instead: nothing skips silently.
pub fn skip_tier3(test: &str) -> bool {
    let Some(reason) = vm_unavailable() else {
        return false;
    };
    assert!(
        std::env::var_os(REQUIRE_TIER3_VAR).is_none(),
        "tier-3 test {test} cannot boot a Linux guest here: {reason}"
    );
    eprintln!(
        "SKIPPED tier 3 (Linux guest) {test}: {reason}; `make test-tier3` runs it in the emulated KVM host"
    );
    true
}

impl Sandbox {
    pub fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[])
    }

    /// Starts a sandbox; `extra` goes to the vmm command line (e.g. `--lifetime 2`). A VM
    /// gets 2 vCPUs and the product's default of 1024 MiB.
    pub fn start_with(backend: Backend, extra: &[&str]) -> Self {
        Self::start_sized(backend, VM_MEMORY_MIB, extra)
    }

    /// Like `start_with`, with `memory_mib` for a VM (the jail ignores it).
    pub fn start_sized(backend: Backend, memory_mib: u32, extra: &[&str]) -> Self {
        Self::start_on(backend, memory_mib, RootDisk::Copy, extra)
    }

    /// A VM sandbox on `root`, with the default memory.
    pub fn start_vm_on(root: RootDisk, extra: &[&str]) -> Self {
        Self::start_on(Backend::Vm, VM_MEMORY_MIB, root, extra)
    }

    /// A sandbox with a network (see `Networked`).
    pub fn start_networked(backend: Backend, net: &Networked) -> Self {
        Self::build(backend, VM_MEMORY_MIB, RootDisk::Copy, &[], Some(net))
    }

    /// A sandbox on the lab's network, with its own memory size (VMs), root disk (the
    /// jail takes a raw image, which it copies) and flags (which may end with
    /// `-- ENTRYPOINT…`).
    pub fn start_custom(
        backend: Backend,
        memory_mib: u32,
        root: RootDisk,
        net: &Networked,
        extra: &[&str],
    ) -> Self {
        Self::build(backend, memory_mib, root, extra, Some(net))
    }

    fn start_on(backend: Backend, memory_mib: u32, root: RootDisk, extra: &[&str]) -> Self {
        Self::build(backend, memory_mib, root, extra, None)
    }

    fn build(
        backend: Backend,
        memory_mib: u32,
        root: RootDisk,
        extra: &[&str],
        net: Option<&Networked>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let api_socket = dir.path().join("api.sock");
        let mut cmd = match net {
            Some(net) => net.lab.host_command(&vmm_bin()),
            None => Command::new(vmm_bin()),
        };
        let jail = match backend {
            Backend::Jail => {
                let image = match &root {
                    RootDisk::Copy => Jail::rootfs_image(),
                    RootDisk::Image(image) => image.clone(),
                    RootDisk::Overlay { .. } => panic!("the jail boots raw images only"),
                };
                let jail = Jail::start(&image, &Jail::agent_bin());
                cmd.arg("supervise")
                    .arg("--agent-sock")
                    .arg(jail.socket_path());
                if net.is_some() {
                    let pid = jail.agent_pid().expect("the jail's agent runs");
                    cmd.arg("--net-ns").arg(format!("/proc/{pid}/ns/net"));
                }
                Some(jail)
            }
            Backend::Vm => {
                cmd.arg("run")
                    .arg("--kernel")
                    .arg(repo_file("build/vmlinux"))
                    .args(["--cpus", "2", "--memory-mib", &memory_mib.to_string()]);
                // For debugging a guest: extra kernel arguments, e.g. `ignore_loglevel`.
                if let Some(args) = std::env::var_os("VMM_TEST_GUEST_APPEND") {
                    cmd.arg("--append").arg(args);
                }
                match root {
                    RootDisk::Copy => {
                        let disk = dir.path().join("rootfs.ext4");
                        let ok = Command::new("cp")
                            .arg("--sparse=always")
                            .arg(repo_file("build/rootfs.ext4"))
                            .arg(&disk)
                            .status()
                            .expect("cp runs");
                        assert!(ok.success(), "cannot copy build/rootfs.ext4");
                        cmd.arg("--rootfs").arg(&disk);
                    }
                    RootDisk::Overlay { base, overlay } => {
                        cmd.arg("--rootfs").arg(base).arg("--overlay").arg(overlay);
                    }
                    RootDisk::Image(image) => {
                        cmd.arg("--rootfs").arg(image);
                    }
                }
                None
            }
        };
        cmd.arg("--api-sock").arg(&api_socket);
        let (ready_read, ready_write) = readiness_pipe(&mut cmd);
        if let Some(net) = net {
            if matches!(backend, Backend::Vm) {
                cmd.args(["--net", "auto"]);
            }
            cmd.args(net.flags);
        }
        // Last: `extra` may end with `-- ENTRYPOINT…`.
        cmd.args(extra);
        // A VM's serial console goes to a file, for the test to show when it fails.
        let console = std::fs::File::create(dir.path().join(CONSOLE_FILE)).expect("console log");
        cmd.stdin(Stdio::null())
            .stdout(console)
            .stderr(Stdio::inherit());
        // Dies with this process even when it is SIGKILLed (no Drop runs then).
        let process = crate::jail::spawn_tied(cmd).expect("vmm starts");
        drop(ready_write);
        let ready_line = read_ready_line(ready_read, &dir.path().join(CONSOLE_FILE));
        Self {
            dir,
            api_socket,
            process,
            ready_line,
            _jail: jail,
        }
    }

    /// The last `lines` lines of a VM's serial console (empty for the jail).
    pub fn console_tail(&self, lines: usize) -> String {
        console_tail(&self.dir.path().join(CONSOLE_FILE), lines)
    }

    /// True for a Linux VM, false for the test jail.
    pub fn is_vm(&self) -> bool {
        self._jail.is_none()
    }

    /// The jail running the agent (jail backend only).
    pub fn jail(&self) -> Option<&Jail> {
        self._jail.as_ref()
    }

    /// Where the agent listens, for tests that bypass the supervisor.
    pub fn agent_address(&self) -> vmm_protocol::connect::Address {
        match &self._jail {
            Some(jail) => vmm_protocol::connect::Address::Unix(jail.socket_path().to_path_buf()),
            None => {
                let mut uds = self.api_socket.clone().into_os_string();
                uds.push(".vsock");
                vmm_protocol::connect::Address::HybridVsock {
                    uds: uds.into(),
                    port: vmm_protocol::AGENT_VSOCK_PORT,
                }
            }
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.api_socket)
            .await
            .expect("connect to the API socket")
    }

    /// Waits for the vmm process to end; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A failed test shows what its guest's vCPUs were doing and what it said last (an
        // RCU stall, an oops), which also lets tests/run-tier3 tell the emulated host's
        // failures from ours.
        let failed_vm = std::thread::panicking() && self.is_vm();
        if failed_vm {
            eprintln!(
                "the vCPUs then: {}",
                crate::diagnose_silent_guest(self.process.id())
            );
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        if failed_vm {
            eprintln!("the guest console ended with:\n{}", self.console_tail(60));
        }
    }
}

/// The last `lines` lines of a console log.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Adds `--ready-fd 3` to a `vmm` command and puts a pipe's write end at fd 3 in the
/// child. Returns (read end, write end); drop the write end once the child runs.
pub fn readiness_pipe(cmd: &mut Command) -> (OwnedFd, OwnedFd) {
    cmd.args(["--ready-fd", &READY_FD.to_string()]);
    let (read, write) = pipe();
    let write_fd = write.as_raw_fd();
    // SAFETY: between fork and exec we only call dup2, which is async-signal-safe;
    // it puts the pipe's write end at READY_FD without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(write_fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (read, write)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array; both fds are then owned below.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2 failed");
    // SAFETY: the fds were just created and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Blocks until the VMM writes its readiness line (no polling: the pipe tells us). When
/// it does not, the panic shows the end of the guest's console (`console`, if any).
fn read_ready_line(fd: OwnedFd, console: &Path) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(std::fs::File::from(fd)).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(READY_TIMEOUT) else {
        panic!(
            "the sandbox did not become ready in {READY_TIMEOUT:?}; the guest console ended with:\n{}",
            console_tail(console, 30)
        );
    };
    assert!(
        line.contains("\"event\":\"ready\""),
        "the readiness pipe closed without a ready line: {line:?}; the guest console ended with:\n{}",
        console_tail(console, 30)
    );
    line
}
