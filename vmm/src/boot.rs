//! Puts the kernel, initrd and command line in guest memory and writes the boot
//! structures; returns where and how the boot vCPU enters.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::boot_params::{write_pvh_start_info, write_zero_page, InitrdRange};
use crate::arch::layout::{low_ram_end, CMDLINE_ADDR, HIMEM_START};
use crate::arch::regs::EntryMode;
use crate::arch::{acpi, mptable, paging};

/// A bzImage's 64-bit entry point is 0x200 past its protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Setup header `xloadflags` bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;
/// Default `initrd_addr_max` for boot protocol versions that do not state it.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {message}")]
    Kernel { path: PathBuf, message: String },
    #[error("bzImage {0} has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64)")]
    No64BitEntry(PathBuf),
    #[error("initrd {path} ({size} bytes) does not fit below {limit:#x} after the kernel")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot write {0} to guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
}

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub mode: EntryMode,
    pub rip: u64,
}

pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_size: u64,
    pub cpus: u8,
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Loads everything the guest needs before its first instruction.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<Entry, BootError> {
    let mut kernel = open("kernel", spec.kernel)?;
    let kernel_err = |message: String| BootError::Kernel {
        path: spec.kernel.to_path_buf(),
        message,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    // An ELF is tried first; BzImage refuses ELF files and vice versa.
    let (loaded, is_bzimage) = match Elf::load(mem, None, &mut kernel, himem) {
        Ok(l) => (l, false),
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            let l = BzImage::load(mem, None, &mut kernel, himem)
                .map_err(|e| kernel_err(e.to_string()))?;
            (l, true)
        }
        Err(e) => return Err(kernel_err(e.to_string())),
    };

    let initrd_limit = loaded
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let initrd = match spec.initrd {
        Some(path) => Some(load_initrd(
            mem,
            path,
            spec.mem_size,
            loaded.kernel_end,
            initrd_limit,
        )?),
        None => None,
    };

    let mut cmdline = spec.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| BootError::Memory("the command line", e))?;
    mptable::write(mem, spec.cpus)?;
    let rsdp =
        acpi::write_tables(mem, spec.cpus).map_err(|e| BootError::Memory("the ACPI tables", e))?;

    let entry = match (is_bzimage, loaded.pvh_boot_cap) {
        (false, PvhBootCapability::PvhEntryPresent(pvh)) => {
            let start_info = write_pvh_start_info(mem, spec.mem_size, initrd, rsdp)
                .map_err(|e| BootError::Memory("hvm_start_info", e))?;
            Entry {
                mode: EntryMode::Pvh { start_info },
                rip: pvh.raw_value(),
            }
        }
        _ => {
            let header = loaded.setup_header;
            if let Some(h) = header {
                if h.xloadflags & XLF_KERNEL_64 == 0 {
                    return Err(BootError::No64BitEntry(spec.kernel.to_path_buf()));
                }
            }
            write_zero_page(mem, spec.mem_size, header, spec.cmdline.len(), initrd, rsdp)
                .map_err(|e| BootError::Memory("the zero page", e))?;
            let cr3 = paging::write_identity_map(mem)
                .map_err(|e| BootError::Memory("the page tables", e))?;
            let rip = if is_bzimage {
                loaded.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET
            } else {
                loaded.kernel_load.raw_value()
            };
            Entry {
                mode: EntryMode::Long64 { cr3 },
                rip,
            }
        }
    };
    Ok(entry)
}

/// Places the initrd page-aligned at the top of low RAM, under the kernel's limit.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdRange, BootError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let top = low_ram_end(mem_size).min(limit.saturating_add(1));
    let too_big = || BootError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::Memory("the initrd", e))?;
    Ok(InitrdRange { addr, size })
}
