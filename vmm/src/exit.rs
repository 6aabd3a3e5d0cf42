//! Why a VM stopped, and the process exit code each reason maps to.

/// Exit codes of `vmm run` (documented in the README).
pub const EXIT_OK: i32 = 0;
pub const EXIT_SETUP_ERROR: i32 = 1;
pub const EXIT_GUEST_CRASH: i32 = 2;
pub const EXIT_LIFETIME_EXPIRED: i32 = 3;
/// The command line itself is wrong (unknown flag, missing or unparsable value), for
/// every subcommand: sysexits' EX_USAGE, outside the codes above, the 125-127 of client
/// commands and 128+N.
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042, `reboot`).
    Reset,
    /// The guest powered off (ACPI S5, or a KVM system event).
    PowerOff,
    /// SIGTERM / SIGINT from the host.
    Signal(i32),
    /// A client terminated the sandbox through the API.
    Terminated,
    /// The sandbox's lifetime ran out and it was terminated.
    LifetimeExpired,
    /// The sandbox's entrypoint ended with this status (its code, 128 + a signal, or
    /// 126/127 when it could not start), and the sandbox with it.
    Entrypoint(i32),
    TripleFault {
        cpu: u8,
    },
    InternalError {
        cpu: u8,
        details: String,
    },
    FailEntry {
        cpu: u8,
        reason: u64,
    },
    GuestPanic(String),
    /// A KVM call failed or KVM reported an exit we cannot handle.
    Vmm(String),
}

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Reset | Self::PowerOff | Self::Terminated => EXIT_OK,
            Self::LifetimeExpired => EXIT_LIFETIME_EXPIRED,
            // As `docker run`: the exit status is the main process's.
            Self::Entrypoint(code) => *code,
            Self::Signal(n) => 128 + n,
            Self::TripleFault { .. }
            | Self::InternalError { .. }
            | Self::FailEntry { .. }
            | Self::GuestPanic(_)
            | Self::Vmm(_) => EXIT_GUEST_CRASH,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reset => write!(f, "guest reset"),
            Self::PowerOff => write!(f, "guest powered off"),
            Self::Signal(n) => write!(f, "stopped by signal {n}"),
            Self::Terminated => write!(f, "sandbox terminated"),
            Self::LifetimeExpired => write!(f, "sandbox lifetime expired"),
            Self::Entrypoint(code) => write!(f, "the entrypoint exited with {code}"),
            Self::TripleFault { cpu } => write!(f, "guest triple fault on vCPU {cpu}"),
            Self::InternalError { cpu, details } => {
                write!(f, "KVM internal error on vCPU {cpu}: {details}")
            }
            Self::FailEntry { cpu, reason } => {
                write!(
                    f,
                    "KVM could not enter vCPU {cpu}: hardware reason {reason:#x}"
                )
            }
            Self::GuestPanic(line) => write!(f, "guest kernel panic: {line}"),
            Self::Vmm(message) => write!(f, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(ExitReason::Reset.exit_code(), 0);
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(ExitReason::TripleFault { cpu: 0 }.exit_code(), 2);
        assert_eq!(ExitReason::GuestPanic("x".into()).exit_code(), 2);
        assert_eq!(ExitReason::Terminated.exit_code(), 0);
        assert_eq!(ExitReason::LifetimeExpired.exit_code(), 3);
        assert_eq!(ExitReason::Entrypoint(7).exit_code(), 7);
    }
}
