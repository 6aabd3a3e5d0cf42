"""sb.stdout / sb.stderr: the entrypoint's output (the Exec RPC's attach)."""

from __future__ import annotations

import time

from vmm_sandbox import Sandbox


def test_entrypoint_output_streams_while_it_runs() -> None:
    script = "echo one; echo err1 >&2; sleep 1.5; echo two; echo err2 >&2; sleep 600"
    with Sandbox.create("sh", "-c", script, block_network=True) as sb:
        t0 = time.monotonic()
        assert sb.stdout.readline() == "one\n"
        assert time.monotonic() - t0 < 1.2
        assert sb.stderr.readline() == "err1\n"
        assert sb.stdout.readline() == "two\n"
        assert sb.stderr.readline() == "err2\n"
        assert sb.poll() is None


def test_output_stays_readable_after_the_entrypoint_ended_the_sandbox() -> None:
    sb = Sandbox.create("sh", "-c", "seq 1 5000; echo done >&2; sleep 0.5", block_network=True)
    assert sb.wait(30) == 0
    lines = list(sb.stdout)
    assert len(lines) == 5000 and lines[0] == "1\n" and lines[-1] == "5000\n"
    assert sb.stderr.read() == "done\n"


def test_no_entrypoint_means_empty_streams() -> None:
    with Sandbox.create(block_network=True) as sb:
        assert sb.stdout.read() == ""
        assert list(sb.stderr) == []


def test_another_process_attaches_from_the_oldest_byte() -> None:
    import subprocess
    import sys

    with Sandbox.create("sh", "-c", "echo early; sleep 600", block_network=True) as sb:
        assert sb.stdout.readline() == "early\n"
        script = (
            "import sys; from vmm_sandbox import Sandbox; "
            "print(Sandbox.from_id(sys.argv[1]).stdout.readline(), end='')"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, sb.object_id],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        assert out == "early\n"
