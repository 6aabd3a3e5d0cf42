//! The test jail (tier 2): the real agent as PID 1 of a chroot of the real rootfs image,
//! in fresh PID, mount, UTS, IPC and cgroup namespaces, reachable on a Unix socket.
//!
//! `Jail::start` (as root) copies the image sparsely into a temporary directory,
//! loop-mounts the copy, installs the agent as /sbin/vmm-agent and runs
//!
//! ```text
//! unshare --pid --fork --kill-child=SIGKILL --mount --uts --ipc --cgroup \
//!     --propagation private chroot MNT /sbin/vmm-agent --init --unix /vmm/agent.sock \
//!     --hostname sandbox
//! ```
//!
//! The agent then does its PID 1 duties inside (proc, sysfs, devtmpfs, devpts, /dev/shm,
//! /run, cgroup2, hostname) and listens on MNT/vmm/agent.sock (/vmm is not a mount the
//! agent makes, so the socket stays visible from the host). Dropping the jail kills it
//! (the PID namespace dies with its init), unmounts the image and removes the copy.
//!
//! This file uses only std, libc and tempfile so that both the tests crate (`pub mod
//! jail`) and the agent's integration tests (`#[path]`) can compile it.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where the agent listens, inside the jail.
pub const JAIL_SOCKET: &str = "/vmm/agent.sock";
/// The hostname the agent sets inside the jail.
pub const JAIL_HOSTNAME: &str = "sandbox";
/// How long the agent may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The static agent build, as `make agent` does it.
pub const AGENT_BUILD_COMMAND: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build \
--release -p agent --bin vmm-agent --target x86_64-unknown-linux-gnu";

fn repo_root() -> PathBuf {
    // Both the tests crate and the agent crate sit one level below the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running jail; dropping it kills everything inside and removes its files.
pub struct Jail {
    dir: Option<tempfile::TempDir>,
    image: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    /// The `unshare` process; its child is the agent (PID 1 inside).
    unshare: Option<Child>,
    mounted: bool,
}

impl Jail {
    /// build/rootfs.ext4 of this repository; panics (with how to build it) if missing.
    pub fn rootfs_image() -> PathBuf {
        let p = repo_root().join("build/rootfs.ext4");
        assert!(p.is_file(), "{} is missing: run `make rootfs`", p.display());
        p
    }

    /// The static agent: `$VMM_AGENT_BIN`, else
    /// target/x86_64-unknown-linux-gnu/release/vmm-agent; panics with the build command
    /// when it is missing or dynamically linked.
    pub fn agent_bin() -> PathBuf {
        let p = match std::env::var_os("VMM_AGENT_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| repo_root().join("target"));
                target.join("x86_64-unknown-linux-gnu/release/vmm-agent")
            }
        };
        assert!(
            p.is_file(),
            "static agent missing at {}: run `make agent` ({AGENT_BUILD_COMMAND}) \
             or set VMM_AGENT_BIN",
            p.display()
        );
        p
    }

    /// Starts the jail and waits (bounded) for the agent's socket. Needs root.
    pub fn start(rootfs_image: &Path, agent_bin: &Path) -> Jail {
        // SAFETY: geteuid(2) has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "the test jail needs root (loop mount, unshare, chroot)"
        );
        assert!(
            rootfs_image.is_file(),
            "no rootfs image at {}: run `make rootfs`",
            rootfs_image.display()
        );
        check_static(agent_bin);

        let base = std::env::var_os("VMM_JAIL_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("vmm-jail-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot create a temp dir in {}: {e}", base.display()));
        let image = dir.path().join("rootfs.ext4");
        let root = dir.path().join("root");
        let log = dir.path().join("agent.log");
        let mut jail = Jail {
            socket: root.join(JAIL_SOCKET.trim_start_matches('/')),
            dir: Some(dir),
            image,
            root,
            log,
            unshare: None,
            mounted: false,
        };

        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(rootfs_image)
            .arg(&jail.image));
        fs::create_dir(&jail.root).expect("create the mount point");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&jail.image)
            .arg(&jail.root));
        jail.mounted = true;

        install_agent(&jail.root, agent_bin);
        let sock_dir = jail.socket.parent().expect("socket dir");
        fs::create_dir_all(sock_dir).expect("create the socket dir");
        fs::set_permissions(sock_dir, fs::Permissions::from_mode(0o700))
            .expect("chmod the socket dir");
        let _ = fs::remove_file(&jail.socket);

        let log = fs::File::create(&jail.log).expect("create the agent log");
        let log2 = log.try_clone().expect("dup the agent log");
        let level = std::env::var("VMM_JAIL_LOG").unwrap_or_else(|_| "info".to_owned());
        let child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child=SIGKILL",
                "--mount",
                "--uts",
                "--ipc",
                "--cgroup",
                "--propagation",
                "private",
                "chroot",
            ])
            .arg(&jail.root)
            .args([
                "/sbin/vmm-agent",
                "--init",
                "--unix",
                JAIL_SOCKET,
                "--hostname",
                JAIL_HOSTNAME,
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("VMM_AGENT_LOG", level)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("cannot run unshare");
        jail.unshare = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        while !jail.socket.exists() {
            if let Some(status) = jail.try_wait() {
                panic!(
                    "the jail exited ({status}) before its agent listened; agent log:\n{}",
                    jail.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no agent socket at {} after {START_TIMEOUT:?}; agent log:\n{}",
                    jail.socket.display(),
                    jail.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        jail
    }

    /// The agent's socket, as seen from the host.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The jail's root directory (the mounted image copy), as seen from the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The host pid of the agent (PID 1 inside the jail).
    pub fn agent_pid(&self) -> Option<u32> {
        let parent = self.unshare.as_ref()?.id();
        children_of(parent).into_iter().next()
    }

    /// The jail's exit status if it has ended (the agent exited or was killed).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.unshare.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the jail to end on its own (e.g. after Shutdown), at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        let Some(mut child) = self.unshare.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SIGKILL to the jail's init ends its PID namespace; --kill-child does the
            // same if only unshare gets killed.
            for pid in children_of(child.id()) {
                // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child
                // of our unreaped unshare process, so it cannot have been reused.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        // The jail's mount namespace may take a moment to let go of the image.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let ok = Command::new("umount")
                .arg(&self.root)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                self.mounted = false;
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let lazy = Command::new("umount")
            .arg("-l")
            .arg(&self.root)
            .status()
            .is_ok_and(|s| s.success());
        if lazy {
            self.mounted = false;
        } else {
            eprintln!("jail: cannot unmount {}", self.root.display());
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.kill();
        self.unmount();
        if self.mounted || is_mount_point(&self.root) {
            // Never recurse into a still-mounted image.
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("jail: left {} behind (still mounted)", kept.display());
            }
        }
    }
}

/// Runs a set-up command, panicking with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics unless `bin` is an ELF file without an interpreter (a static binary).
fn check_static(bin: &Path) {
    let bytes = fs::read(bin).unwrap_or_else(|e| {
        panic!(
            "cannot read the agent at {}: {e}; build it with `make agent` ({AGENT_BUILD_COMMAND})",
            bin.display()
        )
    });
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let elf64 = bytes.starts_with(b"\x7fELF\x02\x01");
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        panic!("{} is not an ELF file", bin.display());
    };
    assert!(elf64, "{} is not a 64-bit ELF file", bin.display());
    const PT_INTERP: u32 = 3;
    let dynamic = (0..phnum as usize)
        .any(|i| u32_at(phoff as usize + i * phentsize as usize) == Some(PT_INTERP));
    assert!(
        !dynamic,
        "{} is dynamically linked; the jail needs the static agent: run `make agent` \
         ({AGENT_BUILD_COMMAND})",
        bin.display()
    );
}

/// Copies the agent to the image's /sbin/vmm-agent (following a /sbin -> usr/sbin link
/// inside the image, never out of it).
fn install_agent(root: &Path, agent_bin: &Path) {
    let mut sbin = root.join("sbin");
    if let Ok(target) = fs::read_link(&sbin) {
        let rel = target
            .strip_prefix("/")
            .map(Path::to_path_buf)
            .unwrap_or(target);
        assert!(
            !rel.components()
                .any(|c| c == std::path::Component::ParentDir),
            "the image's /sbin points outside the image"
        );
        sbin = root.join(rel);
    }
    fs::create_dir_all(&sbin).expect("create /sbin in the image");
    let dest = sbin.join("vmm-agent");
    let _ = fs::remove_file(&dest);
    fs::copy(agent_bin, &dest)
        .unwrap_or_else(|e| panic!("cannot copy {} into the image: {e}", agent_bin.display()));
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod the agent");
}

/// Pids whose parent is `parent` (from /proc/*/stat).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(e.path().join("stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let rest = &stat[stat.rfind(')')? + 1..];
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
    .collect()
}

/// Whether `path` is a mount point in this mount namespace.
fn is_mount_point(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().into_owned();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| mp.replace("\\040", " ") == want)
    })
}
