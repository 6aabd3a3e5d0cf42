"""The exceptions of the SDK. Every one has a one-line message that says what went wrong
and where; none lets a gRPC error (or a traceback from inside grpc) through.

They also derive from the built-in exception a caller would catch for the same thing
locally (`FileNotFoundError`, `TimeoutError`, `ValueError`...), so code written for a
local process or file keeps working.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base class of every error of this SDK."""


class InvalidArgumentError(SandboxError, ValueError):
    """An argument was refused: by the SDK before anything ran, or by the sandbox (the
    API's INVALID_ARGUMENT), e.g. a relative path for the file API."""


class ConfigurationError(SandboxError):
    """This host lacks what a sandbox needs: no `vmm` binary, kernel or image where the
    SDK looked (the message names the environment variable that sets it)."""


class SandboxStartError(SandboxError):
    """`vmm` exited before the sandbox was ready. The message is vmm's own one-line
    error; `returncode` is vmm's exit status and `stderr` all it wrote."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class ImageError(SandboxStartError):
    """The root image was refused: missing, not a disk image, or one that vmm (or the
    guest) cannot boot."""


class SandboxNotFoundError(SandboxError, LookupError):
    """`Sandbox.from_id`: no sandbox with that id is registered on this host."""


class SandboxTerminatedError(SandboxError):
    """The sandbox has ended (terminated, powered off, or its entrypoint exited), so it
    can no longer run commands or move files."""


class SandboxTimeoutError(SandboxTerminatedError, TimeoutError):
    """The sandbox ended because its lifetime (`timeout` of `Sandbox.create`) ran out."""


class ExecError(SandboxError):
    """The sandbox could not start the command (e.g. permission denied)."""


class ProgramNotFoundError(ExecError, FileNotFoundError):
    """The program (or the working directory) of an exec does not exist in the sandbox."""


class ExecTimeoutError(SandboxError, TimeoutError):
    """The exec's own `timeout` ran out and the process was killed (SIGKILL). Raised by
    `wait()`; `returncode` is still set (-9)."""


class SandboxFilesystemError(SandboxError, OSError):
    """A file operation in the sandbox failed (e.g. reading a directory as a file)."""


class SandboxFileNotFoundError(SandboxFilesystemError, FileNotFoundError):
    """A path of a file operation does not exist in the sandbox."""


class SandboxFileExistsError(SandboxFilesystemError, FileExistsError):
    """A path of a file operation already exists in the sandbox."""


class SandboxPermissionError(SandboxFilesystemError, PermissionError):
    """The sandbox refused a file operation for lack of permission."""


class SnapshotError(SandboxError):
    """A filesystem snapshot could not be taken (the sandbox carries on unchanged)."""
