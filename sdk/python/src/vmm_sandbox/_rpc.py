"""The gRPC side: a channel to a sandbox's API socket, the generated stub with types, and
the translation of gRPC errors into the SDK's one-line exceptions.

The stub is the generated `SandboxStub` (vmm_sandbox._proto); `SandboxStub` below only
describes its methods to the type checker, as the generated module has no annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional, Protocol, TypeVar, cast

import grpc

from . import errors
from ._proto import agent_pb2, sandbox_pb2, sandbox_pb2_grpc

T = TypeVar("T", covariant=True)

#: Unary calls (Status, Stat, MakeDir...) get this deadline: the API answers them at
#: once, and the agent's own file operations end after 30 s.
UNARY_TIMEOUT = 60.0
#: File data and exec output travel in chunks well under this.
MAX_MESSAGE = 64 << 20
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.enable_http_proxy", 0),
]


class StreamCall(Protocol[T]):
    """A server-streaming call: an iterator of messages that can be cancelled."""

    def __iter__(self) -> Iterator[T]: ...

    def __next__(self) -> T: ...

    def cancel(self) -> bool: ...


class SandboxStub(Protocol):
    """The methods of the generated vmm.sandbox.v1.Sandbox stub that the SDK calls."""

    def Status(  # noqa: N802 - the RPC's name
        self, request: sandbox_pb2.StatusRequest, timeout: float | None = None
    ) -> sandbox_pb2.StatusResponse: ...

    def Exec(  # noqa: N802
        self, requests: Iterator[sandbox_pb2.ExecRequest], timeout: float | None = None
    ) -> StreamCall[sandbox_pb2.ExecEvent]: ...

    def WriteFile(  # noqa: N802
        self, requests: Iterator[agent_pb2.WriteFileRequest], timeout: float | None = None
    ) -> agent_pb2.WriteFileResponse: ...

    def ReadFile(  # noqa: N802
        self, request: agent_pb2.ReadFileRequest, timeout: float | None = None
    ) -> StreamCall[agent_pb2.ReadFileResponse]: ...

    def MakeDir(  # noqa: N802
        self, request: agent_pb2.MakeDirRequest, timeout: float | None = None
    ) -> agent_pb2.Empty: ...

    def List(  # noqa: N802
        self, request: agent_pb2.ListRequest, timeout: float | None = None
    ) -> agent_pb2.ListResponse: ...

    def Stat(  # noqa: N802
        self, request: agent_pb2.StatRequest, timeout: float | None = None
    ) -> agent_pb2.FileInfo: ...

    def Remove(  # noqa: N802
        self, request: agent_pb2.RemoveRequest, timeout: float | None = None
    ) -> agent_pb2.Empty: ...

    def Rename(  # noqa: N802
        self, request: agent_pb2.RenameRequest, timeout: float | None = None
    ) -> agent_pb2.Empty: ...

    def Terminate(  # noqa: N802
        self, request: sandbox_pb2.TerminateRequest, timeout: float | None = None
    ) -> sandbox_pb2.TerminateResponse: ...

    def Snapshot(  # noqa: N802
        self, request: sandbox_pb2.SnapshotRequest, timeout: float | None = None
    ) -> sandbox_pb2.SnapshotResponse: ...


def connect(api_socket: Path) -> tuple[grpc.Channel, SandboxStub]:
    """A channel to the API socket (connected lazily) and the stub on it."""
    channel = grpc.insecure_channel(f"unix:{api_socket}", options=_OPTIONS)
    stub = cast(SandboxStub, sandbox_pb2_grpc.SandboxStub(channel))  # type: ignore[no-untyped-call,unused-ignore]
    return channel, stub


#: Called for an UNAVAILABLE error: the SDK error to raise when the sandbox has ended
#: (terminated, timed out), else None.
EndedCheck = Callable[[], Optional[errors.SandboxError]]

_FILE_ERRORS: dict[grpc.StatusCode, type[errors.SandboxError]] = {
    grpc.StatusCode.NOT_FOUND: errors.SandboxFileNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: errors.SandboxFileExistsError,
    grpc.StatusCode.PERMISSION_DENIED: errors.SandboxPermissionError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.SandboxFilesystemError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.SandboxFilesystemError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
}
_EXEC_ERRORS: dict[grpc.StatusCode, type[errors.SandboxError]] = {
    grpc.StatusCode.NOT_FOUND: errors.ProgramNotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: errors.ExecError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ExecError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.SandboxTerminatedError,
}


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else "no details"


def translate(
    e: grpc.RpcError,
    what: str,
    ended: EndedCheck,
    kinds: dict[grpc.StatusCode, type[errors.SandboxError]] | None = None,
) -> errors.SandboxError:
    """The SDK exception for a failed call; `what` says what was being done, for errors
    whose details do not (the agent's do: "cannot stat '/x': No such file...")."""
    call = cast(grpc.Call, e)
    code = call.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = one_line(call.details() or "") if hasattr(e, "details") else one_line(str(e))
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        gone = ended()
        if gone is not None:
            return gone
        return errors.SandboxError(f"{what}: the sandbox API is unavailable ({details})")
    kind = (kinds or {}).get(code)
    if kind is not None:
        return kind(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION and "terminating" in details:
        return errors.SandboxTerminatedError(f"{what}: {details}")
    return errors.SandboxError(f"{what}: {details} ({code.name})")


def file_errors() -> dict[grpc.StatusCode, type[errors.SandboxError]]:
    return _FILE_ERRORS


def exec_errors() -> dict[grpc.StatusCode, type[errors.SandboxError]]:
    return _EXEC_ERRORS
