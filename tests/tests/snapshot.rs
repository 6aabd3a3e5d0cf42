//! Disk images, overlays and live snapshots with tiny guests (tier 1): the pattern writer
//! (test=blkwrite) keeps writing while its disk is snapshotted, and a second VM booted
//! from the snapshot reads exactly the disk as it was then (test=blkscan).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_tests::{Outcome, Running, Vmm, TINY_ELF};

/// Sectors the pattern writer cycles through.
const SECTORS: u32 = 64;
const SECTOR: usize = 512;
const DISK_BYTES: u64 = 1 << 20;

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Dir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().to_path_buf();
        fs::create_dir(path.join("tmp")).unwrap();
        Self { _tmp: tmp, path }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A zeroed raw base image.
    fn base(&self) -> PathBuf {
        let base = self.join("base.img");
        fs::File::create(&base)
            .unwrap()
            .set_len(DISK_BYTES)
            .unwrap();
        base
    }

    /// A tiny guest in `mode` on `rootfs` (and `overlay`), with its temporary files in
    /// this directory's tmp/ (so a test sees what it leaves behind).
    fn guest(&self, mode: &str, rootfs: &Path, overlay: Option<&Path>) -> Vmm {
        let mut vmm = Vmm::guest(TINY_ELF, &format!("{mode} sectors={SECTORS}"))
            .flag("--rootfs", rootfs)
            .env("TMPDIR", self.join("tmp"));
        if let Some(o) = overlay {
            vmm = vmm.flag("--overlay", o);
        }
        vmm
    }

    fn leftovers(&self) -> Vec<String> {
        fs::read_dir(self.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// Runs `qemu-img ARGS` and asserts that it succeeded (a check or compare finds nothing).
fn qemu_img<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(args: I) {
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(args);
    let out = cmd.output().expect("qemu-img runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `vmm snapshot --json ...`; the JSON object it printed.
fn snapshot(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["snapshot", "--json"];
    all.extend_from_slice(args);
    let out = Vmm::raw(all).run();
    out.assert_code(0);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

/// (pass, first sector, last sector) runs of what the scanner read.
fn runs(out: &Outcome) -> Vec<(u32, u32, u32)> {
    let g = out.assert_passed();
    assert!(
        g.info_all("bad").is_empty(),
        "sectors unlike their pattern\n{out}"
    );
    g.info_all("run")
        .iter()
        .map(|r| {
            let n: Vec<u32> = r.split(' ').map(|x| x.parse().unwrap()).collect();
            (n[0], n[1], n[2])
        })
        .collect()
}

/// The same runs, read on the host from a raw image.
fn host_runs(raw: &[u8]) -> Vec<(u32, u32, u32)> {
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for s in 0..SECTORS {
        let at = s as usize * SECTOR;
        let pass = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
        match runs.last_mut() {
            Some(run) if run.0 == pass => run.2 = s,
            _ => runs.push((pass, s, s)),
        }
    }
    runs
}

/// A cut between two passes, as a request-by-request writer leaves it: pass p+1 up to some
/// sector, pass p after it (or one whole pass).
fn assert_one_cut(runs: &[(u32, u32, u32)]) -> u32 {
    match runs {
        [(p, 0, last)] if *last == SECTORS - 1 => *p,
        [(newer, 0, a), (older, b, last)]
            if newer == &(older + 1) && b == &(a + 1) && *last == SECTORS - 1 =>
        {
            *older
        }
        _ => panic!("not one cut between two passes: {runs:?}"),
    }
}

fn wait_for_pass(vm: &mut Running, pass: u32) {
    vm.wait_for_stdout(&format!("info pass {pass}\n"), Duration::from_secs(20));
}

fn passes(vm: &Running) -> u32 {
    vm.stdout_text()
        .lines()
        .filter_map(|l| l.strip_prefix("info pass "))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

fn end(vm: Running, api: &Path) {
    Vmm::raw(["terminate", "--grace", "1", "--api-sock"])
        .arg(api)
        .run()
        .assert_code(0);
    let out = vm.wait_timeout(Duration::from_secs(10));
    assert!(matches!(out.code(), Some(0) | Some(143)), "{out}");
}

#[test]
fn a_live_snapshot_holds_the_disk_as_it_was_while_the_guest_keeps_writing() {
    let dir = Dir::new();
    let base = dir.base();
    let overlay = dir.join("sandbox.qcow2");
    let api = dir.join("api.sock");
    let mut vm = dir
        .guest("blkwrite", &base, Some(&overlay))
        .flag("--api-sock", &api)
        .spawn();
    wait_for_pass(&mut vm, 3);
    let snap = dir.join("snap.qcow2");
    let reply = snapshot(&[
        "--no-freeze",
        "--api-sock",
        api.to_str().unwrap(),
        snap.to_str().unwrap(),
    ]);
    assert_eq!(reply["path"], snap.to_str().unwrap());
    assert!(reply["size"].as_u64().unwrap() > 0, "{reply}");
    assert!(reply["io_pause_ms"].as_f64().unwrap() > 0.0, "{reply}");
    let sealed = fs::read(&snap).unwrap();
    assert!(
        fs::metadata(&snap).unwrap().permissions().readonly(),
        "a snapshot is read-only"
    );
    let at_snapshot = passes(&vm);
    wait_for_pass(&mut vm, at_snapshot + 3);
    end(vm, &api);
    assert_eq!(
        fs::read(&snap).unwrap(),
        sealed,
        "the snapshot changed after it was taken"
    );

    // What the host reads in the snapshot is one cut, at or after pass 3.
    let flat = dir.join("snap.raw");
    Vmm::raw(["image", "flatten"])
        .arg(&snap)
        .arg(&flat)
        .run()
        .assert_code(0);
    let host = host_runs(&fs::read(&flat).unwrap());
    let cut = assert_one_cut(&host);
    assert!(
        cut >= 3 && cut <= at_snapshot,
        "cut at pass {cut}, {at_snapshot} printed"
    );

    // A VM booted from the snapshot reads exactly that, on a temporary overlay that is gone
    // afterwards, and the snapshot stays as it was.
    let scanned = dir.guest("blkscan", &snap, None).run();
    assert_eq!(runs(&scanned), host);
    assert_eq!(fs::read(&snap).unwrap(), sealed);
    assert!(dir.leftovers().is_empty(), "{:?}", dir.leftovers());

    // The sandbox's own overlay went on: resumed, it shows the passes after the snapshot.
    let resumed = dir.guest("blkscan", &base, Some(&overlay)).run();
    let later = assert_one_cut(&runs(&resumed));
    assert!(later >= at_snapshot + 2, "the overlay ends at pass {later}");
    for image in [&snap, &overlay] {
        qemu_img([OsStr::new("check"), image.as_os_str()]);
    }
    assert_eq!(
        fs::read(&base).unwrap(),
        vec![0u8; DISK_BYTES as usize],
        "the base was written"
    );
}

#[test]
fn a_stopped_sandbox_is_snapshotted_and_a_running_ones_overlay_is_not() {
    let dir = Dir::new();
    let base = dir.base();
    let overlay = dir.join("sandbox.qcow2");
    dir.guest("blkwrite passes=2", &base, Some(&overlay))
        .run()
        .assert_passed();
    let snap = dir.join("stopped.qcow2");
    let reply = snapshot(&["--disk", overlay.to_str().unwrap(), snap.to_str().unwrap()]);
    assert_eq!(reply["path"], snap.to_str().unwrap());
    assert_eq!(
        runs(&dir.guest("blkscan", &snap, None).run()),
        [(2, 0, SECTORS - 1)]
    );

    // While a VM has the overlay open, its lock refuses the offline snapshot and `rm`.
    let api = dir.join("api.sock");
    let mut vm = dir
        .guest("blkwrite", &base, Some(&overlay))
        .flag("--api-sock", &api)
        .spawn();
    wait_for_pass(&mut vm, 1);
    let busy = Vmm::raw(["snapshot", "--disk"])
        .arg(&overlay)
        .arg(dir.join("busy.qcow2"))
        .run();
    busy.assert_code(1).assert_stderr_mentions("in use");
    let rm = Vmm::raw(["image", "rm"]).arg(&snap).run();
    rm.assert_code(1)
        .assert_stderr_mentions("in use by a running sandbox");
    assert!(snap.exists() && !dir.join("busy.qcow2").exists());
    end(vm, &api);
    Vmm::raw(["image", "rm"])
        .arg(dir.join("busy.qcow2"))
        .run()
        .assert_code(1);
}

#[test]
fn snapshots_that_cannot_be_taken_are_refused_and_change_nothing() {
    let dir = Dir::new();
    let base = dir.base();
    let raw_drive = dir.join("data.img");
    fs::File::create(&raw_drive)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let overlay = dir.join("sandbox.qcow2");
    let api = dir.join("api.sock");
    let mut vm = dir
        .guest("blkwrite", &base, Some(&overlay))
        .drive(format!("{},id=data", raw_drive.display()))
        .flag("--api-sock", &api)
        .spawn();
    wait_for_pass(&mut vm, 1);
    let refused = |args: &[&str], why: &str| {
        let mut all = vec![
            "snapshot",
            "--no-freeze",
            "--api-sock",
            api.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = Vmm::raw(all).run();
        out.assert_code(125).assert_stderr_mentions(why);
        assert!(!out.stderr.contains("code:"), "{out}");
    };
    let taken = dir.join("taken.qcow2");
    fs::write(&taken, b"mine").unwrap();
    refused(&[taken.to_str().unwrap()], "exists");
    assert_eq!(fs::read(&taken).unwrap(), b"mine");
    refused(
        &["--drive", "data", dir.join("d.qcow2").to_str().unwrap()],
        "no writable qcow2 overlay",
    );
    refused(
        &["--drive", "nope", dir.join("n.qcow2").to_str().unwrap()],
        "no drive \"nope\"",
    );
    refused(&["/dev/shm/vmm-test-elsewhere.qcow2"], "filesystem");
    assert!(!Path::new("/dev/shm/vmm-test-elsewhere.qcow2").exists());
    // Still writing, to the same overlay.
    let now = passes(&vm);
    wait_for_pass(&mut vm, now + 2);
    end(vm, &api);
    let names: Vec<_> = fs::read_dir(&dir.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qcow2"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn overlays_resume_only_on_their_base_and_images_name_their_faults() {
    let dir = Dir::new();
    let base = dir.base();
    let overlay = dir.join("sandbox.qcow2");
    dir.guest("blkwrite passes=1", &base, Some(&overlay))
        .run()
        .assert_passed();
    let other = dir.join("other.img");
    fs::File::create(&other)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let out = dir.guest("blkscan", &other, Some(&overlay)).run();
    out.assert_code(1).assert_stderr_mentions("not by");
    assert!(out.stderr.contains("other.img"), "{out}");

    // A second name on the overlay (and a leftover next overlay) is a snapshot cut short
    // between its link and its rename: the overlay is not written, and the state before
    // the snapshot is whole under either name.
    fs::hard_link(&overlay, dir.join("torn.qcow2")).unwrap();
    fs::write(dir.join(".sandbox.qcow2.next"), b"half made").unwrap();
    let before = fs::read(&overlay).unwrap();
    dir.guest("blkscan", &base, Some(&overlay))
        .run()
        .assert_code(1)
        .assert_stderr_mentions("2 names");
    assert_eq!(fs::read(&overlay).unwrap(), before);
    assert_eq!(
        runs(&dir.guest("blkscan", &dir.join("torn.qcow2"), None).run()),
        [(1, 0, SECTORS - 1)]
    );
    fs::remove_file(dir.join("torn.qcow2")).unwrap();
    assert_eq!(
        runs(&dir.guest("blkscan", &base, Some(&overlay)).run()),
        [(1, 0, SECTORS - 1)]
    );

    // A missing backing file is named before the guest boots.
    let orphan = dir.join("orphan.qcow2");
    let gone = dir.join("gone.img");
    qemu_img([
        OsStr::new("create"),
        OsStr::new("-q"),
        OsStr::new("-u"),
        OsStr::new("-f"),
        OsStr::new("qcow2"),
        OsStr::new("-F"),
        OsStr::new("raw"),
        OsStr::new("-b"),
        gone.as_os_str(),
        orphan.as_os_str(),
        OsStr::new("1M"),
    ]);
    let out = dir.guest("blkscan", &orphan, None).run();
    out.assert_code(1).assert_stderr_mentions("gone.img");
    assert!(out.guest.info_all("run").is_empty());

    // `vmm image info` shows the chain.
    let info = Vmm::raw(["image", "info", "--json"]).arg(&overlay).run();
    info.assert_code(0);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{v}");
    assert_eq!(layers[0]["format"], "qcow2");
    assert_eq!(layers[1]["path"], base.to_str().unwrap());
    assert_eq!(layers[1]["format"], "raw");
    assert!(layers[0]["allocated_bytes"].as_u64().unwrap() >= 64 * 1024);
}

/// kill -9 while the guest writes: the overlay passes `qemu-img check` and holds every
/// pass the guest had flushed (it prints a pass after its FLUSH completed).
#[test]
fn kill_9_mid_write_leaves_a_consistent_overlay_with_everything_flushed() {
    let dir = Dir::new();
    let base = dir.base();
    let overlay = dir.join("sandbox.qcow2");
    let mut vm = dir.guest("blkwrite", &base, Some(&overlay)).spawn();
    wait_for_pass(&mut vm, 5);
    vm.signal(libc::SIGKILL);
    let flushed = passes(&vm);
    let out = vm.wait_timeout(Duration::from_secs(10));
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out}");
    qemu_img([OsStr::new("check"), overlay.as_os_str()]);
    let cut = assert_one_cut(&runs(&dir.guest("blkscan", &base, Some(&overlay)).run()));
    assert!(
        cut >= flushed,
        "pass {flushed} was flushed, the overlay holds {cut}"
    );
}

/// A data drive as a sandbox platform attaches one: a qcow2 base that is never written,
/// the writes on its `overlay=`, a live snapshot of that drive by its id, and the
/// snapshot flattened into a self-contained qcow2 image that boots with the same content.
#[test]
fn a_qcow2_drive_with_an_overlay_is_snapshotted_by_id_and_flattens_to_qcow2() {
    let dir = Dir::new();
    let base = dir.join("data-base.qcow2");
    qemu_img([
        "create",
        "-q",
        "-f",
        "qcow2",
        base.to_str().unwrap(),
        &DISK_BYTES.to_string(),
    ]);
    let base_before = fs::read(&base).unwrap();
    let overlay = dir.join("data-overlay.qcow2");
    let api = dir.join("api.sock");
    // The only disk, so the pattern writer writes to it.
    let mut vm = Vmm::guest(TINY_ELF, &format!("blkwrite sectors={SECTORS}"))
        .env("TMPDIR", dir.join("tmp"))
        .drive(format!(
            "{},id=data,overlay={}",
            base.display(),
            overlay.display()
        ))
        .flag("--api-sock", &api)
        .spawn();
    wait_for_pass(&mut vm, 2);
    let snap = dir.join("data-snap.qcow2");
    let reply = snapshot(&[
        "--no-freeze",
        "--api-sock",
        api.to_str().unwrap(),
        "--drive",
        "data",
        snap.to_str().unwrap(),
    ]);
    assert_eq!(reply["path"], snap.to_str().unwrap());
    let at_snapshot = passes(&vm);
    wait_for_pass(&mut vm, at_snapshot + 2);
    end(vm, &api);
    assert_eq!(
        fs::read(&base).unwrap(),
        base_before,
        "the base was written"
    );

    // Flattened to qcow2: no backing file, the same content as the snapshot's chain.
    let flat = dir.join("flat.qcow2");
    Vmm::raw(["image", "flatten", "--format", "qcow2"])
        .arg(&snap)
        .arg(&flat)
        .run()
        .assert_code(0);
    let info = Vmm::raw(["image", "info", "--json"]).arg(&flat).run();
    info.assert_code(0);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["layers"].as_array().map(Vec::len),
        Some(1),
        "a flattened image has no backing chain: {info}"
    );
    qemu_img([OsStr::new("compare"), snap.as_os_str(), flat.as_os_str()]);
    let scanned = runs(&dir.guest("blkscan", &flat, None).run());
    let cut = assert_one_cut(&scanned);
    assert!(cut >= 2 && cut <= at_snapshot, "cut at pass {cut}");
}

/// `overlay =` in a config file creates the overlay (relative to the file) and leaves the
/// base unwritten; a snapshot booted with `--overlay` of its own keeps that overlay and
/// never changes.
#[test]
fn a_config_files_overlay_and_a_snapshot_booted_on_an_overlay_of_its_own() {
    let dir = Dir::new();
    let base = dir.base();
    let config = dir.join("vm.toml");
    fs::write(
        &config,
        format!(
            "kernel = \"{TINY_ELF}\"\nrootfs = \"base.img\"\noverlay = \"sb.qcow2\"\n\
             memory_mib = 128\nappend = \"test=blkwrite passes=2 sectors={SECTORS}\"\n"
        ),
    )
    .unwrap();
    Vmm::raw(["run", "--config"])
        .arg(&config)
        .env("TMPDIR", dir.join("tmp"))
        .run()
        .assert_passed();
    let overlay = dir.join("sb.qcow2");
    assert!(overlay.is_file(), "the config's overlay was not created");
    assert_eq!(fs::read(&base).unwrap(), vec![0u8; DISK_BYTES as usize]);

    let snap = dir.join("snap.qcow2");
    snapshot(&["--disk", overlay.to_str().unwrap(), snap.to_str().unwrap()]);
    let sealed = fs::read(&snap).unwrap();
    let own = dir.join("own.qcow2");
    let scanned = dir.guest("blkscan", &snap, Some(&own)).run();
    assert_eq!(assert_one_cut(&runs(&scanned)), 2);
    assert!(own.is_file(), "the snapshot's own overlay is kept");
    assert_eq!(fs::read(&snap).unwrap(), sealed, "the snapshot changed");
    assert!(dir.leftovers().is_empty(), "{:?}", dir.leftovers());
}

/// A chain that loops, layers of different virtual sizes, and a damaged backing file are
/// each refused by `vmm run` before the guest runs, naming the file at fault.
#[test]
fn bad_chains_are_refused_before_boot_naming_the_file() {
    let dir = Dir::new();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let refused = |image: &str, mentions: &str| {
        let out = dir.guest("blk", Path::new(image), None).run();
        out.assert_code(1).assert_stderr_mentions(mentions);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("info "),
            "the guest ran: {out}"
        );
    };

    // a -> b -> a (qemu-img rebase -u rewrites the backing name without checking it).
    let (a, b) = (path("a.qcow2"), path("b.qcow2"));
    qemu_img(["create", "-q", "-f", "qcow2", &b, "1M"]);
    qemu_img(["create", "-q", "-f", "qcow2", "-b", &b, "-F", "qcow2", &a]);
    qemu_img(["rebase", "-u", "-f", "qcow2", "-b", &a, "-F", "qcow2", &b]);
    refused(&a, "loops");

    // A 2 MiB overlay on a 1 MiB base.
    let (small, big) = (path("small.qcow2"), path("big.qcow2"));
    qemu_img(["create", "-q", "-f", "qcow2", &small, "1M"]);
    qemu_img([
        "create", "-q", "-f", "qcow2", "-b", &small, "-F", "qcow2", &big, "2M",
    ]);
    refused(&big, "small.qcow2");

    // A backing file whose qcow2 header is damaged (its L1 table far beyond the file).
    let (damaged, top) = (path("damaged.qcow2"), path("top.qcow2"));
    qemu_img(["create", "-q", "-f", "qcow2", &damaged, "1M"]);
    qemu_img([
        "create", "-q", "-f", "qcow2", "-b", &damaged, "-F", "qcow2", &top,
    ]);
    let mut header = fs::read(&damaged).unwrap();
    header[40..48].copy_from_slice(&(1u64 << 50).to_be_bytes()); // l1_table_offset
    fs::write(&damaged, header).unwrap();
    refused(&top, "damaged.qcow2");
}

/// Live snapshots stack up to the chain limit (16 layers); the next one is refused,
/// naming `vmm image flatten`, and the sandbox goes on writing.
#[test]
fn live_snapshots_stop_at_the_chain_limit_and_name_flatten() {
    let dir = Dir::new();
    let base = dir.base();
    let overlay = dir.join("sandbox.qcow2");
    let api = dir.join("api.sock");
    let mut vm = dir
        .guest("blkwrite", &base, Some(&overlay))
        .flag("--api-sock", &api)
        .spawn();
    wait_for_pass(&mut vm, 1);
    let take = |n: usize| {
        let snap = dir.join(&format!("snap{n}.qcow2"));
        Vmm::raw(["snapshot", "--no-freeze", "--api-sock"])
            .arg(&api)
            .arg(&snap)
            .run()
    };
    // base + overlay = 2 layers; each snapshot adds one, up to 16.
    for n in 1..=14 {
        take(n).assert_code(0);
    }
    let out = take(15);
    out.assert_code(125)
        .assert_stderr_mentions("more than 16")
        .assert_stderr_mentions("vmm image flatten");
    assert!(!dir.join("snap15.qcow2").exists());
    let now = passes(&vm);
    wait_for_pass(&mut vm, now + 2);
    end(vm, &api);
}
