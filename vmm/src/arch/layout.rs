//! Guest physical memory layout. docs/guest-abi.md is the guest-facing description of
//! these numbers; keep the two in step.

/// Global descriptor table.
pub const GDT_ADDR: u64 = 0x500;
/// Interrupt descriptor table (empty: the guest installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info` and its memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer, below the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, then one page directory per GiB.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// GiB of address space identity-mapped at entry (RAM below 3 GiB plus the MMIO hole).
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// x86 Linux's COMMAND_LINE_SIZE, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The EBDA: the MP table lives here, reserved in e820 up to the legacy video hole.
pub const EBDA_START: u64 = 0x9fc00;
pub const EBDA_END: u64 = 0xa0000;
/// ACPI tables (RSDP first), in the BIOS area Linux scans for the RSDP.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
pub const ACPI_TABLES_END: u64 = 0xe_1000;
/// Kernels load at 1 MiB ("high memory").
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO hole: RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio windows, one 4 KiB page per device.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First GSI of virtio-mmio devices (0-4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last GSI the IOAPIC routes.
pub const MAX_IRQ: u32 = 23;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// COM1, the i8042 and the CMOS clock on port I/O.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const CMOS_PORT: u16 = 0x70;
/// ACPI PM1a event block (4 ports) and control block (2 ports).
pub const ACPI_PM_PORT: u16 = 0x600;
/// The SCI line the FADT names. Nothing raises it; Linux installs a handler there.
pub const ACPI_SCI_IRQ: u16 = 9;
/// Most vCPUs: the MP table must fit the 1 KiB EBDA.
pub const MAX_VCPUS: u8 = 32;

// The fixed boot structures must not overlap: checked at compile time.
const _: () = {
    assert!(PD_ADDR + IDENTITY_MAPPED_GIB * 0x1000 <= CMDLINE_ADDR);
    assert!(BOOT_STACK_POINTER < PML4_ADDR);
    assert!(ZERO_PAGE_ADDR + 0x1000 <= BOOT_STACK_POINTER);
    assert!(PVH_MEMMAP_ADDR + 0x100 + 32 <= ZERO_PAGE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
};

/// RAM ranges `(start, len)` for a guest of `mem_size` bytes, skipping the MMIO hole.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

/// End of the RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_hole() {
        assert_eq!(ram_ranges(1 << 30), vec![(0, 1 << 30)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)]
        );
        assert_eq!(low_ram_end(4 << 30), 0xc000_0000);
    }
}
