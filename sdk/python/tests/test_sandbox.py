"""Sandbox.create and the sandbox's life: ids, from_id, wait/poll/returncode, terminate,
the context manager, the entrypoint, the image, the config vmm gets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from conftest import JAIL
from vmm_sandbox import Image, Sandbox, SandboxTerminatedError, SandboxTimeoutError


def _registry_dir(sb: Sandbox) -> Path:
    return Path(os.environ["VMM_SANDBOX_DIR"]) / sb.object_id


def test_defaults_work_and_terminate_ends_it() -> None:
    t0 = time.monotonic()
    sb = Sandbox.create()
    created = time.monotonic() - t0
    assert sb.object_id.startswith("sb-") and len(sb.object_id) == 19
    assert sb.poll() is None and sb.returncode is None
    assert sb.exec("true").wait() == 0
    sb.terminate()
    assert sb.returncode == 0 and sb.poll() == 0 and sb.wait() == 0
    sb.terminate()  # again: nothing to do
    print(f"create -> ready {created * 1000:.0f} ms (vmm: {sb.ready_ms} ms)")
    with pytest.raises(SandboxTerminatedError):
        sb.exec("true")
    with pytest.raises(SandboxTerminatedError):
        sb.filesystem.ls("/")


def test_config_from_arguments() -> None:
    with Sandbox.create(cpu=1.5, memory=512, timeout=99.5, block_network=True) as sb:
        config = tomllib.loads((_registry_dir(sb) / "config.toml").read_text())
        assert config["cpus"] == 2 and config["memory_mib"] == 512
        assert config["api"] == {"socket": sb.api_socket, "lifetime_secs": 100}
        assert config["net"] == {"block_network": True}
        assert config["overlay"].endswith(f"/overlays/{sb.object_id}.qcow2")
        if not JAIL:
            p = sb.exec("sh", "-c", "nproc; grep MemTotal /proc/meminfo")
            nproc, mem = p.stdout.read().splitlines()
            assert nproc == "2"
            assert 400_000 < int(mem.split()[1]) <= 512 * 1024


def test_context_manager_terminates() -> None:
    with Sandbox.create(block_network=True) as sb:
        assert sb.exec("true").wait() == 0
    assert sb.returncode == 0


def test_entrypoint_exit_ends_the_sandbox_with_its_status() -> None:
    # (The pause lets the SDK attach to its output: see "Limits" in the README.)
    sb = Sandbox.create("sh", "-c", "echo bye; sleep 0.5; exit 42", block_network=True)
    assert sb.wait(30) == 42
    assert sb.returncode == 42
    assert sb.stdout.read() == "bye\n"


def test_entrypoint_workdir_and_env_and_exec_defaults() -> None:
    sb = Sandbox.create(
        "sh",
        "-c",
        'echo "$PWD $WHO"; sleep 600',
        workdir="/tmp",
        env={"WHO": "entrypoint"},
        block_network=True,
    )
    with sb:
        assert sb.stdout.readline() == "/tmp entrypoint\n"
        p = sb.exec("sh", "-c", 'echo "$PWD $WHO $X"', env={"X": "x"})
        assert p.stdout.read() == "/tmp entrypoint x\n"
        q = sb.exec("pwd", workdir="/")
        assert q.stdout.read() == "/\n"


def test_lifetime_runs_out() -> None:
    # The lifetime counts from vmm's start: a VM's boot is part of it.
    lifetime = 2 if JAIL else 90
    sb = Sandbox.create(timeout=lifetime, block_network=True)
    with pytest.raises(SandboxTimeoutError, match=f"timeout of {lifetime} s ran out"):
        sb.wait(lifetime + 60)
    assert sb.returncode == 3
    with pytest.raises(SandboxTimeoutError):
        sb.exec("true")


def test_from_id_in_this_and_another_process() -> None:
    with Sandbox.create(block_network=True) as sb:
        assert Sandbox.from_id(sb.object_id) is sb
        sb.filesystem.write_text("from the creator\n", "/tmp/note")
        script = (
            "import sys\n"
            "from vmm_sandbox import Sandbox\n"
            "sb = Sandbox.from_id(sys.argv[1])\n"
            "print(sb.exec('cat', '/tmp/note').stdout.read(), end='')\n"
            "print(sb.poll())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, sb.object_id],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert out == "from the creator\nNone\n"
    # Another process sees how it ended.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vmm_sandbox import Sandbox; "
            "sb = Sandbox.from_id(sys.argv[1]); print(sb.wait(), sb.returncode)",
            sb.object_id,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out == "0 0\n"


def test_a_sandbox_outlives_its_creator_and_another_process_ends_it() -> None:
    script = (
        "from vmm_sandbox import Sandbox\n"
        "sb = Sandbox.create('sh', '-c', 'echo up; sleep 600', block_network=True)\n"
        "print(sb.object_id)\n"
    )
    sandbox_id = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    sb = Sandbox.from_id(sandbox_id)
    assert sb.poll() is None
    assert sb.stdout.readline() == "up\n"
    assert sb.exec("echo", "hi").stdout.read() == "hi\n"
    sb.terminate()
    # vmm was not our child: the keeper that waited for it recorded the status.
    assert sb.returncode == 0 and sb.wait() == 0


def test_image_is_booted_on_an_overlay_and_never_written(tmp_path: Path) -> None:
    base = Path(os.environ.get("VMM_IMAGE", "")) if os.environ.get("VMM_IMAGE") else None
    from vmm_sandbox import _locate

    image = base or _locate.default_image()
    before = (image.stat().st_mtime_ns, image.stat().st_size)
    with Sandbox.create(image=str(image), block_network=True) as sb:
        sb.filesystem.write_text("scribble", "/root/scribble")
        assert sb.exec("sync").wait() == 0
    assert (image.stat().st_mtime_ns, image.stat().st_size) == before
    # A qcow2 image on top of it (what snapshot_filesystem returns) boots as well.
    qcow2 = tmp_path / "layer.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "raw", str(qcow2)],
        check=True,
    )
    with Sandbox.create(image=Image.from_path(qcow2), block_network=True) as sb2:
        assert sb2.filesystem.exists("/etc/os-release")
        assert not sb2.filesystem.exists("/root/scribble")


def test_registry_entry() -> None:
    with Sandbox.create(block_network=True) as sb:
        d = _registry_dir(sb)
        meta = json.loads((d / "sandbox.json").read_text())
        assert meta["id"] == sb.object_id
        assert int((d / "vmm.pid").read_text()) == meta["pid"]
        assert os.path.exists(f"/proc/{meta['pid']}")
        overlay = Path(os.environ["VMM_SANDBOX_DATA"]) / "overlays" / f"{sb.object_id}.qcow2"
    assert (d / "exit_status").read_text() == "0\n"
    assert not overlay.exists(), "the overlay of an ended sandbox is removed"
    digest = hashlib.sha256((d / "config.toml").read_bytes()).hexdigest()
    assert digest  # kept for from_id until garbage-collected


def _descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every process below `pid` (from /proc)."""
    from vmm_sandbox._registry import process_start_time

    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        start = process_start_time(p)
        if start is not None:
            out[p] = start
        todo += children.get(p, [])
    return out


def test_killing_vmm_leaves_nothing_running() -> None:
    """SIGKILL to vmm (here: vmm_jail, whose jail and supervise are tied to it) ends
    everything it started; the keeper records 137."""
    import signal

    from vmm_sandbox._registry import process_start_time

    sb = Sandbox.create("sleep", "600", block_network=True)
    pid = json.loads((_registry_dir(sb) / "sandbox.json").read_text())["pid"]
    below = _descendants(pid)
    if JAIL:
        assert below, "vmm_jail runs nothing?"
    os.kill(pid, signal.SIGKILL)
    assert sb.wait(30) == 128 + signal.SIGKILL
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [p for p, start in below.items() if process_start_time(p) == start]
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"still running after vmm was killed: {left}"
