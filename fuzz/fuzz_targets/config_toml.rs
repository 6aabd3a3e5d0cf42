//! The `vmm run --config` file: TOML parsing into `FileConfig`, then the whole validation
//! of `VmConfig::build`, against a directory with a kernel, an initrd and disk images
//! (relative paths in the file are relative to it). Comment lines `#drive VALUE` are also
//! passed as `--drive VALUE` flags.
//!
//! Oracles: an accepted configuration fits the limits it was checked against.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::arch::layout::{CMDLINE_MAX_SIZE, MAX_VCPUS};
use vmm::config::{
    parse_drive_flag, FileConfig, Overrides, VmConfig, MAX_VIRTIO_DEVICES, MIN_MEMORY_MIB,
};

/// A directory with the files a config names.
fn fixture() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = vmm_fuzz::fixture_dir("config_toml");
        // An x86-64 ELF64 header is all the check reads of a kernel.
        let mut elf = vec![0u8; 0x210];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        std::fs::write(dir.join("vmlinux"), &elf).expect("fixture");
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(dir.join("bzImage"), &bz).expect("fixture");
        std::fs::write(dir.join("initrd.img"), b"initrd").expect("fixture");
        std::fs::write(dir.join("rootfs.ext4"), vec![0u8; 4096]).expect("fixture");
        std::fs::write(dir.join("data.img"), vec![0u8; 1024]).expect("fixture");
        std::fs::write(dir.join("odd.img"), vec![0u8; 1000]).expect("fixture");
        std::fs::write(dir.join("empty.img"), b"").expect("fixture");
        std::fs::create_dir_all(dir.join("run")).expect("fixture");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = fixture();
    let path = dir.join("sandbox.toml");
    let file = match FileConfig::parse(text, &path) {
        Ok(file) => file,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut flags = Overrides::default();
    for value in text.lines().filter_map(|l| l.strip_prefix("#drive ")) {
        match parse_drive_flag(value) {
            // Flags are relative to the working directory; the fixture stands in for it.
            Ok(mut spec) => {
                spec.path = dir.join(spec.path);
                flags.drives.push(spec);
            }
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
    }
    match VmConfig::build(file, flags) {
        Ok(config) => {
            let cmdline =
                config.kernel_cmdline(&vmm::virtio_slots::tokens(config.virtio_device_count()));
            assert!(
                cmdline.len() < CMDLINE_MAX_SIZE,
                "command line of {} bytes",
                cmdline.len()
            );
            assert!(!cmdline.contains('\0'));
            assert!((1..=MAX_VCPUS).contains(&config.cpus));
            assert!(config.memory_mib >= MIN_MEMORY_MIB);
            assert!(config.virtio_device_count() <= MAX_VIRTIO_DEVICES);
            for d in &config.drives {
                assert!(!d.id.is_empty() && d.id.len() <= 20, "drive id {:?}", d.id);
            }
            if let Some(v) = &config.vsock {
                assert!((3..=u64::from(u32::MAX)).contains(&v.guest_cid));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
