"""A process in a sandbox: `Sandbox.exec`'s result, and the entrypoint's output streams.

One Exec call (a bidirectional gRPC stream) carries everything about a process: stdin,
signals and resizes one way; `started`, stdout and stderr chunks and `exited` the other.
A background thread (the pump) reads the events as they come and files them into one
buffer per stream, so `p.stdout` can be read, or iterated line by line, while the
process runs, and stdout and stderr never wait on each other.

The buffers are bounded (`OUTPUT_LIMIT` per stream). When a stream's buffer is full the
pump stops reading, the API's own flow control then holds the process back (after
4 MiB more), and `wait()` waits as well: as with `subprocess.PIPE`, read what a process
writes in bulk. The entrypoint's streams are the exception: vmm keeps its output as a
ring that never holds it back, and so does the SDK (the oldest unread output goes).
"""

from __future__ import annotations

import codecs
import queue
import signal as signals
import threading
from collections import deque
from collections.abc import Iterator
from typing import AnyStr, Generic, Union, cast

import grpc

from . import errors
from ._proto import agent_pb2, sandbox_pb2
from ._rpc import EndedCheck, SandboxStub, StreamCall, exec_errors, translate

#: Unread output kept per stream before the pump waits for a reader (exec) or drops
#: the oldest (the entrypoint's ring), in bytes or, for text, characters.
OUTPUT_LIMIT = 16 << 20
#: stdin goes out in messages of at most this many bytes; `write()` sends by itself
#: once this much is buffered.
STDIN_CHUNK = 256 << 10

Data = Union[str, bytes, bytearray, memoryview]


class StreamReader(Generic[AnyStr]):
    """A process's stdout or stderr: `read()`, `readline()` and line iteration, which
    block until the data (or the end of the stream) arrives. Text (`str`, UTF-8 with
    invalid bytes replaced) or `bytes`, as the process was started."""

    def __init__(self, name: str, text: bool, drop_oldest: bool = False) -> None:
        self._name = name
        self._text = text
        self._drop_oldest = drop_oldest
        self._cond = threading.Condition()
        self._chunks: deque[AnyStr] = deque()
        self._size = 0
        self._eof = False
        self._error: errors.SandboxError | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if text else None
        self._empty: AnyStr = cast(AnyStr, "" if text else b"")
        self._newline: AnyStr = cast(AnyStr, "\n" if text else b"\n")

    # -- the pump's side ---------------------------------------------------------------

    def _decode(self, data: bytes, final: bool = False) -> AnyStr:
        """`data` as this stream's type; UTF-8 split across chunks is decoded whole."""
        out: str | bytes = bytes(data)
        if self._decoder is not None:
            out = self._decoder.decode(data, final)
        return cast(AnyStr, out)

    def _feed(self, data: bytes) -> None:
        chunk = self._decode(data)
        if not chunk:
            return
        with self._cond:
            if not self._drop_oldest:
                while self._size >= OUTPUT_LIMIT:
                    self._cond.wait()
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._drop_oldest and self._size > OUTPUT_LIMIT and len(self._chunks) > 1:
                self._size -= len(self._chunks.popleft())
            self._cond.notify_all()

    def _close(self, error: errors.SandboxError | None = None) -> None:
        with self._cond:
            if self._decoder is not None:
                tail = self._decode(b"", final=True)
                if tail:
                    self._chunks.append(tail)
                    self._size += len(tail)
            self._eof = True
            self._error = error
            self._cond.notify_all()

    # -- the reader's side -------------------------------------------------------------

    def _take(self, n: int) -> AnyStr:
        """Removes and returns the first `n` units (all when n >= size); under the lock."""
        parts: list[AnyStr] = []
        while n > 0 and self._chunks:
            head = self._chunks[0]
            if len(head) <= n:
                parts.append(self._chunks.popleft())
                n -= len(head)
            else:
                parts.append(head[:n])
                self._chunks[0] = head[n:]
                n = 0
        out = self._empty.join(parts)
        self._size -= len(out)
        self._cond.notify_all()
        return out

    def _raise_if_failed(self) -> None:
        if self._error is not None and not self._chunks:
            error, self._error = self._error, None
            raise error

    def read(self, n: int = -1) -> AnyStr:
        """Up to `n` characters (bytes), or everything until the stream ends when n < 0.
        Blocks until that much has arrived or the stream ended; at the end, returns an
        empty string. Raises the sandbox's error (e.g. SandboxTerminatedError) if the
        stream broke, once the output that did arrive has been read."""
        with self._cond:
            while not self._eof and (n < 0 or self._size < n):
                self._cond.wait()
            if not self._chunks:
                self._raise_if_failed()
            return self._take(self._size if n < 0 else n)

    def readline(self) -> AnyStr:
        """The next line, with its newline; the last one may lack it; empty at the end."""
        with self._cond:
            while True:
                pos = 0
                for chunk in self._chunks:
                    at = chunk.find(self._newline)
                    if at >= 0:
                        return self._take(pos + at + 1)
                    pos += len(chunk)
                if self._eof:
                    if not self._chunks:
                        self._raise_if_failed()
                    return self._take(self._size)
                self._cond.wait()

    def __iter__(self) -> Iterator[AnyStr]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def __repr__(self) -> str:
        return f"<StreamReader {self._name}>"


class StreamWriter:
    """A process's stdin. `write()` buffers (and sends by itself past STDIN_CHUNK),
    `drain()` sends what is buffered and returns once it went out, `write_eof()` closes
    the process's stdin after the buffered data. Writes after the process exited are
    dropped, as nothing could read them."""

    def __init__(self, process: ContainerProcess[str] | ContainerProcess[bytes]) -> None:
        self._process = process
        self._buffer = bytearray()
        self._eof = False
        self._lock = threading.Lock()

    def write(self, data: Data) -> None:
        """Buffers `data` (str is encoded as UTF-8)."""
        if isinstance(data, str):
            raw = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raise errors.InvalidArgumentError(
                f"stdin.write: expected str or bytes, not {type(data).__name__}"
            )
        with self._lock:
            if self._eof:
                raise errors.InvalidArgumentError("stdin.write after write_eof()")
            self._buffer += raw
            full = len(self._buffer) >= STDIN_CHUNK
        if full:
            self.drain()

    def _flush(self) -> None:
        with self._lock:
            data, self._buffer = bytes(self._buffer), bytearray()
        for i in range(0, len(data), STDIN_CHUNK):
            self._process._send(sandbox_pb2.ExecRequest(stdin=data[i : i + STDIN_CHUNK]))

    def drain(self) -> None:
        """Sends the buffered data; returns once the sandbox's API has taken it (or the
        process has ended)."""
        self._flush()
        self._process._wait_sent()

    def write_eof(self) -> None:
        """Closes the process's stdin once the buffered data is sent (it reads EOF)."""
        self._flush()
        with self._lock:
            if self._eof:
                return
            self._eof = True
        self._process._send(sandbox_pb2.ExecRequest(close_stdin=agent_pb2.CloseStdin()))
        self._process._wait_sent()


class ContainerProcess(Generic[AnyStr]):
    """A process running in a sandbox (`Sandbox.exec`), or the sandbox's entrypoint.

    `stdout` and `stderr` stream its output (with `pty=True`, both arrive on stdout),
    `stdin` takes its input. `wait()`, `poll()` and `returncode` follow subprocess:
    the exit code, or -N when signal N killed it."""

    def __init__(
        self,
        stub: SandboxStub,
        first: sandbox_pb2.ExecRequest,
        text: bool,
        ended: EndedCheck,
        what: str,
        drop_oldest: bool = False,
    ) -> None:
        self.stdout: StreamReader[AnyStr] = StreamReader(f"{what} stdout", text, drop_oldest)
        self.stderr: StreamReader[AnyStr] = StreamReader(f"{what} stderr", text, drop_oldest)
        self.stdin = StreamWriter(self)
        self.exec_id = ""
        self._pid: int | None = None
        self.returncode: int | None = None
        #: True when the exec's own `timeout` ended it (SIGKILL).
        self.timed_out = False
        self._what = what
        self._ended = ended
        self._requests: queue.Queue[sandbox_pb2.ExecRequest | None] = queue.Queue()
        self._cond = threading.Condition()
        self._queued = 0
        self._sent = 0
        self._started = threading.Event()
        self._done = threading.Event()
        self._start_error: errors.SandboxError | None = None
        self._error: errors.SandboxError | None = None
        self._missing = False
        self._call: StreamCall[sandbox_pb2.ExecEvent] = stub.Exec(self._request_iter(first))
        self._pump_thread = threading.Thread(
            target=self._pump, name=f"vmm-sandbox {what}", daemon=True
        )
        self._pump_thread.start()

    # -- start -------------------------------------------------------------------------

    def _wait_started(self, missing_ok: bool = False) -> None:
        """Blocks until the process runs; raises why it could not start (a missing
        program: ProgramNotFoundError). With `missing_ok`, an attach to an exec that
        does not exist (no entrypoint), or in a sandbox that has ended, leaves empty,
        ended streams instead."""
        self._started.wait()
        if self._start_error is not None:
            if missing_ok and self._missing:
                return
            raise self._start_error

    @property
    def pid(self) -> int | None:
        """The process's pid inside the sandbox."""
        return self._pid

    # -- the request stream ------------------------------------------------------------

    def _request_iter(self, first: sandbox_pb2.ExecRequest) -> Iterator[sandbox_pb2.ExecRequest]:
        yield first
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item
            # gRPC asks for the next message once this one went out.
            with self._cond:
                self._sent += 1
                self._cond.notify_all()

    def _send(self, request: sandbox_pb2.ExecRequest) -> None:
        if self._done.is_set():
            return
        with self._cond:
            self._queued += 1
        self._requests.put(request)

    def _wait_sent(self) -> None:
        with self._cond:
            while self._sent < self._queued and not self._done.is_set():
                self._cond.wait(0.1)

    # -- the pump ----------------------------------------------------------------------

    def _pump(self) -> None:
        error: errors.SandboxError | None = None
        exited = False
        try:
            for event in self._call:
                kind = event.WhichOneof("event")
                if kind == "started":
                    self.exec_id = event.started.exec_id
                    self._pid = event.started.pid
                    self._started.set()
                elif kind == "stdout":
                    self.stdout._feed(event.stdout.data)
                elif kind == "stderr":
                    self.stderr._feed(event.stderr.data)
                elif kind == "exited":
                    self._record_exit(event.exited)
                    exited = True
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            self._missing = code == grpc.StatusCode.NOT_FOUND
            error = translate(e, self._what, self._ended, exec_errors())
        except Exception as e:  # noqa: BLE001 - the pump must always end the streams
            error = errors.SandboxError(f"{self._what}: {type(e).__name__}: {e}")
        if exited:
            error = None  # what came after the exit status (the sandbox ending) is moot
        elif error is None:
            error = errors.SandboxError(f"{self._what}: the stream ended without an exit status")
        if not self._started.is_set():
            self._start_error = error
            # Nothing to attach to: no such exec, or the sandbox already ended (an
            # entrypoint that ended it at once). The streams are then empty.
            self._missing = self._missing or isinstance(error, errors.SandboxTerminatedError)
            error = None if self._missing else error
        self._error = error
        self.stdout._close(error)
        self.stderr._close(error)
        with self._cond:
            self._done.set()
            self._cond.notify_all()
        self._started.set()
        self._requests.put(None)

    def _record_exit(self, exited: agent_pb2.Exited) -> None:
        status = exited.WhichOneof("status")
        if status == "signal":
            self.returncode = -exited.signal
        else:
            self.returncode = exited.code
        self.timed_out = exited.timed_out

    # -- the caller's side -------------------------------------------------------------

    def poll(self) -> int | None:
        """The exit status if the process has ended, else None."""
        if not self._done.is_set():
            return None
        return self._result()

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the process to end; returns its exit status (-N for signal N).

        Raises TimeoutError if it still runs after `timeout` seconds (it keeps running),
        ExecTimeoutError if the exec's own `timeout` killed it, SandboxTerminatedError
        (or SandboxTimeoutError) if the sandbox ended under it."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self._what} still runs after {timeout} s")
        return self._result()

    def _result(self) -> int:
        if self._error is not None:
            raise self._error
        if self._start_error is not None:
            raise self._start_error
        assert self.returncode is not None
        if self.timed_out:
            raise errors.ExecTimeoutError(
                f"{self._what} was killed: its timeout ran out (returncode {self.returncode})"
            )
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Sends signal `sig` to the process (its process group)."""
        self._send(sandbox_pb2.ExecRequest(signal=int(sig)))

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signals.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signals.SIGKILL)

    def resize(self, rows: int, cols: int) -> None:
        """The PTY's new window size (pty=True)."""
        self._send(sandbox_pb2.ExecRequest(resize=agent_pb2.WindowSize(rows=rows, cols=cols)))

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<ContainerProcess {self.exec_id or self._what} pid={self._pid} {state}>"
