//! /etc/resolv.conf, replaced atomically: a temporary file beside it, fsync, rename. The
//! rename replaces a symlink there (systemd-resolved's stub link) instead of writing
//! through it into a file that belongs to something else.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::NetworkError;

const MODE: u32 = 0o644;

/// The file's content.
pub fn render(nameservers: &[IpAddr]) -> String {
    let mut s =
        String::from("# Written by vmm-agent (ConfigureNetwork) from what the host assigned.\n");
    for ns in nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    s
}

/// Replaces `path` with a resolv.conf naming `nameservers`.
pub fn write(path: &Path, nameservers: &[IpAddr]) -> Result<(), NetworkError> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => {
            return Err(NetworkError::Resolv {
                what: format!("cannot replace {}", path.display()),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            })
        }
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".vmm-agent.tmp");
    let temp = Temp(dir.join(temp_name));
    let fail = |what: &str, p: &Path| {
        let what = format!("cannot {what} {}", p.display());
        move |source| NetworkError::Resolv { what, source }
    };
    // Left over from an attempt that died midway (configurations run one at a time).
    let _ = fs::remove_file(&temp.0);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(&temp.0)
        .map_err(fail("create", &temp.0))?;
    // The umask may have taken bits off; resolv.conf must be readable by everyone.
    file.set_permissions(fs::Permissions::from_mode(MODE))
        .map_err(fail("set the mode of", &temp.0))?;
    file.write_all(render(nameservers).as_bytes())
        .map_err(fail("write", &temp.0))?;
    file.sync_all().map_err(fail("sync", &temp.0))?;
    drop(file);
    fs::rename(&temp.0, path).map_err(|source| NetworkError::Resolv {
        what: format!("cannot rename {} to {}", temp.0.display(), path.display()),
        source,
    })?;
    std::mem::forget(temp);
    // The rename on disk too. The content is safe already: best effort.
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        log::debug!("cannot sync {}: {e}", dir.display());
    }
    Ok(())
}

/// Removes the temporary file unless it was renamed into place.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn content() {
        assert_eq!(
            render(&ips(&["10.200.0.1", "2001:db8::53", "1.1.1.1"])),
            "# Written by vmm-agent (ConfigureNetwork) from what the host assigned.\n\
             nameserver 10.200.0.1\n\
             nameserver 2001:db8::53\n\
             nameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn writes_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        write(&path, &ips(&["10.200.0.1"])).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            render(&ips(&["10.200.0.1"]))
        );
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        // Nothing else is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["resolv.conf"]);
    }

    #[test]
    fn replaces_a_file_and_a_stale_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        fs::write(&path, "nameserver 192.0.2.1\nsearch old.example\n").unwrap();
        fs::write(dir.path().join(".resolv.conf.vmm-agent.tmp"), "stale").unwrap();
        write(&path, &ips(&["10.0.0.1", "10.0.0.2"])).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            render(&ips(&["10.0.0.1", "10.0.0.2"]))
        );
        assert!(!dir.path().join(".resolv.conf.vmm-agent.tmp").exists());
    }

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("stub-resolv.conf");
        fs::write(&target, "nameserver 127.0.0.53\n").unwrap();
        let path = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink("stub-resolv.conf", &path).unwrap();
        write(&path, &ips(&["10.200.0.1"])).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            render(&ips(&["10.200.0.1"]))
        );
        // The link's target is untouched.
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            "nameserver 127.0.0.53\n"
        );
    }

    #[test]
    fn a_dangling_symlink_is_replaced_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &path).unwrap();
        write(&path, &ips(&["10.200.0.1"])).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        fs::create_dir(&path).unwrap();
        let e = write(&path, &ips(&["10.200.0.1"])).unwrap_err();
        assert!(
            e.status().message().starts_with("cannot rename "),
            "{}",
            e.status().message()
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["resolv.conf"]);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/resolv.conf");
        let e = write(&path, &ips(&["10.200.0.1"])).unwrap_err();
        let status = e.status();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(
            status.message(),
            format!(
                "cannot create {}/missing-dir/.resolv.conf.vmm-agent.tmp: No such file or directory",
                dir.path().display()
            )
        );
    }
}
