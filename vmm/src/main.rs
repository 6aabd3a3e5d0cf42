//! `vmm`: boot a Linux guest (or a test guest) on KVM; check what this host can run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use vmm::cli;
use vmm::config::{parse_drive_flag, DriveSpec, FileConfig, Overrides, VmConfig};
use vmm::exit::{EXIT_OK, EXIT_SETUP_ERROR, EXIT_USAGE};
use vmm::hostnet::attach;

/// `vmm shell`: the image's bash as a login shell, or sh where there is no bash.
const SHELL_COMMAND: &str = "if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi";

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "A purpose-built virtual machine monitor for sandboxes",
    after_help = "Exit status 64 (every subcommand): the command line is wrong (unknown flag, \
                  missing or unparsable value). Each subcommand's --help lists its other codes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel with the serial console on this terminal.
    ///
    /// Exit status: 0 when the guest resets or powers off; 1 when the VM cannot be set up
    /// (bad config, missing files, no KVM); 2 when the guest crashes (triple fault, KVM
    /// internal error, kernel panic); 128+N when stopped by signal N (disks are flushed);
    /// 159 when SIGSYS killed it (a thread made a syscall outside its seccomp filter);
    /// with an entrypoint (and no --keep-running), the entrypoint's exit status when it
    /// ended the sandbox (128+N for signal N; 127/126 when it could not start), as
    /// `docker run` does.
    Run(Box<RunArgs>),
    /// Report what this host can run: KVM, virtualization kind, measured guest speed, and
    /// whether Linux guests can boot here.
    Doctor {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Serve the sandbox API for an agent that is already listening on a Unix socket
    /// (the test jail), without a VM.
    ///
    /// Exit status: 0 when terminated through the API, 3 when the lifetime ran out,
    /// 128+N when stopped by signal N; the entrypoint's exit status when it ended the
    /// sandbox.
    Supervise(SuperviseArgs),
    /// Run a command in a sandbox: stdin is forwarded, stdout/stderr are ours, and the
    /// exit status is the command's (128+N if a signal N killed it; 125 if the sandbox
    /// could not run it; 127 if the program or directory does not exist).
    Exec(ExecArgs),
    /// Open an interactive shell (a PTY in raw mode; window size follows the terminal).
    Shell {
        #[command(flatten)]
        api: ApiArg,
    },
    /// Copy a file between the host and a sandbox; sandbox paths start with ':'
    /// (`vmm cp ./a :/tmp/a`, `vmm cp :/etc/os-release .`). Mode bits are kept.
    Cp {
        #[command(flatten)]
        api: ApiArg,
        from: String,
        to: String,
    },
    /// Print the output of the sandbox's entrypoint (stdout to stdout, stderr to stderr)
    /// from the oldest byte kept (the last 4 MiB of each): what there is now, or with
    /// --follow until it exits. Exit status 0; 125 when there is no entrypoint.
    Logs {
        #[command(flatten)]
        api: ApiArg,
        /// Keep printing until the entrypoint exits.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the sandbox state and its processes.
    Status {
        #[command(flatten)]
        api: ApiArg,
    },
    /// Snapshot a sandbox's disk: its qcow2 overlay is sealed as PATH (read-only from
    /// then on) and the sandbox carries on with a fresh overlay backed by it. New
    /// sandboxes boot from PATH with `vmm run --rootfs PATH`. PATH must not exist and must
    /// be on the overlay's filesystem.
    ///
    /// With --api-sock, the sandbox is running: the guest agent syncs and freezes the
    /// drive's filesystems for the switch (--no-freeze skips that). Prints PATH, its
    /// size and the guest's pause.
    ///
    /// Exit status: 0 when taken; 125 when the running sandbox refused or failed it (the
    /// reason is on stderr; nothing changed, and the guest is thawed); 1 when --disk
    /// could not be sealed.
    Snapshot(SnapshotArgs),
    /// Inspect, flatten or remove disk images (raw or qcow2 with backing files).
    ///
    /// Exit status: 0 when done; 1 when the image cannot be read (the file and the reason
    /// are on stderr), the output exists, or the image is in use (rm).
    #[command(subcommand)]
    Image(ImageCommand),
    /// The host side of `--net auto`: a bridge, NAT and per-sandbox rules (nftables).
    ///
    /// Exit status: 0 when done; 1 when a step failed (the tool and its message are on
    /// stderr). Needs root (CAP_NET_ADMIN).
    #[command(subcommand)]
    Net(cli::net::NetCommand),
    /// Internal: the releaser of `--cgroup` (removes the cgroups a vmm created, once
    /// that vmm has ended).
    #[command(subcommand, hide = true)]
    Resources(ResourcesCommand),
    /// End a sandbox: the guest syncs its disks and powers off.
    Terminate {
        #[command(flatten)]
        api: ApiArg,
        /// Seconds the guest gets to shut down before it is stopped.
        #[arg(long, default_value_t = 5)]
        grace: u64,
    },
}

#[derive(Args)]
struct ApiArg {
    /// The sandbox's API socket.
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Show an image's chain, top first: format, virtual size, and the bytes each layer
    /// stores. Works on images a running sandbox uses.
    Info {
        /// Print one JSON object ({"layers": [...]}).
        #[arg(long)]
        json: bool,
        /// The image (the top of its chain).
        path: PathBuf,
    },
    /// Write the whole content of an image's chain as one standalone image (sparse).
    Flatten {
        /// The format of OUT.
        #[arg(long, value_enum, default_value = "raw")]
        format: FlatFormat,
        /// The image (the top of its chain).
        path: PathBuf,
        /// The new image (must not exist).
        out: PathBuf,
    },
    /// Remove an image file, unless a running sandbox uses it (as its overlay or as a
    /// layer below one).
    Rm {
        /// The image file.
        path: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FlatFormat {
    Raw,
    Qcow2,
}

#[derive(Args)]
struct SnapshotArgs {
    /// The running sandbox's API socket.
    #[arg(long, value_name = "PATH", required_unless_present = "disk")]
    api_sock: Option<PathBuf>,
    /// A stopped sandbox's overlay (a writable qcow2 image) instead of a running sandbox.
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["api_sock", "drive", "no_freeze"])]
    disk: Option<PathBuf>,
    /// The drive to snapshot (its id; default rootfs).
    #[arg(long, value_name = "ID")]
    drive: Option<String>,
    /// Do not ask the guest agent to freeze the filesystems: the snapshot is
    /// crash-consistent, as after a power cut (for guests without the agent).
    #[arg(long)]
    no_freeze: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Where the snapshot goes (a new file).
    path: PathBuf,
}

#[derive(Args)]
struct SuperviseArgs {
    /// Unix socket where the agent listens.
    #[arg(long, value_name = "PATH")]
    agent_sock: PathBuf,
    /// Where to serve the sandbox API (created with mode 0600).
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// End the sandbox after this many seconds.
    #[arg(long, value_name = "SECS")]
    lifetime: Option<u64>,
    /// Write the readiness JSON line to this file descriptor instead of stdout.
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// The jail's network namespace (e.g. /proc/PID/ns/net): the sandbox gets a veth on
    /// the bridge of `vmm net setup`, whose other end is eth0 in there, as `--net auto`
    /// gives a VM a TAP; the agent configures it. Needs root (CAP_NET_ADMIN).
    #[arg(long, value_name = "PATH")]
    net_ns: Option<PathBuf>,
    /// With --net-ns: egress only to this IPv4 CIDR (repeatable).
    #[arg(long = "allow", value_name = "CIDR", requires = "net_ns")]
    allow: Vec<String>,
    /// With --net-ns: forward a host TCP port to the sandbox's port (repeatable).
    #[arg(
        long = "publish",
        value_name = "[ADDR:]HOSTPORT:GUESTPORT",
        requires = "net_ns"
    )]
    publish: Vec<String>,
    /// With an entrypoint: the sandbox keeps running after it exits.
    #[arg(long, requires = "entrypoint")]
    keep_running: bool,
    #[command(flatten)]
    security: SecurityArgs,
    /// The sandbox's entrypoint (after `--`), as for `vmm run`.
    #[arg(last = true, value_name = "CMD")]
    entrypoint: Vec<String>,
}

/// How the vmm confines itself once set up (README: "Threat model").
#[derive(Args)]
struct SecurityArgs {
    /// Seccomp filters, one per thread kind: `enforce` kills the process (SIGSYS, exit
    /// status 159) on a syscall outside them; `log` allows it and has the kernel log it.
    #[arg(long, value_enum, value_name = "MODE", default_value_t)]
    seccomp: vmm::seccomp::Mode,
    /// A policy file in seccompiler's JSON format (keys: main, vcpu, devices,
    /// supervisor, signals, hostnet) instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
}

impl SecurityArgs {
    /// Compiles the filters and sets what every thread inherits (no_new_privs).
    fn prepare(&self) -> anyhow::Result<Arc<vmm::seccomp::Filters>> {
        let filters = vmm::seccomp::Filters::load(self.seccomp, self.seccomp_filter.as_deref())?;
        vmm::privileges::prepare_process()?;
        Ok(Arc::new(filters))
    }
}

#[derive(Subcommand)]
enum ResourcesCommand {
    /// Wait for stdin to end (the vmm that started us has ended), then remove DIRS.
    Release { dirs: Vec<PathBuf> },
}

#[derive(Args)]
struct ExecArgs {
    #[command(flatten)]
    api: ApiArg,
    /// Run on a PTY (interactive programs); our terminal goes to raw mode.
    #[arg(short = 't', long)]
    tty: bool,
    /// Environment variable for the process (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory in the sandbox.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// User name or uid to run as (default root).
    #[arg(short = 'u', long, value_name = "USER")]
    user: Option<String>,
    /// Kill the process after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{value:?} is not KEY=VALUE"))
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file; flags override its values. Keys: kernel, initrd, rootfs,
    /// overlay, cpus, memory_mib, append, init, entrypoint (a list), keep_running,
    /// [[drives]] (path, read_only, id, overlay),
    /// [api] (socket, lifetime_secs), [vsock] (uds_path, guest_cid), [net] (mode =
    /// "auto"|"tap"|"none", tap, mac, block_network, allow, publish), [resources]
    /// (cgroup, cpu, cpu_limit).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Root disk image, raw or qcow2 (by its magic), as /dev/vda (adds `root=/dev/vda rw`).
    /// A raw image is written in place; a qcow2 image (a base or a snapshot) is never
    /// written: the guest writes to --overlay, or to a temporary overlay deleted at exit.
    #[arg(long, value_name = "PATH")]
    rootfs: Option<PathBuf>,
    /// The root disk's writable qcow2 overlay on --rootfs: created when PATH does not
    /// exist, resumed when it does. Live snapshots seal it (`vmm snapshot`).
    #[arg(long, value_name = "PATH")]
    overlay: Option<PathBuf>,
    /// Extra disk (repeatable): PATH[,ro][,id=NAME][,overlay=PATH]; they follow the root
    /// disk as vdb, vdc... Raw or qcow2, written in place unless `ro` or `overlay=`.
    #[arg(
        long = "drive",
        value_name = "PATH[,ro][,id=NAME][,overlay=PATH]",
        value_parser = parse_drive
    )]
    drives: Vec<DriveSpec>,
    /// Number of vCPUs (default 1, at most 32).
    #[arg(long)]
    cpus: Option<u8>,
    /// Guest memory in MiB (default 1024).
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u64>,
    /// Extra kernel command-line arguments, appended after the VMM's own.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    append: Option<String>,
    /// Serve the sandbox API on this Unix socket (mode 0600) and run the guest agent
    /// (adds a vsock device; the agent is init unless --init system).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Host Unix socket of the virtio-vsock device (hybrid vsock: `CONNECT <port>`);
    /// default with --api-sock: `<api-sock>.vsock`.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// How the agent starts: `agent` (it is PID 1) or `system` (the image's init, e.g.
    /// systemd, starts it as a service).
    #[arg(long, value_enum)]
    init: Option<vmm::config::InitMode>,
    /// End the sandbox after this many seconds (exit status 3).
    #[arg(long, value_name = "SECS")]
    lifetime: Option<u64>,
    /// Write the readiness JSON line to this file descriptor instead of stdout.
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// A virtio-net NIC. `auto`: on a TAP that vmm creates on the bridge of `vmm net
    /// setup`, with an address on its network, NAT to the host's routes, a DNS server,
    /// and the --allow and --publish policy; the guest agent configures eth0 (needs root:
    /// CAP_NET_ADMIN). `tap=NAME`: on the TAP NAME (opened, or created when it does not
    /// exist, which needs CAP_NET_ADMIN), whose host side is yours. The MAC defaults to a
    /// random locally administered one.
    #[arg(long, value_name = "auto|tap=NAME[,mac=MAC]")]
    net: Option<String>,
    /// No NIC, whatever the config file says (the default when nothing asks for one).
    #[arg(long, conflicts_with = "net")]
    no_net: bool,
    /// No NIC, and an error if anything asks for one (the sandbox policy).
    #[arg(long)]
    block_network: bool,
    /// With --net auto: egress only to this IPv4 CIDR (repeatable); without it, egress is
    /// open (except to other sandboxes). DNS through the host side always works.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<String>,
    /// With --net auto: forward a host TCP port to a guest port (repeatable); without
    /// ADDR, on every host address. Nothing else reaches the guest from outside.
    #[arg(long = "publish", value_name = "[ADDR:]HOSTPORT:GUESTPORT")]
    publish: Vec<String>,
    /// Run in this cgroup (created if missing; removed at exit if vmm created it), a path
    /// below the root of the cgroup hierarchy (v2, or v1's cpu and memory trees), with
    /// memory.max = guest RAM + the VMM's own overhead. Needs write access there.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// With --cgroup: the cores this sandbox asks for (fractions allowed; default 1): its
    /// CPU share under contention (cpu.weight 100 per core; v1: cpu.shares 1024 per
    /// core). It may burst above it, up to its vCPUs, when the host is idle.
    #[arg(long, value_name = "CORES", requires = "cgroup")]
    cpu_request: Option<f64>,
    /// With --cgroup: a hard cap in cores (cpu.max; v1: cpu.cfs_quota_us).
    #[arg(long, value_name = "CORES", requires = "cgroup")]
    cpu_limit: Option<f64>,
    /// Change the root directory to DIR before anything else: every path (the config
    /// file, kernel, disks, sockets, /dev/kvm) is then inside DIR. Needs CAP_SYS_CHROOT.
    #[arg(long, value_name = "DIR")]
    chroot: Option<PathBuf>,
    /// With an entrypoint: the sandbox keeps running after it exits (default: the
    /// sandbox ends with it, and vmm exits with its exit status).
    #[arg(long)]
    keep_running: bool,
    #[command(flatten)]
    security: SecurityArgs,
    /// The sandbox's entrypoint (after `--`; needs --api-sock): the agent starts it once
    /// the sandbox is ready, as the exec "entrypoint"; `vmm logs` shows its output.
    #[arg(last = true, value_name = "CMD")]
    entrypoint: Vec<String>,
}

fn parse_drive(value: &str) -> Result<DriveSpec, String> {
    parse_drive_flag(value).map_err(|e| e.to_string())
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    if let Some(dir) = &args.chroot {
        vmm::privileges::chroot(dir)
            .with_context(|| format!("cannot change the root directory to {}", dir.display()))?;
    }
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        kernel: args.kernel,
        initrd: args.initrd,
        rootfs: args.rootfs,
        overlay: args.overlay,
        cpus: args.cpus,
        memory_mib: args.memory_mib,
        append: args.append,
        drives: args.drives,
        init: args.init,
        api_socket: args.api_sock,
        vsock_uds: args.vsock_uds,
        lifetime_secs: args.lifetime,
        ready_fd: args.ready_fd,
        net: vmm::config::NetFlags {
            net: args.net,
            no_net: args.no_net,
            block_network: args.block_network,
            allow: args.allow,
            publish: args.publish,
        },
        resources: vmm::config::ResourceFlags {
            cgroup: args.cgroup,
            cpu: args.cpu_request,
            cpu_limit: args.cpu_limit,
        },
        entrypoint: args.entrypoint,
        keep_running: args.keep_running,
    };
    let config = VmConfig::build(file, overrides)?;
    if args.chroot.is_some() && config.resources.is_some() {
        anyhow::bail!("--cgroup ([resources]) cannot be used with --chroot: the cgroup tree is outside the new root (place the vmm in its cgroup before the chroot)");
    }
    // First, so that every thread and helper process is accounted there.
    if let Some(spec) = &config.resources {
        vmm::resources::place(spec)?;
    }
    if args.chroot.is_some()
        && config
            .net
            .as_ref()
            .is_some_and(|n| n.backend == vmm::config::NetBackend::Auto)
    {
        anyhow::bail!("--net auto cannot be used with --chroot: its host side runs ip and nft outside it (use --net tap=NAME on a TAP you set up)");
    }
    // Before no_new_privs and the filters: the releaser it starts keeps CAP_NET_ADMIN.
    let attachment = attach::attach_spec(config.net.as_ref(), attach::LinkRequest::Tap)?;
    let seccomp = args.security.prepare()?;
    let reason = vmm::vm::run(&config, seccomp, attachment)?;
    let code = reason.exit_code();
    if code == EXIT_OK {
        log::info!("{reason}");
    } else {
        eprintln!("vmm: {reason}");
    }
    Ok(code)
}

/// Runs a client command on a small runtime; errors become exit statuses.
fn client_command<F, Fut>(api: &std::path::Path, f: F) -> i32
where
    F: FnOnce(vmm_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<i32, vmm_client::ClientError>>,
{
    let runtime = match cli::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmm: cannot start the client runtime: {e}");
            return cli::EXIT_CLIENT_ERROR;
        }
    };
    let code = runtime.block_on(async {
        let client = match cli::connect(api).await {
            Ok(c) => c,
            Err(e) => return cli::report(&e),
        };
        f(client).await.unwrap_or_else(|e| cli::report(&e))
    });
    // A blocking read of our stdin may still be pending (the process exited before its
    // stdin ended): dropping the runtime would wait for it.
    runtime.shutdown_background();
    code
}

fn supervise(args: SuperviseArgs) -> anyhow::Result<i32> {
    let entrypoint = vmm::config::check_entrypoint(
        (!args.entrypoint.is_empty()).then_some(args.entrypoint),
        args.keep_running,
        true,
    )?;
    let spec = vmm::config::net::build(
        None,
        vmm::config::NetFlags {
            net: args.net_ns.as_ref().map(|_| "auto".to_string()),
            allow: args.allow,
            publish: args.publish,
            ..Default::default()
        },
    )?;
    let attachment = match args.net_ns {
        Some(netns) => attach::attach_spec(spec.as_ref(), attach::LinkRequest::Veth { netns })?,
        None => None,
    };
    let seccomp = args.security.prepare()?;
    // Before any thread exists, so that every thread inherits the mask and only the
    // signal thread takes SIGTERM/SIGINT/SIGHUP (a thread without it would die of them).
    vmm::signals::block_stop_signals();
    let network = match attachment {
        Some(a) => {
            let guest = a.guest.clone();
            vmm::hostnet::services::spawn(a.dns, a.published, seccomp.clone())?;
            Some(guest)
        }
        None => None,
    };
    let options = vmm::sandbox::Options {
        api_socket: args.api_sock,
        agent: vmm_protocol::connect::Address::Unix(args.agent_sock),
        lifetime: args.lifetime.map(Duration::from_secs),
        ready_fd: args.ready_fd,
        started: Instant::now(),
        seccomp,
        drives: None,
        network,
        entrypoint,
    };
    let reason = vmm::sandbox::supervise(options)?;
    log::info!("{reason}");
    Ok(reason.exit_code())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and are not errors.
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    // Before anything of ours is opened: a wrong number must not name one of our fds.
    let ready_fd = match &cli.command {
        Command::Run(a) => a.ready_fd,
        Command::Supervise(a) => a.ready_fd,
        _ => None,
    };
    if let Some(Err(e)) = ready_fd.map(vmm::ready_fd::claim) {
        eprintln!("vmm: {e}");
        return ExitCode::from(EXIT_SETUP_ERROR as u8);
    }
    let code = match cli.command {
        Command::Run(args) => run(*args).unwrap_or_else(|e| {
            eprintln!("vmm: {}", error_chain(&e));
            EXIT_SETUP_ERROR
        }),
        Command::Doctor { json } => {
            let report = vmm::doctor::diagnose();
            let text = if json {
                serde_json::to_string(&report).unwrap_or_default() + "\n"
            } else {
                report.to_string()
            };
            print_or_fail(&text)
        }
        Command::Supervise(args) => supervise(args).unwrap_or_else(|e| {
            eprintln!("vmm: {}", error_chain(&e));
            EXIT_SETUP_ERROR
        }),
        Command::Exec(args) => {
            let opts = cli::exec::ExecOptions {
                argv: args.command,
                env: args.env.into_iter().collect::<HashMap<_, _>>(),
                cwd: args.workdir,
                user: args.user,
                tty: args.tty,
                timeout: args.timeout.map(Duration::from_secs),
            };
            let code = client_command(&args.api.api_sock, |c| async move {
                cli::exec::run(&c, opts).await
            });
            code
        }
        Command::Shell { api } => {
            let opts = cli::exec::ExecOptions {
                argv: ["/bin/sh", "-c", SHELL_COMMAND].map(String::from).to_vec(),
                env: HashMap::new(),
                cwd: None,
                user: None,
                tty: true,
                timeout: None,
            };
            client_command(
                &api.api_sock,
                |c| async move { cli::exec::run(&c, opts).await },
            )
        }
        Command::Cp { api, from, to } => client_command(&api.api_sock, |c| async move {
            let (from, to) = (
                cli::cp::Location::parse(&from),
                cli::cp::Location::parse(&to),
            );
            cli::cp::copy(&c, &from, &to).await.map(|_| EXIT_OK)
        }),
        Command::Logs { api, follow } => client_command(&api.api_sock, |c| async move {
            cli::logs::print(&c, follow).await
        }),
        Command::Status { api } => client_command(&api.api_sock, |c| async move {
            let s = c.status().await?;
            Ok(print_or_fail(&(cli::status_text(&s) + "\n")))
        }),
        Command::Snapshot(args) => snapshot(args),
        Command::Image(command) => image(command).unwrap_or_else(|e| {
            eprintln!("vmm: {}", error_chain(&e));
            EXIT_SETUP_ERROR
        }),
        Command::Net(command) => match cli::net::run(command) {
            Ok(text) => print_or_fail(&text),
            Err(e) => {
                eprintln!("vmm: {}", error_chain(&e.into()));
                EXIT_SETUP_ERROR
            }
        },
        Command::Resources(ResourcesCommand::Release { dirs }) => {
            match vmm::resources::release_when_stdin_ends(&dirs) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("vmm: {e}");
                    EXIT_SETUP_ERROR
                }
            }
        }
        Command::Terminate { api, grace } => client_command(&api.api_sock, |c| async move {
            c.terminate(Duration::from_secs(grace))
                .await
                .map(|()| EXIT_OK)
        }),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn snapshot(args: SnapshotArgs) -> i32 {
    // The vmm serving the API may run in another directory.
    let path = match std::path::absolute(&args.path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vmm: snapshot path {}: {e}", args.path.display());
            return EXIT_SETUP_ERROR;
        }
    };
    let Some(api) = args.api_sock else {
        let disk = args.disk.unwrap_or_default();
        return match vmm::drives::seal::seal_stopped(&disk, &path) {
            Ok((path, size)) => print_or_fail(&if args.json {
                serde_json::json!({ "path": path, "size": size }).to_string() + "\n"
            } else {
                format!("{}: {size} bytes\n", path.display())
            }),
            Err(e) => {
                eprintln!("vmm: snapshot of {}: {e}", disk.display());
                EXIT_SETUP_ERROR
            }
        };
    };
    let (drive, no_freeze, json) = (args.drive.unwrap_or_default(), args.no_freeze, args.json);
    client_command(&api, |c| async move {
        let r = c
            .snapshot(&drive, &path.display().to_string(), no_freeze)
            .await?;
        let text = if json {
            serde_json::json!({
                "path": r.path,
                "size": r.size,
                "pause_ms": r.pause_ms,
                "io_pause_ms": r.io_pause_ms,
                "frozen": r.frozen,
            })
            .to_string()
        } else {
            format!(
                "{}: {} bytes; guest paused {:.2} ms (I/O held {:.2} ms){}",
                r.path,
                r.size,
                r.pause_ms,
                r.io_pause_ms,
                if r.frozen.is_empty() {
                    String::new()
                } else {
                    format!("; froze {}", r.frozen.join(" "))
                }
            )
        };
        Ok(print_or_fail(&(text + "\n")))
    })
}

fn image(command: ImageCommand) -> anyhow::Result<i32> {
    let text = match command {
        ImageCommand::Info { json, path } => cli::image::info(&path, json)?,
        ImageCommand::Flatten { format, path, out } => {
            let format = match format {
                FlatFormat::Raw => devices::disk::ImageFormat::Raw,
                FlatFormat::Qcow2 => devices::disk::ImageFormat::Qcow2,
            };
            cli::image::flatten(&path, &out, format)?
        }
        ImageCommand::Rm { path } => {
            cli::image::remove(&path)?;
            String::new()
        }
    };
    Ok(print_or_fail(&text))
}

/// Prints to stdout; EXIT_OK, or EXIT_SETUP_ERROR when stdout fails (other than a reader
/// that went away).
fn print_or_fail(text: &str) -> i32 {
    match cli::print_stdout(text) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("vmm: cannot write to stdout: {e}");
            EXIT_SETUP_ERROR
        }
    }
}

/// "outer: inner: root" on one line.
fn error_chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
