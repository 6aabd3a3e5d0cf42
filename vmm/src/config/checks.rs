//! Checks of the files and directories a configuration names: they exist, are of the
//! right kind, and hold what they should, before any VM is created.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use devices::disk::QCOW2_MAGIC;

use super::ConfigError;

pub(super) fn check_socket_dir(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(ConfigError::SocketDir {
            what,
            path: path.to_path_buf(),
            dir,
        })
    }
}

fn bad(what: &'static str, path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What `check_file` learned of a file.
pub(super) struct Checked {
    /// Starts with the qcow2 magic: its size is not the disk's.
    pub qcow2: bool,
}

/// Checks a file can be opened and is non-empty; disks must also be whole sectors.
pub(super) fn check_file(
    what: &'static str,
    path: &Path,
    disk: bool,
) -> Result<Checked, ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| bad(what, path, e.to_string()))?;
    let kind = meta.file_type();
    // Opening a FIFO would wait for a writer forever, and /dev/zero has no end.
    if !(kind.is_file() || (disk && kind.is_block_device())) {
        let expected = if disk {
            "a regular file or a block device"
        } else {
            "a regular file"
        };
        return Err(bad(
            what,
            path,
            format!("is {}, not {expected}", vmm_protocol::file_kind_name(kind)),
        ));
    }
    let file = File::open(path).map_err(|e| bad(what, path, e.to_string()))?;
    // The end offset sizes block devices as well as files (st_size is 0 for a device).
    let size = (&file)
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| bad(what, path, e.to_string()))?;
    if size == 0 {
        return Err(bad(what, path, "is empty"));
    }
    let qcow2 = disk && {
        let mut magic = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
            && magic == QCOW2_MAGIC
    };
    if disk && !qcow2 && size % 512 != 0 {
        return Err(bad(
            what,
            path,
            format!("size {size} is not a multiple of 512"),
        ));
    }
    Ok(Checked { qcow2 })
}

/// ELF's e_machine for x86-64.
pub(super) const EM_X86_64: u16 = 62;

/// The kernel must be an x86-64 ELF64 image or a bzImage; anything else fails here, not
/// in the VM.
pub(super) fn check_kernel(path: &Path) -> Result<(), ConfigError> {
    check_file("kernel", path, false)?;
    let mut head = [0u8; 0x210];
    let mut f = File::open(path).map_err(|e| bad("kernel", path, e.to_string()))?;
    let n = read_up_to(&mut f, &mut head).map_err(|e| bad("kernel", path, e.to_string()))?;
    let head = &head[..n];
    let is_elf64 = head.len() > 4 && &head[..4] == b"\x7fELF" && head[4] == 2;
    let is_bzimage = head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS";
    if is_elf64 {
        let machine = head.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if machine != Some(EM_X86_64) {
            return Err(bad(
                "kernel",
                path,
                format!(
                    "is an ELF for machine {}, not x86-64 ({EM_X86_64})",
                    machine.unwrap_or(0)
                ),
            ));
        }
    }
    if is_elf64 || is_bzimage {
        Ok(())
    } else {
        Err(bad(
            "kernel",
            path,
            "is neither an ELF64 vmlinux nor a bzImage",
        ))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Physical RAM of this host in MiB.
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysconf only reads system parameters.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page_size <= 0 {
        return u64::MAX >> 20;
    }
    (pages as u64 * page_size as u64) >> 20
}

/// The entrypoint: a non-empty argv, and only with the API (the agent starts it).
pub fn entrypoint(
    argv: Option<Vec<String>>,
    keep_running: bool,
    has_api: bool,
) -> Result<Option<crate::sandbox::entrypoint::Entrypoint>, ConfigError> {
    let Some(argv) = argv else {
        return match keep_running {
            true => Err(ConfigError::Entrypoint("keep_running needs an entrypoint")),
            false => Ok(None),
        };
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err(ConfigError::Entrypoint("the command is empty"));
    }
    if !has_api {
        return Err(ConfigError::Entrypoint(
            "the guest agent starts it: add --api-sock (or [api] socket)",
        ));
    }
    Ok(Some(crate::sandbox::entrypoint::Entrypoint {
        argv,
        keep_running,
    }))
}
