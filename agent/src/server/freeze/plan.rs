//! Which filesystems a freeze of one disk covers, and in what order: every filesystem
//! mounted from the disk (or a partition of it), and every filesystem on a loop device
//! whose backing file lives on one of those, innermost first — so that a loop-mounted
//! image is flushed into its backing file before the filesystem holding it freezes.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A block device number, "major:minor" in sysfs and mountinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.trim().split_once(':')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    fn from_st_dev(dev: u64) -> Self {
        Self {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

/// One mounted filesystem, as /proc/self/mountinfo shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mountpoint: PathBuf,
}

/// Parses mountinfo: field 3 is "major:minor", field 5 the mount point, with spaces,
/// tabs, newlines and backslashes octal-escaped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = DevNum::parse(fields.nth(2)?)?;
            let mountpoint = PathBuf::from(unescape(fields.nth(1)?));
            Some(Mount { dev, mountpoint })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the freeze plan reads the system's state; tests point it at a fake tree.
pub struct System<'a> {
    pub sys_block: &'a Path,
    pub mountinfo: &'a str,
}

/// The mounts to freeze for the disk whose serial is `serial`, innermost first, one per
/// filesystem (bind mounts of the same one are skipped). NotFound when no disk has it.
pub fn plan(system: &System, serial: &str) -> io::Result<Vec<Mount>> {
    let disks = read_dir_names(system.sys_block)?;
    let disk = disks
        .iter()
        .find(|name| {
            read_trimmed(&system.sys_block.join(name).join("serial")).as_deref() == Some(serial)
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no disk has the serial {serial:?}"),
            )
        })?;
    // Depth 0: the disk and its partitions; depth d+1: loop devices backed by a file on a
    // device of depth d.
    let mut depth: HashMap<DevNum, usize> = devices_of(&system.sys_block.join(disk))
        .into_iter()
        .map(|dev| (dev, 0))
        .collect();
    let loops: Vec<(DevNum, DevNum)> = disks
        .iter()
        .filter_map(|name| loop_backing(&system.sys_block.join(name)))
        .collect();
    for level in 0..loops.len() {
        for &(loop_dev, backing_dev) in &loops {
            if depth.get(&backing_dev) == Some(&level) && !depth.contains_key(&loop_dev) {
                depth.insert(loop_dev, level + 1);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut mounts: Vec<(usize, Mount)> = parse_mountinfo(system.mountinfo)
        .into_iter()
        .filter_map(|m| Some((*depth.get(&m.dev)?, m)))
        .filter(|(_, m)| seen.insert(m.dev))
        .collect();
    // Innermost first; within a level, deeper mount points first (a filesystem mounted
    // on a directory of another freezes before it).
    mounts.sort_by(|(da, a), (db, b)| {
        db.cmp(da).then(
            b.mountpoint
                .components()
                .count()
                .cmp(&a.mountpoint.components().count()),
        )
    });
    Ok(mounts.into_iter().map(|(_, m)| m).collect())
}

fn read_dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim_end_matches(['\n', '\0']).to_string())
}

/// The disk's own device number and its partitions' (subdirectories with a `dev` file).
fn devices_of(disk: &Path) -> Vec<DevNum> {
    let own = read_trimmed(&disk.join("dev")).and_then(|s| DevNum::parse(&s));
    let partitions = read_dir_names(disk)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| {
            let path = disk.join(name);
            path.join("partition").exists().then_some(())?;
            DevNum::parse(&read_trimmed(&path.join("dev"))?)
        });
    own.into_iter().chain(partitions).collect()
}

/// A loop device's number and the device its backing file is on.
fn loop_backing(dir: &Path) -> Option<(DevNum, DevNum)> {
    let file = read_trimmed(&dir.join("loop/backing_file"))?;
    let file = file.strip_suffix(" (deleted)").unwrap_or(&file);
    let backing = DevNum::from_st_dev(std::fs::metadata(file).ok()?.dev());
    Some((DevNum::parse(&read_trimmed(&dir.join("dev"))?)?, backing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_and_escapes() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 7:0 / /mnt/a\\040dir rw - ext4 /dev/loop0 rw\n\
                    bad line\n";
        assert_eq!(
            parse_mountinfo(text),
            [
                Mount {
                    dev: DevNum {
                        major: 254,
                        minor: 0
                    },
                    mountpoint: "/".into()
                },
                Mount {
                    dev: DevNum { major: 7, minor: 0 },
                    mountpoint: "/mnt/a dir".into()
                },
            ]
        );
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_plan_covers_partitions_and_loop_images_innermost_first() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("block");
        write(&sys.join("vda/serial"), "rootfs");
        // Device numbers no real disk here has (the host's own disk is often 254:0).
        write(&sys.join("vda/dev"), "250:99\n");
        write(&sys.join("vdb/serial"), "data\0\0");
        write(&sys.join("vdb/dev"), "250:100\n");
        write(&sys.join("vdb/vdb1/partition"), "1\n");
        // A loop device backed by a file that is on the same host filesystem as the
        // temporary directory: its device number stands in for vdb1's below.
        let image = dir.path().join("image.ext4");
        write(&image, "");
        let host = DevNum::from_st_dev(std::fs::metadata(&image).unwrap().dev());
        write(&sys.join("loop0/dev"), "7:0\n");
        write(
            &sys.join("loop0/loop/backing_file"),
            image.to_str().unwrap(),
        );
        let mountinfo = format!(
            "1 0 250:99 / / rw - ext4 /dev/vda rw\n\
             2 1 {}:{} / /data rw - ext4 /dev/vdb1 rw\n\
             3 1 {}:{} / /data/bind rw - ext4 /dev/vdb1 rw\n\
             4 1 7:0 / /mnt/img rw - ext4 /dev/loop0 rw\n\
             5 1 0:5 / /proc rw - proc proc rw\n",
            host.major, host.minor, host.major, host.minor
        );
        // Pretend vdb1 is the host device of the image file.
        write(
            &sys.join("vdb/vdb1/dev"),
            &format!("{}:{}\n", host.major, host.minor),
        );
        let system = System {
            sys_block: &sys,
            mountinfo: &mountinfo,
        };
        let points: Vec<_> = plan(&system, "data")
            .unwrap()
            .into_iter()
            .map(|m| m.mountpoint)
            .collect();
        assert_eq!(points, [PathBuf::from("/mnt/img"), PathBuf::from("/data")]);
        let root: Vec<_> = plan(&system, "rootfs").unwrap();
        assert_eq!(root.len(), 1);
        assert_eq!(root[0].mountpoint, PathBuf::from("/"));
        let e = plan(&system, "nope").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
