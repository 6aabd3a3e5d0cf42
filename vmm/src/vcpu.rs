//! One thread per vCPU: KVM_RUN, port and MMIO exits dispatched to the buses, and the
//! exits that end the VM reported to the main thread.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::bus::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::exit::ExitReason;
use crate::seccomp::{Filters, ThreadKind};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// The signal that knocks a vCPU out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

/// Installs the kick handler; once per process, before any vCPU thread starts.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), kick_handler)
}

/// A request that a vCPU log its registers (SIGUSR1's report on a guest that seems stuck):
/// its thread is kicked out of KVM_RUN and reads them itself, as only it may.
#[derive(Debug, Default)]
pub struct RegisterReport {
    wanted: AtomicBool,
    /// The vCPU thread's id, once it runs: the kick goes to it.
    tid: AtomicI32,
}

impl RegisterReport {
    pub fn request(&self) {
        self.wanted.store(true, Ordering::Release);
        let tid = self.tid.load(Ordering::Acquire);
        if tid > 0 {
            // SAFETY: tgkill takes plain integers and reaches only threads of this
            // process. Once the vCPU thread has ended (the VM is stopping) it fails with
            // ESRCH, or at worst interrupts a syscall of another of our threads that took
            // over the id; the kick handler itself does nothing.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal()) };
        }
    }
}

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Sender<ExitReason>,
    pub stop: Arc<AtomicBool>,
    pub seccomp: Arc<Filters>,
    pub report: Arc<RegisterReport>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// Interrupts KVM_RUN so the thread sees the stop flag.
    pub fn kick(&self) {
        if let Err(e) = self.thread.kill(kick_signal()) {
            log::debug!("vcpu kick failed: {e}");
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

impl Vcpu {
    pub fn spawn(self) -> std::io::Result<VcpuHandle> {
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || self.run())?;
        Ok(VcpuHandle { thread })
    }

    fn run(mut self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.report.tid.store(tid, Ordering::Release);
        if let Err(e) = self.seccomp.confine(ThreadKind::Vcpu) {
            let _ = self.exit.send(ExitReason::Vmm(e.to_string()));
            return;
        }
        while !self.stop.load(Ordering::Acquire) {
            if let Some(reason) = self.run_once() {
                // The main thread may be gone already; nothing else to tell.
                let _ = self.exit.send(reason);
                return;
            }
            if self.report.wanted.swap(false, Ordering::AcqRel) {
                log::warn!("vCPU {}: {}", self.index, self.registers());
            }
        }
    }

    /// One KVM_RUN; returns a reason when the VM must end.
    fn run_once(&mut self) -> Option<ExitReason> {
        let cpu = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    log::debug!("vcpu{cpu}: read of unmapped MMIO {addr:#x}");
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    log::debug!("vcpu{cpu}: write to unmapped MMIO {addr:#x}");
                }
            }
            Ok(VcpuExit::Shutdown) => {
                // What the guest's CPU held when it gave up, to tell a guest bug from an
                // emulator's (a wild GS base, a stack at a page edge). KVM on AMD resets
                // the vCPU before it reports the shutdown: then this is the reset state.
                log::error!("vCPU {cpu} triple-faulted with {}", self.registers());
                return Some(ExitReason::TripleFault { cpu });
            }
            Ok(VcpuExit::Hlt) => return Some(ExitReason::PowerOff),
            Ok(VcpuExit::FailEntry(reason, _)) => {
                return Some(ExitReason::FailEntry { cpu, reason })
            }
            Ok(VcpuExit::InternalError) => {
                let details = self.internal_error_details();
                return Some(ExitReason::InternalError { cpu, details });
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic("KVM crash event".into()),
                    other => ExitReason::Vmm(format!("vCPU {cpu}: unknown system event {other}")),
                });
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                return Some(ExitReason::Vmm(format!(
                    "vCPU {cpu}: unexpected KVM exit {other:?}"
                )));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Some(ExitReason::Vmm(format!("vCPU {cpu}: KVM_RUN failed: {e}"))),
        }
        None
    }

    /// KVM's suberror and the registers at the failure, for the one-line report.
    fn internal_error_details(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM set exit_reason to KVM_EXIT_INTERNAL_ERROR, which makes `internal`
        // the active member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..ndata]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        format!(
            "suberror {} data [{}] {}",
            internal.suberror,
            data.join(" "),
            self.registers()
        )
    }

    /// The vCPU's main registers on one line.
    fn registers(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
                 efer={:#x} cs={:#x} gs.base={:#x} fs.base={:#x} tr.base={:#x} \
                 idt={:#x}/{:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.gs.base,
                s.fs.base,
                s.tr.base,
                s.idt.base,
                s.idt.limit
            ),
            _ => "registers unavailable".to_string(),
        }
    }
}
