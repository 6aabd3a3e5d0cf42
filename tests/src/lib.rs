//! Harness for the tier-1 tests: runs the real `vmm` binary on the tiny guests built
//! by build.rs and parses what they print on the serial console.

pub mod abi;
pub mod bzimage;
pub mod disk;
pub mod docker;
pub mod jail;
pub mod netlab;
pub mod output;
pub mod sandbox;
pub mod stats;
pub mod unprivileged;

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use std::{env, fmt};

pub use output::{parse_num, parse_nums, GuestOutput};

/// Two tests of the async body `fn(Backend)`, in a module named after it: `jail` (tier
/// 2) and `tier3_vm` (a Linux VM; skipped with the doctor's reason where none boots,
/// and failed after `$timeout`).
#[macro_export]
macro_rules! on_both_backends {
    ($body:ident, $timeout:expr) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn jail() {
                super::$body($crate::sandbox::Backend::Jail).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tier3_vm() {
                if $crate::sandbox::skip_tier3(stringify!($body)) {
                    return;
                }
                tokio::time::timeout($timeout, super::$body($crate::sandbox::Backend::Vm))
                    .await
                    .expect("the test did not finish in time");
            }
        }
    };
}

/// 64-bit boot protocol ELF (no PVH note); entry in long mode with rsi = zero page.
pub const TINY_ELF: &str = env!("TINY_ELF");
/// The same guest as a bzImage (64-bit entry at load address + 0x200).
pub const TINY_BZIMAGE: &str = env!("TINY_BZIMAGE");
/// PVH ELF (32-bit entry, ebx = hvm_start_info); also boots under QEMU microvm.
pub const TINY_PVH_ELF: &str = env!("TINY_PVH_ELF");
/// The 64-bit guest behind a PVH trampoline, for cross-checks under QEMU microvm.
pub const TINY_PVH64_ELF: &str = env!("TINY_PVH64_ELF");

/// QEMU's microvm running a PVH guest like our vmm does: `-device i8042` makes the
/// guest's reset end QEMU (with -no-reboot); `acpi=off` puts virtio-mmio devices on the
/// kernel command line. Used by the QEMU cross-checks and the start-up benchmark.
pub fn qemu_microvm_args(kernel: &str) -> Vec<&str> {
    vec![
        "-M",
        "microvm,acpi=off",
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "128",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-device",
        "i8042",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-kernel",
        kernel,
    ]
}

/// How long a VM run may take before the harness kills it and fails the test.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory for tests that do not care about its size.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

/// The `vmm` binary: `$VMM_BIN`, else `vmm` in the target directory of this test
/// executable (`<target>/<profile>/[deps/]<exe>` -> `<target>/<profile>/vmm`).
pub fn vmm_bin() -> PathBuf {
    if let Some(p) = env::var_os("VMM_BIN") {
        return PathBuf::from(p);
    }
    let exe = env::current_exe().expect("path of the test executable");
    // Tests run from <target>/<profile>/deps, the bench and demo binaries from <profile>.
    let bin = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("vmm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| exe.with_file_name("vmm"));
    assert!(
        bin.is_file(),
        "vmm binary not found at {}: build it with `cargo build -p vmm` \
         (same profile as the tests) or set VMM_BIN",
        bin.display()
    );
    bin
}

/// A `vmm` command line being put together.
#[derive(Debug, Clone)]
pub struct Vmm {
    program: Option<PathBuf>,
    kernel: Option<OsString>,
    memory_mib: Option<u32>,
    append: Option<String>,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    run_as: Option<unprivileged::RunAs>,
    env: Vec<(OsString, OsString)>,
}

impl Vmm {
    /// `vmm` with exactly these arguments (no defaults added).
    pub fn raw<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Self {
        Vmm {
            program: None,
            kernel: None,
            memory_mib: None,
            append: None,
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
            run_as: None,
            env: Vec::new(),
        }
    }

    /// Another program with these arguments, run by the same harness (e.g. QEMU).
    pub fn program<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(program: &Path, args: I) -> Self {
        Vmm {
            program: Some(program.to_owned()),
            ..Self::raw(args)
        }
    }

    /// `vmm run --kernel KERNEL --memory-mib 128 --append "test=MODE"`.
    pub fn guest(kernel: impl AsRef<OsStr>, mode: &str) -> Self {
        Vmm {
            kernel: Some(kernel.as_ref().to_owned()),
            memory_mib: Some(DEFAULT_MEMORY_MIB),
            append: Some(format!("test={mode}")),
            ..Self::raw(["run"])
        }
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    /// Adds words to the `--append` text.
    pub fn append(mut self, text: &str) -> Self {
        self.append = Some(match self.append.take() {
            Some(a) => format!("{a} {text}"),
            None => text.to_owned(),
        });
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn flag(self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.arg(name).arg(value)
    }

    /// `--drive SPEC`, e.g. `path`, `path,ro` or `path,id=NAME`.
    pub fn drive(self, spec: impl AsRef<OsStr>) -> Self {
        self.flag("--drive", spec)
    }

    /// Bytes written to the VMM's stdin (then closed); stdin is empty otherwise.
    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An environment variable for the vmm process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the vmm as this user instead of ours.
    pub fn run_as(mut self, user: unprivileged::RunAs) -> Self {
        self.run_as = Some(user);
        self
    }

    pub fn command_line(&self) -> Vec<OsString> {
        let mut v = self.args.clone();
        if let Some(k) = &self.kernel {
            v.extend(["--kernel".into(), k.clone()]);
        }
        if let Some(m) = self.memory_mib {
            v.extend(["--memory-mib".into(), m.to_string().into()]);
        }
        if let Some(a) = &self.append {
            v.extend(["--append".into(), a.into()]);
        }
        v
    }

    /// Starts the VMM with a piped stdin that stays open until written/closed.
    pub fn spawn(&self) -> Running {
        let bin = self.program.clone().unwrap_or_else(vmm_bin);
        let args = self.command_line();
        let mut cmd = Command::new(&bin);
        if let Some(user) = &self.run_as {
            user.apply(&mut cmd);
        }
        let mut child = cmd
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            pump(child.stdout.take().expect("piped stdout"), stdout.clone()),
            pump(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Running {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
            timeout: self.timeout,
            args,
        }
    }

    /// Runs to completion (or kills it after the timeout and panics).
    pub fn run(&self) -> Outcome {
        let mut r = self.spawn();
        match &self.stdin {
            Some(bytes) => r.write_stdin(bytes),
            None => r.close_stdin(),
        }
        r.close_stdin();
        r.wait()
    }
}

fn pump(mut from: impl Read + Send + 'static, to: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            to.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// What a silent guest was doing. Asks the VMM for its report (SIGUSR1: each vCPU's
/// registers, each virtio device's rings and pending interrupt, in the VMM's log), and
/// returns its vCPU threads' state and CPU time, plus "SPINNING: …" for those that used
/// nearly all of the next 2 s (in the guest or in KVM; halted ones wait for an
/// interrupt). "none" once the VMM is gone.
pub fn diagnose_silent_guest(vmm_pid: u32) -> String {
    use vmm::sandbox::thread_report::{spinning, summary, vcpu_threads_of};
    if let Ok(pid) = libc::pid_t::try_from(vmm_pid) {
        // SAFETY: kill has no memory-safety preconditions; the caller still holds the
        // VMM's Child (not reaped), so the pid is not reused.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    }
    let pid = vmm_pid.to_string();
    let (before, since) = (vcpu_threads_of(&pid), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let after = vcpu_threads_of(&pid);
    // tests/run-tier3 looks for "SPINNING" (the same class as the supervisor's "that vCPU
    // spun without the guest answering").
    match spinning(&before, since, &after) {
        spun if spun.is_empty() => summary(&after),
        spun => format!("{}; SPINNING: {}", summary(&after), spun.join(", ")),
    }
}

/// A VMM process that is still running.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    timeout: Duration,
    args: Vec<OsString>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// What the VMM has logged so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the VMM has logged `needle`; returns its log. Panics after `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr_text();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the VMM's log after {timeout:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        if let Some(s) = self.stdin.as_mut() {
            // The VMM may already have exited; its exit status tells the story.
            let _ = s.write_all(bytes).and_then(|()| s.flush());
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until the guest has printed `needle`; panics after `timeout`.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stdout_text().contains(needle) {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let state = self.child.try_wait().ok().flatten();
                let vcpus = diagnose_silent_guest(self.child.id());
                self.kill();
                panic!(
                    "no {needle:?} on the guest console after {timeout:?} (vmm exited: {state:?}; \
                     vCPUs then: {vcpus})\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_text(),
                    String::from_utf8_lossy(&self.stderr.lock().unwrap())
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal to the VMM process.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill() has no memory-safety preconditions; `pid` is our own child,
        // not yet reaped (we hold its Child), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit within the run's timeout; kills the VMM and panics otherwise.
    pub fn wait(self) -> Outcome {
        let deadline = self.started + self.timeout;
        self.wait_until(deadline)
    }

    /// Waits at most `timeout` from now; kills the VMM and panics after that.
    pub fn wait_timeout(self, timeout: Duration) -> Outcome {
        self.wait_until(Instant::now() + timeout)
    }

    fn wait_until(mut self, deadline: Instant) -> Outcome {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for vmm") {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "vmm {:?} still running after {:?}; killed it\nstdout:\n{}\nstderr:\n{}",
                    self.args,
                    self.started.elapsed(),
                    self.stdout_text(),
                    String::from_utf8_lossy(&self.stderr.lock().unwrap())
                );
            }
            thread::sleep(Duration::from_millis(2));
        };
        let elapsed = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        Outcome {
            guest: GuestOutput::parse(&String::from_utf8_lossy(&stdout)),
            status,
            stdout,
            stderr,
            elapsed,
            args: self.args.clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Never leave a VMM behind when a test panics half-way.
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// A finished VMM run.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub guest: GuestOutput,
    pub elapsed: Duration,
    pub args: Vec<OsString>,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code, showing the whole run when it differs.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit status\n{self}");
        self
    }

    /// Exit 0, the guest printed `done`, and no `fail` line.
    pub fn assert_passed(&self) -> &GuestOutput {
        self.assert_code(0);
        assert!(self.guest.done, "guest did not reach `done`\n{self}");
        self.guest.assert_no_fail();
        &self.guest
    }

    /// Asserts stderr mentions `needle` (case-insensitive).
    pub fn assert_stderr_mentions(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr does not mention {needle:?}\n{self}"
        );
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "vmm {:?}", self.args)?;
        writeln!(f, "status: {} after {:?}", self.status, self.elapsed)?;
        writeln!(f, "stderr:\n{}", self.stderr)?;
        write!(f, "stdout:\n{}", String::from_utf8_lossy(&self.stdout))
    }
}
