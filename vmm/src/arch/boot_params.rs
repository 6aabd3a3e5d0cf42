//! What the kernel reads at entry: the e820 memory map, and either the Linux zero page
//! (64-bit boot protocol) or the PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    low_ram_end, CMDLINE_ADDR, CMDLINE_MAX_SIZE, EBDA_END, EBDA_START, HIMEM_START, MMIO_HOLE_END,
    MMIO_HOLE_START, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, ZERO_PAGE_ADDR,
};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map for a guest of `mem_size` bytes (see docs/guest-abi.md).
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: EBDA_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low_ram_end(mem_size) - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    if mem_size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: mem_size - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Initrd placement handed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRange {
    pub addr: u64,
    pub size: u64,
}

/// Writes the zero page. `header` is the bzImage's setup header, if booting one.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdRange>,
    rsdp: u64,
) -> Result<(), GuestMemoryError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len.min(CMDLINE_MAX_SIZE - 1) as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = rsdp;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
}

/// Writes `hvm_start_info` and its memory map for a PVH entry; returns its address.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<InitrdRange>,
    rsdp: u64,
) -> Result<u64, GuestMemoryError> {
    let map = e820_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        rsdp_paddr: rsdp,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        // One module: the initrd, described right after the memory map.
        let modlist = PVH_MEMMAP_ADDR + 0x100;
        let module = linux_loader::loader::elf::start_info::hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist))?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn e820_keeps_the_mmio_hole() {
        let small = e820_map(1024 << 20);
        assert_eq!(small.len(), 3);
        assert_eq!(
            small[2],
            E820Entry {
                addr: 0x10_0000,
                size: (1024 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
        let big = e820_map(4096 << 20);
        assert_eq!(big[2].addr + big[2].size, 0xc000_0000);
        assert_eq!(
            big[3],
            E820Entry {
                addr: 1 << 32,
                size: 1 << 30,
                kind: E820_RAM
            }
        );
        let ram: u64 = big
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4096 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let m = mem();
        let initrd = InitrdRange {
            addr: 0x3000_0000,
            size: 4096,
        };
        write_zero_page(&m, 4096 << 20, None, 42, Some(initrd), 0xe0000).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x3000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 4096);
        assert_eq!(p.e820_entries, 4);
        assert_eq!({ p.e820_table[3].addr }, 1 << 32);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
    }

    #[test]
    fn pvh_start_info_has_magic_and_map() {
        let m = mem();
        let at = write_pvh_start_info(&m, 512 << 20, None, 0xe0000).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.memmap_entries, 3);
        let e: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!((e.addr, e.type_), (HIMEM_START, E820_RAM));
    }
}
