//! Command line: `vmm-agent [--vsock-port N] [--unix PATH] [--init | --no-init] [--hostname NAME]`.

use std::ffi::OsString;
use std::path::PathBuf;

/// Where the agent accepts connections from the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK, any CID, this port (inside a VM).
    Vsock(u32),
    /// A Unix socket at this path, mode 0600 (the test jail, or local debugging).
    Unix(PathBuf),
}

/// Whether to do PID 1 duties: mounts, `lo`, hostname, reaping every zombie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitMode {
    /// Init duties when the agent is PID 1.
    Auto,
    Init,
    NoInit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub listen: Listen,
    pub init: InitMode,
    pub hostname: Option<String>,
    /// pids.max of the sandbox cgroup (default: the kernel's task limit less a reserve).
    pub sandbox_pids_max: Option<u64>,
    /// Words that are not flags, ignored as PID 1: the kernel hands init every word of
    /// its command line that it does not know (a user's `append`, e.g. `nokaslr` on a
    /// kernel booted without the decompressor that knows it).
    pub ignored: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown argument '{0}'")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("invalid {flag} '{value}'")]
    Invalid { flag: &'static str, value: String },
    #[error("--vsock-port and --unix are exclusive")]
    TwoListeners,
    #[error("--init and --no-init are exclusive")]
    TwoInitModes,
    #[error("help requested")]
    Help,
}

pub const USAGE: &str = "usage: vmm-agent [--vsock-port N] [--unix PATH] [--init | --no-init] \
[--hostname NAME] [--sandbox-pids-max N]\n\
  --vsock-port N   listen on AF_VSOCK port N, any CID (default: 1024)\n\
  --unix PATH      listen on a Unix socket (mode 0600) instead of vsock\n\
  --init           do PID 1 duties (mounts, lo, hostname, reaping) even when not PID 1\n\
  --no-init        never do them (running as a service under another init)\n\
  --hostname NAME  hostname to set as init (default: /etc/hostname)\n\
  --sandbox-pids-max N  processes and threads the execs may have in all (default: the\n\
                   kernel's limit less a tenth, at least 256, kept for the agent)\n\
Log level: VMM_AGENT_LOG=error|warn|info|debug|trace (default info).";

impl Args {
    /// Parses the arguments of an agent that is (`pid1`) or is not the init process.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I, pid1: bool) -> Result<Args, ArgsError> {
        let mut ignored = Vec::new();
        let mut vsock = None;
        let mut unix = None;
        let mut init = InitMode::Auto;
        let mut hostname = None;
        let mut sandbox_pids_max = None;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let arg = arg.to_string_lossy().into_owned();
            // Accept `--flag=value` as well as `--flag value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &'static str| -> Result<OsString, ArgsError> {
                match &inline {
                    Some(v) => Ok(v.into()),
                    None => it.next().ok_or(ArgsError::MissingValue(name)),
                }
            };
            match flag.as_str() {
                "--vsock-port" => {
                    let v = value("--vsock-port")?;
                    let port = v
                        .to_str()
                        .and_then(|s| s.parse::<u32>().ok())
                        .ok_or_else(|| ArgsError::Invalid {
                            flag: "--vsock-port",
                            value: v.to_string_lossy().into_owned(),
                        })?;
                    vsock = Some(port);
                }
                "--unix" => {
                    let v = value("--unix")?;
                    if v.is_empty() {
                        return Err(ArgsError::Invalid {
                            flag: "--unix",
                            value: String::new(),
                        });
                    }
                    unix = Some(PathBuf::from(v));
                }
                "--hostname" => {
                    let v = value("--hostname")?.to_string_lossy().into_owned();
                    if v.is_empty() || v.len() > 64 || v.contains('\0') {
                        return Err(ArgsError::Invalid {
                            flag: "--hostname",
                            value: v,
                        });
                    }
                    hostname = Some(v);
                }
                "--sandbox-pids-max" => {
                    let v = value("--sandbox-pids-max")?;
                    let n = v.to_str().and_then(|s| s.parse::<u64>().ok());
                    sandbox_pids_max =
                        Some(n.filter(|n| *n > 0).ok_or_else(|| ArgsError::Invalid {
                            flag: "--sandbox-pids-max",
                            value: v.to_string_lossy().into_owned(),
                        })?);
                }
                "--init" | "--no-init" if inline.is_none() => {
                    let mode = if flag == "--init" {
                        InitMode::Init
                    } else {
                        InitMode::NoInit
                    };
                    if init != InitMode::Auto && init != mode {
                        return Err(ArgsError::TwoInitModes);
                    }
                    init = mode;
                }
                "-h" | "--help" => return Err(ArgsError::Help),
                _ if pid1 && !arg.starts_with('-') => ignored.push(arg),
                _ => return Err(ArgsError::Unknown(arg)),
            }
        }
        let listen = match (vsock, unix) {
            (Some(_), Some(_)) => return Err(ArgsError::TwoListeners),
            (_, Some(path)) => Listen::Unix(path),
            (port, None) => Listen::Vsock(port.unwrap_or(agent::AGENT_VSOCK_PORT)),
        };
        Ok(Args {
            listen,
            init,
            hostname,
            sandbox_pids_max,
            ignored,
        })
    }

    /// Whether PID 1 duties apply, given this process's pid.
    pub fn is_init(&self, pid: u32) -> bool {
        match self.init {
            InitMode::Auto => pid == 1,
            InitMode::Init => true,
            InitMode::NoInit => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgsError> {
        Args::parse(args.iter().map(OsString::from), false)
    }

    #[test]
    fn as_init_the_kernels_leftover_words_are_ignored_but_unknown_flags_are_not() {
        let words = ["nokaslr", "--hostname", "sb", "quiet-ish"].map(OsString::from);
        let a = Args::parse(words.clone(), true).unwrap();
        assert_eq!(a.ignored, ["nokaslr", "quiet-ish"]);
        assert_eq!(a.hostname.as_deref(), Some("sb"));
        assert_eq!(
            Args::parse(words, false).unwrap_err(),
            ArgsError::Unknown("nokaslr".into())
        );
        let flag = ["--bogus"].map(OsString::from);
        assert_eq!(
            Args::parse(flag, true).unwrap_err(),
            ArgsError::Unknown("--bogus".into())
        );
    }

    #[test]
    fn defaults_to_vsock_1024_and_auto_init() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.listen, Listen::Vsock(1024));
        assert_eq!(a.init, InitMode::Auto);
        assert!(a.is_init(1));
        assert!(!a.is_init(42));
        assert_eq!(a.hostname, None);
    }

    #[test]
    fn parses_all_flags() {
        let a = parse(&["--unix", "/vmm/agent.sock", "--init", "--hostname=sandbox"]).unwrap();
        assert_eq!(a.listen, Listen::Unix("/vmm/agent.sock".into()));
        assert!(a.is_init(77));
        assert_eq!(a.hostname.as_deref(), Some("sandbox"));
        let a = parse(&["--vsock-port=5000", "--no-init"]).unwrap();
        assert_eq!(a.listen, Listen::Vsock(5000));
        assert!(!a.is_init(1));
        assert_eq!(a.sandbox_pids_max, None);
        let a = parse(&["--sandbox-pids-max=256"]).unwrap();
        assert_eq!(a.sandbox_pids_max, Some(256));
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert_eq!(
            parse(&["--vsock-port"]),
            Err(ArgsError::MissingValue("--vsock-port"))
        );
        assert!(matches!(
            parse(&["--vsock-port", "x"]),
            Err(ArgsError::Invalid { .. })
        ));
        assert_eq!(
            parse(&["--init", "--no-init"]),
            Err(ArgsError::TwoInitModes)
        );
        assert_eq!(
            parse(&["--unix", "/a", "--vsock-port", "1"]),
            Err(ArgsError::TwoListeners)
        );
        assert_eq!(
            parse(&["--bogus"]),
            Err(ArgsError::Unknown("--bogus".into()))
        );
        assert_eq!(parse(&["--help"]), Err(ArgsError::Help));
        for bad in ["0", "-1", "many"] {
            assert!(matches!(
                parse(&["--sandbox-pids-max", bad]),
                Err(ArgsError::Invalid { .. })
            ));
        }
    }
}
