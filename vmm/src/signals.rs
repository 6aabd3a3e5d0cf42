//! Host signals that stop a VM (or a supervised jail): blocked in every thread and taken
//! by one thread with sigwait, which turns them into an exit reason. SIGUSR1 stops
//! nothing: it asks for a report of the devices' state (a guest that seems stuck).

use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::exit::ExitReason;
use crate::seccomp::{Filters, ThreadKind};

/// SIGTERM, SIGINT and SIGHUP (and SIGUSR1, the report), blocked in the calling thread
/// and the threads it spawns.
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only modify it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Waits for the signals of `set` on a thread of its own: SIGUSR1 runs `report`, the
/// others end the VM.
pub fn spawn_signal_thread(
    set: libc::sigset_t,
    exit: Sender<ExitReason>,
    seccomp: Arc<Filters>,
    report: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp.confine(ThreadKind::Signals) {
                let _ = exit.send(ExitReason::Vmm(e.to_string()));
                return;
            }
            wait_for_signals(set, exit, report)
        })
        .map(|_| ())
}

fn wait_for_signals(set: libc::sigset_t, exit: Sender<ExitReason>, report: impl Fn()) {
    loop {
        let mut sig = 0;
        // SAFETY: `set` and `sig` are valid for the call; the signals are blocked in
        // every thread, so sigwait is their only consumer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGUSR1 {
            report();
        } else {
            let _ = exit.send(ExitReason::Signal(sig));
        }
    }
}
