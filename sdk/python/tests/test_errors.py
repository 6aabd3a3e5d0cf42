"""Every failure is a documented exception with a one-line message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import JAIL
from vmm_sandbox import (
    ConfigurationError,
    ExecError,
    ExecTimeoutError,
    ImageError,
    InvalidArgumentError,
    ProgramNotFoundError,
    Sandbox,
    SandboxError,
    SandboxNotFoundError,
    SandboxStartError,
    SandboxTerminatedError,
)


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(e.value)
    assert text and "\n" not in text, repr(text)
    assert "Traceback" not in text and "grpc" not in text.lower(), text
    return text


def test_missing_image_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as e:
        Sandbox.create(image=tmp_path / "nope.ext4")
    assert one_line(e) == f"image {tmp_path / 'nope.ext4'}: no such file"


def test_bad_image_carries_vmms_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.img"
    bad.write_bytes(os.urandom(1 << 20))
    with pytest.raises(ImageError) as e:
        Sandbox.create(image=bad, block_network=True)
    text = one_line(e)
    assert "did not start" in text
    # The jail refuses it up front (naming it); a VM's kernel panics: it cannot mount it.
    assert str(bad) in text if JAIL else "VFS" in text
    assert isinstance(e.value, SandboxStartError) and e.value.returncode in (1, 2)


def test_vmm_refusing_the_config_is_a_start_error() -> None:
    with pytest.raises(SandboxStartError) as e:
        Sandbox.create(memory=1 << 30, block_network=True)  # 1 PiB: more than this host
    assert "memory_mib" in one_line(e)
    assert e.value.returncode == 1


def test_missing_program_and_workdir() -> None:
    with Sandbox.create(block_network=True) as sb:
        with pytest.raises(ProgramNotFoundError) as e:
            sb.exec("no-such-program", "arg")
        assert one_line(e) == "cannot run 'no-such-program': No such file or directory"
        with pytest.raises(FileNotFoundError):  # the built-in, too
            sb.exec("/no/such/path")
        with pytest.raises(ProgramNotFoundError) as e2:
            sb.exec("true", workdir="/no/such/dir")
        assert "working directory" in one_line(e2)
        with pytest.raises(ExecError) as e3:
            sb.exec("/etc/passwd")
        assert "Permission denied" in one_line(e3)
        # The sandbox is fine afterwards.
        assert sb.exec("true").wait() == 0


def test_exec_timeout_kills_and_raises() -> None:
    with Sandbox.create(block_network=True) as sb:
        p = sb.exec("sh", "-c", "echo started; sleep 30", timeout=0.5)
        assert p.stdout.readline() == "started\n"
        with pytest.raises(ExecTimeoutError) as e:
            p.wait(20)
        assert "timeout" in one_line(e)
        assert isinstance(e.value, TimeoutError)
        assert p.returncode == -9 and p.timed_out


def test_a_missing_entrypoint_ends_the_sandbox_with_127() -> None:
    # As `docker run`: the sandbox started, and ended at once with 127.
    sb = Sandbox.create("no-such-entrypoint", block_network=True)
    assert sb.wait(30) == 127
    assert sb.stdout.read() == ""
    with pytest.raises(SandboxTerminatedError) as e:
        sb.exec("true")
    assert one_line(e) == f"sandbox {sb.object_id} has ended (exit status 127)"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"cpu": 0}, "cpu=0"),
        ({"cpu": 33}, "cpu=33"),
        ({"cpu": "2"}, "cpu='2'"),
        ({"memory": 8}, "memory=8"),
        ({"memory": 1.5}, "memory=1.5"),
        ({"timeout": 0}, "timeout=0"),
        ({"cidr_allowlist": ["10.0.0.0/33"]}, "10.0.0.0/33"),
        ({"cidr_allowlist": ["fd00::/8"]}, "IPv6"),
        ({"cidr_allowlist": "10.0.0.0/8"}, "not one string"),
        ({"block_network": True, "cidr_allowlist": []}, "block_network"),
        ({"workdir": "relative"}, "workdir='relative'"),
        ({"env": {"BAD NAME": "x"}}, "BAD NAME"),
        ({"env": {"X": 1}}, "env['X']"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        Sandbox.create(**kwargs)  # type: ignore[arg-type]
    assert fragment in one_line(e)
    assert isinstance(e.value, ValueError)


def test_bad_exec_arguments(sb: Sandbox) -> None:
    for call in (
        lambda: sb.exec(),
        lambda: sb.exec("true", timeout=-1),
        lambda: sb.exec("true", workdir="tmp"),
        lambda: sb.exec("true", env={"A=B": "c"}),
        lambda: sb.exec("echo", 3),  # type: ignore[call-overload]
    ):
        with pytest.raises(InvalidArgumentError) as e:
            call()
        one_line(e)


def test_from_id_errors() -> None:
    with pytest.raises(SandboxNotFoundError) as e:
        Sandbox.from_id("sb-0123456789abcdef")
    assert "no sandbox sb-0123456789abcdef" in one_line(e)
    with pytest.raises(InvalidArgumentError) as e2:
        Sandbox.from_id("../../etc")
    one_line(e2)


def test_no_vmm_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMM_BIN", str(tmp_path / "no-vmm"))
    with pytest.raises(ConfigurationError) as e:
        Sandbox.create()
    assert one_line(e) == f"VMM_BIN={tmp_path / 'no-vmm'}: no such file"


def test_no_kernel_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMM_KERNEL", str(tmp_path / "vmlinux"))
    with pytest.raises(ConfigurationError, match="VMM_KERNEL"):
        Sandbox.create()


def test_snapshot_refused_without_a_vm_disk(sb: Sandbox) -> None:
    if not JAIL:
        pytest.skip("a VM has a disk to snapshot (test_snapshot.py)")
    from vmm_sandbox import SnapshotError

    with pytest.raises(SnapshotError) as e:
        sb.snapshot_filesystem()
    assert one_line(e) == f"snapshot of {sb.object_id}: this sandbox has no VM drives to snapshot"


def test_errors_share_a_base() -> None:
    for cls in (ImageError, ProgramNotFoundError, ExecTimeoutError, ConfigurationError):
        assert issubclass(cls, SandboxError)
