"""Starting `vmm run` for a sandbox and waiting, without polling, for it to be ready.

vmm writes one JSON line to the file descriptor given with `--ready-fd` when the guest
agent first answers (and, with an entrypoint, once it started), then closes it. The SDK
gives it the write end of a pipe and blocks on the read end: a line means ready; the end
of the pipe without one means vmm exited first, and its stderr's last line says why.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from ._registry import Entry
from .errors import ImageError, SandboxStartError

#: How long vmm may take to exit once it closed the readiness pipe without a line.
EXIT_GRACE = 10.0


#: The keeper: a shell that starts vmm, records its pid, waits for it and records its
#: exit status in the registry. vmm then has a parent that outlives the program that
#: created the sandbox, so `Sandbox.from_id` in another process still learns how it
#: ended. Arguments: the pid file, the status file, then vmm's argv. (The keeper keeps
#: its copy of the readiness pipe, which it never writes: the pipe then ends when the
#: keeper does, right after vmm.)
KEEPER = """pid_file=$1 status_file=$2
shift 2
"$@" &
vmm=$!
echo "$vmm" >"$pid_file.tmp" && mv "$pid_file.tmp" "$pid_file"
wait "$vmm"
status=$?
echo "$status" >"$status_file.tmp" && mv "$status_file.tmp" "$status_file"
exit "$status"
"""


def spawn(vmm: Path, entry: Entry, config_text: str) -> tuple[subprocess.Popen[bytes], int]:
    """Writes the config and starts `vmm run --config FILE --ready-fd N` under the
    keeper; returns the keeper process and the pipe's read end (the caller closes it).

    The keeper (and so vmm) gets a session of its own: a Ctrl-C meant for the program
    that created the sandbox does not reach it (the program ends its sandboxes as it
    sees fit; `timeout` ends them anyway), and it outlives that program."""
    fd = os.open(entry.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config_text)
    read_end, write_end = os.pipe()
    argv = [str(vmm), "run", "--config", str(entry.config), "--ready-fd", str(write_end)]
    keeper = ["/bin/sh", "-c", KEEPER, "vmm-sandbox-keeper", str(entry.pid_file)]
    keeper += [str(entry.exit_status_file), *argv]
    try:
        with open(entry.stderr_log, "wb") as err, open(entry.console_log, "wb") as out:
            process = subprocess.Popen(
                keeper,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(write_end,),
                close_fds=True,
                start_new_session=True,
            )
    except OSError as e:
        os.close(read_end)
        raise SandboxStartError(f"cannot run /bin/sh for {vmm}: {e.strerror}") from None
    finally:
        os.close(write_end)
    return process, read_end


def vmm_pid(entry: Entry, keeper: subprocess.Popen[bytes]) -> int | None:
    """vmm's pid, as the keeper records it at once (None if the keeper failed)."""
    deadline = time.monotonic() + EXIT_GRACE
    while time.monotonic() < deadline:
        try:
            return int(entry.pid_file.read_text())
        except (OSError, ValueError):
            if keeper.poll() is not None and not entry.pid_file.exists():
                return None
            time.sleep(0.001)
    return None


def read_ready_line(read_end: int, deadline: float) -> bytes | None:
    """The readiness line, or None when the pipe ended first or `deadline` (monotonic)
    passed."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([read_end], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_end, 4096)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\n", 1)[0]


def parse_ready_line(line: bytes) -> dict[str, Any]:
    try:
        info = json.loads(line)
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("event") != "ready":
        text = line.decode(errors="replace")
        raise SandboxStartError(f"vmm wrote an unexpected readiness line: {text!r}")
    return info


def last_error_line(entry: Entry) -> str:
    """vmm's one-line error: the last non-empty line of its stderr."""
    try:
        text = entry.stderr_log.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def start_error(entry: Entry, returncode: int | None) -> SandboxStartError:
    """The exception for a vmm that exited (or never got ready) before its sandbox was:
    vmm's own message, as an ImageError when it is about the root image."""
    line = last_error_line(entry)
    try:
        stderr = entry.stderr_log.read_text(errors="replace")
    except OSError:
        stderr = ""
    if not line:
        line = f"vmm exited with status {returncode} and no message"
    if "no kernel given" in line:
        line += " (the SDK looks at VMM_KERNEL, then build/vmlinux of a checkout)"
    message = f"sandbox {entry.sandbox_id} did not start: {line}"
    image_problem = (returncode == 1 and "rootfs" in line) or (
        returncode == 2 and ("mount root" in line or "VFS" in line)
    )
    kind = ImageError if image_problem else SandboxStartError
    return kind(message, returncode, stderr)
