//! Host signals that stop a VM (or a supervised jail): blocked in every thread and taken
//! by one thread with sigwait, which turns them into an exit reason.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::exit::ExitReason;
use crate::seccomp::{Filters, ThreadKind};

/// SIGTERM, SIGINT and SIGHUP, blocked in the calling thread (and the threads it spawns).
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only modify it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

pub fn spawn_signal_thread(
    set: libc::sigset_t,
    exit: Sender<ExitReason>,
    seccomp: Arc<Filters>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp.confine(ThreadKind::Signals) {
                let _ = exit.send(ExitReason::Vmm(e.to_string()));
                return;
            }
            wait_for_signals(set, exit)
        })
        .map(|_| ())
}

fn wait_for_signals(set: libc::sigset_t, exit: Sender<ExitReason>) {
    loop {
        let mut sig = 0;
        // SAFETY: `set` and `sig` are valid for the call; the signals are blocked in
        // every thread, so sigwait is their only consumer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            let _ = exit.send(ExitReason::Signal(sig));
        }
    }
}
