//! `vmm`: boot a Linux guest (or a test guest) on KVM; check what this host can run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vmm::config::{parse_drive_flag, DriveSpec, FileConfig, Overrides, VmConfig};
use vmm::exit::{EXIT_OK, EXIT_SETUP_ERROR};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "A purpose-built virtual machine monitor for sandboxes"
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
    /// internal error, kernel panic); 128+N when stopped by signal N (disks are flushed).
    Run(RunArgs),
    /// Report what this host can run: KVM, virtualization kind, measured guest speed, and
    /// whether Linux guests can boot here.
    Doctor {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file; flags override its values. Keys: kernel, initrd, rootfs, cpus,
    /// memory_mib, append, [[drives]] (path, read_only, id).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Root disk image, read-write, as /dev/vda (adds `root=/dev/vda rw`).
    #[arg(long, value_name = "PATH")]
    rootfs: Option<PathBuf>,
    /// Extra disk (repeatable): PATH[,ro][,id=NAME]; they follow the root disk as vdb, vdc...
    #[arg(long = "drive", value_name = "PATH[,ro][,id=NAME]", value_parser = parse_drive)]
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
}

fn parse_drive(value: &str) -> Result<DriveSpec, String> {
    parse_drive_flag(value).map_err(|e| e.to_string())
}

fn run(args: RunArgs) -> anyhow::Result<i32> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        kernel: args.kernel,
        initrd: args.initrd,
        rootfs: args.rootfs,
        cpus: args.cpus,
        memory_mib: args.memory_mib,
        append: args.append,
        drives: args.drives,
    };
    let config = VmConfig::build(file, overrides)?;
    let reason = vmm::vm::run(&config)?;
    let code = reason.exit_code();
    if code == EXIT_OK {
        log::info!("{reason}");
    } else {
        eprintln!("vmm: {reason}");
    }
    Ok(code)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(args).unwrap_or_else(|e| {
            eprintln!("vmm: {}", error_chain(&e));
            EXIT_SETUP_ERROR
        }),
        Command::Doctor { json } => {
            let report = vmm::doctor::diagnose();
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{report}");
            }
            EXIT_OK
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// "outer: inner: root" on one line.
fn error_chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
