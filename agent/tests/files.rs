//! File RPCs through the real agent binary.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use agent::pb::read_file_response::Part as ReadPart;
use agent::pb::write_file_request::Part as WritePart;
use agent::pb::{
    FileKind, ListRequest, MakeDirRequest, ReadFileRequest, RemoveRequest, RenameRequest,
    StatRequest, WriteFileHeader, WriteFileRequest,
};
use common::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

fn header(path: &str, mode: u32, make_parents: bool) -> WriteFileRequest {
    WriteFileRequest {
        part: Some(WritePart::Header(WriteFileHeader {
            path: path.to_owned(),
            mode,
            make_parents,
        })),
    }
}

fn data(bytes: &[u8]) -> WriteFileRequest {
    WriteFileRequest {
        part: Some(WritePart::Data(bytes.to_vec().into())),
    }
}

async fn write(
    c: &mut Client,
    path: &str,
    mode: u32,
    parents: bool,
    content: &[u8],
) -> Result<u64, Status> {
    let mut parts = vec![header(path, mode, parents)];
    parts.extend(content.chunks(64 * 1024).map(data));
    Ok(c.write_file(tokio_stream::iter(parts))
        .await?
        .into_inner()
        .size)
}

/// (info, content, largest chunk)
async fn read(c: &mut Client, path: &str) -> Result<(agent::pb::FileInfo, Vec<u8>, usize), Status> {
    let mut s = c
        .read_file(ReadFileRequest {
            path: path.to_owned(),
            max_bytes: 0,
        })
        .await?
        .into_inner();
    let Some(ReadPart::Info(info)) = s.message().await?.and_then(|m| m.part) else {
        panic!("ReadFile did not start with info");
    };
    let (mut content, mut largest) = (Vec::new(), 0);
    while let Some(m) = s.message().await? {
        match m.part {
            Some(ReadPart::Data(d)) => {
                largest = largest.max(d.len());
                content.extend(d);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok((info, content, largest))
}

fn p(agent: &TestAgent, rel: &str) -> String {
    agent.dir.path().join(rel).to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_round_trip_keeps_bytes_and_mode() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let mut x: u32 = 12345;
    let content: Vec<u8> = (0..10 << 20)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let path = p(&agent, "deep/new/dirs/blob.bin");
    let size = write(&mut c, &path, 0o750, true, &content).await.unwrap();
    assert_eq!(size, content.len() as u64);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.len(), content.len() as u64);

    let (info, back, largest) = read(&mut c, &path).await.unwrap();
    assert_eq!(info.kind(), FileKind::File);
    assert_eq!(info.size, content.len() as u64);
    assert_eq!(info.mode, 0o750);
    assert_eq!(info.name, "blob.bin");
    assert!(largest <= 64 * 1024, "chunk of {largest} bytes");
    assert!(back == content, "content differs");

    // Default mode, overwrite in place, and an empty file.
    let small = p(&agent, "small.txt");
    write(&mut c, &small, 0, false, b"one").await.unwrap();
    assert_eq!(std::fs::metadata(&small).unwrap().mode() & 0o7777, 0o644);
    write(&mut c, &small, 0o600, false, b"two").await.unwrap();
    assert_eq!(std::fs::read(&small).unwrap(), b"two");
    assert_eq!(std::fs::metadata(&small).unwrap().mode() & 0o7777, 0o600);
    write(&mut c, &small, 0, false, b"").await.unwrap();
    let (info, back, _) = read(&mut c, &small).await.unwrap();
    assert_eq!((info.size, back.len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_errors_and_cancelled_writes_leave_nothing() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let e = write(&mut c, &p(&agent, "missing/dir/f"), 0, false, b"x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("missing/dir/f"), "{}", e.message());
    let e = write(&mut c, "relative/path", 0, false, b"x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = write(&mut c, &p(&agent, ""), 0, false, b"x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c
        .write_file(tokio_stream::iter(vec![data(b"no header")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let target = p(&agent, "twice");
    let e = c
        .write_file(tokio_stream::iter(vec![
            header(&target, 0, false),
            header(&target, 0, false),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A write whose client goes away half-way leaves neither the file nor a temp file.
    std::fs::create_dir(p(&agent, "cancel")).unwrap();
    let target = p(&agent, "cancel/file");
    let (mut c2, conn) = connect_cuttable(&agent.socket).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header(&target, 0, false)).await.unwrap();
    tx.send(data(&[1u8; 100_000])).await.unwrap();
    let call = tokio::spawn(async move { c2.write_file(ReceiverStream::new(rx)).await });
    let entries = || -> Vec<String> {
        std::fs::read_dir(p(&agent, "cancel"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    for _ in 0..250 {
        if !entries().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only a hidden temporary file while the data is on its way.
    let during = entries();
    assert!(
        during.len() == 1 && during[0].starts_with(".file."),
        "{during:?}"
    );
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    let _ = call.await;
    drop(tx);
    let mut left = entries();
    for _ in 0..250 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = entries();
    }
    assert!(left.is_empty(), "partial files left behind: {left:?}");
    // The agent still serves.
    assert_eq!(run_ok(&mut c, "echo ok").await, "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_list_stat_remove_rename() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let deep = p(&agent, "a/b/c");
    c.make_dir(MakeDirRequest {
        path: deep.clone(),
        mode: 0o700,
        parents: true,
    })
    .await
    .unwrap();
    // mkdir -p on an existing directory is fine; plain mkdir is not.
    c.make_dir(MakeDirRequest {
        path: deep.clone(),
        mode: 0,
        parents: true,
    })
    .await
    .unwrap();
    let e = c
        .make_dir(MakeDirRequest {
            path: deep.clone(),
            mode: 0,
            parents: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = c
        .make_dir(MakeDirRequest {
            path: p(&agent, "x/y"),
            mode: 0,
            parents: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.make_dir(MakeDirRequest {
        path: p(&agent, "a/plain"),
        mode: 0,
        parents: false,
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::metadata(p(&agent, "a/plain"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );

    let st = c
        .stat(StatRequest { path: deep.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (st.kind(), st.mode, st.name.as_str()),
        (FileKind::Dir, 0o700, "c")
    );
    assert!(st.mtime_unix_ms > 1_600_000_000_000);

    write(&mut c, &p(&agent, "a/zfile"), 0o640, false, b"12345")
        .await
        .unwrap();
    std::os::unix::fs::symlink("zfile", p(&agent, "a/link")).unwrap();
    let list = c
        .list(ListRequest {
            path: p(&agent, "a"),
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["b", "link", "plain", "zfile"]);
    let kinds: Vec<FileKind> = list.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            FileKind::Dir,
            FileKind::Symlink,
            FileKind::Dir,
            FileKind::File
        ]
    );
    assert_eq!(list[1].symlink_target, "zfile");
    assert_eq!((list[3].size, list[3].mode), (5, 0o640));
    assert_eq!(list[3].path, p(&agent, "a/zfile"));

    let e = c
        .list(ListRequest {
            path: p(&agent, "nope"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .stat(StatRequest {
            path: p(&agent, "nope"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"));
    let e = c
        .read_file(ReadFileRequest {
            path: p(&agent, "a"),
            max_bytes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    c.rename(RenameRequest {
        from: p(&agent, "a/zfile"),
        to: p(&agent, "a/renamed"),
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(p(&agent, "a/renamed")).unwrap(), b"12345");
    let e = c
        .rename(RenameRequest {
            from: p(&agent, "a/zfile"),
            to: p(&agent, "a/other"),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("a/zfile") && e.message().contains("a/other"),
        "{}",
        e.message()
    );

    let e = c
        .remove(RemoveRequest {
            path: p(&agent, "a"),
            recursive: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    c.remove(RemoveRequest {
        path: p(&agent, "a/link"),
        recursive: false,
    })
    .await
    .unwrap();
    assert!(
        std::fs::metadata(p(&agent, "a/renamed")).is_ok(),
        "symlink target removed"
    );
    c.remove(RemoveRequest {
        path: p(&agent, "a/renamed"),
        recursive: false,
    })
    .await
    .unwrap();
    c.remove(RemoveRequest {
        path: p(&agent, "a"),
        recursive: true,
    })
    .await
    .unwrap();
    assert!(!std::path::Path::new(&p(&agent, "a")).exists());
    let e = c
        .remove(RemoveRequest {
            path: p(&agent, "a"),
            recursive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

fn mknod(path: &str, mode: libc::mode_t, dev: libc::dev_t) {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: mknod reads a NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(rc, 0, "mknod {path}");
}

fn file_type(path: &str) -> std::fs::FileType {
    std::fs::symlink_metadata(path).unwrap().file_type()
}

/// The file API moves regular files only. A FIFO (no writer: an open would wait forever),
/// a device node (one of our own here, like /dev/null), a socket, a symlink: reads and
/// writes are refused at once, and nothing is replaced. Reads follow symlinks; pseudo
/// files (/proc) read; kernel pseudo filesystems are not written; `max_bytes` bounds a
/// read; 600 refused FIFO reads at once leave the agent answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_are_refused_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let (fifo, null, sock, link) = (
        p(&agent, "fifo"),
        p(&agent, "null"),
        p(&agent, "sock"),
        p(&agent, "link"),
    );
    mknod(&fifo, libc::S_IFIFO | 0o600, 0);
    mknod(&null, libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::write(p(&agent, "target"), b"kept").unwrap();
    std::os::unix::fs::symlink(p(&agent, "target"), &link).unwrap();

    let quick = Duration::from_secs(10);
    for (path, kind) in [
        (&fifo, "a FIFO"),
        (&null, "a character device"),
        (&sock, "a socket"),
        (&"/dev/zero".to_string(), "a character device"),
    ] {
        let e = tokio::time::timeout(quick, read(&mut c, path))
            .await
            .unwrap_or_else(|_| panic!("reading {path} hung"))
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{path}: {e}");
        assert!(e.message().contains(kind), "{path}: {}", e.message());
    }
    for path in [&fifo, &null, &sock, &link] {
        let e = tokio::time::timeout(quick, write(&mut c, path, 0, false, b"replaced"))
            .await
            .unwrap_or_else(|_| panic!("writing {path} hung"))
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{path}: {e}");
    }
    assert!(file_type(&fifo).is_fifo());
    assert!(file_type(&null).is_char_device());
    assert!(file_type(&sock).is_socket());
    assert!(file_type(&link).is_symlink());
    assert_eq!(std::fs::read(p(&agent, "target")).unwrap(), b"kept");

    let (_, content, _) = read(&mut c, &link).await.unwrap();
    assert_eq!(content, b"kept", "reads follow symlinks");
    let (_, status, _) = read(&mut c, "/proc/self/status").await.unwrap();
    assert!(String::from_utf8_lossy(&status).contains("Name:"));
    let e = write(&mut c, "/proc/sys/kernel/hostname", 0, false, b"x")
        .await
        .unwrap_err();
    assert!(e.message().contains("procfs"), "{}", e.message());
    // A read-only attribute, so nothing could change even if the refusal failed.
    let e = write(&mut c, "/sys/kernel/uevent_seqnum", 0, false, b"x")
        .await
        .unwrap_err();
    assert!(e.message().contains("sysfs"), "{}", e.message());

    write(&mut c, &p(&agent, "big"), 0, false, &vec![7u8; 1 << 20])
        .await
        .unwrap();
    let mut s = c
        .read_file(ReadFileRequest {
            path: p(&agent, "big"),
            max_bytes: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while let Some(m) = s.message().await.unwrap() {
        if let Some(ReadPart::Data(d)) = m.part {
            got += d.len();
        }
    }
    assert_eq!(got, 1000);

    let mut many = Vec::new();
    for _ in 0..600 {
        let mut c = c.clone();
        let fifo = fifo.clone();
        many.push(tokio::spawn(
            async move { read(&mut c, &fifo).await.is_err() },
        ));
    }
    for task in many {
        assert!(tokio::time::timeout(quick, task).await.unwrap().unwrap());
    }
    let (_, content, _) = read(&mut c, &p(&agent, "target")).await.unwrap();
    assert_eq!(content, b"kept");
}
