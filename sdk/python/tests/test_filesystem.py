"""sb.filesystem: files both ways, streamed; directories; errors."""

from __future__ import annotations

import hashlib
import os
import resource
from pathlib import Path

import pytest

from vmm_sandbox import (
    InvalidArgumentError,
    Sandbox,
    SandboxFileExistsError,
    SandboxFileNotFoundError,
    SandboxFilesystemError,
)


def test_text_and_bytes_round_trip(sb: Sandbox) -> None:
    fs = sb.filesystem
    assert fs.write_text("héllo\n", "/tmp/fs/a/b/hello.txt") == len("héllo\n".encode())
    assert fs.read_text("/tmp/fs/a/b/hello.txt") == "héllo\n"
    data = bytes(range(256)) * 1000
    fs.write_bytes(data, "/tmp/fs/blob", mode=0o600)
    assert fs.read_bytes("/tmp/fs/blob") == data
    info = fs.stat("/tmp/fs/blob")
    assert (info.type, info.size, info.mode, info.name) == ("file", len(data), 0o600, "blob")
    # What exec sees is what the file API wrote.
    p = sb.exec("sha256sum", "/tmp/fs/blob")
    assert p.stdout.read().split()[0] == hashlib.sha256(data).hexdigest()


def test_ls_mkdir_rm_rename(sb: Sandbox) -> None:
    fs = sb.filesystem
    fs.mkdir("/tmp/dir1")
    fs.mkdir("/tmp/dir1/x/y", parents=True)
    fs.mkdir("/tmp/dir1/x/y", parents=True)  # -p: no error when it exists
    fs.write_text("1", "/tmp/dir1/f")
    entries = fs.ls("/tmp/dir1")
    assert [(e.name, e.type) for e in entries] == [("f", "file"), ("x", "directory")]
    assert entries[1].is_dir and entries[0].is_file
    fs.rename("/tmp/dir1/f", "/tmp/dir1/g")
    assert fs.exists("/tmp/dir1/g") and not fs.exists("/tmp/dir1/f")
    with pytest.raises(SandboxFilesystemError, match="not empty"):
        fs.rm("/tmp/dir1")
    fs.rm("/tmp/dir1/g")
    fs.rm("/tmp/dir1", recursive=True)
    assert not fs.exists("/tmp/dir1")


def test_errors_are_one_line_and_typed(sb: Sandbox) -> None:
    fs = sb.filesystem
    with pytest.raises(SandboxFileNotFoundError) as e1:
        fs.read_text("/nonexistent/file")
    with pytest.raises(FileNotFoundError):  # a built-in OSError too
        fs.stat("/nonexistent")
    with pytest.raises(SandboxFileExistsError) as e2:
        fs.mkdir("/tmp")
    with pytest.raises(SandboxFilesystemError, match="directory") as e3:
        fs.read_bytes("/etc")
    with pytest.raises(InvalidArgumentError) as e4:
        fs.write_text("x", "relative/path")
    with pytest.raises(SandboxFileNotFoundError) as e5:
        fs.write_text("x", "/nonexistent-dir/f", parents=False)
    for e in (e1, e2, e3, e4, e5):
        assert "\n" not in str(e.value) and str(e.value)


def test_copy_big_file_both_ways_streamed(sb: Sandbox, tmp_path: Path) -> None:
    """256 MiB each way; the process's peak RSS grows by far less than the file."""
    size = 256 << 20
    src = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(size >> 20):
            chunk = block[:-4] + i.to_bytes(4, "little")
            h.update(chunk)
            f.write(chunk)
    os.chmod(src, 0o640)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert sb.filesystem.copy_from_local(src, "/tmp/big.bin") == size
    assert sb.filesystem.stat("/tmp/big.bin").mode == 0o640
    p = sb.exec("sha256sum", "/tmp/big.bin")
    assert p.stdout.read().split()[0] == h.hexdigest()
    dest = tmp_path / "back.bin"
    assert sb.filesystem.copy_to_local("/tmp/big.bin", dest) == size
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) << 10
    assert rss_growth < size // 4, f"peak RSS grew by {rss_growth >> 20} MiB"
    with open(dest, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == h.hexdigest()
    assert dest.stat().st_mode & 0o777 == 0o640
    sb.filesystem.rm("/tmp/big.bin")


def test_copy_to_local_leaves_nothing_on_error(sb: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(SandboxFileNotFoundError):
        sb.filesystem.copy_to_local("/nonexistent", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_from_a_file_object(sb: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"x" * 3_000_000)
    with open(src, "rb") as f:
        assert sb.filesystem.write_bytes(f, "/tmp/from-file") == 3_000_000
    assert sb.filesystem.stat("/tmp/from-file").size == 3_000_000
