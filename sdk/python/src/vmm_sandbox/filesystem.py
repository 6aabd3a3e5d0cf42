"""`sb.filesystem`: files in the sandbox, through the API's file calls (relayed to the
guest agent). Paths in the sandbox are absolute.

Transfers are streamed in chunks both ways (WriteFile takes a stream of chunks, ReadFile
returns one), so copying a 1 GiB file holds one chunk at a time in memory, here and in
the sandbox. The file API handles regular files; a directory, FIFO or device is refused
(SandboxFilesystemError), and `exec` is the way to anything else.
"""

from __future__ import annotations

import os
import stat as stat_mod
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import grpc

from . import errors
from ._proto import agent_pb2
from ._rpc import UNARY_TIMEOUT, EndedCheck, SandboxStub, file_errors, translate

#: Bytes per WriteFile message (and per local read).
CHUNK = 1 << 20

_KINDS = {
    agent_pb2.FILE_KIND_FILE: "file",
    agent_pb2.FILE_KIND_DIR: "directory",
    agent_pb2.FILE_KIND_SYMLINK: "symlink",
    agent_pb2.FILE_KIND_OTHER: "other",
}

LocalPath = Union[str, "os.PathLike[str]"]
Source = Union[bytes, bytearray, memoryview, BinaryIO]


@dataclass(frozen=True)
class FileEntry:
    """What `ls` and `stat` return about a path in the sandbox."""

    name: str
    path: str
    #: "file", "directory", "symlink" or "other".
    type: str
    size: int
    #: Permission bits (0o7777).
    mode: int
    uid: int
    gid: int
    #: Modification time, seconds since the epoch.
    mtime: float
    #: Where a symlink points ("" otherwise).
    symlink_target: str = ""

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def _from_proto(cls, info: agent_pb2.FileInfo) -> FileEntry:
        return cls(
            name=info.name,
            path=info.path,
            type=_KINDS.get(info.kind, "other"),
            size=info.size,
            mode=info.mode,
            uid=info.uid,
            gid=info.gid,
            mtime=info.mtime_unix_ms / 1000,
            symlink_target=info.symlink_target,
        )


def _remote(path: str, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise errors.InvalidArgumentError(
            f"{what}: {path!r} is not an absolute path in the sandbox"
        )
    return path


class Filesystem:
    """The files of one sandbox. Every method raises SandboxFileNotFoundError,
    SandboxFileExistsError, SandboxPermissionError or SandboxFilesystemError (all
    OSError) with the sandbox's one-line reason, InvalidArgumentError for a path that
    is not absolute, and SandboxTerminatedError once the sandbox has ended."""

    def __init__(
        self, stub: SandboxStub, ended: EndedCheck, check_running: Callable[[], None]
    ) -> None:
        self._stub = stub
        self._ended = ended
        self._check_running = check_running

    def _error(self, e: grpc.RpcError, what: str) -> errors.SandboxError:
        return translate(e, what, self._ended, file_errors())

    # -- writing -----------------------------------------------------------------------

    def write_bytes(
        self, data: Source, path: str, *, mode: int = 0o644, parents: bool = True
    ) -> int:
        """Writes `data` (bytes, or a binary file object read in chunks) to `path`,
        replacing the file; creates missing parent directories unless `parents=False`.
        Returns the bytes written."""
        _remote(path, "write_bytes")
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            chunks: Iterable[bytes] = (
                bytes(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)
            )
        elif hasattr(data, "read"):
            chunks = _read_chunks(data)
        else:
            raise errors.InvalidArgumentError(
                f"write_bytes: expected bytes or a binary file, not {type(data).__name__}"
            )
        return self._upload(chunks, path, mode, parents)

    def write_text(
        self,
        data: str,
        path: str,
        *,
        encoding: str = "utf-8",
        mode: int = 0o644,
        parents: bool = True,
    ) -> int:
        """Writes the string `data` to `path` (see write_bytes); returns the bytes
        written. The argument order is Modal's: content first, then path."""
        if not isinstance(data, str):
            raise errors.InvalidArgumentError(
                f"write_text: expected str, not {type(data).__name__}"
            )
        return self.write_bytes(data.encode(encoding), path, mode=mode, parents=parents)

    def copy_from_local(
        self, local_path: LocalPath, remote_path: str, *, mode: int | None = None
    ) -> int:
        """Copies a local file into the sandbox, streamed; the file's permission bits
        unless `mode` is given. Returns the bytes copied."""
        _remote(remote_path, "copy_from_local")
        try:
            f = open(local_path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise errors.InvalidArgumentError(
                f"copy_from_local: {local_path}: {e.strerror}"
            ) from None
        with f:
            bits = stat_mod.S_IMODE(os.fstat(f.fileno()).st_mode) if mode is None else mode
            return self._upload(_read_chunks(f), remote_path, bits, True)

    def _upload(self, chunks: Iterable[bytes], path: str, mode: int, parents: bool) -> int:
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise errors.InvalidArgumentError(f"mode={mode!r}: expected permission bits like 0o644")

        self._check_running()

        def requests() -> Iterator[agent_pb2.WriteFileRequest]:
            header = agent_pb2.WriteFileHeader(path=path, mode=mode, make_parents=parents)
            yield agent_pb2.WriteFileRequest(header=header)
            for chunk in chunks:
                if chunk:
                    yield agent_pb2.WriteFileRequest(data=chunk)

        try:
            return self._stub.WriteFile(requests()).size
        except grpc.RpcError as e:
            raise self._error(e, f"write {path}") from None

    # -- reading -----------------------------------------------------------------------

    def _download(
        self, path: str, what: str, info: list[FileEntry] | None = None
    ) -> Iterator[bytes]:
        """The file's content in chunks as they arrive (`info` gets what it is)."""
        _remote(path, what)
        self._check_running()
        call = self._stub.ReadFile(agent_pb2.ReadFileRequest(path=path))
        try:
            for part in call:
                if part.WhichOneof("part") == "data":
                    yield part.data
                elif info is not None:
                    info.append(FileEntry._from_proto(part.info))
        except grpc.RpcError as e:
            raise self._error(e, f"read {path}") from None
        finally:
            call.cancel()

    def read_bytes(self, path: str) -> bytes:
        """The whole content of the file at `path` (use copy_to_local for big files)."""
        return b"".join(self._download(path, "read_bytes"))

    def read_text(self, path: str, *, encoding: str = "utf-8") -> str:
        """The content of the file at `path`, decoded (invalid bytes replaced)."""
        return self.read_bytes(path).decode(encoding, errors="replace")

    def copy_to_local(self, remote_path: str, local_path: LocalPath) -> int:
        """Copies a file of the sandbox to `local_path`, streamed, with the file's
        permission bits: into a temporary file beside it, renamed into place once
        complete (no partial file is left behind). Returns the bytes copied."""
        dest = Path(local_path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        except OSError as e:
            raise errors.InvalidArgumentError(f"copy_to_local: {dest}: {e.strerror}") from None
        size = 0
        info: list[FileEntry] = []
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self._download(remote_path, "copy_to_local", info):
                    f.write(chunk)
                    size += len(chunk)
            os.chmod(tmp, info[0].mode & 0o777 if info else 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    # -- metadata ----------------------------------------------------------------------

    def ls(self, path: str = "/") -> list[FileEntry]:
        """The entries of the directory `path`, sorted by name."""
        _remote(path, "ls")
        self._check_running()
        try:
            reply = self._stub.List(agent_pb2.ListRequest(path=path), timeout=UNARY_TIMEOUT)
        except grpc.RpcError as e:
            raise self._error(e, f"ls {path}") from None
        return [FileEntry._from_proto(i) for i in reply.entries]

    def stat(self, path: str) -> FileEntry:
        """What `path` is (not following a final symlink: its type is "symlink")."""
        _remote(path, "stat")
        self._check_running()
        try:
            info = self._stub.Stat(agent_pb2.StatRequest(path=path), timeout=UNARY_TIMEOUT)
        except grpc.RpcError as e:
            raise self._error(e, f"stat {path}") from None
        return FileEntry._from_proto(info)

    def exists(self, path: str) -> bool:
        """True when `path` exists in the sandbox."""
        try:
            self.stat(path)
        except errors.SandboxFileNotFoundError:
            return False
        return True

    def mkdir(self, path: str, *, parents: bool = False, mode: int = 0o755) -> None:
        """Creates the directory `path` (with `parents`, as mkdir -p: missing parents
        too, and no error when it exists)."""
        _remote(path, "mkdir")
        self._check_running()
        request = agent_pb2.MakeDirRequest(path=path, mode=mode, parents=parents)
        try:
            self._stub.MakeDir(request, timeout=UNARY_TIMEOUT)
        except grpc.RpcError as e:
            raise self._error(e, f"mkdir {path}") from None

    def rm(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, or a directory (an empty one unless `recursive`)."""
        _remote(path, "rm")
        self._check_running()
        request = agent_pb2.RemoveRequest(path=path, recursive=recursive)
        try:
            self._stub.Remove(request, timeout=UNARY_TIMEOUT)
        except grpc.RpcError as e:
            raise self._error(e, f"rm {path}") from None

    def rename(self, src: str, dst: str) -> None:
        """Renames `src` to `dst` (within the sandbox's filesystem)."""
        _remote(src, "rename")
        _remote(dst, "rename")
        self._check_running()
        request = agent_pb2.RenameRequest(to=dst, **{"from": src})
        try:
            self._stub.Rename(request, timeout=UNARY_TIMEOUT)
        except grpc.RpcError as e:
            raise self._error(e, f"rename {src}") from None


def _read_chunks(f: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk
