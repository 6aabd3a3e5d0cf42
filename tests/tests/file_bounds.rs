//! The file API's bounds, end to end (client → `vmm supervise` → the agent in the test
//! jail): an operation on a hung filesystem fails at the agent's time limit while every
//! other call goes on, and a read the client abandons closes its file in the agent.

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use vmm_client::Client;
use vmm_protocol::pb;
use vmm_tests::sandbox::{Backend, Sandbox};

/// The agent's limit on one blocking file operation (`FILE_OP_TIMEOUT`), as documented.
const FILE_OP_LIMIT: Duration = Duration::from_secs(30);

/// A FUSE mount inside the jail whose daemon never answers (it never even reads the
/// kernel's INIT), as a hung network or FUSE filesystem would: every lookup under it waits
/// in the kernel. Dropping it closes /dev/fuse, which aborts the connection and fails
/// those waits with ENOTCONN.
struct HungFuse {
    _device: fs::File,
}

impl HungFuse {
    /// Mounts it on `dir` (created) of the jail whose PID 1 is `agent_pid`.
    fn mount(agent_pid: u32, dir: &str) -> HungFuse {
        let root = format!("/proc/{agent_pid}/root");
        fs::create_dir_all(format!("{root}{dir}")).expect("create the mount point");
        let device = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("open /dev/fuse");
        let namespace = CString::new(format!("/proc/{agent_pid}/ns/mnt")).unwrap();
        // Resolved in the jail's mount namespace: the agent's root there.
        let target = CString::new(format!("{root}{dir}")).unwrap();
        let options = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            device.as_raw_fd()
        ))
        .unwrap();
        let mut cmd = Command::new("true");
        // SAFETY: between fork and exec the closure makes only async-signal-safe system
        // calls, on strings allocated before the fork; the /dev/fuse fd is still open in
        // the child (CLOEXEC acts only at the exec).
        unsafe {
            cmd.pre_exec(move || {
                let ns = libc::open(namespace.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if ns < 0 || libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mounted = libc::mount(
                    c"hung".as_ptr(),
                    target.as_ptr(),
                    c"fuse".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    options.as_ptr().cast(),
                );
                if mounted != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = cmd.status().expect("mount a FUSE filesystem in the jail");
        assert!(status.success(), "{status}");
        HungFuse { _device: device }
    }
}

async fn read_to_vec(c: &Client, path: &str) -> Result<Vec<u8>, vmm_client::ClientError> {
    let mut out = Vec::new();
    c.read_file(path, &mut out).await?;
    Ok(out)
}

/// A read on a hung filesystem fails with DEADLINE_EXCEEDED at the 30 s limit, naming
/// it; meanwhile reads, stats and execs elsewhere are served at once. Once that
/// filesystem goes away, calls on it fail at once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_filesystem_fails_its_call_at_the_limit_and_stalls_nothing_else() {
    let sb = tokio::task::spawn_blocking(|| Sandbox::start(Backend::Jail))
        .await
        .unwrap();
    let c = sb.client().await;
    let agent = sb.jail().and_then(|j| j.agent_pid()).expect("agent pid");
    let fuse = HungFuse::mount(agent, "/srv/hung");

    let started = Instant::now();
    let hung = {
        let c = c.clone();
        tokio::spawn(async move { read_to_vec(&c, "/srv/hung/file").await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !hung.is_finished(),
        "the read on the hung filesystem ended early"
    );
    let others = Instant::now();
    assert!(!read_to_vec(&c, "/etc/hostname").await.unwrap().is_empty());
    c.api()
        .stat(pb::StatRequest {
            path: "/etc".into(),
        })
        .await
        .expect("stat /etc");
    let out = c.run(&["echo", "served"], b"").await.unwrap();
    assert_eq!(out.stdout, b"served\n");
    assert!(
        others.elapsed() < Duration::from_secs(5),
        "other calls waited {:?} behind the hung one",
        others.elapsed()
    );

    let err = tokio::time::timeout(FILE_OP_LIMIT * 2, hung)
        .await
        .expect("the read on the hung filesystem outlived twice its limit")
        .unwrap()
        .expect_err("a hung filesystem gave a file");
    let waited = started.elapsed();
    assert!(
        waited >= FILE_OP_LIMIT - Duration::from_secs(1)
            && waited < FILE_OP_LIMIT + Duration::from_secs(10),
        "failed after {waited:?}, not at the {FILE_OP_LIMIT:?} limit: {err}"
    );
    match &err {
        vmm_client::ClientError::Status(s) => {
            assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "{s:?}");
            assert!(s.message().contains("within 30s"), "{s:?}");
        }
        other => panic!("not a gRPC status: {other}"),
    }

    // The daemon gone, the kernel fails the stuck lookup and any new one at once.
    drop(fuse);
    let gone = Instant::now();
    read_to_vec(&c, "/srv/hung/file")
        .await
        .expect_err("a file on an aborted filesystem");
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "{:?}",
        gone.elapsed()
    );
}

/// The fds of `pid` that are open on the file at `path` (compared by device and inode).
fn fds_on(pid: u32, path: &str) -> usize {
    let target = fs::metadata(format!("/proc/{pid}/root{path}")).expect("stat the file");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the agent's fds")
        .filter_map(|e| fs::metadata(e.ok()?.path()).ok())
        .filter(|m| m.dev() == target.dev() && m.ino() == target.ino())
        .count()
}

/// A client that stops reading and goes away mid-file frees the agent's reader: its file
/// is closed at once, though nearly all of the file was never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_read_closes_its_file_in_the_agent() {
    const PATH: &str = "/tmp/large-file";
    let sb = tokio::task::spawn_blocking(|| Sandbox::start(Backend::Jail))
        .await
        .unwrap();
    let c = sb.client().await;
    let agent = sb.jail().and_then(|j| j.agent_pid()).expect("agent pid");
    // Sparse, and long enough that reading it all would take the agent many minutes.
    let out = c.run(&["truncate", "-s", "1T", PATH], b"").await.unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");

    let mut stream = c
        .api()
        .read_file(pb::ReadFileRequest {
            path: PATH.into(),
            max_bytes: 0,
        })
        .await
        .expect("start the read")
        .into_inner();
    let mut received = 0;
    while received < 1 << 20 {
        let part = stream.message().await.unwrap().expect("more of the file");
        if let Some(pb::read_file_response::Part::Data(d)) = part.part {
            received += d.len();
        }
    }
    // The agent is still reading (held back by flow control).
    assert_eq!(
        fds_on(agent, PATH),
        1,
        "the agent does not hold the file open"
    );

    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds_on(agent, PATH) > 0 {
        assert!(
            Instant::now() < deadline,
            "the agent still reads {PATH} 10 s after its client went away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
