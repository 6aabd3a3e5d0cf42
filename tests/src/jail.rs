//! The test jail (tier 2): the real agent as PID 1 of a chroot of the real rootfs image,
//! in fresh PID, mount, UTS, IPC and cgroup namespaces, reachable on a Unix socket.
//!
//! `Jail::start` (as root) copies the image sparsely into a temporary directory and runs
//!
//! ```text
//! unshare --net --pid --fork --kill-child=SIGKILL --mount --uts --ipc \
//!     --propagation private sh -c '
//!         echo 0 >CGROUP/cgroup.procs; exec unshare --cgroup sh -c "
//!         mount -o loop IMAGE MNT; rm IMAGE; mount --bind DIR/vmm MNT/vmm
//!         mount --bind -o ro AGENT MNT/vmm/vmm-agent
//!         exec chroot MNT /vmm/vmm-agent --init --unix /vmm/agent.sock --hostname sandbox"'
//! ```
//!
//! where AGENT is the static agent just built, and CGROUP the jail's own pids cgroup
//! (`pids.max` = JAIL_PIDS_MAX), the root of its cgroup namespace. Before the agent
//! starts, the jail gets a private /dev (a tmpfs with null, zero, full, random, urandom,
//! tty and the loop nodes, never the host's devtmpfs) and a read-only /sys; its network
//! namespace has only `lo`. The agent then does the rest of its PID 1 duties inside (proc, devpts, /dev/shm, /run, cgroup2,
//! hostname) and listens on /vmm/agent.sock, which the host sees as DIR/vmm/agent.sock.
//!
//! Every mount lives in the jail's own mount namespace, and the image copy is unlinked
//! once mounted: when the jail's processes are gone, the kernel unmounts the image,
//! frees its loop device and the copy's blocks. `unshare` gets SIGKILL when the test
//! process dies, however it dies (`spawn_tied`), and takes the jail with it. So nothing
//! is left mounted or running even after a SIGKILLed test; at worst the small temporary
//! directory remains.
//!
//! This file uses only std, libc and tempfile so that both the tests crate (`pub mod
//! jail`) and the agent's integration tests (`#[path]`) can compile it.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
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
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
    /// The `unshare` process; its child is the agent (PID 1 inside).
    unshare: Option<Child>,
    /// The jail's pids cgroup, removed once the jail is gone.
    cgroup: Option<PathBuf>,
}

/// At most this many processes in a jail: a fork bomb there stays there.
pub const JAIL_PIDS_MAX: u32 = 4096;

/// Creates the jail's own pids cgroup (cgroup v2, or v1's pids hierarchy) with
/// `pids.max`, named after its directory; returns its path. Empty cgroups of earlier,
/// SIGKILLed test runs (whose jail directory is gone) are removed first.
fn jail_cgroup(dir: &tempfile::TempDir) -> PathBuf {
    let base = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // v2: the pids controller must be on for the root's children.
        let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/pids")
    };
    assert!(
        base.join("cgroup.procs").exists(),
        "the test jail needs the pids cgroup controller (none at {})",
        base.display()
    );
    // Another jail's cgroup may be empty for a moment while it starts: only those whose
    // jail directory is gone are stale.
    let jails = dir.path().parent().expect("a temp dir has a parent");
    if let Ok(entries) = fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("vmm-jail-") && !jails.join(&name).exists() {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    let name = dir.path().file_name().expect("a temp dir has a name");
    let cgroup = base.join(name);
    fs::create_dir(&cgroup)
        .unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", cgroup.display()));
    fs::write(cgroup.join("pids.max"), JAIL_PIDS_MAX.to_string())
        .unwrap_or_else(|e| panic!("cannot set pids.max in {}: {e}", cgroup.display()));
    cgroup
}

/// The jail's PID 1 before it becomes the agent: joins the pids cgroup (argument 1),
/// enters a cgroup namespace rooted there and runs JAIL_INIT (argument 2) with the rest.
const JAIL_ENTER: &str = r#"set -e
echo 0 >"$1/cgroup.procs"
init=$2
shift 2
exec unshare --cgroup sh -c "$init" jail-init "$@""#;

/// Mounts the image in the jail's mount namespace and starts the agent as its init.
/// Arguments: image, mount point, host directory for /vmm, agent binary, then the
/// agent's arguments. The agent is bind-mounted (read-only), not copied.
const JAIL_INIT: &str = r#"set -e
mount -o loop "$1" "$2"
rm "$1"
# A private /dev with the nodes a rootfs needs: the host's devtmpfs is never shared
# (a file written there would replace a host node). Loop nodes for the loop-mount example.
mount -t tmpfs -o mode=755,nosuid,size=1m jail-dev "$2/dev"
for n in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9" "tty c 5 0"; do
    mknod -m 666 "$2/dev/${n%% *}" ${n#* }
done
mknod -m 600 "$2/dev/loop-control" c 10 237
i=0
while [ $i -lt 64 ]; do mknod -m 660 "$2/dev/loop$i" b 7 $i; i=$((i + 1)); done
mkdir "$2/dev/pts" "$2/dev/shm"
# The kernel's objects read-only.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$2/sys"
mkdir -p "$2/vmm"
mount --bind "$3" "$2/vmm"
touch "$2/vmm/vmm-agent"
mount --bind -o ro "$4" "$2/vmm/vmm-agent"
root=$2
shift 4
exec chroot "$root" /vmm/vmm-agent "$@""#;

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
        let vmm_dir = dir.path().join("vmm");
        let log = dir.path().join("agent.log");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(rootfs_image)
            .arg(&image));
        fs::create_dir(&root).expect("create the mount point");
        fs::create_dir(&vmm_dir).expect("create the jail's /vmm");
        fs::set_permissions(&vmm_dir, fs::Permissions::from_mode(0o700))
            .expect("chmod the jail's /vmm");
        let mut jail = Jail {
            socket: vmm_dir.join(JAIL_SOCKET.trim_start_matches("/vmm/")),
            dir,
            log,
            unshare: None,
            cgroup: None,
        };

        let log = fs::File::create(&jail.log).expect("create the agent log");
        let log2 = log.try_clone().expect("dup the agent log");
        let level = std::env::var("VMM_JAIL_LOG").unwrap_or_else(|_| "info".to_owned());
        let cgroup = jail_cgroup(&jail.dir);
        jail.cgroup = Some(cgroup.clone());
        // The jail's first process moves itself into the jail's pids cgroup, and only
        // then into a cgroup namespace: that group's only process is then the agent
        // (unshare, its parent, stays outside, where a process would make the group a
        // thread root under cgroup v2 and its children groups no process can join).
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount",
            "--uts",
            "--ipc",
            "--propagation",
            "private",
            "sh",
            "-c",
            JAIL_ENTER,
            "jail-enter",
        ])
        .arg(&cgroup)
        .arg(JAIL_INIT)
        .arg(&image)
        .arg(&root)
        .arg(&vmm_dir)
        .arg(agent_bin)
        .args(["--init", "--unix", JAIL_SOCKET, "--hostname", JAIL_HOSTNAME])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("VMM_AGENT_LOG", level)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
        jail.unshare = Some(spawn_tied(cmd).expect("cannot run unshare"));

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
}

impl Drop for Jail {
    fn drop(&mut self) {
        // The mounts go with the jail's mount namespace; the directory goes with `dir`.
        self.kill();
        if let Some(cgroup) = self.cgroup.take() {
            // Its last processes may take a moment to leave it.
            for _ in 0..100 {
                if fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Spawns `cmd` so that it gets SIGKILL when this process dies, however it dies.
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so all such
/// children are forked by one thread that lives as long as the process.
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only calls prctl, getppid and raise,
    // which are async-signal-safe, and touches no memory but a copied integer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("tied-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
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
