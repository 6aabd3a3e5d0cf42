//! User lookup from /etc/passwd and /etc/group, parsed directly: glibc's NSS functions
//! (getpwnam, getgrouplist) do not work in a static binary.

use std::fs;
use std::io;
use std::path::Path;

/// The identity an exec runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, including the primary group.
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unknown user '{0}' (not in /etc/passwd)")]
    Unknown(String),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 || f[0].is_empty() || line.starts_with('#') {
        return None;
    }
    Some(PasswdEntry {
        name: f[0],
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5],
    })
}

fn read_optional(path: &Path) -> Result<String, UserError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Resolves `user` (a name, or a numeric uid) against `etc`/passwd and `etc`/group.
/// A numeric uid that has no passwd entry runs with gid = uid and home "/".
pub fn lookup(user: &str, etc: &Path) -> Result<User, UserError> {
    let passwd = read_optional(&etc.join("passwd"))?;
    let numeric: Option<u32> = user.parse().ok();
    let entry = passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|e| e.name == user || numeric.is_some_and(|uid| e.uid == uid && !user.is_empty()));
    let (name, uid, gid, home) = match (entry, numeric) {
        (Some(e), _) => (e.name.to_owned(), e.uid, e.gid, e.home.to_owned()),
        (None, Some(uid)) => (user.to_owned(), uid, uid, "/".to_owned()),
        (None, None) => return Err(UserError::Unknown(user.to_owned())),
    };
    let group = read_optional(&etc.join("group"))?;
    let mut groups = vec![gid];
    for line in group.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(g) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m.trim() == name) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(User {
        name,
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken line\n\
             alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        fs::write(
            d.path().join("group"),
            "root:x:0:\nsudo:x:27:alice\nalice:x:1000:\ndocker:x:999:bob,alice\nbad\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let d = etc();
        let u = lookup("alice", d.path()).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(u.groups, vec![1000, 27, 999]);
        let n = lookup("nobody", d.path()).unwrap();
        assert_eq!((n.uid, n.gid, n.groups), (65534, 65534, vec![65534]));
    }

    #[test]
    fn by_uid_known_and_unknown() {
        let d = etc();
        assert_eq!(lookup("1000", d.path()).unwrap().name, "alice");
        assert_eq!(lookup("0", d.path()).unwrap().home, "/root");
        let u = lookup("4242", d.path()).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4242, "/"));
    }

    #[test]
    fn unknown_name_is_an_error() {
        let d = etc();
        let e = lookup("mallory", d.path()).unwrap_err();
        assert_eq!(e.to_string(), "unknown user 'mallory' (not in /etc/passwd)");
    }
}
