//! `make bench`: a real Linux guest's boot, our vmm against QEMU's microvm booting the same
//! kernel and rootfs with the same command line, interleaved, medians. Milestones, in ms
//! from starting the VMM process, read off the serial console as lines arrive:
//! kernel entry (the arrival of the line that enables the serial console, less the
//! kernel's own timestamp on it), `Run /sbin/vmm-agent` (the kernel starts init), and the
//! agent listening on vsock; for our vmm also the readiness line, which
//! means the supervisor has reached the agent. It also reports whether the guest enabled
//! XSAVE. Needs a host where Linux boots (make bench runs it in the emulated KVM host).
//! VMM_BENCH_RUNS sets the runs per VMM; VMM_BENCH_CONSOLE_DIR keeps each boot's
//! console there, every line stamped with its arrival.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_tests::sandbox::{readiness_pipe, repo_file};
use vmm_tests::stats::median;
use vmm_tests::vmm_bin;

/// Runs of each VMM (VMM_BENCH_RUNS overrides).
const RUNS: usize = 5;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Both VMMs boot the same guest with the same arguments; each adds only its devices.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux \
                       i8042.dumbkbd root=/dev/vda rw init=/sbin/vmm-agent \
                       VMM_AGENT_LOG=info";
/// Printed as the serial console starts; its timestamp counts from kernel entry.
const CONSOLE_LINE: &str = "console [ttyS0] enabled";
const INIT_LINE: &str = "Run /sbin/vmm-agent as init process";
const AGENT_LINE: &str = "listening on vsock port";
const XSAVE_ON: &str = "x86/fpu: Enabled xstate features";
/// XCR0's AVX (YMM) bit.
const XSTATE_AVX: u64 = 1 << 2;

/// Picks one milestone out of a boot.
type Milestone = fn(&Boot) -> Option<Duration>;

#[derive(Default, Clone)]
struct Boot {
    entry: Option<Duration>,
    init: Option<Duration>,
    agent: Option<Duration>,
    ready: Option<Duration>,
    /// The xstate features the guest enabled (bit 2 is AVX), if it enabled XSAVE.
    xstate: Option<u64>,
    xsave_problem: bool,
    /// Every console line, prefixed with its arrival in ms from VMM start.
    console: String,
}

/// Starts `cmd` and times the milestones on its stdout (and the readiness fd, if any).
fn boot(mut cmd: Command, ready: Option<OwnedFd>) -> Result<Boot, String> {
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let wait_ready = ready.is_some();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let console_tx = tx.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        // Bytes, not a String: the UART probe puts non-UTF-8 bytes on the console.
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let text = String::from_utf8_lossy(&line).into_owned();
            let _ = console_tx.send((text, start.elapsed()));
            line.clear();
        }
    });
    if let Some(fd) = ready {
        std::thread::spawn(move || {
            let mut line = String::new();
            if BufReader::new(std::fs::File::from(fd))
                .read_line(&mut line)
                .is_ok()
                && line.contains("\"ready\"")
            {
                let _ = tx.send(("READY".to_string(), start.elapsed()));
            }
        });
    }
    let mut b = Boot::default();
    let mut tail: Vec<String> = Vec::new();
    let deadline = start + BOOT_TIMEOUT;
    while b.agent.is_none() || (wait_ready && b.ready.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((line, at)) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "no agent within {BOOT_TIMEOUT:?}; the console ended with:\n{}",
                tail.join("")
            ));
        };
        if tail.len() == 12 {
            tail.remove(0);
        }
        tail.push(line.clone());
        b.console
            .push_str(&format!("{:9.1} {line}", at.as_secs_f64() * 1000.0));
        match line.as_str() {
            l if l.contains(CONSOLE_LINE) => b.entry = at.checked_sub(printk_time(l)),
            "READY" => b.ready = Some(at),
            l if l.contains(INIT_LINE) => b.init = Some(at),
            l if l.contains(AGENT_LINE) => b.agent = Some(at),
            l if l.contains(XSAVE_ON) => b.xstate = xstate_mask(l),
            l if l.contains("XSAVE consistency problem") => b.xsave_problem = true,
            _ => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(b)
}

/// The mask of `x86/fpu: Enabled xstate features 0x7, context size is ...`.
fn xstate_mask(line: &str) -> Option<u64> {
    let hex = line
        .split(XSAVE_ON)
        .nth(1)?
        .trim_start()
        .trim_start_matches("0x");
    let hex = hex.split(|c: char| !c.is_ascii_hexdigit()).next()?;
    u64::from_str_radix(hex, 16).ok()
}

/// How a boot left XSAVE: on with its features, or off and why.
fn xsave_summary(b: &Boot) -> String {
    match b.xstate {
        Some(mask) if mask & XSTATE_AVX != 0 => format!("on, avx (xstate {mask:#x})"),
        Some(mask) => format!("on, no avx (xstate {mask:#x})"),
        None if b.xsave_problem => "OFF (XSAVE consistency problem)".into(),
        None => "off".into(),
    }
}

/// The kernel's timestamp of a console line: `[   12.345678] ...`.
fn printk_time(line: &str) -> Duration {
    line.trim_start_matches('[')
        .split(']')
        .next()
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs_f64)
}

fn sparse_copy(from: &Path, to: &Path) -> Result<(), String> {
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| e.to_string())?;
    ok.success()
        .then_some(())
        .ok_or_else(|| format!("cp {} failed", from.display()))
}

fn ours(kernel: &Path, disk: &Path, dir: &Path) -> Result<Boot, String> {
    let api = dir.join("api.sock");
    let _ = std::fs::remove_file(&api);
    let _ = std::fs::remove_file(dir.join("api.sock.vsock"));
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--rootfs")
        .arg(disk)
        .args(["--cpus", "2", "--memory-mib", "1024"])
        .arg("--api-sock")
        .arg(&api)
        .args(["--append", "VMM_AGENT_LOG=info"]);
    let (read, write) = readiness_pipe(&mut cmd);
    let b = boot(cmd, Some(read));
    drop(write);
    b
}

fn qemu(qemu: &Path, kernel: &Path, disk: &Path) -> Result<Boot, String> {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host"])
        .args(["-smp", "2", "-m", "1024", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", CMDLINE])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .args(["-device", "vhost-vsock-device,guest-cid=3"]);
    let mut b = boot(cmd, None)?;
    b.ready = None;
    Ok(b)
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn column(boots: &[Boot], f: Milestone) -> f64 {
    median(boots.iter().map(|b| ms(f(b))).collect())
}

fn main() {
    let kernel = repo_file("build/vmlinux");
    let rootfs = repo_file("build/rootfs.ext4");
    let qemu_bin = PathBuf::from(
        std::env::var_os("VMM_BENCH_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into()),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = dir.path().join("rootfs.ext4");
    let runs = std::env::var("VMM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for which in ["vmm", "qemu"] {
            sparse_copy(&rootfs, &disk).expect("copy the rootfs");
            let result = if which == "vmm" {
                ours(&kernel, &disk, dir.path())
            } else {
                qemu(&qemu_bin, &kernel, &disk)
            };
            match result {
                Ok(b) => {
                    if let Some(dir) = std::env::var_os("VMM_BENCH_CONSOLE_DIR") {
                        let path = PathBuf::from(dir).join(format!("boot-{run}-{which}.log"));
                        let _ = std::fs::write(path, &b.console);
                    }
                    println!(
                        "run {run} {which:<4}: entry {:7.0} ms, init {:7.0} ms, agent {:7.0} ms, ready {:7.0} ms, xsave {}",
                        ms(b.entry),
                        ms(b.init),
                        ms(b.agent),
                        ms(b.ready),
                        xsave_summary(&b)
                    );
                    if which == "vmm" {
                        mine.push(b)
                    } else {
                        theirs.push(b)
                    }
                }
                Err(e) => println!("run {run} {which}: FAILED: {e}"),
            }
        }
    }
    println!(
        "\nLinux boot, medians of {runs} interleaved runs (ms from VMM start; 2 vCPUs, 1024 MiB):"
    );
    println!("| milestone | vmm | QEMU microvm | ratio |");
    println!("|---|---|---|---|");
    let rows: [(&str, Milestone); 3] = [
        ("kernel entry (console line less its timestamp)", |b| {
            b.entry
        }),
        ("`Run /sbin/vmm-agent` (init starts)", |b| b.init),
        ("agent listening on vsock", |b| b.agent),
    ];
    for (name, f) in rows {
        let (a, q) = (column(&mine, f), column(&theirs, f));
        println!("| {name} | {a:.0} | {q:.0} | {:.2} |", a / q);
    }
    println!(
        "| vmm readiness line (supervisor reached the agent) | {:.0} | | |",
        column(&mine, |b| b.ready)
    );
    let xsave = |v: &[Boot]| v.iter().filter(|b| b.xstate.is_some()).count();
    let avx = |v: &[Boot]| {
        v.iter()
            .filter(|b| b.xstate.is_some_and(|m| m & XSTATE_AVX != 0))
            .count()
    };
    println!(
        "XSAVE enabled in the guest: vmm {} of {}, QEMU {} of {}; with AVX: vmm {}, QEMU {}",
        xsave(&mine),
        mine.len(),
        xsave(&theirs),
        theirs.len(),
        avx(&mine),
        avx(&theirs)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xstate_mask_is_read_from_the_kernels_line() {
        let line = "[    0.000000] x86/fpu: Enabled xstate features 0x7, context size is 832 bytes, using 'standard' format.";
        assert_eq!(xstate_mask(line), Some(0x7));
        assert_eq!(
            xstate_mask("[    0.0] x86/fpu: Enabled xstate features zz"),
            None
        );
    }
}
