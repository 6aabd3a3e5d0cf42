//! Starting a process with posix_spawn(3). glibc creates the child with
//! clone(CLONE_VM | CLONE_VFORK): nothing of the agent's memory is copied, so there are
//! no page-table copies, copy-on-write faults or TLB shootdowns in the agent's threads
//! afterwards, which a fork of the multi-threaded agent pays on every exec. posix_spawn
//! cannot switch users or take a controlling terminal; those execs fork (see `exec`).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a spawned process starts with.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
    /// The child's stdin, stdout and stderr; they become its descriptors 0, 1 and 2.
    /// All of them must be above 2 (the agent keeps 0-2 open) and close-on-exec.
    pub stdio: [&'a OwnedFd; 3],
}

fn c_string(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// A glibc status return (an errno value, 0 for success) as a `Result`.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        let mut raw = MaybeUninit::uninit();
        // SAFETY: init fills the uninitialized object it is given.
        check(unsafe { libc::posix_spawn_file_actions_init(raw.as_mut_ptr()) })?;
        // SAFETY: init succeeded, so the object is initialized.
        Ok(FileActions(unsafe { raw.assume_init() }))
    }

    fn dup2(&mut self, fd: &OwnedFd, target: libc::c_int) -> io::Result<()> {
        // SAFETY: the actions object is initialized; the call only records the action.
        check(unsafe {
            libc::posix_spawn_file_actions_adddup2(&mut self.0, fd.as_raw_fd(), target)
        })
    }

    fn chdir(&mut self, dir: &CString) -> io::Result<()> {
        // SAFETY: the actions object is initialized; glibc copies the path.
        check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut self.0, dir.as_ptr()) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: the object was initialized by `new` and is destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    /// A new session (its pid is also its process group), every signal at its default
    /// action (the agent ignores SIGPIPE) and none blocked.
    fn new_session() -> io::Result<Attributes> {
        let mut raw = MaybeUninit::uninit();
        // SAFETY: init fills the uninitialized object it is given.
        check(unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) })?;
        // SAFETY: init succeeded, so the object is initialized.
        let mut attr = Attributes(unsafe { raw.assume_init() });
        // libc types SETSID as c_short and the others as c_int; the values fit a short.
        let flags = libc::POSIX_SPAWN_SETSID
            | (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short;
        // SAFETY: sigset_t is plain data; the calls fill the local sets.
        let (mut all, mut none) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: the sets are valid locals; the attribute object is initialized.
        unsafe {
            libc::sigfillset(&mut all);
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &all))?;
            check(libc::posix_spawnattr_setsigmask(&mut attr.0, &none))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attr)
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: the object was initialized and is destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// Opens /dev/null on any of descriptors 0-2 that is closed (init may start without a
/// console), so descriptors made later never take those numbers: `spawn` needs that.
pub fn reserve_standard_fds() -> io::Result<()> {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: a valid NUL-terminated path; open returns the lowest free descriptor,
        // which is `fd` since 0..fd are open, and it stays open for the agent's life.
        let got = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if got != fd {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts the process and returns its pid. Errors from the child's set-up or from
/// execve (ENOENT, EACCES, ENOEXEC...) are returned here: glibc reports them.
pub fn spawn(launch: &Launch) -> io::Result<libc::pid_t> {
    if launch.stdio.iter().any(|fd| fd.as_raw_fd() <= 2) {
        // dup2 onto 0-2 in order could overwrite a descriptor still to be dup'ed.
        return Err(io::Error::other("child stdio descriptors must be above 2"));
    }
    let program = c_string(launch.program)?;
    let argv = launch
        .argv
        .iter()
        .map(c_string)
        .collect::<io::Result<Vec<_>>>()?;
    let env = launch
        .env
        .iter()
        .map(|(k, v)| c_string(format!("{k}={v}")))
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = c_string(launch.cwd)?;
    let null_terminated = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect::<Vec<_>>()
    };
    let (argv_ptrs, env_ptrs) = (null_terminated(&argv), null_terminated(&env));

    let mut actions = FileActions::new()?;
    for (target, fd) in launch.stdio.iter().enumerate() {
        actions.dup2(fd, target as libc::c_int)?;
    }
    actions.chdir(&cwd)?;
    let attr = Attributes::new_session()?;

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the C strings and the NULL-terminated
    // pointer arrays outlive it, and the actions and attributes are initialized.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions.0,
            &attr.0,
            argv_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        )
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fdio::pipe;
    use std::io::Read;

    fn wait(pid: libc::pid_t) -> libc::c_int {
        let mut status = 0;
        // SAFETY: waitpid writes the status to a valid local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn runs_with_the_given_stdio_env_cwd_and_session() {
        let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
        let out = run_to_end(&["sh", "-c", "echo $GREETING; pwd"], &env, "/tmp");
        assert_eq!(out, "hi\n/tmp\n");

        // The process reports on itself: a shell would show its own signal juggling.
        let out = run_to_end(
            &["cat", "/proc/self/stat", "/proc/self/status"],
            &BTreeMap::new(),
            "/",
        );
        let stat = out.lines().next().unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        let pid = stat.split(' ').next().unwrap();
        assert_eq!(fields[3], pid, "the session id is its pid: {stat}");
        let field = |name: &str| {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
        };
        assert_eq!(field("SigBlk:"), 0, "no signal blocked");
        // No standard signal ignored (the test harness ignores SIGPIPE like the agent
        // does). glibc leaves its two internal real-time signals ignored in every
        // posix_spawn child; they are not ours.
        assert_eq!(field("SigIgn:") & 0x7fff_ffff, 0, "no signal ignored");
    }

    /// Spawns `argv` (its program looked up in /bin and /usr/bin) and returns its
    /// stdout; it must exit with 0.
    fn run_to_end(argv: &[&str], env: &BTreeMap<String, String>, cwd: &str) -> String {
        let (in_r, _in_w) = pipe().unwrap();
        let (out_r, out_w) = pipe().unwrap();
        let err_w = out_w.try_clone().unwrap();
        let program = crate::server::exec::find_in_path(argv[0], "/bin:/usr/bin").unwrap();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let pid = spawn(&Launch {
            program: &program,
            argv: &argv,
            env,
            cwd: Path::new(cwd),
            stdio: [&in_r, &out_w, &err_w],
        })
        .unwrap();
        drop((out_w, err_w));
        let mut out = String::new();
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        assert_eq!(wait(pid), 0, "{out}");
        out
    }

    #[test]
    fn exec_errors_are_returned() {
        let (r, w) = pipe().unwrap();
        let e = spawn(&Launch {
            program: Path::new("/no/such/program"),
            argv: &["x".to_owned()],
            env: &BTreeMap::new(),
            cwd: Path::new("/"),
            stdio: [&r, &w, &w],
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
