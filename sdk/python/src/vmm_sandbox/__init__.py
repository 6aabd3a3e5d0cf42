"""vmm_sandbox: sandboxes on this host, each a `vmm` process (a Linux VM), driven through
the sandbox API. Shaped like Modal's Sandbox API:

    from vmm_sandbox import Sandbox

    with Sandbox.create() as sb:
        sb.filesystem.write_text("echo hello", "/tmp/hello.sh")
        p = sb.exec("bash", "/tmp/hello.sh")
        p.wait()
        print(p.stdout.read(), p.returncode)

See sdk/python/README.md for every method, what it raises, and where `vmm`, the kernel
and the image come from (VMM_BIN, VMM_KERNEL, VMM_IMAGE).
"""

from .errors import (
    ConfigurationError,
    ExecError,
    ExecTimeoutError,
    ImageError,
    InvalidArgumentError,
    ProgramNotFoundError,
    SandboxError,
    SandboxFileExistsError,
    SandboxFileNotFoundError,
    SandboxFilesystemError,
    SandboxNotFoundError,
    SandboxPermissionError,
    SandboxStartError,
    SandboxTerminatedError,
    SandboxTimeoutError,
    SnapshotError,
)
from .filesystem import FileEntry, Filesystem
from .image import Image
from .output import enable_output
from .process import ContainerProcess, StreamReader, StreamWriter
from .sandbox import Sandbox

__all__ = [
    "ConfigurationError",
    "ContainerProcess",
    "ExecError",
    "ExecTimeoutError",
    "FileEntry",
    "Filesystem",
    "Image",
    "ImageError",
    "InvalidArgumentError",
    "ProgramNotFoundError",
    "Sandbox",
    "SandboxError",
    "SandboxFileExistsError",
    "SandboxFileNotFoundError",
    "SandboxFilesystemError",
    "SandboxNotFoundError",
    "SandboxPermissionError",
    "SandboxStartError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "SnapshotError",
    "StreamReader",
    "enable_output",
    "StreamWriter",
]
__version__ = "0.1.0"
