//! Sandbox configuration: a TOML file and/or command-line flags, merged and validated
//! before any VM is created. Errors name the file, key or flag at fault.

mod checks;
pub mod net;
pub mod resources;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use checks::entrypoint as check_entrypoint;
pub use checks::host_memory_mib;
use checks::{check_file, check_kernel, check_socket_dir};
pub use net::{Egress, NetBackend, NetFlags, NetSection, NetSpec, Publish};
pub use resources::{ResourceFlags, ResourceSpec, ResourcesSection};

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
    pub net: Option<NetSection>,
    /// The cgroup placement and CPU request of the vmm process.
    pub resources: Option<ResourcesSection>,
    /// The sandbox's main process (needs the API): started once the sandbox is ready.
    pub entrypoint: Option<Vec<String>>,
    /// The sandbox outlives its entrypoint (default: it ends with it).
    #[serde(default)]
    pub keep_running: bool,
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
    pub entrypoint: Option<crate::sandbox::entrypoint::Entrypoint>,
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
    pub net: NetFlags,
    pub resources: ResourceFlags,
    /// The command after `--` (replaces the file's `entrypoint`).
    pub entrypoint: Vec<String>,
    pub keep_running: bool,
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
    /// The NIC, if the VM has one.
    pub net: Option<NetSpec>,
    /// Where the vmm process runs in the cgroup hierarchy, if anywhere in particular.
    pub resources: Option<ResourceSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("network: {0}")]
    Net(String),
    #[error("resources: {0}")]
    Resources(String),
    #[error("entrypoint: {0}")]
    Entrypoint(&'static str),
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
                    entrypoint: None,
                })
            }
            None => None,
        };
        let entrypoint = checks::entrypoint(
            (!flags.entrypoint.is_empty())
                .then_some(flags.entrypoint)
                .or(file.entrypoint),
            flags.keep_running || file.keep_running,
            api.is_some(),
        )?;
        let api = api.map(|a| ApiSpec { entrypoint, ..a });
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
        let net = net::build(file.net, flags.net)?;
        let resources = resources::build(file.resources, flags.resources, memory_mib)?;
        let devices = drives.len() + usize::from(vsock.is_some()) + usize::from(net.is_some());
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
            net,
            resources,
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

    /// How many virtio devices the VM gets: the drives, the vsock device and the NIC.
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len() + usize::from(self.vsock.is_some()) + usize::from(self.net.is_some())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

/// Where rootfs-builder installs the guest agent.
pub const AGENT_PATH: &str = "/sbin/vmm-agent";

#[cfg(test)]
mod tests;
