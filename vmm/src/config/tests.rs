//! The configuration: merging, validation, and the errors that name what is wrong.

use super::checks::EM_X86_64;
use super::*;
use devices::disk::QCOW2_MAGIC;
use std::fs::File;
use std::io::Write;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        std::fs::write(dir.path().join("vmlinux"), elf).unwrap();
        std::fs::write(dir.path().join("disk.img"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("odd.img"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("garbage"), b"not a kernel").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, toml: &str) -> Result<FileConfig, ConfigError> {
        let p = self.path("vm.toml");
        File::create(&p)
            .unwrap()
            .write_all(toml.as_bytes())
            .unwrap();
        FileConfig::load(&p)
    }
}

fn flags_with_kernel(f: &Fixture) -> Overrides {
    Overrides {
        kernel: Some(f.path("vmlinux")),
        ..Default::default()
    }
}

#[test]
fn defaults_are_one_cpu_and_1024_mib() {
    let f = Fixture::new();
    let c = VmConfig::build(FileConfig::default(), flags_with_kernel(&f)).unwrap();
    assert_eq!((c.cpus, c.memory_mib), (1, 1024));
    assert!(c.drives.is_empty() && !c.has_root);
}

#[test]
fn file_paths_are_relative_to_the_file_and_flags_win() {
    let f = Fixture::new();
    let file = f
        .file("kernel = \"vmlinux\"\nrootfs = \"disk.img\"\ncpus = 2\nmemory_mib = 64\n[[drives]]\npath = \"disk.img\"\nread_only = true\n")
        .unwrap();
    let flags = Overrides {
        cpus: Some(3),
        drives: vec![
            parse_drive_flag(&format!("{},id=data", f.path("disk.img").display())).unwrap(),
        ],
        ..Default::default()
    };
    let c = VmConfig::build(file, flags).unwrap();
    assert_eq!(c.kernel, f.path("vmlinux"));
    assert_eq!((c.cpus, c.memory_mib), (3, 64));
    let ids: Vec<_> = c
        .drives
        .iter()
        .map(|d| (d.id.as_str(), d.read_only))
        .collect();
    assert_eq!(ids, [("rootfs", false), ("drive1", true), ("data", false)]);
}

#[test]
fn unknown_keys_name_the_key_and_file() {
    let f = Fixture::new();
    let err = f
        .file("kernel = \"vmlinux\"\nmemory = 5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("vm.toml") && err.contains("memory"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn bad_values_are_refused_with_their_name() {
    let f = Fixture::new();
    let build = |o: Overrides| {
        VmConfig::build(FileConfig::default(), o)
            .unwrap_err()
            .to_string()
    };
    let e = build(Overrides {
        cpus: Some(0),
        ..flags_with_kernel(&f)
    });
    assert!(e.contains("cpus = 0"), "{e}");
    let e = build(Overrides {
        memory_mib: Some(0),
        ..flags_with_kernel(&f)
    });
    assert!(e.contains("memory_mib = 0"), "{e}");
    let e = build(Overrides {
        memory_mib: Some(u64::MAX >> 21),
        ..flags_with_kernel(&f)
    });
    assert!(e.contains("memory_mib"), "{e}");
    let e = build(Overrides {
        kernel: Some(f.path("missing")),
        ..Default::default()
    });
    assert!(e.contains("kernel") && e.contains("missing"), "{e}");
    let e = build(Overrides {
        kernel: Some(f.path("garbage")),
        ..Default::default()
    });
    assert!(e.contains("neither an ELF64"), "{e}");
    let e = build(Overrides {
        rootfs: Some(f.path("odd.img")),
        ..flags_with_kernel(&f)
    });
    assert!(e.contains("rootfs") && e.contains("multiple of 512"), "{e}");
    let e = build(Overrides {
        rootfs: Some(f.path("nope.img")),
        ..flags_with_kernel(&f)
    });
    assert!(e.contains("rootfs") && e.contains("nope.img"), "{e}");
    let e = build(Overrides {
        kernel: None,
        ..Default::default()
    });
    assert!(e.contains("--kernel"), "{e}");
}

#[test]
fn cmdline_lists_root_and_devices_before_user_text() {
    let f = Fixture::new();
    let flags = Overrides {
        rootfs: Some(f.path("disk.img")),
        drives: vec![parse_drive_flag(&f.path("disk.img").display().to_string()).unwrap()],
        append: Some("quiet -- init-arg".into()),
        ..flags_with_kernel(&f)
    };
    let c = VmConfig::build(FileConfig::default(), flags).unwrap();
    assert_eq!(
        c.kernel_cmdline(&crate::virtio_slots::tokens(c.virtio_device_count())),
        "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd root=/dev/vda rw \
         virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 quiet -- init-arg"
    );
    let flags = Overrides {
        append: Some("x".repeat(3000)),
        ..flags_with_kernel(&f)
    };
    let e = VmConfig::build(FileConfig::default(), flags)
        .unwrap_err()
        .to_string();
    assert!(e.contains("append"), "{e}");
}

#[test]
fn an_api_socket_brings_vsock_and_the_agent_as_init() {
    let f = Fixture::new();
    let file = f
        .file("kernel = \"vmlinux\"\n[api]\nsocket = \"api.sock\"\nlifetime_secs = 60\n")
        .unwrap();
    let c = VmConfig::build(file, Overrides::default()).unwrap();
    let api = c.api.clone().unwrap();
    assert_eq!(api.socket, f.path("api.sock"));
    assert_eq!(api.lifetime, Some(std::time::Duration::from_secs(60)));
    let vsock = c.vsock.clone().unwrap();
    assert_eq!(
        (vsock.guest_cid, vsock.uds_path),
        (3, f.path("api.sock.vsock"))
    );
    let cmdline = c.kernel_cmdline(&crate::virtio_slots::tokens(c.virtio_device_count()));
    assert!(
        cmdline.ends_with("virtio_mmio.device=4K@0xd0000000:5 init=/sbin/vmm-agent"),
        "{cmdline}"
    );
    let flags = Overrides {
        init: Some(InitMode::System),
        ..flags_with_kernel(&f)
    };
    let file = f.file("[api]\nsocket = \"api.sock\"\n").unwrap();
    let c = VmConfig::build(file, flags).unwrap();
    assert!(!c.kernel_cmdline(&[]).contains("init="));
}

#[test]
fn sockets_need_an_existing_directory_and_cids_are_checked() {
    let f = Fixture::new();
    let flags = Overrides {
        api_socket: Some(f.path("nope/api.sock")),
        ..flags_with_kernel(&f)
    };
    let e = VmConfig::build(FileConfig::default(), flags)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api socket") && e.contains("does not exist"),
        "{e}"
    );
    let file = f
        .file("kernel = \"vmlinux\"\n[vsock]\nuds_path = \"v.sock\"\nguest_cid = 2\n")
        .unwrap();
    let e = VmConfig::build(file, Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("guest_cid = 2"), "{e}");
}

#[test]
fn a_qcow2_root_disk_gets_an_overlay_and_a_raw_one_is_written_in_place() {
    let f = Fixture::new();
    let qcow2 = f.path("snap.qcow2");
    let mut image = QCOW2_MAGIC.to_vec();
    image.resize(1000, 0); // not a multiple of 512: its size is not the disk's
    std::fs::write(&qcow2, image).unwrap();
    let root = |rootfs: PathBuf, overlay: Option<PathBuf>| {
        let flags = Overrides {
            rootfs: Some(rootfs),
            overlay,
            ..flags_with_kernel(&f)
        };
        VmConfig::build(FileConfig::default(), flags).map(|c| c.drives[0].overlay.clone())
    };
    assert_eq!(root(qcow2.clone(), None).unwrap(), Overlay::Temporary);
    assert_eq!(
        root(qcow2, Some(f.path("o.qcow2"))).unwrap(),
        Overlay::At(f.path("o.qcow2"))
    );
    assert_eq!(root(f.path("disk.img"), None).unwrap(), Overlay::None);
    let file = f
        .file("kernel = \"vmlinux\"\noverlay = \"o.qcow2\"\n")
        .unwrap();
    let e = VmConfig::build(file, Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("o.qcow2") && e.contains("without a root disk"),
        "{e}"
    );
    let flags = Overrides {
        drives: vec![parse_drive_flag(&format!(
            "{},ro,overlay=x.qcow2",
            f.path("disk.img").display()
        ))
        .unwrap()],
        ..flags_with_kernel(&f)
    };
    let e = VmConfig::build(FileConfig::default(), flags)
        .unwrap_err()
        .to_string();
    assert!(e.contains("disk.img") && e.contains("read-only"), "{e}");
}

#[test]
fn drive_flags_parse() {
    assert_eq!(
        parse_drive_flag("/a.img,ro,id=x").unwrap(),
        DriveSpec {
            path: "/a.img".into(),
            read_only: true,
            id: Some("x".into()),
            overlay: None,
        }
    );
    assert_eq!(
        parse_drive_flag("/a.img,overlay=/o.qcow2").unwrap().overlay,
        Some(PathBuf::from("/o.qcow2"))
    );
    assert!(parse_drive_flag("").is_err());
    assert!(parse_drive_flag("/a.img,bogus").is_err());
    assert!(parse_drive_flag("/a.img,overlay=").is_err());
}

#[test]
fn duplicate_and_long_ids_are_refused() {
    let f = Fixture::new();
    let disk = f.path("disk.img").display().to_string();
    let flags = Overrides {
        drives: vec![
            parse_drive_flag(&format!("{disk},id=a")).unwrap(),
            parse_drive_flag(&format!("{disk},id=a")).unwrap(),
        ],
        ..flags_with_kernel(&f)
    };
    assert!(VmConfig::build(FileConfig::default(), flags).is_err());
    let flags = Overrides {
        drives: vec![parse_drive_flag(&format!("{disk},id=aaaaaaaaaaaaaaaaaaaaa")).unwrap()],
        ..flags_with_kernel(&f)
    };
    assert!(VmConfig::build(FileConfig::default(), flags).is_err());
}

#[test]
fn an_entrypoint_comes_from_the_file_or_after_dashes_and_needs_the_api() {
    let f = Fixture::new();
    let toml =
        "kernel = \"vmlinux\"\nentrypoint = [\"dockerd\", \"-D\"]\n[api]\nsocket = \"api.sock\"\n";
    let c = VmConfig::build(f.file(toml).unwrap(), Overrides::default()).unwrap();
    let entrypoint = c.api.unwrap().entrypoint.unwrap();
    assert_eq!(entrypoint.argv, ["dockerd", "-D"]);
    assert!(!entrypoint.keep_running);
    // The command after `--` replaces the file's; --keep-running adds to it.
    let flags = Overrides {
        entrypoint: vec!["sleep".into(), "1".into()],
        keep_running: true,
        ..Default::default()
    };
    let c = VmConfig::build(f.file(toml).unwrap(), flags).unwrap();
    let entrypoint = c.api.unwrap().entrypoint.unwrap();
    assert_eq!(
        (entrypoint.argv, entrypoint.keep_running),
        (vec!["sleep".into(), "1".into()], true)
    );
    // Without the API, or empty, or keep_running alone: errors that say so.
    let e = |toml: &str| {
        VmConfig::build(f.file(toml).unwrap(), Overrides::default())
            .unwrap_err()
            .to_string()
    };
    assert!(e("kernel = \"vmlinux\"\nentrypoint = [\"x\"]\n").contains("--api-sock"));
    let with_api = "kernel = \"vmlinux\"\n[api]\nsocket = \"api.sock\"\n";
    assert!(e(&format!("entrypoint = []\n{with_api}")).contains("empty"));
    assert!(e(&format!("keep_running = true\n{with_api}")).contains("needs an entrypoint"));
}
