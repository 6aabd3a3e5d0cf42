//! File operations behind the file RPCs (blocking; the service runs them off the
//! reactor). Paths must be absolute; errors name the path.

use std::fs::{self, DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use agent::pb::{FileInfo, FileKind};
use tonic::Status;

use super::errors::path_status;

pub const DEFAULT_FILE_MODE: u32 = 0o644;
pub const DEFAULT_DIR_MODE: u32 = 0o755;

/// Checks a client-supplied path: non-empty, absolute, no NUL byte.
pub fn check_path(path: &str) -> Result<PathBuf, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument("path is empty"));
    }
    if path.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "path '{}' contains a NUL byte",
            path.escape_debug()
        )));
    }
    if !path.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "path '{path}' is not absolute"
        )));
    }
    Ok(PathBuf::from(path))
}

fn kind(meta: &Metadata) -> FileKind {
    let t = meta.file_type();
    if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// Describes `path` from its metadata (lstat for listings and Stat, fstat for reads).
pub fn file_info(path: &Path, meta: &Metadata) -> FileInfo {
    let name = path.file_name().map_or_else(
        || path.to_string_lossy().into_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mtime_unix_ms = meta
        .modified()
        .ok()
        .map_or(0, |t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        });
    let symlink_target = if meta.file_type().is_symlink() {
        fs::read_link(path).map_or_else(|_| String::new(), |t| t.to_string_lossy().into_owned())
    } else {
        String::new()
    };
    FileInfo {
        name,
        path: path.to_string_lossy().into_owned(),
        kind: kind(meta).into(),
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_unix_ms,
        symlink_target,
    }
}

/// lstat: a symlink is described, not followed.
pub fn stat(path: &str) -> Result<FileInfo, Status> {
    let p = check_path(path)?;
    let meta = fs::symlink_metadata(&p).map_err(|e| path_status("stat", path, &e))?;
    Ok(file_info(&p, &meta))
}

/// The entries of a directory, sorted by name.
pub fn list(path: &str) -> Result<Vec<FileInfo>, Status> {
    let p = check_path(path)?;
    let err = |e: io::Error| path_status("list", path, &e);
    let mut entries = Vec::new();
    for entry in fs::read_dir(&p).map_err(err)? {
        let entry = entry.map_err(err)?;
        // An entry removed meanwhile is simply not listed.
        if let Ok(meta) = entry.metadata() {
            entries.push(file_info(&entry.path(), &meta));
        }
    }
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(entries)
}

/// mkdir, or mkdir -p with `parents`; the mode (default 0755) is applied exactly.
pub fn make_dir(path: &str, mode: u32, parents: bool) -> Result<(), Status> {
    let p = check_path(path)?;
    let mode = if mode == 0 {
        DEFAULT_DIR_MODE
    } else {
        mode & 0o7777
    };
    let err = |e: io::Error| path_status("create directory", path, &e);
    if parents {
        if fs::metadata(&p).is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        if let Some(parent) = p.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(DEFAULT_DIR_MODE)
                .create(parent)
                .map_err(err)?;
        }
    }
    match DirBuilder::new().mode(mode).create(&p) {
        Ok(()) => {}
        // Raced with another mkdir -p.
        Err(e) if parents && e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {
            return Ok(())
        }
        Err(e) => return Err(err(e)),
    }
    // The umask may have masked bits off.
    fs::set_permissions(&p, Permissions::from_mode(mode)).map_err(err)
}

/// Removes a file, symlink, empty directory, or (recursive) a whole tree.
pub fn remove(path: &str, recursive: bool) -> Result<(), Status> {
    let p = check_path(path)?;
    if p.parent().is_none() {
        return Err(Status::invalid_argument("refusing to remove '/'"));
    }
    let err = |e: io::Error| path_status("remove", path, &e);
    let meta = fs::symlink_metadata(&p).map_err(err)?;
    if meta.is_dir() {
        if recursive {
            fs::remove_dir_all(&p).map_err(err)
        } else {
            fs::remove_dir(&p).map_err(err)
        }
    } else {
        fs::remove_file(&p).map_err(err)
    }
}

pub fn rename(from: &str, to: &str) -> Result<(), Status> {
    let f = check_path(from)?;
    let t = check_path(to)?;
    fs::rename(&f, &t).map_err(|e| path_status("rename", &format!("{from}' to '{to}"), &e))
}

/// The file API moves regular files only: a FIFO or a device could block a read or a
/// write forever, or never end (/dev/zero), and replacing one by rename would swap out a
/// device node. Exec (`cat`, `dd`) is the way to use those.
fn not_regular(op: &str, path: &str, t: fs::FileType) -> Status {
    Status::failed_precondition(format!(
        "cannot {op} '{path}': it is {}; the file API handles regular files only (use exec)",
        agent::file_kind_name(t)
    ))
}

/// Filesystems whose files are kernel interfaces rather than data: WriteFile's write to a
/// temporary file and rename cannot work there, and a partial write may already act.
const PSEUDO_FILESYSTEMS: [(i64, &str); 8] = [
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6367_7270, "cgroup2"),
    (0x0027_e0eb, "cgroup"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x1cd1, "devpts"),
];

/// The pseudo filesystem `dir` is on, if it is on one.
fn pseudo_filesystem(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let magic = st.f_type as i64;
    PSEUDO_FILESYSTEMS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|&(_, name)| name)
}

/// Opens a file for ReadFile: its info (fstat, symlinks followed) and the open file.
/// O_NONBLOCK keeps the open itself from waiting (a FIFO without a writer); a regular
/// file ignores it, except pseudo files (/proc/kmsg), which then end instead of waiting.
pub fn open_for_read(path: &str) -> Result<(File, FileInfo), Status> {
    let p = check_path(path)?;
    let err = |e: io::Error| path_status("read", path, &e);
    // Checked before opening too: opening a socket fails, a device may act on open.
    let meta = fs::metadata(&p).map_err(err)?;
    if !meta.is_file() {
        return Err(not_regular("read", path, meta.file_type()));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&p)
        .map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(not_regular("read", path, meta.file_type()));
    }
    Ok((file, file_info(&p, &meta)))
}

/// A file being written next to its destination; renamed into place by `commit`,
/// removed when dropped before that, so a half-written file never appears.
pub struct TempFile {
    temp: PathBuf,
    target: PathBuf,
    display: String,
    committed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    /// Creates the temporary file (with `mode`, default 0644) in the target's directory.
    pub fn create(path: &str, mode: u32, make_parents: bool) -> Result<(TempFile, File), Status> {
        let target = check_path(path)?;
        let err = |e: io::Error| path_status("write", path, &e);
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(Status::invalid_argument(format!(
                "path '{path}' names no file"
            )));
        };
        // The target is replaced by rename: only ever a regular file (a symlink would be
        // replaced by a file, a device node by a file of that name).
        if let Ok(meta) = fs::symlink_metadata(&target) {
            if !meta.is_file() {
                return Err(not_regular("write", path, meta.file_type()));
            }
        }
        if let Some(fs_name) = pseudo_filesystem(dir) {
            return Err(Status::failed_precondition(format!(
                "cannot write '{path}': it is on {fs_name}, a kernel interface (use exec)"
            )));
        }
        if make_parents {
            DirBuilder::new()
                .recursive(true)
                .mode(DEFAULT_DIR_MODE)
                .create(dir)
                .map_err(err)?;
        }
        let mode = if mode == 0 {
            DEFAULT_FILE_MODE
        } else {
            mode & 0o7777
        };
        let temp = dir.join(format!(
            ".{}.vmm-agent-{}-{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(err)?;
        let guard = TempFile {
            temp,
            target,
            display: path.to_owned(),
            committed: false,
        };
        // Exactly the requested bits, whatever the umask.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(err)?;
        Ok((guard, file))
    }

    /// Renames the finished file into place.
    pub fn commit(mut self) -> Result<(), Status> {
        fs::rename(&self.temp, &self.target)
            .map_err(|e| path_status("write", &self.display, &e))?;
        self.committed = true;
        Ok(())
    }

    pub fn display(&self) -> &str {
        &self.display
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tonic::Code;

    fn s(p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn rejects_relative_and_empty_paths() {
        assert_eq!(stat("").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(
            stat("etc/passwd").unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(remove("/", true).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn temp_file_commit_and_abort() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("sub/dir/f.txt");
        let (t, mut f) = TempFile::create(&s(&target), 0o750, true).unwrap();
        f.write_all(b"data").unwrap();
        assert!(!target.exists());
        t.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"data");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o750);

        let (t, mut f) = TempFile::create(&s(&target), 0, false).unwrap();
        f.write_all(b"half").unwrap();
        drop(t);
        assert_eq!(fs::read(&target).unwrap(), b"data");
        assert_eq!(fs::read_dir(target.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn dirs_list_stat_remove_rename() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a/b/c");
        make_dir(&s(&a), 0o700, true).unwrap();
        make_dir(&s(&a), 0, true).unwrap();
        assert_eq!(
            make_dir(&s(&a), 0, false).unwrap_err().code(),
            Code::AlreadyExists
        );
        let e = make_dir(&s(&d.path().join("x/y")), 0, false).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(stat(&s(&a)).unwrap().mode, 0o700);
        fs::write(d.path().join("a/z"), b"1").unwrap();
        std::os::unix::fs::symlink("b", d.path().join("a/l")).unwrap();
        let names: Vec<_> = list(&s(&d.path().join("a")))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["b", "l", "z"]);
        let l = stat(&s(&d.path().join("a/l"))).unwrap();
        assert_eq!(
            (l.kind(), l.symlink_target.as_str()),
            (FileKind::Symlink, "b")
        );
        let e = remove(&s(&d.path().join("a/b")), false).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        rename(&s(&d.path().join("a/z")), &s(&d.path().join("a/y"))).unwrap();
        assert!(d.path().join("a/y").exists());
        remove(&s(&d.path().join("a")), true).unwrap();
        assert_eq!(
            stat(&s(&d.path().join("a"))).unwrap_err().code(),
            Code::NotFound
        );
    }
}
