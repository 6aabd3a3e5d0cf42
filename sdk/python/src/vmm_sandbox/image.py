"""Root filesystem images that a sandbox boots from."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from . import _locate
from .errors import ImageError, SandboxError

#: What `Sandbox.create(image=...)` takes.
ImageLike = Union["Image", str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Image:
    """A root image: a raw ext4 image (build/rootfs.ext4, rootfs-builder's output) or a
    qcow2 image such as a snapshot from `Sandbox.snapshot_filesystem()`.

    A sandbox boots it on an overlay of its own, so the image is never written and any
    number of sandboxes share it."""

    path: Path

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Image:
        """The image at `path`; ImageError when there is no file there."""
        p = Path(path).expanduser()
        if not p.exists():
            raise ImageError(f"image {p}: no such file")
        if p.is_dir():
            raise ImageError(f"image {p}: is a directory, not a disk image")
        return cls(p.resolve())

    @property
    def object_id(self) -> str:
        """The image's name (its file name without .qcow2)."""
        return self.path.name.removesuffix(".qcow2")

    def remove(self) -> None:
        """Deletes the image with `vmm image rm`, which refuses while a running sandbox
        boots from it (directly or through a snapshot on top of it)."""
        vmm = _locate.vmm_bin()
        done = subprocess.run(
            [str(vmm), "image", "rm", str(self.path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise SandboxError(f"cannot remove image {self.path}: {lines[-1]}")


def resolve(image: ImageLike | None) -> Image:
    """The image `Sandbox.create` boots: `image`, else the default ($VMM_IMAGE...)."""
    if image is None:
        return Image.from_path(_locate.default_image())
    if isinstance(image, Image):
        return Image.from_path(image.path)
    if isinstance(image, (str, os.PathLike)):
        return Image.from_path(image)
    raise ImageError(f"image={image!r}: expected a path or an Image (snapshot_filesystem())")
