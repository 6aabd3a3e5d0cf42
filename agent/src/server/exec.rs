//! Turning an `ExecStart` into a running process: validation, PATH lookup, user, cwd,
//! pipes or a PTY, and the child's set-up between fork and exec.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agent::pb::ExecStart;
use tokio::sync::oneshot;
use tonic::Status;

use super::errors::{io_status, strerror};
use super::fdio::{pipe, FdIo};
use super::pty;
use super::reaper::{Reaper, WaitStatus};
use super::sandbox_cgroup::SandboxCgroup;
use super::spawn::{self, Launch};
use super::user::{self, User};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A validated exec request, ready to spawn.
#[derive(Debug)]
pub struct Plan {
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub user: Option<User>,
    /// Rows and columns of a new PTY; `None`: pipes.
    pub tty: Option<(u16, u16)>,
    pub merge_stderr: bool,
    pub timeout: Option<Duration>,
}

fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// Finds `name` in the directories of `path` (an executable regular file).
pub fn find_in_path(name: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Validates the request and resolves program, user, cwd and environment.
pub fn plan(start: ExecStart, etc: &Path) -> Result<Plan, Status> {
    let Some(arg0) = start.argv.first() else {
        return Err(Status::invalid_argument("argv is empty"));
    };
    if arg0.is_empty() {
        return Err(Status::invalid_argument("argv[0] is empty"));
    }
    if start.argv.iter().any(|a| has_nul(a)) {
        return Err(Status::invalid_argument("argv contains a NUL byte"));
    }
    for (k, v) in &start.env {
        if k.is_empty() || k.contains('=') || has_nul(k) || has_nul(v) {
            return Err(Status::invalid_argument(format!(
                "invalid environment variable name or value for '{k}'"
            )));
        }
    }
    if has_nul(&start.cwd) || has_nul(&start.user) {
        return Err(Status::invalid_argument("cwd or user contains a NUL byte"));
    }
    let user = if start.user.is_empty() {
        None
    } else {
        Some(user::lookup(&start.user, etc).map_err(|e| match e {
            user::UserError::Unknown(_) => Status::invalid_argument(e.to_string()),
            user::UserError::Read { .. } => Status::internal(e.to_string()),
        })?)
    };

    let home = user
        .as_ref()
        .map_or("/root", |u| u.home.as_str())
        .to_owned();
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    env.insert("HOME".to_owned(), home.clone());
    env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
    let name = user.as_ref().map_or("root", |u| u.name.as_str());
    env.insert("USER".to_owned(), name.to_owned());
    env.insert("LOGNAME".to_owned(), name.to_owned());
    if start.tty {
        env.insert("TERM".to_owned(), "xterm-256color".to_owned());
    }
    env.extend(start.env);

    let program = if arg0.contains('/') {
        PathBuf::from(arg0)
    } else {
        find_in_path(arg0, &env["PATH"]).ok_or_else(|| {
            Status::not_found(format!("cannot run '{arg0}': No such file or directory"))
        })?
    };
    if !program.exists() {
        return Err(Status::not_found(format!(
            "cannot run '{arg0}': No such file or directory"
        )));
    }

    let cwd = if start.cwd.is_empty() {
        match &user {
            Some(u) if Path::new(&u.home).is_dir() => PathBuf::from(&u.home),
            _ => PathBuf::from("/"),
        }
    } else {
        Path::new("/").join(&start.cwd)
    };
    match cwd.metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Status::failed_precondition(format!(
                "cannot run '{arg0}': working directory '{}' is not a directory",
                cwd.display()
            )))
        }
        Err(e) => {
            return Err(io_status(
                &e,
                format!(
                    "cannot run '{arg0}': working directory '{}': {}",
                    cwd.display(),
                    strerror(&e)
                ),
            ))
        }
    }

    let tty = start.tty.then(|| {
        let w = start.window.unwrap_or_default();
        pty::clamp_size(w.rows, w.cols)
    });
    let timeout = (start.timeout_ms > 0).then(|| Duration::from_millis(start.timeout_ms));
    Ok(Plan {
        program,
        argv: start.argv,
        env,
        cwd,
        user,
        tty,
        merge_stderr: start.merge_stderr,
        timeout,
    })
}

/// Where an exec's stdin goes.
pub enum StdinSink {
    Pipe(FdIo),
    /// The PTY master: closing stdin sends the EOF character (^D).
    Pty(Arc<FdIo>),
}

/// A process that runs, with the agent's ends of its stdio.
pub struct Spawned {
    pub pid: libc::pid_t,
    pub exit: oneshot::Receiver<WaitStatus>,
    pub stdin: StdinSink,
    /// Stdout (with stderr when merged or on a PTY).
    pub stdout: Arc<FdIo>,
    pub stderr: Option<Arc<FdIo>>,
    /// The PTY master, for resizes.
    pub pty: Option<Arc<FdIo>>,
}

fn spawn_error(arg0: &str, e: &io::Error) -> Status {
    io_status(e, format!("cannot run '{arg0}': {}", strerror(e)))
}

fn internal(what: &str, e: io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// The child's descriptors 0, 1 and 2, and the agent's ends of them.
struct Stdio {
    child: [OwnedFd; 3],
    stdin: StdinSink,
    stdout: Arc<FdIo>,
    stderr: Option<Arc<FdIo>>,
    pty: Option<Arc<FdIo>>,
}

fn open_stdio(plan: &Plan) -> Result<Stdio, Status> {
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| internal("dup", e));
    if let Some((rows, cols)) = plan.tty {
        let p = pty::open(rows, cols).map_err(|e| internal("cannot open a PTY", e))?;
        let m = Arc::new(FdIo::new(p.master).map_err(|e| internal("PTY master", e))?);
        return Ok(Stdio {
            child: [dup(&p.slave)?, dup(&p.slave)?, p.slave],
            stdin: StdinSink::Pty(m.clone()),
            stdout: m.clone(),
            stderr: None,
            pty: Some(m),
        });
    }
    let (in_r, in_w) = pipe().map_err(|e| internal("pipe", e))?;
    let (out_r, out_w) = pipe().map_err(|e| internal("pipe", e))?;
    let (err_w, stderr) = if plan.merge_stderr {
        // Both streams write into one pipe, so their order is kept.
        (dup(&out_w)?, None)
    } else {
        let (err_r, err_w) = pipe().map_err(|e| internal("pipe", e))?;
        let err_r = FdIo::new(err_r).map_err(|e| internal("pipe", e))?;
        (err_w, Some(Arc::new(err_r)))
    };
    Ok(Stdio {
        child: [in_r, out_w, err_w],
        stdin: StdinSink::Pipe(FdIo::new(in_w).map_err(|e| internal("pipe", e))?),
        stdout: Arc::new(FdIo::new(out_r).map_err(|e| internal("pipe", e))?),
        stderr,
        pty: None,
    })
}

/// A std `Command` that forks, for what posix_spawn cannot do: join the sandbox cgroup
/// before exec, take a controlling terminal (PTY execs) and switch users.
fn forked_command(plan: &Plan, child: [OwnedFd; 3], cgroup: Option<Arc<SandboxCgroup>>) -> Command {
    let mut cmd = Command::new(&plan.program);
    let [stdin, stdout, stderr] = child;
    cmd.arg0(&plan.argv[0])
        .args(&plan.argv[1..])
        .env_clear()
        .envs(&plan.env)
        .current_dir(&plan.cwd)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    let tty = plan.tty.is_some();
    let ids = plan.user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (write, open, close, setsid, ioctl, setgroups,
    // setgid, setuid) on memory prepared before the fork; it does not allocate or take
    // locks.
    unsafe {
        cmd.pre_exec(move || {
            // First: nothing of the child's may run outside the group.
            if let Some(cgroup) = &cgroup {
                cgroup.join_from_child()?;
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &ids {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

/// Starts the planned process in a new session (so its pid is also its process group),
/// registered with the reaper.
pub fn spawn(
    plan: &Plan,
    reaper: &Reaper,
    cgroup: Option<&Arc<SandboxCgroup>>,
) -> Result<Spawned, Status> {
    let io = open_stdio(plan)?;
    let started = if plan.tty.is_none() && plan.user.is_none() && cgroup.is_none() {
        let launch = Launch {
            program: &plan.program,
            argv: &plan.argv,
            env: &plan.env,
            cwd: &plan.cwd,
            stdio: [&io.child[0], &io.child[1], &io.child[2]],
        };
        let started = reaper.spawn(|| spawn::spawn(&launch));
        drop(io.child);
        started
    } else {
        reaper.spawn_command(&mut forked_command(plan, io.child, cgroup.cloned()))
    };
    // The child's ends of the pipes / the PTY slave are closed by now (with the array
    // or the `Command`), so the agent sees EOF (or EIO on the PTY master) once the
    // process and its heirs are gone.
    let (pid, exit) = started.map_err(|e| spawn_error(&plan.argv[0], &e))?;
    Ok(Spawned {
        pid,
        exit,
        stdin: io.stdin,
        stdout: io.stdout,
        stderr: io.stderr,
        pty: io.pty,
    })
}

/// Decodes a wait status into the protocol's `Exited`.
pub fn exited(status: WaitStatus, timed_out: bool) -> agent::pb::Exited {
    use agent::pb::exited::Status as S;
    let status = if libc::WIFSIGNALED(status) {
        S::Signal(libc::WTERMSIG(status))
    } else {
        S::Code(libc::WEXITSTATUS(status))
    };
    agent::pb::Exited {
        status: Some(status),
        timed_out,
    }
}

/// `argv` shortened for logs.
pub fn describe(argv: &[String]) -> String {
    let s = argv.join(" ");
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn start(argv: &[&str]) -> ExecStart {
        ExecStart {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_argv_is_invalid() {
        let e = plan(start(&[]), Path::new("/etc")).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    #[test]
    fn finds_programs_in_path_and_sets_defaults() {
        let p = plan(start(&["sh", "-c", "true"]), Path::new("/etc")).unwrap();
        assert!(p.program.is_absolute() && p.program.ends_with("sh"));
        assert_eq!(p.env["PATH"], DEFAULT_PATH);
        assert_eq!(p.env["LANG"], "C.UTF-8");
        assert!(!p.env.contains_key("TERM"));
        assert_eq!(p.cwd, Path::new("/"));
    }

    #[test]
    fn missing_program_and_cwd_are_not_found() {
        let e = plan(start(&["no-such-program-xyz"]), Path::new("/etc")).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(
            e.message(),
            "cannot run 'no-such-program-xyz': No such file or directory"
        );
        let mut s = start(&["true"]);
        s.cwd = "/no/such/dir".into();
        let e = plan(s, Path::new("/etc")).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("'/no/such/dir'"), "{}", e.message());
    }

    #[test]
    fn decodes_wait_statuses() {
        use agent::pb::exited::Status as S;
        assert_eq!(exited(42 << 8, false).status, Some(S::Code(42)));
        assert_eq!(exited(9, true).status, Some(S::Signal(9)));
        assert!(exited(9, true).timed_out);
    }
}
