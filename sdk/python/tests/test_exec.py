"""sb.exec: output as it streams in, stdin, exit status, pty, text and bytes."""

from __future__ import annotations

import hashlib
import time

import pytest

from vmm_sandbox import ContainerProcess, Sandbox


def test_stdout_stderr_and_exit_code(sb: Sandbox) -> None:
    p = sb.exec("sh", "-c", "echo out; echo err >&2; exit 7")
    assert isinstance(p, ContainerProcess)
    assert p.wait() == 7
    assert p.returncode == 7
    assert p.stdout.read() == "out\n"
    assert p.stderr.read() == "err\n"
    assert p.stdout.read() == ""  # at the end


def test_lines_arrive_while_the_process_runs(sb: Sandbox) -> None:
    p = sb.exec("sh", "-c", "echo first; sleep 2; echo second")
    t0 = time.monotonic()
    assert p.stdout.readline() == "first\n"
    assert time.monotonic() - t0 < 1.5, "the first line waited for the process"
    assert p.poll() is None
    assert p.pid is not None and p.pid > 0
    assert list(p.stdout) == ["second\n"]
    assert p.wait() == 0


def test_iteration_keeps_the_last_line_without_newline(sb: Sandbox) -> None:
    p = sb.exec("printf", "a\\nb\\nc")
    assert list(p.stdout) == ["a\n", "b\n", "c"]


def test_stdin_write_drain_eof(sb: Sandbox) -> None:
    p = sb.exec("sh", "-c", "read a; echo got $a; cat")
    p.stdin.write("hello\n")
    p.stdin.drain()
    assert p.stdout.readline() == "got hello\n"
    p.stdin.write(b"bytes too\n")
    p.stdin.write_eof()
    assert p.stdout.read() == "bytes too\n"
    assert p.wait() == 0


def test_big_stdin_and_stdout_stream_through(sb: Sandbox) -> None:
    payload = bytes(range(256)) * 8192 * 4  # 8 MiB
    p = sb.exec("sha256sum", text=False)
    for i in range(0, len(payload), 1 << 20):
        p.stdin.write(payload[i : i + (1 << 20)])
    p.stdin.write_eof()
    assert p.stdout.read().split()[0].decode() == hashlib.sha256(payload).hexdigest()
    # And out: 8 MiB of output, read as it comes.
    q = sb.exec("head", "-c", str(len(payload)), "/dev/zero", text=False)
    total = 0
    while chunk := q.stdout.read(1 << 20):
        total += len(chunk)
    assert total == len(payload)
    assert q.wait() == 0


def test_bytes_mode(sb: Sandbox) -> None:
    p = sb.exec("printf", "\\377\\000x\\n", text=False)
    assert p.stdout.read() == b"\xff\x00x\n"
    q = sb.exec("printf", "\\377x\\n")
    assert q.stdout.read() == "\ufffdx\n"  # invalid UTF-8 is replaced in text mode


def test_workdir_and_env(sb: Sandbox) -> None:
    p = sb.exec("sh", "-c", "pwd; echo $GREETING", workdir="/tmp", env={"GREETING": "hi there"})
    assert p.stdout.read() == "/tmp\nhi there\n"


def test_signal_exit_is_negative(sb: Sandbox) -> None:
    p = sb.exec("sleep", "30")
    p.terminate()
    assert p.wait(10) == -15


def test_wait_timeout_leaves_it_running(sb: Sandbox) -> None:
    p = sb.exec("sleep", "30")
    with pytest.raises(TimeoutError):
        p.wait(0.2)
    assert p.poll() is None
    p.kill()
    assert p.wait(10) == -9


def test_pty(sb: Sandbox) -> None:
    p = sb.exec("sh", "-c", "test -t 0 && test -t 1 && echo tty; echo err >&2", pty=True)
    assert p.wait() == 0
    out = p.stdout.read()
    # A terminal turns \n into \r\n, and stderr shares it.
    assert out.replace("\r\n", "\n") == "tty\nerr\n"
    assert p.stderr.read() == ""
    q = sb.exec("sh", "-c", "test -t 1 || echo no-tty")
    assert q.stdout.read() == "no-tty\n"


def test_many_execs_at_once(sb: Sandbox) -> None:
    procs = [sb.exec("sh", "-c", f"sleep 0.2; echo {i}") for i in range(32)]
    assert [p.stdout.read() for p in procs] == [f"{i}\n" for i in range(32)]
    assert all(p.wait() == 0 for p in procs)
