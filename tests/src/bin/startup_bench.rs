//! `make bench`: VMM start to the tiny guest's first serial byte and to VMM exit, and
//! peak RSS, for our vmm and for QEMU's microvm booting the same PVH guest. Medians.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::{vmm_bin, TINY_ELF, TINY_PVH64_ELF};

const RUNS: usize = 20;

struct Sample {
    first_byte: Duration,
    exit: Duration,
    max_rss_kib: i64,
}

/// Runs `cmd` once; the guest prints one byte and resets.
fn sample(program: &PathBuf, args: &[&str]) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut byte = [0u8; 1];
    let n = stdout.read(&mut byte).map_err(|e| e.to_string())?;
    let first_byte = start.elapsed();
    if n == 0 {
        return Err(format!("{} printed nothing", program.display()));
    }
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let mut status = 0;
    // SAFETY: rusage is plain data filled by wait4 for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; the pid is our child, reaped exactly once here.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let exit = start.elapsed();
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let code = std::process::ExitStatus::from_raw(status);
    if !code.success() {
        return Err(format!("{} exited with {code}", program.display()));
    }
    Ok(Sample {
        first_byte,
        exit,
        max_rss_kib: usage.ru_maxrss,
    })
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

struct Summary {
    first_byte: Duration,
    exit: Duration,
    rss_kib: i64,
}

fn measure(name: &str, program: &PathBuf, args: &[&str]) -> Option<Summary> {
    let mut samples = Vec::new();
    for _ in 0..RUNS {
        match sample(program, args) {
            Ok(s) => samples.push(s),
            Err(e) => {
                println!("{name:<28} failed: {e}");
                return None;
            }
        }
    }
    let s = Summary {
        first_byte: median(samples.iter().map(|s| s.first_byte).collect()),
        exit: median(samples.iter().map(|s| s.exit).collect()),
        rss_kib: median(samples.iter().map(|s| s.max_rss_kib).collect()),
    };
    println!(
        "{name:<28} first byte {:>7.2} ms   exit {:>7.2} ms   peak RSS {:>6.1} MiB",
        s.first_byte.as_secs_f64() * 1e3,
        s.exit.as_secs_f64() * 1e3,
        s.rss_kib as f64 / 1024.0
    );
    Some(s)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn main() {
    let vmm = vmm_bin();
    println!(
        "start-up, tiny guest printing one byte then resetting; median of {RUNS} runs; 128 MiB guests (the guest touches < 1 MiB, so peak RSS is VMM overhead)"
    );
    let elf = measure(
        "vmm (64-bit ELF entry)",
        &vmm,
        &[
            "run",
            "--kernel",
            TINY_ELF,
            "--memory-mib",
            "128",
            "--append",
            "test=bench",
        ],
    );
    let pvh = measure(
        "vmm (PVH entry)",
        &vmm,
        &[
            "run",
            "--kernel",
            TINY_PVH64_ELF,
            "--memory-mib",
            "128",
            "--append",
            "test=bench",
        ],
    );
    let qemu = which("qemu-system-x86_64").and_then(|q| {
        measure(
            "qemu microvm (PVH entry)",
            &q,
            &[
                vmm_tests::qemu_microvm_args(TINY_PVH64_ELF),
                vec!["-append", "test=bench"],
            ]
            .concat(),
        )
    });
    if let (Some(ours), Some(peer)) = (pvh.as_ref().or(elf.as_ref()), qemu) {
        println!(
            "ratio vmm/qemu: first byte {:.2}x, exit {:.2}x, RSS {:.2}x",
            ours.first_byte.as_secs_f64() / peer.first_byte.as_secs_f64(),
            ours.exit.as_secs_f64() / peer.exit.as_secs_f64(),
            ours.rss_kib as f64 / peer.rss_kib as f64
        );
    } else {
        println!("qemu-system-x86_64 missing or failing: no peer comparison");
    }
}
