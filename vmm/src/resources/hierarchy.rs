//! Which cgroup hierarchy holds the cpu and memory controllers: the unified one (v2),
//! or one v1 hierarchy per controller (hosts still on v1, such as our CI machine).

use std::path::{Path, PathBuf};

/// Where the controllers are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: one tree with both controllers.
    Unified(PathBuf),
    /// cgroup v1: the cpu and the memory controller each in their own tree.
    Split { cpu: PathBuf, memory: PathBuf },
}

/// One mount from /proc/self/mountinfo: its mount point, filesystem type and super
/// options (where v1 names its controllers).
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fstype: String,
    super_options: String,
}

/// mountinfo fields: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fstype = after.next()?.to_string();
            let super_options = after.nth(1).unwrap_or("").to_string();
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype,
                super_options,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Picks the hierarchy: v2 when its root offers both controllers (`controllers_of`
/// reads a v2 root's cgroup.controllers), else the v1 trees that carry them.
fn choose(mounts: &[Mount], controllers_of: impl Fn(&Path) -> String) -> Option<Hierarchy> {
    let unified = mounts.iter().find(|m| {
        m.fstype == "cgroup2" && {
            let offered = controllers_of(&m.point);
            let has = |c: &str| offered.split_whitespace().any(|o| o == c);
            has("cpu") && has("memory")
        }
    });
    if let Some(m) = unified {
        return Some(Hierarchy::Unified(m.point.clone()));
    }
    let v1 = |controller: &str| {
        mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == controller))
            .map(|m| m.point.clone())
    };
    Some(Hierarchy::Split {
        cpu: v1("cpu")?,
        memory: v1("memory")?,
    })
}

/// This host's hierarchy, as this process sees it.
pub fn detect() -> std::io::Result<Option<Hierarchy>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(choose(&parse_mountinfo(&text), |root| {
        std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    // As on a v1 host (our CI machine), with a v2 tree that has no controllers left.
    const V1: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V2: &str = "\
22 1 0:21 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn a_v1_host_uses_the_cpu_and_memory_trees() {
        let mounts = parse_mountinfo(V1);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            choose(&mounts, |_| String::new()),
            Some(Hierarchy::Split {
                cpu: "/sys/fs/cgroup/cpu".into(),
                memory: "/sys/fs/cgroup/memory".into()
            })
        );
    }

    #[test]
    fn a_v2_host_uses_the_unified_tree_when_it_offers_both_controllers() {
        let mounts = parse_mountinfo(V2);
        assert_eq!(
            choose(&mounts, |_| "cpuset cpu io memory pids".into()),
            Some(Hierarchy::Unified("/sys/fs/cgroup".into()))
        );
        // `cpuset` is not `cpu`: a tree without the cpu controller is no use.
        assert_eq!(choose(&mounts, |_| "cpuset io memory".into()), None);
    }

    #[test]
    fn mount_points_are_unescaped() {
        let m = parse_mountinfo("1 1 0:1 / /a\\040b rw - cgroup2 cgroup2 rw\n");
        assert_eq!(m[0].point, PathBuf::from("/a b"));
        assert!(parse_mountinfo("garbage\n\n").is_empty());
    }
}
