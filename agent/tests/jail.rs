//! Tier 2 smoke test: the static agent as PID 1 of the test jail (a chroot of
//! build/rootfs.ext4 in fresh namespaces), driven over its Unix socket.
//! Needs root, `make rootfs` and `make agent` (the static binary).

mod common;
#[path = "../../tests/src/jail.rs"]
mod jail;

use std::time::Duration;

use agent::pb::write_file_request::Part as WritePart;
use agent::pb::{NetworkConfig, PingRequest, ShutdownRequest, WriteFileHeader, WriteFileRequest};
use common::*;
use jail::Jail;

/// The script from the VM sandbox documentation (reference/vm-sandboxes.txt).
const LOOP_MOUNT_SCRIPT: &str = "
  # Format an ext4 filesystem onto a regular file.
  truncate -s 100M /tmp/disk.img
  mkfs.ext4 -F /tmp/disk.img

  # Mount it. This works in a VM, but isn't supported in gVisor.
  mkdir -p /mnt/loop
  mount -o loop /tmp/disk.img /mnt/loop
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jail_runs_the_agent_as_init_and_loop_mounts() {
    let mut jail =
        tokio::task::spawn_blocking(|| Jail::start(&Jail::rootfs_image(), &Jail::agent_bin()))
            .await
            .unwrap();
    let mut c = connect(jail.socket_path()).await;

    let ping = c.ping(PingRequest {}).await.unwrap().into_inner();
    assert_eq!(ping.pid, 1, "the agent is PID 1 of the jail");
    assert_eq!(ping.hostname, jail::JAIL_HOSTNAME);

    let out = run_ok(&mut c, "cat /etc/hostname; echo $$; hostname; ls /").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "vmm-guest", "{out}");
    let shell_pid: u32 = lines[1].parse().unwrap();
    assert!(
        shell_pid > 1 && shell_pid < 1000,
        "pid {shell_pid} is not from a new PID namespace"
    );
    assert_eq!(lines[2], "sandbox");
    for dir in ["bin", "etc", "proc", "tmp", "usr", "vmm"] {
        assert!(lines.contains(&dir), "no /{dir} in `ls /`: {out}");
    }
    eprintln!("jail: {out}");

    // PID 1 duties happened inside the namespace. (/dev and /sys are the jail's own,
    // mounted before the agent starts; in a VM the agent mounts devtmpfs and sysfs.)
    let mounts = run_ok(&mut c, "cat /proc/self/mounts").await;
    for m in [
        " /proc proc ",
        " /sys sysfs ro,",
        " /dev tmpfs ",
        " /dev/pts devpts ",
        " /dev/shm tmpfs ",
        " /run tmpfs ",
        " /sys/fs/cgroup cgroup2 ",
    ] {
        assert!(mounts.contains(m), "no `{m}` mount in the jail:\n{mounts}");
    }
    assert_eq!(
        run_ok(&mut c, "readlink /proc/1/exe").await,
        "/vmm/vmm-agent\n"
    );

    // The orphans of an exec are reaped by the agent as init.
    run_ok(&mut c, "for i in 1 2 3 4 5; do (sleep 0.1 &); done").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let states = run_ok(
        &mut c,
        "cat /proc/[0-9]*/stat 2>/dev/null | sed 's/.*) //' | cut -c1",
    )
    .await;
    assert!(!states.contains('Z'), "zombies in the jail: {states:?}");

    // A PTY from the jail's own devpts instance.
    let mut s = start(&["tty"]);
    s.tty = true;
    let out = run(&mut c, s).await.unwrap();
    assert!(
        out.stdout_text().starts_with("/dev/pts/"),
        "{:?}",
        out.stdout_text()
    );

    // The documented loop-mount script, written through WriteFile and run with bash.
    let parts = vec![
        WriteFileRequest {
            part: Some(WritePart::Header(WriteFileHeader {
                path: "/tmp/mount_loopback_filesystem.sh".into(),
                mode: 0o755,
                make_parents: false,
            })),
        },
        WriteFileRequest {
            part: Some(WritePart::Data(
                LOOP_MOUNT_SCRIPT.as_bytes().to_vec().into(),
            )),
        },
    ];
    c.write_file(tokio_stream::iter(parts)).await.unwrap();
    let out = run(
        &mut c,
        start(&["bash", "/tmp/mount_loopback_filesystem.sh"]),
    )
    .await
    .unwrap();
    assert_eq!(
        out.code(),
        Some(0),
        "loop mount failed:\n{}\n{}",
        out.stdout_text(),
        out.stderr_text()
    );
    let df = run_ok(&mut c, "df -h /mnt/loop").await;
    eprintln!("{df}");
    let line = df
        .lines()
        .find(|l| l.ends_with("/mnt/loop"))
        .expect("df line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields[0].starts_with("/dev/loop"), "{df}");
    let size: f64 = fields[1]
        .trim_end_matches('M')
        .parse()
        .expect("size in MiB");
    assert!(
        (80.0..=100.0).contains(&size),
        "not a ~100M file system: {df}"
    );
    let fstype = run_ok(
        &mut c,
        "findmnt -n -o FSTYPE /mnt/loop || stat -f -c %T /mnt/loop",
    )
    .await;
    assert!(fstype.starts_with("ext"), "{fstype}");
    run_ok(
        &mut c,
        "echo hi > /mnt/loop/x && cat /mnt/loop/x && umount /mnt/loop",
    )
    .await;

    // Shutdown ends the jail: the agent exits 0 and its PID namespace goes with it.
    c.shutdown(ShutdownRequest {}).await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let s = jail.wait(Duration::from_secs(10));
        (s, jail)
    })
    .await
    .unwrap();
    let (status, jail) = status;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "jail did not end cleanly; agent log:\n{}",
        jail.log()
    );
    drop(jail);
}

/// The jail shares nothing of the host that a sandbox could damage: its /dev is a private
/// tmpfs (the host's devtmpfs, whose /dev/null a file write once replaced, is not
/// there), /sys is read-only, the network namespace has only `lo`, and its processes
/// are counted against their own pids.max.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jail_has_its_own_dev_net_and_pids_and_a_read_only_sys() {
    let jail =
        tokio::task::spawn_blocking(|| Jail::start(&Jail::rootfs_image(), &Jail::agent_bin()))
            .await
            .unwrap();
    let mut c = connect(jail.socket_path()).await;
    let out = run_ok(
        &mut c,
        "stat -f -c %T /dev; ls /sys/class/net; \
         touch /sys/kernel/vmm-test 2>&1 || true; \
         echo x >/dev/null && stat -c %F /dev/null",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "tmpfs", "{out}");
    assert_eq!(lines[1], "lo", "{out}");
    assert!(lines[2].contains("Read-only file system"), "{out}");
    assert_eq!(lines[3], "character special file", "{out}");
    let pid = jail.agent_pid().expect("agent pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            (controllers == "pids" || controllers.is_empty()).then(|| path.to_string())
        })
        .filter(|p| p.contains("vmm-jail-"))
        .unwrap_or_else(|| panic!("the agent is not in a jail cgroup:\n{cgroups}"));
    // Under cgroup v2 the agent sits in a leaf (vmm-agent) below the jail's group.
    let path = path
        .split_inclusive('/')
        .take_while(|c| !c.starts_with("vmm-agent"))
        .collect::<String>();
    let path = path.trim_end_matches('/');
    let base = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/pids"
    };
    let max = std::fs::read_to_string(format!("{base}{path}/pids.max")).unwrap();
    assert_eq!(max.trim(), jail::JAIL_PIDS_MAX.to_string());
}

/// ConfigureNetwork through the API, the agent as PID 1 of the jail's own network
/// namespace: a veth end made inside the jail stands in for the VM's NIC, and
/// /etc/resolv.conf starts as systemd-resolved's symlink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_configures_the_nic_with_the_given_mac() {
    let jail =
        tokio::task::spawn_blocking(|| Jail::start(&Jail::rootfs_image(), &Jail::agent_bin()))
            .await
            .unwrap();
    let mut c = connect(jail.socket_path()).await;
    run_ok(
        &mut c,
        "ip link add eth0 address 02:00:0a:c8:03:04 type veth peer name host0 \
         && ip link set host0 up \
         && ln -sfn ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf",
    )
    .await;
    let config = |gateway: &str, mtu: u32| NetworkConfig {
        mac: "02:00:0a:c8:03:04".into(),
        address: "10.200.3.4".into(),
        prefix_len: 16,
        gateway: gateway.into(),
        mtu,
        nameservers: vec!["10.200.0.1".into(), "1.1.1.1".into()],
    };
    let reply = c
        .configure_network(config("10.200.0.1", 1400))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.interface, "eth0");
    let state = "ip -o link show dev eth0; ip -o -4 addr show dev eth0; ip route show default; \
                 test -L /etc/resolv.conf && echo symlink; cat /etc/resolv.conf";
    let out = run_ok(&mut c, state).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(",UP,") && lines[0].contains(" mtu 1400 "),
        "{out}"
    );
    assert!(
        lines[1].contains(" inet 10.200.3.4/16 brd 10.200.255.255 "),
        "{out}"
    );
    assert_eq!(lines[2], "default via 10.200.0.1 dev eth0 ", "{out}");
    assert_eq!(
        lines[3..],
        [
            "# Written by vmm-agent (ConfigureNetwork) from what the host assigned.",
            "nameserver 10.200.0.1",
            "nameserver 1.1.1.1"
        ],
        "{out}"
    );

    // Again with another gateway: the default route moves.
    c.configure_network(config("10.200.0.254", 0))
        .await
        .unwrap();
    let out = run_ok(&mut c, "ip route show default").await;
    assert_eq!(out, "default via 10.200.0.254 dev eth0 \n");

    let mut unknown = config("10.200.0.1", 0);
    unknown.mac = "02:00:0a:c8:03:99".into();
    let e = c.configure_network(unknown).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(
        e.message()
            .starts_with("no interface has MAC 02:00:0a:c8:03:99 (seen: lo, "),
        "{e:?}"
    );
    let mut bad = config("10.200.0.1", 0);
    bad.address = "10.0.0.300".into();
    let e = c.configure_network(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(e.message(), "address \"10.0.0.300\": not an IPv4 address");
    let log = jail.log();
    assert!(
        log.contains("eth0: 10.200.3.4/16 via 10.200.0.1, mtu 1400, dns 10.200.0.1 1.1.1.1"),
        "{log}"
    );
}
