"""Where the SDK finds `vmm`, the guest kernel and the default root image.

Each has an environment variable that wins (VMM_BIN, VMM_KERNEL, VMM_IMAGE); without
it, the SDK looks where a developer has them: `vmm` on PATH, and inside a checkout of
the vmm repository (found by walking up from the current directory) its build outputs.
The environment is read on every call, not at import, so a program (or a test) can
point one sandbox at another `vmm` by changing it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ConfigurationError

BIN_VAR = "VMM_BIN"
KERNEL_VAR = "VMM_KERNEL"
IMAGE_VAR = "VMM_IMAGE"
CGROUP_VAR = "VMM_CGROUP_PARENT"
#: Where sandboxes go in the cgroup tree when the SDK runs as root.
DEFAULT_CGROUP_PARENT = "vmm-sandboxes"


def checkout_root(start: Path | None = None) -> Path | None:
    """The nearest directory at or above `start` (default: the current directory) that
    looks like a built checkout of the vmm repository: Cargo.toml, vmm/ and build/."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "Cargo.toml").is_file() and (d / "vmm").is_dir() and (d / "build").is_dir():
            return d
    return None


def _from_env(var: str) -> Path | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"{var}={value}: no such file")
    return path.resolve()


def vmm_bin() -> Path:
    """$VMM_BIN; else `vmm` on PATH; else target/release/vmm, then target/debug/vmm of
    the checkout around the current directory."""
    path = _from_env(BIN_VAR)
    if path is not None:
        if not os.access(path, os.X_OK):
            raise ConfigurationError(f"{BIN_VAR}={path}: not executable")
        return path
    found = shutil.which("vmm")
    if found:
        return Path(found).resolve()
    root = checkout_root()
    if root is not None:
        for profile in ("release", "debug"):
            candidate = root / "target" / profile / "vmm"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    where = f"; nor in {root}/target/{{release,debug}}" if root else ""
    raise ConfigurationError(
        f"no vmm binary: set {BIN_VAR}, put vmm on PATH, or run inside a built checkout "
        f"(cargo build -p vmm){where}"
    )


def kernel() -> Path | None:
    """$VMM_KERNEL; else build/vmlinux of the checkout. None when neither exists: vmm
    then says that no kernel was given (the test jail needs none)."""
    path = _from_env(KERNEL_VAR)
    if path is not None:
        return path
    root = checkout_root()
    if root is not None and (root / "build" / "vmlinux").is_file():
        return root / "build" / "vmlinux"
    return None


def default_image() -> Path:
    """$VMM_IMAGE; else build/rootfs.ext4 of the checkout."""
    path = _from_env(IMAGE_VAR)
    if path is not None:
        return path
    root = checkout_root()
    if root is not None and (root / "build" / "rootfs.ext4").is_file():
        return root / "build" / "rootfs.ext4"
    raise ConfigurationError(
        f"no root image: pass image=, set {IMAGE_VAR}, or run inside a checkout with "
        "build/rootfs.ext4 (make rootfs)"
    )


def cgroup_parent() -> str | None:
    """The cgroup under which each sandbox's vmm gets its own (for its CPU share and
    memory limit): $VMM_CGROUP_PARENT (empty: no placement); else `vmm-sandboxes` when
    running as root, who may write the cgroup tree, on a host whose /sys/fs/cgroup has
    the cpu and memory controllers (cgroup v2, or v1's cpu and memory trees); else none.
    (vmm itself refuses a cgroup it cannot use: an explicit parent fails loudly.)"""
    value = os.environ.get(CGROUP_VAR)
    if value is not None:
        return value.strip("/") or None
    if os.geteuid() != 0 or not _has_cpu_and_memory_controllers(Path("/sys/fs/cgroup")):
        return None
    return DEFAULT_CGROUP_PARENT


def _has_cpu_and_memory_controllers(root: Path) -> bool:
    try:
        unified = (root / "cgroup.controllers").read_text().split()
    except OSError:
        return (root / "cpu" / "cpu.shares").is_file() and (
            root / "memory" / "memory.limit_in_bytes"
        ).is_file()
    return "cpu" in unified and "memory" in unified
