"""The per-host registry of sandboxes, through which `Sandbox.from_id` finds one that
another process created.

Two directories, because their contents have different lives:
- the runtime directory (`$VMM_SANDBOX_DIR`; else /run/vmm-sandbox for root, else
  `$XDG_RUNTIME_DIR/vmm-sandbox`, else /tmp/vmm-sandbox-UID) holds one directory per
  sandbox, `<id>/`: `config.toml`, `api.sock`, `vmm.pid`, `vmm.log` (vmm's stderr),
  `console.log` (its stdout: a VM's serial console), `sandbox.json` (what `from_id`
  needs) and, once vmm exited, `exit_status` (written by the keeper, the shell that
  waits for vmm: see _launch). It is usually a tmpfs, gone at reboot with the
  sandboxes themselves;
- the data directory (`$VMM_SANDBOX_DATA`; else /var/lib/vmm-sandbox for root, else
  `$XDG_DATA_HOME/vmm-sandbox`) holds what is disk-sized: `overlays/<id>.qcow2`, each
  sandbox's writes, and `images/`, the snapshots. They share a filesystem, as a
  snapshot is a hard link of an overlay.

A sandbox's pid is recorded with its start time (/proc/PID/stat), so a recycled pid is
never mistaken for it. Entries of sandboxes that ended are removed after
`KEEP_ENDED_SECS` by the next `Sandbox.create`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError, SandboxNotFoundError

RUNTIME_VAR = "VMM_SANDBOX_DIR"
DATA_VAR = "VMM_SANDBOX_DATA"
ID_PATTERN = re.compile(r"^sb-[0-9a-f]{16}$")
#: How long the entry of an ended sandbox stays for `from_id` to report its exit status.
KEEP_ENDED_SECS = 3600
#: A Unix socket path is at most 107 bytes; vmm adds ".vsock" and "_PORT" to it.
MAX_SOCKET_PATH = 107 - len(".vsock_65535")


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def runtime_root() -> Path:
    value = os.environ.get(RUNTIME_VAR)
    if value:
        return _private_dir(Path(value).expanduser().resolve())
    if os.geteuid() == 0:
        return _private_dir(Path("/run/vmm-sandbox"))
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return _private_dir(Path(xdg) / "vmm-sandbox")
    return _private_dir(Path(f"/tmp/vmm-sandbox-{os.geteuid()}"))


def data_root() -> Path:
    value = os.environ.get(DATA_VAR)
    if value:
        return _private_dir(Path(value).expanduser().resolve())
    if os.geteuid() == 0:
        return _private_dir(Path("/var/lib/vmm-sandbox"))
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return _private_dir(Path(xdg) / "vmm-sandbox")


def new_id() -> str:
    return "sb-" + secrets.token_hex(8)


def check_id(sandbox_id: str) -> str:
    if not isinstance(sandbox_id, str) or not ID_PATTERN.match(sandbox_id):
        raise InvalidArgumentError(f"{sandbox_id!r} is not a sandbox id (sb- and 16 hex digits)")
    return sandbox_id


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, start_time: int) -> bool:
    """True while the process `pid` that started at `start_time` runs (a zombie too:
    its parent has not collected its status yet)."""
    return process_start_time(pid) == start_time


@dataclass
class Entry:
    """One sandbox's registry directory."""

    sandbox_id: str
    dir: Path
    overlay: Path

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def api_socket(self) -> Path:
        return self.dir / "api.sock"

    @property
    def pid_file(self) -> Path:
        return self.dir / "vmm.pid"

    @property
    def stderr_log(self) -> Path:
        return self.dir / "vmm.log"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def metadata_file(self) -> Path:
        return self.dir / "sandbox.json"

    @property
    def exit_status_file(self) -> Path:
        return self.dir / "exit_status"

    def write_metadata(self, metadata: dict[str, Any]) -> None:
        write_atomic(self.metadata_file, json.dumps(metadata, indent=1) + "\n")

    def metadata(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.metadata_file.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def exit_status(self) -> int | None:
        try:
            return int(self.exit_status_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def remove_overlay(self) -> None:
        self.overlay.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def create_entry() -> Entry:
    root = runtime_root()
    overlays = _private_dir(data_root() / "overlays")
    collect_garbage(root)
    sandbox_id = new_id()
    d = root / sandbox_id
    socket = d / "api.sock"
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        raise InvalidArgumentError(
            f"the API socket path {socket} is too long for a Unix socket: set {RUNTIME_VAR} "
            "to a shorter directory"
        )
    d.mkdir(mode=0o700)
    return Entry(sandbox_id, d, overlays / f"{sandbox_id}.qcow2")


def open_entry(sandbox_id: str) -> Entry:
    check_id(sandbox_id)
    d = runtime_root() / sandbox_id
    if not (d / "sandbox.json").is_file():
        raise SandboxNotFoundError(f"no sandbox {sandbox_id} on this host (looked in {d})")
    return Entry(sandbox_id, d, data_root() / "overlays" / f"{sandbox_id}.qcow2")


def images_dir() -> Path:
    return _private_dir(data_root() / "images")


def collect_garbage(root: Path, now: float | None = None) -> None:
    """Removes the entries (and overlays) of sandboxes that ended KEEP_ENDED_SECS ago or
    more. A sandbox whose vmm still runs is never touched."""
    now = time.time() if now is None else now
    for d in root.iterdir() if root.is_dir() else ():
        if not ID_PATTERN.match(d.name):
            continue
        entry = Entry(d.name, d, data_root() / "overlays" / f"{d.name}.qcow2")
        meta = entry.metadata()
        pid, start = meta.get("pid"), meta.get("pid_start_time")
        if isinstance(pid, int) and isinstance(start, int) and alive(pid, start):
            continue
        # The last change to the entry: the end of its sandbox (exit_status), or, for
        # one being created right now (no metadata yet), its creation.
        try:
            ended = max([d.stat().st_mtime] + [p.stat().st_mtime for p in d.iterdir()])
        except OSError:
            continue
        if now - ended < KEEP_ENDED_SECS:
            continue
        entry.remove_overlay()
        shutil.rmtree(d, ignore_errors=True)
