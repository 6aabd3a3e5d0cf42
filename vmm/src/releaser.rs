//! Cleanup that must happen after the vmm ends, however it ends (`kill -9` included):
//! a helper process, started before the vmm confines itself, that waits for its stdin
//! to end. Only the vmm holds the pipe's write end, so the kernel closes it when the vmm
//! exits. Network rules (`vmm net release --wait`) and cgroups (`vmm resources release`)
//! are released this way.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Starts `cmd` with its stdin on a pipe that only our own end closes. It runs in its
/// own process group, so a Ctrl-C at the terminal does not stop it.
pub fn spawn(mut cmd: Command) -> io::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pipe = child.stdin.take().expect("stdin was piped");
    // Never closed here on purpose (it is close-on-exec, so no child of ours holds it):
    // the kernel closes it at our end.
    let _ = std::os::fd::IntoRawFd::into_raw_fd(pipe);
    // Not waited for: it outlives us, and init reaps it.
    drop(child);
    Ok(())
}

/// The releaser's side: returns once stdin has ended (the vmm is gone).
pub fn wait_for_stdin_to_end() {
    let mut sink = Vec::new();
    // Nothing is ever written; read returns at end of file, or fails when stdin is broken.
    let _ = io::Read::read_to_end(&mut io::stdin(), &mut sink);
}
