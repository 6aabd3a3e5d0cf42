//! `vmm-agent`: the guest agent. PID 1 of a sandbox VM (or of the test jail), or a
//! service under the image's own init; serves the `Agent` gRPC API to the supervisor.

use std::process::ExitCode;

use agent::server;

use server::args::{Args, ArgsError, USAGE};
use server::{init, logger, Exit};

/// Output chunks are up to 256 KiB; glibc would mmap/munmap each one (page faults on
/// every chunk) above its default 128 KiB threshold. Keep them on the heap instead.
const MMAP_THRESHOLD: libc::c_int = 4 << 20;

fn main() -> ExitCode {
    // SAFETY: mallopt only changes allocator tuning; called before any other thread.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    let pid1 = std::process::id() == 1;
    let args = match Args::parse(std::env::args_os().skip(1), pid1) {
        Ok(a) => a,
        Err(ArgsError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vmm-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    logger::init();
    if let Err(e) = server::spawn::reserve_standard_fds() {
        log::warn!("cannot open /dev/null on descriptors 0-2: {e}");
    }
    if !args.ignored.is_empty() {
        log::info!(
            "ignoring what the kernel passed on to init: {}",
            args.ignored.join(" ")
        );
    }
    let is_init = args.is_init(std::process::id());
    log::info!(
        "vmm-agent {} starting (pid {}, {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        if is_init { "init" } else { "no init" }
    );
    if is_init {
        // Before any thread exists: mounts, lo, hostname.
        init::setup(args.hostname.as_deref());
    }
    // One thread: the agent mostly moves bytes between descriptors, and hand-offs between
    // runtime threads (a futex wake of an idle vCPU each) cost more than they spread.
    // Blocking file work still runs on tokio's blocking threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fatal(is_init, &args, &format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(server::serve(&args, is_init));
    match result {
        Ok(exit) => {
            init::sync();
            log::info!("shutting down");
            if exit == Exit::PowerOff {
                init::power_off();
            }
            // Exiting also ends the jail: PID 1 of a PID namespace takes everyone along.
            std::process::exit(0)
        }
        Err(e) => fatal(is_init, &args, &e.to_string()),
    }
}

/// Logs a fatal error and ends; as init in a VM, the VM ends instead of hanging.
fn fatal(is_init: bool, args: &Args, message: &str) -> ExitCode {
    log::error!("{message}");
    if is_init && matches!(args.listen, server::args::Listen::Vsock(_)) {
        init::power_off();
    }
    ExitCode::FAILURE
}
