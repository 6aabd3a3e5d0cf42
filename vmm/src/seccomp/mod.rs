//! Per-thread seccomp filters, compiled from a declarative policy (seccompiler's JSON
//! format): one filter per kind of thread, each installed by the thread itself before it
//! touches anything a guest or a client controls. A syscall outside its thread's filter
//! kills the whole process with SIGSYS (exit status 159): a compromised thread must not
//! keep running, and the kernel's audit log names the thread (`comm`) and the syscall.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use seccompiler::{BpfProgram, TargetArch};

/// The built-in policy. `--seccomp-filter FILE` replaces it with a file in the same format.
pub const DEFAULT_POLICY: &str = include_str!("x86_64.json");

/// The kinds of thread in a vmm process; each has its own filter in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Sets the VM up, then waits for its end, stops the vCPUs and flushes the disks.
    Main,
    /// Runs KVM_RUN and handles port and MMIO exits.
    Vcpu,
    /// The device event loop: virtio queues, disk I/O, the vsock muxer.
    Devices,
    /// The sandbox API server and the agent connection (tokio, with its blocking pool).
    Supervisor,
    /// Waits for SIGTERM/SIGINT/SIGHUP.
    Signals,
    /// With --net auto: the sandbox's DNS forwarder and published ports (tokio).
    HostNet,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 6] = [
        Self::Main,
        Self::Vcpu,
        Self::Devices,
        Self::Supervisor,
        Self::Signals,
        Self::HostNet,
    ];

    /// The thread kind's key in the policy file.
    pub fn key(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vcpu",
            Self::Devices => "devices",
            Self::Supervisor => "supervisor",
            Self::Signals => "signals",
            Self::HostNet => "hostnet",
        }
    }
}

/// What happens to a syscall outside the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Kill the process (SIGSYS).
    #[default]
    Enforce,
    /// Allow it, and have the kernel log it (audit, `dmesg`): for writing a policy.
    Log,
    /// No filters.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot read the seccomp filter {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("seccomp filter {origin}: {reason}")]
    Invalid { origin: String, reason: String },
    #[error("cannot drop the capabilities of the {thread} thread: {source}")]
    Capabilities {
        thread: &'static str,
        source: std::io::Error,
    },
    #[error("cannot install the seccomp filter of the {thread} thread: {source}")]
    Install {
        thread: &'static str,
        source: seccompiler::Error,
    },
}

/// Compiled filters, one per thread kind; empty when seccomp is off.
#[derive(Debug, Default)]
pub struct Filters {
    programs: HashMap<ThreadKind, BpfProgram>,
}

impl Filters {
    /// No filtering at all (`--seccomp off`, and the unit tests).
    pub fn off() -> Self {
        Self::default()
    }

    /// Compiles the built-in policy, or `custom` when given, for `mode`.
    pub fn load(mode: Mode, custom: Option<&Path>) -> Result<Self, SeccompError> {
        if mode == Mode::Off {
            return Ok(Self::off());
        }
        let (origin, text) = match custom {
            Some(path) => (
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            ),
            None => ("(built-in)".to_string(), DEFAULT_POLICY.to_string()),
        };
        let invalid = |reason: String| SeccompError::Invalid {
            origin: origin.clone(),
            reason,
        };
        let mut policy: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let filters = policy
            .as_object_mut()
            .ok_or_else(|| invalid("the top level is not an object".into()))?;
        if let Some(unknown) = filters
            .keys()
            .find(|k| !ThreadKind::ALL.iter().any(|t| t.key() == k.as_str()))
        {
            return Err(invalid(format!(
                "unknown thread kind {unknown:?} (expected {})",
                keys_list()
            )));
        }
        if mode == Mode::Log {
            for filter in filters.values_mut().filter_map(|f| f.as_object_mut()) {
                filter.insert("mismatch_action".into(), "log".into());
            }
        }
        let mut compiled =
            seccompiler::compile_from_json(policy.to_string().as_bytes(), TargetArch::x86_64)
                .map_err(|e| invalid(e.to_string()))?;
        let mut programs = HashMap::new();
        for kind in ThreadKind::ALL {
            let program = compiled.remove(kind.key()).ok_or_else(|| {
                invalid(format!(
                    "no filter for the {:?} thread (expected {})",
                    kind.key(),
                    keys_list()
                ))
            })?;
            programs.insert(kind, program);
        }
        Ok(Self { programs })
    }

    /// Confines the calling thread for good: it drops every capability (they are per
    /// thread) and installs the filter of `kind`.
    pub fn confine(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        crate::privileges::drop_capabilities().map_err(|source| SeccompError::Capabilities {
            thread: kind.key(),
            source,
        })?;
        self.apply(kind)
    }

    /// Installs the filter of `kind` on the calling thread (and so on the threads it
    /// spawns from now on). Sets no_new_privs, which seccomp requires.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        match self.programs.get(&kind) {
            Some(program) => {
                seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                    thread: kind.key(),
                    source,
                })
            }
            None => Ok(()),
        }
    }
}

fn keys_list() -> String {
    ThreadKind::ALL.map(ThreadKind::key).join(", ")
}

#[cfg(test)]
mod tests;
