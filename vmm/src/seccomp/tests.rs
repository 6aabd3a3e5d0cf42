use super::*;

#[test]
fn the_built_in_policy_has_a_filter_for_every_thread_kind() {
    for mode in [Mode::Enforce, Mode::Log] {
        let filters = Filters::load(mode, None).unwrap();
        for kind in ThreadKind::ALL {
            assert!(!filters.programs[&kind].is_empty(), "{kind:?}");
        }
    }
    assert!(Filters::load(Mode::Off, None).unwrap().programs.is_empty());
}

fn custom(text: &str) -> Result<Filters, SeccompError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, text).unwrap();
    Filters::load(Mode::Enforce, Some(&path))
}

#[test]
fn a_policy_file_must_name_each_thread_kind_and_only_those() {
    let mut policy: serde_json::Value = serde_json::from_str(DEFAULT_POLICY).unwrap();
    policy.as_object_mut().unwrap().remove("vcpu");
    let err = custom(&policy.to_string()).unwrap_err().to_string();
    assert!(
        err.contains("policy.json") && err.contains("\"vcpu\""),
        "{err}"
    );

    let mut policy: serde_json::Value = serde_json::from_str(DEFAULT_POLICY).unwrap();
    policy["vpcu"] = policy["vcpu"].clone();
    let err = custom(&policy.to_string()).unwrap_err().to_string();
    assert!(err.contains("unknown thread kind \"vpcu\""), "{err}");
}

#[test]
fn a_bad_policy_file_is_an_error_that_names_it() {
    let err = custom("{").unwrap_err().to_string();
    assert!(
        err.starts_with("seccomp filter ") && err.contains("policy.json"),
        "{err}"
    );
    let err = custom(r#"{"main": {"mismatch_action": "kill_process", "match_action": "allow", "filter": [{"syscall": "no_such_call"}]}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("policy.json"), "{err}");
    let missing = Filters::load(Mode::Enforce, Some(Path::new("/nonexistent/p.json")));
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/p.json"));
}

/// Runs `f` in a forked child that installs the filter of `kind` first; returns the
/// signal that killed the child, or None when it exited.
fn in_filtered_child(kind: ThreadKind, f: fn()) -> Option<i32> {
    let filters = Filters::load(Mode::Enforce, None).unwrap();
    let program = &filters.programs[&kind];
    // SAFETY: the child only makes raw syscalls (no allocation, no locks) and _exits.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: as above; `program` was built before the fork.
            unsafe {
                let prog = libc::sock_fprog {
                    len: program.len() as u16,
                    filter: program.as_ptr() as *mut libc::sock_filter,
                };
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0 {
                    libc::_exit(99);
                }
            }
            f();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        pid => {
            assert!(pid > 0);
            let mut status = 0;
            // SAFETY: waits for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            if libc::WIFSIGNALED(status) {
                Some(libc::WTERMSIG(status))
            } else {
                assert_eq!(libc::WEXITSTATUS(status), 0, "child exit status");
                None
            }
        }
    }
}

fn open_a_file() {
    // SAFETY: a raw openat of a static path.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/etc/hostname".as_ptr(),
            0,
        )
    };
}

fn ask_for_the_parent_pid() {
    // SAFETY: getppid has no arguments.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

fn make_a_directory() {
    // SAFETY: a raw mkdirat of a static path.
    unsafe {
        libc::syscall(
            libc::SYS_mkdirat,
            libc::AT_FDCWD,
            c"/nonexistent/vmm-seccomp-test".as_ptr(),
            0o700,
        )
    };
}

#[test]
fn every_thread_kind_is_killed_by_a_syscall_outside_its_filter() {
    for kind in ThreadKind::ALL {
        // The supervisor opens and creates files for snapshots, nothing else does.
        let (touch_files, what): (fn(), _) = match kind {
            ThreadKind::Supervisor => (make_a_directory, "mkdirat"),
            _ => (open_a_file, "openat"),
        };
        assert_eq!(
            in_filtered_child(kind, touch_files),
            Some(libc::SIGSYS),
            "{kind:?} {what}"
        );
        assert_eq!(
            in_filtered_child(kind, ask_for_the_parent_pid),
            Some(libc::SIGSYS),
            "{kind:?} getppid"
        );
    }
}

#[test]
fn the_vcpu_filter_allows_only_the_kvm_ioctls_it_needs() {
    fn kvm_run_on_a_bad_fd() {
        // SAFETY: an ioctl on an fd that is not open fails with EBADF.
        unsafe { libc::ioctl(-1, 0xAE80) };
    }
    fn create_vm_on_a_bad_fd() {
        // SAFETY: as above.
        unsafe { libc::ioctl(-1, 0xAE01) };
    }
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, kvm_run_on_a_bad_fd),
        None
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, create_vm_on_a_bad_fd),
        Some(libc::SIGSYS)
    );
}
