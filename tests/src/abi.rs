//! The guest ABI as docs/guest-abi.md states it, written down independently of the
//! VMM's own constants so the tests check the document, not the implementation.

pub const ZERO_PAGE: u64 = 0x7000;
pub const INITIAL_RSP: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const CMDLINE: u64 = 0x20000;
pub const MP_TABLE: u64 = 0x9fc00;
pub const KERNEL_START: u64 = 0x10_0000;
pub const MMIO_HOLE: u64 = 0xc000_0000;
pub const HIGH_RAM: u64 = 0x1_0000_0000;
pub const CODE64_SELECTOR: u64 = 0x08;
pub const DATA_SELECTOR: u64 = 0x10;
pub const LAPIC: u64 = 0xfee0_0000;
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// virtio-mmio device `i`: its window and IRQ.
pub fn virtio_slot(i: u64) -> (u64, u64) {
    (0xd000_0000 + i * 0x1000, 5 + i)
}

/// The `virtio_mmio.device=` token of device `i`.
pub fn virtio_token(i: u64) -> String {
    let (addr, irq) = virtio_slot(i);
    format!("virtio_mmio.device=4K@0x{addr:x}:{irq}")
}

/// One e820 entry: (address, size, type).
pub type E820Entry = (u64, u64, u32);

/// The e820 table for a guest with `mem` bytes of RAM.
pub fn expected_e820(mem: u64) -> Vec<E820Entry> {
    let mut v = vec![
        (0, MP_TABLE, E820_RAM),
        (MP_TABLE, 0xa0000 - MP_TABLE, E820_RESERVED),
        (KERNEL_START, mem.min(MMIO_HOLE) - KERNEL_START, E820_RAM),
    ];
    if mem > MMIO_HOLE {
        v.push((HIGH_RAM, mem - MMIO_HOLE, E820_RAM));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_no_high_ram() {
        assert_eq!(
            expected_e820(1 << 30),
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0x10_0000, 0x3ff0_0000, 1)
            ]
        );
    }

    #[test]
    fn large_guest_keeps_the_hole_and_continues_above_4g() {
        let e = expected_e820(4 << 30);
        assert_eq!(e[2], (0x10_0000, 0xc000_0000 - 0x10_0000, 1));
        assert_eq!(e[3], (0x1_0000_0000, 0x4000_0000, 1));
        let ram: u64 = e.iter().filter(|x| x.2 == 1).map(|x| x.1).sum();
        assert_eq!(ram, (4 << 30) - 0x400 - 0x60000);
    }

    #[test]
    fn virtio_tokens_follow_the_slots() {
        assert_eq!(virtio_token(0), "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(virtio_token(2), "virtio_mmio.device=4K@0xd0002000:7");
    }
}
