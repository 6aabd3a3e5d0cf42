//! Tier 3, filesystem snapshots of real Linux guests: the agent freezes the root
//! filesystem and a loop-mounted image on it, the overlay is sealed while the guest
//! runs, and sandboxes started from the snapshot see exactly what was there.

use std::time::Duration;

use vmm_client::{Client, ExecOutput};
use vmm_tests::sandbox::{repo_file, skip_tier3, RootDisk, Sandbox};

async fn start(root: RootDisk) -> Sandbox {
    tokio::task::spawn_blocking(move || Sandbox::start_vm_on(root, &[]))
        .await
        .unwrap()
}

/// Runs `script` with sh; panics with its output unless it exits 0.
async fn sh(c: &Client, script: &str) -> String {
    let out: ExecOutput = c.run(&["sh", "-c", script], b"").await.expect("exec");
    let code = out.exited.as_ref().and_then(|e| e.status);
    assert_eq!(
        code,
        Some(vmm_protocol::pb::exited::Status::Code(0)),
        "{script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn stop(mut sb: Sandbox) {
    let c = sb.client().await;
    c.terminate(Duration::from_secs(10))
        .await
        .expect("terminate");
    tokio::task::spawn_blocking(move || sb.wait_exit(Duration::from_secs(120)))
        .await
        .unwrap();
}

/// A package built and installed from a local .deb (no network here).
const INSTALL_DEB: &str = "set -e
mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/local/bin
printf 'Package: vmm-hello\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@example.invalid>\\nDescription: snapshot test\\n' > /tmp/pkg/DEBIAN/control
printf '#!/bin/sh\\necho hello from the package\\n' > /tmp/pkg/usr/local/bin/vmm-hello
chmod 755 /tmp/pkg/usr/local/bin/vmm-hello
dpkg-deb --build /tmp/pkg /root/vmm-hello.deb >/dev/null
dpkg -i /root/vmm-hello.deb >/dev/null";

const WRITE_BEFORE: &str = "set -e
mkdir -p /data /mnt/loop
head -c 4M /dev/urandom > /data/a.bin
truncate -s 64M /data/loop.img
mkfs.ext4 -q -F /data/loop.img
mount -o loop /data/loop.img /mnt/loop
head -c 1M /dev/urandom > /mnt/loop/b.bin
sha256sum /data/a.bin /mnt/loop/b.bin";

const WRITE_AFTER: &str = "set -e
head -c 4M /dev/urandom > /data/a.bin
echo after > /data/c.txt
head -c 1M /dev/urandom > /mnt/loop/b.bin
dpkg -r vmm-hello >/dev/null
sync
sha256sum /data/a.bin /mnt/loop/b.bin";

const READ_BACK: &str = "set -e
mkdir -p /mnt/loop
mount -o loop /data/loop.img /mnt/loop
sha256sum /data/a.bin /mnt/loop/b.bin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_a_snapshot_holds_the_filesystems_as_frozen_and_sandboxes_share_the_base() {
    if skip_tier3("a_snapshot_holds_the_filesystems_as_frozen_and_sandboxes_share_the_base") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = repo_file("build/rootfs.ext4");
    let base_before = std::fs::metadata(&base).unwrap();
    let a = start(RootDisk::Overlay {
        base: base.clone(),
        overlay: dir.path().join("a.qcow2"),
    })
    .await;
    let ca = a.client().await;
    sh(&ca, INSTALL_DEB).await;
    let before = sh(&ca, WRITE_BEFORE).await;

    // No sync of ours: the freeze must flush what the guest has in its page cache.
    let snap = dir.path().join("snap.qcow2");
    let reply = ca
        .snapshot("", snap.to_str().unwrap(), false)
        .await
        .expect("snapshot");
    assert_eq!(reply.frozen, ["/mnt/loop", "/"], "{reply:?}");
    assert!(reply.pause_ms > 0.0 && reply.io_pause_ms > 0.0, "{reply:?}");
    assert!(reply.size > 0);
    // The guest thawed: it writes on.
    let after = sh(&ca, WRITE_AFTER).await;
    assert_ne!(before, after);
    guest_thaws_after_a_failed_seal_and_by_itself(&a, &ca).await;

    // Started from the snapshot, while the first still runs on the same base.
    let b = start(RootDisk::Image(snap.clone())).await;
    let cb = b.client().await;
    assert_eq!(sh(&cb, READ_BACK).await, before, "the snapshot's files");
    assert_eq!(sh(&cb, "vmm-hello").await, "hello from the package\n");
    sh(
        &cb,
        "dpkg -s vmm-hello | grep -qx 'Status: install ok installed'",
    )
    .await;
    sh(&cb, "test ! -e /data/c.txt").await;
    sh(&cb, "echo from-b > /data/d.txt && sync").await;
    sh(&ca, "test ! -e /data/d.txt && test -e /data/c.txt").await;
    assert_eq!(
        sh(&ca, "sha256sum /data/a.bin /mnt/loop/b.bin").await,
        after
    );
    stop(b).await;
    stop(a).await;

    let base_after = std::fs::metadata(&base).unwrap();
    assert_eq!(
        (base_after.len(), modified(&base_after)),
        (base_before.len(), modified(&base_before)),
        "the shared base was written"
    );
    assert!(!dir.path().join(".a.qcow2.next").exists());
}

fn modified(m: &std::fs::Metadata) -> std::time::SystemTime {
    m.modified().unwrap()
}

/// A loop that writes 256 KiB files, syncs, and prints how many are synced.
const WRITE_LOOP: &str = "mkdir -p /data; i=0; while :; do i=$((i+1));
head -c 256K /dev/urandom > /data/f$i; sha256sum /data/f$i >> /data/sums; sync; echo $i; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_kill_9_during_writes_leaves_a_clean_overlay_with_everything_synced() {
    if skip_tier3("kill_9_during_writes_leaves_a_clean_overlay_with_everything_synced") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = repo_file("build/rootfs.ext4");
    let overlay = dir.path().join("a.qcow2");
    let root = || RootDisk::Overlay {
        base: base.clone(),
        overlay: overlay.clone(),
    };
    let mut a = start(root()).await;
    let ca = a.client().await;
    let process = vmm_protocol::pb::ExecStart {
        argv: ["sh", "-c", WRITE_LOOP].map(String::from).to_vec(),
        ..Default::default()
    };
    let mut session = ca.exec(process, None).await.expect("exec");
    let mut printed = String::new();
    let synced = loop {
        let event = session
            .events
            .message()
            .await
            .expect("events")
            .expect("output");
        if let Some(vmm_protocol::api::exec_event::Event::Stdout(out)) = event.event {
            printed.push_str(&String::from_utf8_lossy(&out.data));
            let last = printed.lines().rev().find_map(|l| l.parse::<u32>().ok());
            if let Some(n) = last.filter(|&n| n >= 20) {
                break n;
            }
        }
    };
    a.process.kill().expect("kill -9 the vmm");
    let _ = a.process.wait();

    let check = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&overlay)
        .output()
        .expect("qemu-img runs");
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    // 0: clean; 3: leaked clusters only, which a crash may leave.
    assert!(
        check.status.code() == Some(0)
            || (check.status.code() == Some(3) && !report.contains("ERROR")),
        "qemu-img check: {report}{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Resumed, the overlay holds every file the guest had synced.
    let b = start(root()).await;
    let cb = b.client().await;
    sh(
        &cb,
        &format!("head -n {synced} /data/sums | sha256sum -c --quiet && test -s /data/f{synced}"),
    )
    .await;
    stop(b).await;
}

/// A seal that fails after the freeze (a snapshot on another filesystem) still thaws the
/// guest; and a freeze nobody thaws ends by itself after its timeout.
async fn guest_thaws_after_a_failed_seal_and_by_itself(sb: &Sandbox, c: &Client) {
    let elsewhere = "/dev/shm/vmm-snapshot-elsewhere.qcow2";
    let e = c.snapshot("", elsewhere, false).await.unwrap_err();
    assert!(e.to_string().contains("filesystem"), "{e}");
    // Frozen, this would wait for the agent's 10 s timeout.
    sh(c, "timeout 5 sh -c 'echo ok > /data/after-error && sync'").await;

    let channel = vmm_protocol::connect::channel(sb.agent_address())
        .await
        .expect("connect to the agent");
    let mut agent = vmm_protocol::pb::agent_client::AgentClient::new(channel);
    let frozen = agent
        .freeze(vmm_protocol::pb::FreezeRequest {
            disk_serial: "rootfs".into(),
            timeout_ms: 3000,
        })
        .await
        .expect("freeze")
        .into_inner();
    assert_eq!(frozen.mountpoints, ["/mnt/loop", "/"]);
    let again = agent
        .freeze(vmm_protocol::pb::FreezeRequest {
            disk_serial: "rootfs".into(),
            timeout_ms: 3000,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again}");
    let blocked = c
        .run(&["timeout", "1", "touch", "/data/while-frozen"], b"")
        .await
        .expect("exec");
    assert_eq!(
        blocked.code(),
        Some(124),
        "a write to a frozen filesystem waits"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    sh(c, "timeout 5 touch /data/after-timeout").await;
    let thawed = agent
        .thaw(vmm_protocol::pb::ThawRequest {})
        .await
        .expect("thaw")
        .into_inner();
    assert!(
        thawed.timed_out && thawed.mountpoints.is_empty(),
        "{thawed:?}"
    );
}
