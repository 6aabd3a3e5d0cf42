//! Sandbox configuration: a TOML file and/or command-line flags, merged and validated
//! before any VM is created. Errors name the file, key or flag at fault.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use devices::disk::QCOW2_MAGIC;
use serde::Deserialize;

use crate::arch::layout::{CMDLINE_MAX_SIZE, MAX_VCPUS};
pub use crate::virtio_slots::MAX_VIRTIO_DEVICES;

/// Kernel arguments every guest gets: serial console, reset through the i8042 on reboot,
/// reboot one second after a panic (we report the panic first), no PCI bus to probe.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

pub const DEFAULT_CPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Smallest guest that still fits the boot structures, a kernel and a little heap.
pub const MIN_MEMORY_MIB: u64 = 16;
/// The device ID limit of virtio-blk.
const MAX_DRIVE_ID_LEN: usize = 20;

/// The TOML file, as written by a user. Paths are relative to the file's directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    /// The root disk's writable qcow2 overlay: created on `rootfs` when missing, resumed
    /// when it exists.
    pub overlay: Option<PathBuf>,
    pub cpus: Option<u8>,
    pub memory_mib: Option<u64>,
    pub append: Option<String>,
    #[serde(default)]
    pub drives: Vec<DriveSpec>,
    /// "agent" (the guest agent is PID 1) or "system" (the image's init runs it).
    pub init: Option<InitMode>,
    pub api: Option<ApiSection>,
    pub vsock: Option<VsockSection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// The guest agent is PID 1 (`init=/sbin/vmm-agent`).
    #[default]
    Agent,
    /// The image's own init (e.g. systemd) boots and starts the agent as a service.
    System,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub socket: Option<PathBuf>,
    pub lifetime_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSection {
    pub uds_path: Option<PathBuf>,
    pub guest_cid: Option<u64>,
}

/// The virtio-vsock device: guest CID and the host Unix socket of the hybrid convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// The sandbox API served by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSpec {
    pub socket: PathBuf,
    pub lifetime: Option<std::time::Duration>,
    pub ready_fd: Option<i32>,
}

/// First CID a guest may have (0-2 are reserved: hypervisor, loopback, host).
pub const MIN_GUEST_CID: u64 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveSpec {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    pub id: Option<String>,
    /// A writable qcow2 overlay on `path`, as for the root disk.
    pub overlay: Option<PathBuf>,
}

/// Where a drive's writes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// Into the image itself (or nowhere, read-only).
    None,
    /// Into this qcow2 overlay on the image: created when missing, resumed when present.
    At(PathBuf),
    /// Into a new overlay in a temporary directory, deleted when the VM ends: a snapshot
    /// given as the root disk is never written.
    Temporary,
}

/// One virtio-blk drive of a validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The image: the drive's whole content, or the base under its overlay.
    pub path: PathBuf,
    pub read_only: bool,
    /// Returned by GET_ID; the guest sees it in /sys/block/vdX/serial.
    pub id: String,
    pub overlay: Overlay,
}

/// Flags of `vmm run`; each overrides the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
    pub cpus: Option<u8>,
    pub memory_mib: Option<u64>,
    pub append: Option<String>,
    /// `--drive` values, appended after the file's drives.
    pub drives: Vec<DriveSpec>,
    pub init: Option<InitMode>,
    pub api_socket: Option<PathBuf>,
    pub vsock_uds: Option<PathBuf>,
    pub lifetime_secs: Option<u64>,
    pub ready_fd: Option<i32>,
}

/// A validated configuration: every file exists and every size is possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cpus: u8,
    pub memory_mib: u64,
    pub append: String,
    /// The root disk (when given) first, then the other drives in order.
    pub drives: Vec<DriveConfig>,
    pub has_root: bool,
    pub vsock: Option<VsockSpec>,
    pub api: Option<ApiSpec>,
    pub init: InitMode,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no kernel given: pass --kernel PATH or set `kernel` in the config file")]
    NoKernel,
    #[error("{what} {path}: {reason}")]
    BadFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cpus = {0}: must be between 1 and {MAX_VCPUS}")]
    Cpus(u8),
    #[error("memory_mib = {value}: must be between {MIN_MEMORY_MIB} and {max} (this host's RAM)")]
    Memory { value: u64, max: u64 },
    #[error("drive {path}: id {id:?} must be 1 to {MAX_DRIVE_ID_LEN} bytes and unique")]
    DriveId { path: PathBuf, id: String },
    #[error("--drive {0:?}: expected PATH[,ro][,id=NAME][,overlay=PATH]")]
    DriveFlag(String),
    #[error("{what} {path}: the directory {dir} does not exist")]
    SocketDir {
        what: &'static str,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error("vsock guest_cid = {0}: must be at least {MIN_GUEST_CID}")]
    GuestCid(u64),
    #[error("overlay {0} given without a root disk (rootfs) to put it on")]
    OverlayWithoutImage(PathBuf),
    #[error("drive {0}: a read-only drive cannot have an overlay")]
    ReadOnlyOverlay(PathBuf),
    #[error("{0} drives given, at most {MAX_VIRTIO_DEVICES} fit")]
    TooManyDrives(usize),
    #[error("append: contains a NUL byte, where the kernel would cut the command line")]
    AppendNul,
    #[error("append: the kernel command line would be {len} bytes, more than {max}")]
    CmdlineTooLong { len: usize, max: usize },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` as the config file at `path`: errors name `path`, and relative paths
    /// in it are taken relative to `path`'s directory. (`load` without the read; the
    /// config fuzz target calls it directly.)
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.kernel,
            &mut self.initrd,
            &mut self.rootfs,
            &mut self.overlay,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        for d in &mut self.drives {
            d.path = base.join(&d.path);
            if let Some(o) = &mut d.overlay {
                *o = base.join(&*o);
            }
        }
        let sockets = [
            self.api.as_mut().and_then(|a| a.socket.as_mut()),
            self.vsock.as_mut().and_then(|v| v.uds_path.as_mut()),
        ];
        for p in sockets.into_iter().flatten() {
            *p = base.join(&*p);
        }
    }
}

/// toml's messages span lines with a source excerpt; keep the first and the "key" hint.
fn one_line(message: &str) -> String {
    message
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('|'))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Parses `PATH[,ro][,id=NAME][,overlay=PATH]`.
pub fn parse_drive_flag(value: &str) -> Result<DriveSpec, ConfigError> {
    let mut parts = value.split(',');
    let path = parts.next().filter(|p| !p.is_empty());
    let Some(path) = path else {
        return Err(ConfigError::DriveFlag(value.to_string()));
    };
    let mut spec = DriveSpec {
        path: PathBuf::from(path),
        read_only: false,
        id: None,
        overlay: None,
    };
    for part in parts {
        match part.split_once('=') {
            None if part == "ro" => spec.read_only = true,
            None if part == "rw" => spec.read_only = false,
            Some(("id", id)) => spec.id = Some(id.to_string()),
            Some(("overlay", path)) if !path.is_empty() => spec.overlay = Some(path.into()),
            _ => return Err(ConfigError::DriveFlag(value.to_string())),
        }
    }
    Ok(spec)
}

impl VmConfig {
    /// Merges `file` with `flags` (flags win) and validates the result.
    pub fn build(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let kernel = flags.kernel.or(file.kernel).ok_or(ConfigError::NoKernel)?;
        check_kernel(&kernel)?;
        let initrd = flags.initrd.or(file.initrd);
        if let Some(path) = &initrd {
            check_file("initrd", path, false)?;
        }
        let cpus = flags.cpus.or(file.cpus).unwrap_or(DEFAULT_CPUS);
        if cpus == 0 || cpus > MAX_VCPUS {
            return Err(ConfigError::Cpus(cpus));
        }
        let memory_mib = flags
            .memory_mib
            .or(file.memory_mib)
            .unwrap_or(DEFAULT_MEMORY_MIB);
        let max = host_memory_mib();
        if !(MIN_MEMORY_MIB..=max).contains(&memory_mib) {
            return Err(ConfigError::Memory {
                value: memory_mib,
                max,
            });
        }
        let append = flags.append.or(file.append).unwrap_or_default();
        if append.contains('\0') {
            // The kernel would stop reading the command line there.
            return Err(ConfigError::AppendNul);
        }

        let root = flags.rootfs.or(file.rootfs);
        let root_overlay = flags.overlay.or(file.overlay);
        let has_root = root.is_some();
        let mut drives = Vec::new();
        if let Some(path) = root {
            let image = check_file("rootfs", &path, true)?;
            let overlay = match root_overlay {
                Some(at) => Overlay::At(at),
                // A qcow2 root disk is a base or a snapshot: never written.
                None if image.qcow2 => Overlay::Temporary,
                None => Overlay::None,
            };
            drives.push(DriveConfig {
                path,
                read_only: false,
                id: "rootfs".to_string(),
                overlay,
            });
        } else if let Some(at) = root_overlay {
            return Err(ConfigError::OverlayWithoutImage(at));
        }
        for spec in file.drives.into_iter().chain(flags.drives) {
            check_file("drive", &spec.path, true)?;
            if spec.read_only && spec.overlay.is_some() {
                return Err(ConfigError::ReadOnlyOverlay(spec.path));
            }
            // Extra drives are numbered from 1 whether or not there is a root disk.
            let extra = drives.len() - usize::from(has_root) + 1;
            let id = spec.id.unwrap_or_else(|| format!("drive{extra}"));
            let clash = drives.iter().any(|d: &DriveConfig| d.id == id);
            if id.is_empty() || id.len() > MAX_DRIVE_ID_LEN || clash {
                return Err(ConfigError::DriveId {
                    path: spec.path,
                    id,
                });
            }
            drives.push(DriveConfig {
                path: spec.path,
                read_only: spec.read_only,
                id,
                overlay: spec.overlay.map_or(Overlay::None, Overlay::At),
            });
        }
        let api_socket = flags
            .api_socket
            .or(file.api.as_ref().and_then(|a| a.socket.clone()));
        let api = match api_socket {
            Some(socket) => {
                check_socket_dir("api socket", &socket)?;
                let lifetime = flags
                    .lifetime_secs
                    .or(file.api.as_ref().and_then(|a| a.lifetime_secs))
                    .map(std::time::Duration::from_secs);
                Some(ApiSpec {
                    socket,
                    lifetime,
                    ready_fd: flags.ready_fd,
                })
            }
            None => None,
        };
        let vsock_section = file.vsock.unwrap_or_default();
        let uds = flags.vsock_uds.or(vsock_section.uds_path).or_else(|| {
            // The API needs the agent, which is reached over vsock.
            api.as_ref().map(|a| {
                let mut p = a.socket.clone().into_os_string();
                p.push(".vsock");
                PathBuf::from(p)
            })
        });
        let vsock = match uds {
            Some(uds_path) => {
                check_socket_dir("vsock socket", &uds_path)?;
                let guest_cid = vsock_section.guest_cid.unwrap_or(MIN_GUEST_CID);
                if guest_cid < MIN_GUEST_CID || guest_cid > u64::from(u32::MAX) {
                    return Err(ConfigError::GuestCid(guest_cid));
                }
                Some(VsockSpec {
                    guest_cid,
                    uds_path,
                })
            }
            None => None,
        };
        let devices = drives.len() + usize::from(vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDrives(drives.len()));
        }
        let config = Self {
            kernel,
            initrd,
            cpus,
            memory_mib,
            append,
            drives,
            has_root,
            vsock,
            api,
            init: flags.init.or(file.init).unwrap_or_default(),
        };
        let len = config
            .kernel_cmdline(&crate::virtio_slots::tokens(config.virtio_device_count()))
            .len();
        if len >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong {
                len,
                max: CMDLINE_MAX_SIZE - 1,
            });
        }
        Ok(config)
    }

    /// The full kernel command line: base arguments, root disk, the virtio-mmio tokens of
    /// the devices (from the device manager), then the user's text (which may hold
    /// `-- init args`).
    pub fn kernel_cmdline(&self, virtio_tokens: &[String]) -> String {
        let mut parts = vec![BASE_CMDLINE.to_string()];
        if self.has_root {
            parts.push("root=/dev/vda rw".to_string());
        }
        parts.extend(virtio_tokens.iter().cloned());
        if self.api.is_some() && self.init == InitMode::Agent {
            parts.push(format!("init={AGENT_PATH}"));
        }
        if !self.append.is_empty() {
            parts.push(self.append.clone());
        }
        parts.join(" ")
    }

    /// How many virtio devices the VM gets: the drives and the vsock device.
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len() + usize::from(self.vsock.is_some())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

/// Where rootfs-builder installs the guest agent.
pub const AGENT_PATH: &str = "/sbin/vmm-agent";

fn check_socket_dir(what: &'static str, path: &Path) -> Result<(), ConfigError> {
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

/// Checks a file can be opened and is non-empty; disks must also be whole sectors.
/// What `check_file` learned of a file.
struct Checked {
    /// Starts with the qcow2 magic: its size is not the disk's.
    qcow2: bool,
}

fn check_file(what: &'static str, path: &Path, disk: bool) -> Result<Checked, ConfigError> {
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
            format!("is {}, not {expected}", agent::file_kind_name(kind)),
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
const EM_X86_64: u16 = 62;

/// The kernel must be an x86-64 ELF64 image or a bzImage; anything else fails here, not
/// in the VM.
fn check_kernel(path: &Path) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut elf = vec![0u8; 64];
            elf[..5].copy_from_slice(b"\x7fELF\x02");
            elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
            std::fs::write(dir.path().join("vmlinux"), elf).unwrap();
            std::fs::write(dir.path().join("disk.img"), vec![0u8; 4096]).unwrap();
            std::fs::write(dir.path().join("odd.img"), vec![0u8; 1000]).unwrap();
            std::fs::write(dir.path().join("garbage"), b"not a kernel").unwrap();
            Self { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn file(&self, toml: &str) -> Result<FileConfig, ConfigError> {
            let p = self.path("vm.toml");
            File::create(&p)
                .unwrap()
                .write_all(toml.as_bytes())
                .unwrap();
            FileConfig::load(&p)
        }
    }

    fn flags_with_kernel(f: &Fixture) -> Overrides {
        Overrides {
            kernel: Some(f.path("vmlinux")),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_one_cpu_and_1024_mib() {
        let f = Fixture::new();
        let c = VmConfig::build(FileConfig::default(), flags_with_kernel(&f)).unwrap();
        assert_eq!((c.cpus, c.memory_mib), (1, 1024));
        assert!(c.drives.is_empty() && !c.has_root);
    }

    #[test]
    fn file_paths_are_relative_to_the_file_and_flags_win() {
        let f = Fixture::new();
        let file = f
            .file("kernel = \"vmlinux\"\nrootfs = \"disk.img\"\ncpus = 2\nmemory_mib = 64\n[[drives]]\npath = \"disk.img\"\nread_only = true\n")
            .unwrap();
        let flags = Overrides {
            cpus: Some(3),
            drives: vec![
                parse_drive_flag(&format!("{},id=data", f.path("disk.img").display())).unwrap(),
            ],
            ..Default::default()
        };
        let c = VmConfig::build(file, flags).unwrap();
        assert_eq!(c.kernel, f.path("vmlinux"));
        assert_eq!((c.cpus, c.memory_mib), (3, 64));
        let ids: Vec<_> = c
            .drives
            .iter()
            .map(|d| (d.id.as_str(), d.read_only))
            .collect();
        assert_eq!(ids, [("rootfs", false), ("drive1", true), ("data", false)]);
    }

    #[test]
    fn unknown_keys_name_the_key_and_file() {
        let f = Fixture::new();
        let err = f
            .file("kernel = \"vmlinux\"\nmemory = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm.toml") && err.contains("memory"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let f = Fixture::new();
        let build = |o: Overrides| {
            VmConfig::build(FileConfig::default(), o)
                .unwrap_err()
                .to_string()
        };
        let e = build(Overrides {
            cpus: Some(0),
            ..flags_with_kernel(&f)
        });
        assert!(e.contains("cpus = 0"), "{e}");
        let e = build(Overrides {
            memory_mib: Some(0),
            ..flags_with_kernel(&f)
        });
        assert!(e.contains("memory_mib = 0"), "{e}");
        let e = build(Overrides {
            memory_mib: Some(u64::MAX >> 21),
            ..flags_with_kernel(&f)
        });
        assert!(e.contains("memory_mib"), "{e}");
        let e = build(Overrides {
            kernel: Some(f.path("missing")),
            ..Default::default()
        });
        assert!(e.contains("kernel") && e.contains("missing"), "{e}");
        let e = build(Overrides {
            kernel: Some(f.path("garbage")),
            ..Default::default()
        });
        assert!(e.contains("neither an ELF64"), "{e}");
        let e = build(Overrides {
            rootfs: Some(f.path("odd.img")),
            ..flags_with_kernel(&f)
        });
        assert!(e.contains("rootfs") && e.contains("multiple of 512"), "{e}");
        let e = build(Overrides {
            rootfs: Some(f.path("nope.img")),
            ..flags_with_kernel(&f)
        });
        assert!(e.contains("rootfs") && e.contains("nope.img"), "{e}");
        let e = build(Overrides {
            kernel: None,
            ..Default::default()
        });
        assert!(e.contains("--kernel"), "{e}");
    }

    #[test]
    fn cmdline_lists_root_and_devices_before_user_text() {
        let f = Fixture::new();
        let flags = Overrides {
            rootfs: Some(f.path("disk.img")),
            drives: vec![parse_drive_flag(&f.path("disk.img").display().to_string()).unwrap()],
            append: Some("quiet -- init-arg".into()),
            ..flags_with_kernel(&f)
        };
        let c = VmConfig::build(FileConfig::default(), flags).unwrap();
        assert_eq!(
            c.kernel_cmdline(&crate::virtio_slots::tokens(c.virtio_device_count())),
            "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd root=/dev/vda rw \
             virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 quiet -- init-arg"
        );
        let flags = Overrides {
            append: Some("x".repeat(3000)),
            ..flags_with_kernel(&f)
        };
        let e = VmConfig::build(FileConfig::default(), flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("append"), "{e}");
    }

    #[test]
    fn an_api_socket_brings_vsock_and_the_agent_as_init() {
        let f = Fixture::new();
        let file = f
            .file("kernel = \"vmlinux\"\n[api]\nsocket = \"api.sock\"\nlifetime_secs = 60\n")
            .unwrap();
        let c = VmConfig::build(file, Overrides::default()).unwrap();
        let api = c.api.clone().unwrap();
        assert_eq!(api.socket, f.path("api.sock"));
        assert_eq!(api.lifetime, Some(std::time::Duration::from_secs(60)));
        let vsock = c.vsock.clone().unwrap();
        assert_eq!(
            (vsock.guest_cid, vsock.uds_path),
            (3, f.path("api.sock.vsock"))
        );
        let cmdline = c.kernel_cmdline(&crate::virtio_slots::tokens(c.virtio_device_count()));
        assert!(
            cmdline.ends_with("virtio_mmio.device=4K@0xd0000000:5 init=/sbin/vmm-agent"),
            "{cmdline}"
        );
        let flags = Overrides {
            init: Some(InitMode::System),
            ..flags_with_kernel(&f)
        };
        let file = f.file("[api]\nsocket = \"api.sock\"\n").unwrap();
        let c = VmConfig::build(file, flags).unwrap();
        assert!(!c.kernel_cmdline(&[]).contains("init="));
    }

    #[test]
    fn sockets_need_an_existing_directory_and_cids_are_checked() {
        let f = Fixture::new();
        let flags = Overrides {
            api_socket: Some(f.path("nope/api.sock")),
            ..flags_with_kernel(&f)
        };
        let e = VmConfig::build(FileConfig::default(), flags)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api socket") && e.contains("does not exist"),
            "{e}"
        );
        let file = f
            .file("kernel = \"vmlinux\"\n[vsock]\nuds_path = \"v.sock\"\nguest_cid = 2\n")
            .unwrap();
        let e = VmConfig::build(file, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("guest_cid = 2"), "{e}");
    }

    #[test]
    fn a_qcow2_root_disk_gets_an_overlay_and_a_raw_one_is_written_in_place() {
        let f = Fixture::new();
        let qcow2 = f.path("snap.qcow2");
        let mut image = QCOW2_MAGIC.to_vec();
        image.resize(1000, 0); // not a multiple of 512: its size is not the disk's
        std::fs::write(&qcow2, image).unwrap();
        let root = |rootfs: PathBuf, overlay: Option<PathBuf>| {
            let flags = Overrides {
                rootfs: Some(rootfs),
                overlay,
                ..flags_with_kernel(&f)
            };
            VmConfig::build(FileConfig::default(), flags).map(|c| c.drives[0].overlay.clone())
        };
        assert_eq!(root(qcow2.clone(), None).unwrap(), Overlay::Temporary);
        assert_eq!(
            root(qcow2, Some(f.path("o.qcow2"))).unwrap(),
            Overlay::At(f.path("o.qcow2"))
        );
        assert_eq!(root(f.path("disk.img"), None).unwrap(), Overlay::None);
        let file = f
            .file("kernel = \"vmlinux\"\noverlay = \"o.qcow2\"\n")
            .unwrap();
        let e = VmConfig::build(file, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("o.qcow2") && e.contains("without a root disk"),
            "{e}"
        );
        let flags = Overrides {
            drives: vec![parse_drive_flag(&format!(
                "{},ro,overlay=x.qcow2",
                f.path("disk.img").display()
            ))
            .unwrap()],
            ..flags_with_kernel(&f)
        };
        let e = VmConfig::build(FileConfig::default(), flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk.img") && e.contains("read-only"), "{e}");
    }

    #[test]
    fn drive_flags_parse() {
        assert_eq!(
            parse_drive_flag("/a.img,ro,id=x").unwrap(),
            DriveSpec {
                path: "/a.img".into(),
                read_only: true,
                id: Some("x".into()),
                overlay: None,
            }
        );
        assert_eq!(
            parse_drive_flag("/a.img,overlay=/o.qcow2").unwrap().overlay,
            Some(PathBuf::from("/o.qcow2"))
        );
        assert!(parse_drive_flag("").is_err());
        assert!(parse_drive_flag("/a.img,bogus").is_err());
        assert!(parse_drive_flag("/a.img,overlay=").is_err());
    }

    #[test]
    fn duplicate_and_long_ids_are_refused() {
        let f = Fixture::new();
        let disk = f.path("disk.img").display().to_string();
        let flags = Overrides {
            drives: vec![
                parse_drive_flag(&format!("{disk},id=a")).unwrap(),
                parse_drive_flag(&format!("{disk},id=a")).unwrap(),
            ],
            ..flags_with_kernel(&f)
        };
        assert!(VmConfig::build(FileConfig::default(), flags).is_err());
        let flags = Overrides {
            drives: vec![parse_drive_flag(&format!("{disk},id=aaaaaaaaaaaaaaaaaaaaa")).unwrap()],
            ..flags_with_kernel(&f)
        };
        assert!(VmConfig::build(FileConfig::default(), flags).is_err());
    }
}
