//! Initial vCPU state for the two entry protocols.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{boot_gdt, segment, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, ZERO_PAGE_ADDR};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const RFLAGS_RESERVED: u64 = 0x2;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;

/// How the guest is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, identity paging, rsi = zero page.
    Long64 { cr3: u64 },
    /// PVH: 32-bit protected mode, paging off, ebx = hvm_start_info.
    Pvh { start_info: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the GDT to guest memory")]
    Gdt(#[source] vm_memory::GuestMemoryError),
    #[error("KVM refused the {what} registers")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted {0} of the boot MSRs")]
    Msrs(usize),
}

/// Writes the GDT and IDT the boot CPU starts with.
pub fn write_descriptor_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    let gdt = boot_gdt(matches!(mode, EntryMode::Long64 { .. }));
    mem.write_obj(gdt, GuestAddress(GDT_ADDR))
        .map_err(RegsError::Gdt)?;
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(RegsError::Gdt)
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Sets the boot CPU's registers for `mode`, jumping to `entry`.
pub fn setup_boot_cpu(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm_err("special"))?;
    let long_mode = matches!(mode, EntryMode::Long64 { .. });
    let gdt = boot_gdt(long_mode);
    let code = segment(gdt[1], CODE_SELECTOR);
    let data = segment(gdt[2], DATA_SELECTOR);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], TSS_SELECTOR);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Long64 { cr3 } => {
            sregs.cr3 = cr3;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh { start_info } => {
            sregs.cr3 = 0;
            regs.rbx = start_info;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm_err("special"))?;
    vcpu.set_regs(&regs).map_err(kvm_err("general"))?;
    Ok(())
}

/// FPU and MSR state every vCPU starts with (the SDM's power-on values where it matters).
pub fn setup_fpu_and_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("FPU"))?;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs(0))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("MSR"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs(set));
    }
    Ok(())
}

/// Local APIC: LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as on a PC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_MODE_EXTINT: u32 = 0x7;
    const DELIVERY_MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("local APIC"))?;
    for (reg, mode) in [
        (APIC_LVT0, DELIVERY_MODE_EXTINT),
        (APIC_LVT1, DELIVERY_MODE_NMI),
    ] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm_err("local APIC"))
}
