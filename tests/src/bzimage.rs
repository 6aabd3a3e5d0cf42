//! Wraps a flat protected-mode payload (linked at 0x100000, 64-bit entry at +0x200)
//! in a bzImage: boot sector + one setup sector carrying the Linux boot-protocol
//! setup header (Documentation/arch/x86/boot.rst), then the payload.
//!
//! Shared with build.rs through `#[path]`, so it uses std only.

/// Number of 512-byte setup sectors after the boot sector (the header ends at 0x26c).
pub const SETUP_SECTS: u8 = 1;
/// File offset of the protected-mode payload.
pub const PAYLOAD_OFFSET: usize = (SETUP_SECTS as usize + 1) * 512;
/// Where the payload is loaded; its 64-bit entry is at `LOAD_ADDR + 0x200`.
pub const LOAD_ADDR: u32 = 0x10_0000;
/// Boot protocol 2.15.
pub const VERSION: u16 = 0x020f;
/// `loadflags`: LOADED_HIGH (protected-mode code at 0x100000).
pub const LOADED_HIGH: u8 = 1;
/// `xloadflags`: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G.
pub const XLOADFLAGS: u16 = 0b11;

/// Setup-header field offsets from the start of the image.
pub mod off {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const KERNEL_VERSION: usize = 0x20e;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const MIN_ALIGNMENT: usize = 0x235;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// First byte after the 2.15 header: a real-mode `cli; hlt` loop.
    pub const REAL_MODE_STUB: usize = 0x26c;
    /// The kernel version string (`kernel_version` points here - 0x200).
    pub const VERSION_STRING: usize = 0x300;
}

const VERSION_STRING: &[u8] = b"tiny-guest (vmm tests)\0";

/// Builds the image. `init_size` is the memory the payload needs from its load
/// address on (its image plus .bss and stack).
pub fn build(payload: &[u8], init_size: u32) -> Vec<u8> {
    let mut img = vec![0u8; PAYLOAD_OFFSET];
    let mut put = |at: usize, bytes: &[u8]| img[at..at + bytes.len()].copy_from_slice(bytes);
    let syssize = u32::try_from(payload.len().div_ceil(16)).expect("payload under 64 GiB");
    put(off::SETUP_SECTS, &[SETUP_SECTS]);
    put(off::SYSSIZE, &syssize.to_le_bytes());
    put(off::BOOT_FLAG, &0xaa55u16.to_le_bytes());
    // Real-mode entry: a short jump over the header to a halt loop; only the
    // 64-bit entry is supported.
    let jump = u8::try_from(off::REAL_MODE_STUB - (off::JUMP + 2)).expect("short jump");
    put(off::JUMP, &[0xeb, jump]);
    put(off::HEADER, b"HdrS");
    put(off::VERSION, &VERSION.to_le_bytes());
    let kver = u16::try_from(off::VERSION_STRING - 0x200).expect("small offset");
    put(off::KERNEL_VERSION, &kver.to_le_bytes());
    put(off::LOADFLAGS, &[LOADED_HIGH]);
    put(off::CODE32_START, &LOAD_ADDR.to_le_bytes());
    put(off::INITRD_ADDR_MAX, &0x7fff_ffffu32.to_le_bytes());
    put(off::KERNEL_ALIGNMENT, &0x20_0000u32.to_le_bytes());
    put(off::RELOCATABLE_KERNEL, &[0]);
    put(off::MIN_ALIGNMENT, &[21]);
    put(off::XLOADFLAGS, &XLOADFLAGS.to_le_bytes());
    put(off::CMDLINE_SIZE, &2047u32.to_le_bytes());
    put(off::PREF_ADDRESS, &u64::from(LOAD_ADDR).to_le_bytes());
    put(off::INIT_SIZE, &init_size.to_le_bytes());
    put(off::REAL_MODE_STUB, &[0xfa, 0xf4, 0xeb, 0xfd]); // cli; 1: hlt; jmp 1b
    put(off::VERSION_STRING, VERSION_STRING);
    img.extend_from_slice(payload);
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn header_fields_match_the_boot_protocol() {
        let img = build(&[0x90; 1000], 0x40_0000);
        assert_eq!(img[off::SETUP_SECTS], 1);
        assert_eq!(u32_at(&img, off::SYSSIZE), 63); // ceil(1000 / 16)
        assert_eq!(u16_at(&img, off::BOOT_FLAG), 0xaa55);
        assert_eq!(&img[off::HEADER..off::HEADER + 4], b"HdrS");
        assert_eq!(u16_at(&img, off::VERSION), 0x020f);
        assert_eq!(img[off::LOADFLAGS] & 1, 1);
        assert_eq!(u32_at(&img, off::CODE32_START), 0x10_0000);
        assert_eq!(u32_at(&img, off::INITRD_ADDR_MAX), 0x7fff_ffff);
        assert_eq!(u32_at(&img, off::KERNEL_ALIGNMENT), 0x20_0000);
        assert_eq!(img[off::RELOCATABLE_KERNEL], 0);
        assert_eq!(u16_at(&img, off::XLOADFLAGS), 0b11);
        assert_eq!(u32_at(&img, off::CMDLINE_SIZE), 2047);
        assert_eq!(u32_at(&img, off::PREF_ADDRESS), 0x10_0000);
        assert_eq!(u32_at(&img, off::PREF_ADDRESS + 4), 0);
        assert_eq!(u32_at(&img, off::INIT_SIZE), 0x40_0000);
    }

    #[test]
    fn payload_follows_the_setup_sectors() {
        let payload: Vec<u8> = (0..=255).collect();
        let img = build(&payload, 0x1000);
        assert_eq!(img.len(), 1024 + 256);
        assert_eq!(&img[PAYLOAD_OFFSET..], &payload[..]);
        // setup_sects counts the sectors after the boot sector.
        assert_eq!(
            (usize::from(img[off::SETUP_SECTS]) + 1) * 512,
            PAYLOAD_OFFSET
        );
    }

    #[test]
    fn real_mode_jump_lands_on_the_stub_and_version_string_is_found() {
        let img = build(&[], 0x1000);
        let target = off::JUMP + 2 + usize::from(img[off::JUMP + 1]);
        assert_eq!(target, off::REAL_MODE_STUB);
        assert_eq!(img[target], 0xfa);
        let kver = usize::from(u16_at(&img, off::KERNEL_VERSION)) + 0x200;
        assert!(img[kver..].starts_with(b"tiny-guest"));
    }
}
