//! x86_64 machine description: memory layout and the boot structures the guest reads.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
