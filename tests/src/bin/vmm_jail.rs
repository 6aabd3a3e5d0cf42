//! `vmm_jail`: a stand-in for `vmm` that runs a sandbox in the test jail (tier 2) instead
//! of a VM, with the command-line contract the Python SDK (sdk/python) relies on:
//!
//! ```text
//! vmm_jail run --config FILE --ready-fd N [-- CMD...]
//! ```
//!
//! The config is read and validated by vmm's own code (`vmm::config`), so a key or a file
//! that `vmm run` refuses is refused here with the same one-line message and exit status 1.
//! Then the root disk (a raw image, or a qcow2 image flattened to raw first) is started in
//! the test jail (`vmm_tests::jail`), and the real `vmm supervise --agent-sock ...
//! --api-sock ... --ready-fd N [-- CMD]` serves the API, writes the readiness line and
//! ends with the sandbox's exit status, which becomes ours. So an SDK runs unchanged with
//! `VMM_BIN=target/debug/vmm_jail`, and the API, agent and exit-status paths it exercises
//! are the ones a VM uses.
//!
//! What a VM has and the jail does not: `kernel`, `cpus`, `memory_mib`, `append`,
//! `overlay` and `[resources]` are validated, then ignored (the jail runs on the host kernel, on a private
//! copy of the image, so the image is never written either way). `[net] mode = "auto"`
//! becomes `--net-ns` (a veth on the bridge of `vmm net setup`, with the same `allow` and
//! `publish` policy). Extra drives, `[vsock]`, `init = "system"` and `mode = "tap"` are
//! errors.
//!
//! Every other subcommand (`vmm_jail image rm ...`, `exec`, `status`) runs the real vmm.
//!
//! Nothing leaks when this process is killed: the jail's `unshare` and `vmm supervise`
//! are spawned tied to it (`spawn_tied`: SIGKILL when it dies, however it dies), and
//! SIGTERM, SIGINT and SIGHUP are forwarded to `vmm supervise`, which then ends the
//! sandbox as `vmm run` would (exit status 128+N). The jail's small directory and empty
//! cgroup, which only a clean exit removes, are named in `$TMPDIR/vmm_jail-PID`: the
//! next vmm_jail removes them once no vmm_jail has that pid.
//! Needs root (the jail does: loop mount, namespaces, chroot).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use vmm::config::{FileConfig, NetBackend, Overrides, VmConfig};
use vmm_tests::jail::{spawn_tied, Jail};

/// A wrong command line, as `vmm` exits for one.
const EXIT_USAGE: u8 = 64;
/// The sandbox could not be set up, as `vmm run` exits (one line on stderr).
const EXIT_SETUP: u8 = 1;

const USAGE: &str = "usage: vmm_jail run --config FILE --ready-fd N [-- CMD...]";

/// The `vmm supervise` process, for the signal handler (0 until it runs).
static SUPERVISE_PID: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived while the jail was starting, for supervise once it runs.
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The command line this stand-in accepts.
struct Args {
    config: PathBuf,
    ready_fd: RawFd,
    entrypoint: Vec<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    if args.next().as_deref() != Some("run") {
        return Err(USAGE.to_owned());
    }
    let (mut config, mut ready_fd, mut entrypoint) = (None, None, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--ready-fd" => {
                let value = args.next().unwrap_or_default();
                let fd = value
                    .parse()
                    .map_err(|_| format!("--ready-fd {value:?}: not a file descriptor number"))?;
                ready_fd = Some(fd);
            }
            "--" => {
                entrypoint = args.by_ref().collect();
            }
            other => return Err(format!("unsupported argument {other:?}; {USAGE}")),
        }
    }
    match (config, ready_fd) {
        (Some(config), Some(ready_fd)) => Ok(Args {
            config,
            ready_fd,
            entrypoint,
        }),
        _ => Err(USAGE.to_owned()),
    }
}

/// Why the sandbox cannot start, as one line (what `vmm run` prints after `vmm: `).
type SetupError = String;

/// The parts of a validated config that the jail carries out.
struct JailPlan {
    image: PathBuf,
    api_socket: PathBuf,
    /// `supervise` and its flags, without the ones that name the jail.
    supervise_args: Vec<String>,
    /// `--allow`/`--publish` when the sandbox has a network (then `--net-ns` too, which
    /// names the jail's namespace, known once it runs).
    net_flags: Option<Vec<String>>,
    entrypoint: Vec<String>,
}

fn plan(cfg: VmConfig) -> Result<JailPlan, SetupError> {
    let api = cfg
        .api
        .ok_or("the test jail serves the sandbox API: set [api] socket in the config")?;
    let mut drives = cfg.drives.into_iter();
    let root = match drives.next() {
        Some(root) if cfg.has_root => root,
        _ => return Err("the test jail needs a root disk: set rootfs in the config".into()),
    };
    if drives.next().is_some() {
        return Err("the test jail has no extra drives ([[drives]])".into());
    }
    if cfg.vsock.as_ref().is_some_and(|v| {
        let mut default = api.socket.clone().into_os_string();
        default.push(".vsock");
        v.uds_path != Path::new(&default)
    }) {
        return Err("the test jail has no vsock device ([vsock])".into());
    }
    if cfg.init != vmm::config::InitMode::Agent {
        return Err("the test jail runs the agent as init (init = \"agent\")".into());
    }
    let mut supervise_args = vec!["supervise".to_owned()];
    if let Some(lifetime) = api.lifetime {
        supervise_args.extend(["--lifetime".to_owned(), lifetime.as_secs().to_string()]);
    }
    let net_flags = match cfg.net {
        None => None,
        Some(net) if net.backend == NetBackend::Auto => {
            let mut flags = Vec::new();
            if let vmm::config::Egress::Allow(nets) = &net.egress {
                for n in nets {
                    flags.extend(["--allow".to_owned(), n.to_string()]);
                }
                if nets.is_empty() {
                    // `allow = []`: egress nowhere. supervise has no flag for an empty
                    // list; a network holding only 0.0.0.0 (never a destination) is one.
                    flags.extend(["--allow".to_owned(), "0.0.0.0/32".to_owned()]);
                }
            }
            for p in &net.publish {
                flags.extend([
                    "--publish".to_owned(),
                    format!("{}:{}:{}", p.host_addr, p.host_port, p.guest_port),
                ]);
            }
            Some(flags)
        }
        Some(_) => return Err("the test jail has no TAP devices ([net] mode = \"tap\")".into()),
    };
    let mut entrypoint = Vec::new();
    if let Some(e) = api.entrypoint {
        if e.keep_running {
            supervise_args.push("--keep-running".to_owned());
        }
        entrypoint = e.argv;
    }
    Ok(JailPlan {
        image: root.path,
        api_socket: api.socket,
        supervise_args,
        net_flags,
        entrypoint,
    })
}

/// True when `path` starts with the qcow2 magic.
fn is_qcow2(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"QFI\xfb"
}

/// Refuses a raw root image that the jail cannot loop-mount (it wants ext2/3/4), with
/// the one-line error vmm gives for a bad rootfs, instead of the jail's failed mount.
fn check_ext_image(path: &Path) -> Result<(), SetupError> {
    use std::io::{Read, Seek, SeekFrom};
    // The superblock starts at 1024; s_magic (0xEF53, little-endian) is at offset 56.
    let mut magic = [0u8; 2];
    let read = std::fs::File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(1024 + 56))?;
        f.read_exact(&mut magic)
    });
    if read.is_err() || magic != [0x53, 0xef] {
        return Err(format!(
            "rootfs {}: not an ext2/3/4 filesystem image (the test jail mounts it)",
            path.display()
        ));
    }
    Ok(())
}

/// The real vmm: `$VMM_JAIL_VMM`, else `vmm` beside this binary.
fn vmm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VMM_JAIL_VMM") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .map(|exe| exe.with_file_name("vmm"))
        .unwrap_or_else(|_| PathBuf::from("vmm"))
}

/// A raw copy of a qcow2 image (a snapshot, or a base), for the jail's loop mount.
fn flatten(image: &Path, dir: &Path) -> Result<PathBuf, SetupError> {
    let out = dir.join("rootfs.raw");
    let result = Command::new(vmm_bin())
        .args(["image", "flatten"])
        .arg(image)
        .arg(&out)
        .args(["--format", "raw"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", vmm_bin().display()))?;
    if !result.status.success() {
        let err = String::from_utf8_lossy(&result.stderr);
        let err = err.lines().next().unwrap_or("").trim_start_matches("vmm: ");
        return Err(format!("rootfs {}: {err}", image.display()));
    }
    Ok(out)
}

/// Runs `f`, turning a panic (the jail's set-up asserts) into its message's first line.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, SetupError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("the test jail did not start");
        message.lines().next().unwrap_or_default().to_owned()
    })
}

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = SUPERVISE_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; `pid` is our unreaped child.
        unsafe { libc::kill(pid, signal) };
    } else {
        PENDING_SIGNAL.store(signal, Ordering::SeqCst);
    }
}

/// Sends SIGTERM, SIGINT and SIGHUP on to `vmm supervise`, which ends the sandbox (one
/// that arrives earlier waits for it: the jail then ends through the same path).
fn forward_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only loads an atomic and calls kill(2), both
        // async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Prefix of the marker file in which each vmm_jail names its jail's directory (then
/// its pid).
const MARKER_PREFIX: &str = "vmm_jail-";

/// The cgroups the jail module may have made for a jail directory named `name`.
fn jail_cgroups(name: &std::ffi::OsStr) -> [PathBuf; 2] {
    [
        Path::new("/sys/fs/cgroup").join(name),
        Path::new("/sys/fs/cgroup/pids").join(name),
    ]
}

/// Removes what vmm_jail processes that were SIGKILLed left (only a clean exit, with
/// Drop, removes it): their jail's small directory (its mounts went with its mount
/// namespace) and its empty pids cgroup. Their processes are gone already
/// (`spawn_tied`).
fn sweep_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(MARKER_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "vmm_jail" {
            continue; // still running
        }
        let jail_dir = PathBuf::from(std::fs::read_to_string(e.path()).unwrap_or_default());
        if let Some(jail_name) = jail_dir
            .file_name()
            .filter(|n| n.to_string_lossy().starts_with("vmm-jail-"))
        {
            for cgroup in jail_cgroups(jail_name) {
                let _ = std::fs::remove_dir(cgroup);
            }
            let _ = std::fs::remove_dir_all(&jail_dir);
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// The marker naming our jail's directory, removed when we end.
struct Marker(PathBuf);

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the jail and `vmm supervise`; returns supervise's exit status as ours.
fn run(args: Args) -> Result<u8, SetupError> {
    forward_signals();
    let ready_fd = vmm::ready_fd::claim(args.ready_fd).map_err(|e| e.to_string())?;
    // SAFETY: `claim` checked that the fd is open; we take it over (it is ours: the
    // caller passed it to us) and close it once supervise has its copy.
    let ready = unsafe { OwnedFd::from_raw_fd(ready_fd) };
    let file = FileConfig::load(&args.config).map_err(|e| e.to_string())?;
    let overrides = Overrides {
        ready_fd: Some(ready_fd),
        entrypoint: args.entrypoint,
        ..Overrides::default()
    };
    let cfg = VmConfig::build(file, overrides).map_err(|e| e.to_string())?;
    let plan = plan(cfg)?;
    let tmp = std::env::var_os("VMM_JAIL_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    sweep_stale(&tmp);
    let scratch = tempfile::Builder::new()
        .prefix("vmm-jail-image-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let image = if is_qcow2(&plan.image) {
        flatten(&plan.image, scratch.path())?
    } else {
        plan.image.clone()
    };
    check_ext_image(&image)?;
    let jail = catch(|| Jail::start(&image, &Jail::agent_bin()))?;
    drop(scratch); // the jail has its own copy of the image
                   // The jail's directory is DIR in DIR/vmm/agent.sock.
    let _marker = jail.socket_path().ancestors().nth(2).and_then(|dir| {
        let marker = tmp.join(format!("{MARKER_PREFIX}{}", std::process::id()));
        std::fs::write(&marker, dir.as_os_str().as_encoded_bytes()).ok()?;
        Some(Marker(marker))
    });

    let mut cmd = Command::new(vmm_bin());
    cmd.args(&plan.supervise_args)
        .arg("--agent-sock")
        .arg(jail.socket_path())
        .arg("--api-sock")
        .arg(&plan.api_socket)
        .args(["--ready-fd", &ready_fd.to_string()]);
    if let Some(flags) = &plan.net_flags {
        let pid = jail.agent_pid().ok_or("the jail's agent is not running")?;
        cmd.arg("--net-ns")
            .arg(format!("/proc/{pid}/ns/net"))
            .args(flags);
    }
    if !plan.entrypoint.is_empty() {
        cmd.arg("--").args(&plan.entrypoint);
    }
    cmd.stdin(Stdio::null());
    // SAFETY: between fork and exec only fcntl(2), async-signal-safe, on an fd number:
    // supervise inherits the readiness fd (claim() marked it close-on-exec so that the
    // jail's processes do not hold it open).
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(ready_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut supervise = spawn_tied(cmd)
        .map_err(|e| format!("cannot run {} supervise: {e}", vmm_bin().display()))?;
    SUPERVISE_PID.store(supervise.id() as i32, Ordering::SeqCst);
    let pending = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
    if pending != 0 {
        forward_signal(pending);
    }
    // Only supervise writes the readiness line: our copy would hold the pipe open.
    drop(ready);
    let status = loop {
        match supervise.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot wait for vmm supervise: {e}")),
        }
    };
    SUPERVISE_PID.store(0, Ordering::SeqCst);
    drop(jail);
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    // The jail's set-up reports failures by panicking; `catch` turns them into one line
    // on stderr, as `vmm run` reports a set-up error.
    std::panic::set_hook(Box::new(|_| {}));
    // Every other subcommand (`image rm`, `exec`, `status`...) is vmm's own.
    if std::env::args().nth(1).as_deref() != Some("run") {
        let e = Command::new(vmm_bin())
            .args(std::env::args_os().skip(1))
            .exec();
        eprintln!("vmm_jail: cannot run {}: {e}", vmm_bin().display());
        return ExitCode::from(EXIT_SETUP);
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("vmm_jail: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match catch(|| run(args)).and_then(|r| r) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
