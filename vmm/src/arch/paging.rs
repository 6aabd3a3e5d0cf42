//! Identity page tables for the 64-bit boot protocol: the first 4 GiB with 2 MiB pages,
//! so a kernel (or a test guest) reaches both RAM and the MMIO hole at entry.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IDENTITY_MAPPED_GIB, PDPT_ADDR, PD_ADDR, PML4_ADDR};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE_PAGE: u64 = 1 << 7;

/// Writes the tables; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPT_ADDR | PRESENT | WRITABLE, GuestAddress(PML4_ADDR))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | PRESENT | WRITABLE, GuestAddress(PDPT_ADDR + gib * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| {
                (((gib << 30) + (i << 21)) | PRESENT | WRITABLE | HUGE_PAGE).to_le_bytes()
            })
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> u64 {
        let entry = |table: u64, index: u64| -> u64 {
            mem.read_obj::<u64>(GuestAddress((table & !0xfff) + index * 8))
                .unwrap()
        };
        let pml4e = entry(cr3, (va >> 39) & 0x1ff);
        let pdpte = entry(pml4e, (va >> 30) & 0x1ff);
        let pde = entry(pdpte, (va >> 21) & 0x1ff);
        assert_eq!(pde & HUGE_PAGE, HUGE_PAGE);
        (pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff)
    }

    #[test]
    fn maps_ram_and_the_mmio_hole_one_to_one() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        for va in [
            0x1000,
            0x10_0000,
            0x3fff_ffff,
            0xd000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va & !0xfff), va & !0xfff);
        }
    }
}
