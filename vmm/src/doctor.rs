//! `vmm doctor`: what this host can run. It measures instead of guessing: a tiny guest
//! loop times the guest's instruction rate, which tells hardware virtualization (thousands
//! of MIPS) from PVM/emulation (about one MIPS, where Linux cannot boot).

use std::time::{Duration, Instant};

use kvm_ioctls::{Cap, VcpuExit};
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::layout::HIMEM_START;
use crate::arch::regs::{self, EntryMode};
use crate::arch::{boot_params, paging};
use crate::machine::{open_kvm, Machine, MachineError, REQUIRED_CAPS};

/// Guest rate below which a Linux boot is hopeless (hardware runs thousands of MIPS).
const MIN_LINUX_MIPS: f64 = 100.0;
/// Port the probe writes when its loop is done.
const PROBE_DONE_PORT: u16 = 0xf4;
/// Stop growing the loop once one run takes this long.
const MIN_MEASURED_TIME: Duration = Duration::from_millis(50);
const MAX_LOOP: u32 = 1 << 30;
const PROBE_MEMORY: u64 = 4 << 20;

#[derive(Debug, Serialize)]
pub struct Report {
    pub kvm_api_version: Option<i32>,
    pub capabilities: Vec<(String, bool)>,
    /// "vmx", "svm", "pvm" or "none".
    pub virtualization: String,
    pub kvm_modules: Vec<String>,
    pub guest_mips: Option<f64>,
    pub linux_guests_boot: bool,
    pub reason: String,
    /// Whether Linux guests boot one level down, in the emulated KVM host that
    /// tests/nested/run starts (QEMU's TCG emulating an AMD CPU with SVM).
    pub linux_guests_boot_emulated: bool,
    pub emulated_reason: String,
}

/// The probe: `mov ecx, N; 1: dec ecx; jnz 1b; out 0xf4, al` — two instructions a loop.
fn probe_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xe6, PROBE_DONE_PORT as u8]);
    code
}

/// Runs the probe loop with `iterations`; returns the time KVM_RUN took.
fn time_loop(
    machine: &Machine,
    vcpu: &mut kvm_ioctls::VcpuFd,
    iterations: u32,
) -> Result<Duration, String> {
    machine
        .mem
        .write_slice(&probe_code(iterations), GuestAddress(HIMEM_START))
        .map_err(|e| e.to_string())?;
    let cr3 = paging::write_identity_map(&machine.mem).map_err(|e| e.to_string())?;
    let mode = EntryMode::Long64 { cr3 };
    regs::write_descriptor_tables(&machine.mem, mode).map_err(|e| e.to_string())?;
    regs::setup_boot_cpu(vcpu, mode, HIMEM_START).map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PROBE_DONE_PORT, _)) => return Ok(start.elapsed()),
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) | Ok(VcpuExit::Intr) => {}
            Ok(other) => return Err(format!("probe guest stopped with {other:?}")),
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(format!("KVM_RUN failed: {e}")),
        }
    }
}

/// Guest instructions per second, in millions, from two loop lengths (the difference
/// cancels the entry/exit cost).
pub fn measure_mips() -> Result<f64, String> {
    let machine =
        Machine::new(PROBE_MEMORY.max(boot_params::e820_map(PROBE_MEMORY)[2].addr + (1 << 20)))
            .map_err(|e: MachineError| e.to_string())?;
    let mut vcpu = machine.create_vcpu(0, 1).map_err(|e| e.to_string())?;
    let base = time_loop(&machine, &mut vcpu, 1)?;
    let mut iterations = 1000u32;
    loop {
        // Grow until the loop itself, not the entry and exit around it, takes the time:
        // under emulation one VM entry can cost more than thousands of iterations.
        let looped = time_loop(&machine, &mut vcpu, iterations)?.saturating_sub(base);
        if looped >= MIN_MEASURED_TIME || iterations >= MAX_LOOP {
            let secs = looped.as_secs_f64().max(1e-9);
            return Ok(2.0 * f64::from(iterations) / secs / 1e6);
        }
        iterations = iterations.saturating_mul(8).min(MAX_LOOP);
    }
}

fn cpu_virtualization_flag() -> Option<&'static str> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    if has("vmx") {
        Some("vmx")
    } else if has("svm") {
        Some("svm")
    } else {
        None
    }
}

fn loaded_kvm_modules() -> Vec<String> {
    ["kvm_intel", "kvm_amd", "kvm_pvm", "kvm"]
        .iter()
        .filter(|m| std::path::Path::new("/sys/module").join(m).exists())
        .map(|m| m.to_string())
        .collect()
}

pub fn diagnose() -> Report {
    let modules = loaded_kvm_modules();
    let virtualization = if modules.iter().any(|m| m == "kvm_pvm") {
        "pvm".to_string()
    } else {
        cpu_virtualization_flag().unwrap_or("none").to_string()
    };
    let kvm = open_kvm();
    let (api, capabilities) = match &kvm {
        Ok(k) => (
            Some(k.get_api_version()),
            REQUIRED_CAPS
                .iter()
                .chain(
                    [
                        (Cap::ImmediateExit, "immediate exit"),
                        (Cap::TscDeadlineTimer, "TSC deadline timer"),
                    ]
                    .iter(),
                )
                .map(|(cap, name)| (name.to_string(), k.check_extension(*cap)))
                .collect(),
        ),
        Err(_) => (None, Vec::new()),
    };
    let mips = match &kvm {
        Ok(_) => measure_mips(),
        Err(e) => Err(e.to_string()),
    };
    let (linux_guests_boot, reason) = match (&mips, virtualization.as_str()) {
        (Err(e), _) => (false, format!("cannot run a guest: {e}")),
        (Ok(m), "pvm") if *m < MIN_LINUX_MIPS => (
            false,
            format!("/dev/kvm is PVM: unmodified guest kernel code is emulated at {m:.1} MIPS, too slow for Linux to boot"),
        ),
        (Ok(m), _) if *m < MIN_LINUX_MIPS => (
            false,
            format!("guest code runs at {m:.1} MIPS (below {MIN_LINUX_MIPS}): no hardware virtualization"),
        ),
        (Ok(m), v) => (true, format!("hardware virtualization ({v}), guest runs at {m:.0} MIPS")),
    };
    let (linux_guests_boot_emulated, emulated_reason) = emulated_kvm_host();
    Report {
        linux_guests_boot_emulated,
        emulated_reason,
        kvm_api_version: api,
        capabilities,
        virtualization,
        kvm_modules: modules,
        guest_mips: mips.ok(),
        linux_guests_boot,
        reason,
    }
}

/// QEMU binary for the emulated KVM host (tests/nested/run honours the same variable).
const NESTED_QEMU_VAR: &str = "VMM_NESTED_QEMU";

/// Whether tests/nested/run can start an emulated KVM host here: it needs only QEMU's
/// x86 system emulator, whose TCG emulates SVM with nested paging (`-cpu EPYC`).
fn emulated_kvm_host() -> (bool, String) {
    let qemu = std::env::var_os(NESTED_QEMU_VAR).unwrap_or_else(|| "qemu-system-x86_64".into());
    match find_program(std::path::Path::new(&qemu)) {
        Some(path) => (
            true,
            format!(
                "in the emulated KVM host of tests/nested/run ({} emulating an AMD CPU with SVM, kvm_amd inside)",
                path.display()
            ),
        ),
        None => (
            false,
            format!(
                "{} is not installed (apt-get install qemu-system-x86)",
                qemu.to_string_lossy()
            ),
        ),
    }
}

/// `program` itself when it has a slash, else its first match on PATH.
fn find_program(program: &std::path::Path) -> Option<std::path::PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kvm_api_version {
            Some(v) => writeln!(f, "KVM API version:   {v}")?,
            None => writeln!(
                f,
                "KVM API version:   unavailable (/dev/kvm cannot be opened)"
            )?,
        }
        for (name, ok) in &self.capabilities {
            writeln!(f, "  {:<20} {}", name, if *ok { "yes" } else { "NO" })?;
        }
        writeln!(f, "virtualization:    {}", self.virtualization)?;
        writeln!(f, "KVM modules:       {}", self.kvm_modules.join(", "))?;
        match self.guest_mips {
            Some(m) => writeln!(f, "guest speed:       {m:.1} MIPS (measured)")?,
            None => writeln!(f, "guest speed:       not measured")?,
        }
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "Linux guests boot: {}: {}",
            yes_no(self.linux_guests_boot),
            self.reason
        )?;
        writeln!(
            f,
            "  under emulation: {}: {}",
            yes_no(self.linux_guests_boot_emulated),
            self.emulated_reason
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_or_by_their_own_path() {
        assert!(find_program(std::path::Path::new("sh")).is_some());
        assert!(find_program(std::path::Path::new("/bin/sh")).is_some());
        assert!(find_program(std::path::Path::new("no-such-program-here")).is_none());
        assert!(find_program(std::path::Path::new("/no/such/program")).is_none());
    }

    #[test]
    fn probe_loops_back_to_the_decrement() {
        let code = probe_code(5);
        assert_eq!(code[0], 0xb9);
        assert_eq!(u32::from_le_bytes(code[1..5].try_into().unwrap()), 5);
        // jnz rel8 = -4 lands on `dec ecx` right after the mov.
        assert_eq!(&code[5..9], &[0xff, 0xc9, 0x75, 0xfc]);
    }
}
