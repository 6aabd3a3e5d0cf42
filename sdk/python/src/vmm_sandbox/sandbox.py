"""`Sandbox`: one `vmm` process running one sandbox on this host, and the handle to it.

`Sandbox.create` spawns `vmm run --config FILE --ready-fd N` and returns once the
sandbox is ready; the rest talks to the sandbox's API socket (gRPC, the schema in
agent/protocol/proto). vmm runs under a small keeper shell that records its pid and,
when it exits, its exit status in the registry, where `Sandbox.from_id` (in any process
of the same user) finds the sandbox, its socket, its pid and how it ended.
"""

from __future__ import annotations

import math
import os
import secrets
import select
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import grpc

from . import _config, _launch, _locate, _registry, errors
from .output import progress
from ._proto import agent_pb2, sandbox_pb2
from ._rpc import UNARY_TIMEOUT, connect, translate
from .filesystem import Filesystem
from .image import Image, ImageLike, resolve
from .process import ContainerProcess, StreamReader

#: vmm's exit status when the sandbox's lifetime ran out (`vmm run --help`).
EXIT_LIFETIME = 3
#: vmm itself gives up when the lifetime (`timeout`, which counts from its start) runs
#: out before the guest is ready; `create` waits this much longer only for a vmm that
#: hangs without exiting.
READY_SLACK = 120.0
#: The guest's grace for Terminate (sync and power off) before vmm stops the VM.
TERMINATE_GRACE = 5.0
#: The exec id vmm gives the entrypoint.
ENTRYPOINT_ID = "entrypoint"

_live: weakref.WeakValueDictionary[str, Sandbox] = weakref.WeakValueDictionary()
_live_lock = threading.Lock()



def cgroup_of(sandbox_id: str) -> str | None:
    """The sandbox's own cgroup below the SDK's parent (see _locate.cgroup_parent)."""
    parent = _locate.cgroup_parent()
    return f"{parent}/{sandbox_id}" if parent else None

class Sandbox:
    """A sandbox on this host. Use `Sandbox.create(...)` or `Sandbox.from_id(id)`; as a
    context manager it terminates the sandbox on exit."""

    def __init__(
        self,
        entry: _registry.Entry,
        metadata: Mapping[str, Any],
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._entry = entry
        self._meta = dict(metadata)
        self._process = process
        self._returncode: int | None = None
        self._lock = threading.Lock()
        self._channel, self._stub = connect(entry.api_socket)
        self._closed = False
        self._entrypoint: ContainerProcess[str] | None = None
        self._workdir: str | None = self._meta.get("workdir")
        self._env: dict[str, str] = dict(self._meta.get("env") or {})
        #: Files in the sandbox.
        self.filesystem = Filesystem(self._stub, self._ended_error, self._check_running)
        if process is not None:
            threading.Thread(
                target=self._reap, name=f"vmm-sandbox reaper {entry.sandbox_id}", daemon=True
            ).start()

    # -- creation ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *entrypoint: str,
        cpu: float = 1.0,
        memory: int = 1024,
        image: ImageLike | None = None,
        timeout: float = 300,
        block_network: bool = False,
        cidr_allowlist: Sequence[str] | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Sandbox:
        """Starts a sandbox and returns once it is ready (see the README for details).

        `entrypoint`: the sandbox's main process (optional); when it exits, the sandbox
        ends with its exit status. `cpu`: the cores it asks for (fractions allowed): its
        CPU share under contention; it gets a vCPU per host core to burst on. `memory`:
        the guest's RAM in MiB. `image`: a root image path or an Image (default
        $VMM_IMAGE or the checkout's build/rootfs.ext4), booted on a fresh overlay.
        `timeout`: the sandbox's lifetime in seconds. Network: open egress by default;
        `block_network=True`: no NIC; `cidr_allowlist`: egress only there.
        `workdir`/`env`: the entrypoint's, and the defaults of every `exec`.

        Raises InvalidArgumentError, ConfigurationError (no vmm/kernel/image found),
        ImageError (the image was refused) or SandboxStartError (vmm's one-line error)."""
        args = _config.argv(entrypoint, "entrypoint")
        cpus = _config.vcpus(cpu, os.cpu_count())
        memory_mib = _config.memory_mib(memory)
        lifetime = _config.lifetime_secs(timeout)
        network = _config.network(block_network, cidr_allowlist)
        cwd = _config.workdir(workdir)
        environment = _config.environment(env)
        argv = _config.entrypoint_argv(args, cwd, environment)
        vmm = _locate.vmm_bin()
        kernel = _locate.kernel()
        root = resolve(image)

        entry = _registry.create_entry()
        config = _config.VmmConfig(
            kernel=kernel,
            rootfs=root.path,
            overlay=entry.overlay,
            cpus=cpus,
            memory_mib=memory_mib,
            api_socket=entry.api_socket,
            lifetime_secs=lifetime,
            entrypoint=argv,
            network=network,
            cpu_request=float(cpu),
            cgroup=cgroup_of(entry.sandbox_id),
        )
        started = time.monotonic()
        progress(
            f"creating sandbox {entry.sandbox_id}: {cpus} vCPUs (asks for {cpu} cores), "
            f"{memory_mib} MiB, image {root.path}"
        )
        process, read_end = _launch.spawn(vmm, entry, config.to_toml())
        try:
            pid = _launch.vmm_pid(entry, process)
            if pid is None:
                process.kill()
                raise _launch.start_error(entry, process.wait())
            metadata: dict[str, Any] = {
                "id": entry.sandbox_id,
                "created_at": time.time(),
                "pid": pid,
                "pid_start_time": _registry.process_start_time(pid),
                "keeper_pid": process.pid,
                "keeper_start_time": _registry.process_start_time(process.pid),
                "vmm": str(vmm),
                "image": str(root.path),
                "timeout": lifetime,
                "entrypoint": list(args),
                "workdir": cwd,
                "env": environment,
            }
            entry.write_metadata(metadata)
            sandbox = cls(entry, metadata, process)
            try:
                info = sandbox._await_ready(read_end, started + lifetime + READY_SLACK)
            except BaseException:
                sandbox._stop_process()
                sandbox._close()
                raise
        finally:
            os.close(read_end)
        sandbox._meta["ready_ms"] = info.get("ready_ms")
        sandbox._meta["create_s"] = time.monotonic() - started
        progress(f"sandbox {entry.sandbox_id} ready in {sandbox._meta['create_s']:.1f} s")
        entry.write_metadata(sandbox._meta)
        if args:
            # Attach now: the entrypoint's output from its first byte stays readable in
            # sb.stdout even after it ended the sandbox. (Reading sb.stdout reports a
            # failure here; the sandbox itself is up.)
            try:
                sandbox._entrypoint_process()
            except errors.SandboxError:
                pass
        with _live_lock:
            _live[entry.sandbox_id] = sandbox
        return sandbox

    def _await_ready(self, read_end: int, deadline: float) -> dict[str, Any]:
        """Blocks on the readiness pipe; the readiness line's fields, or the reason vmm
        gave for exiting first."""
        line = _launch.read_ready_line(read_end, deadline)
        if line is not None:
            return _launch.parse_ready_line(line)
        assert self._process is not None
        try:
            returncode = self._process.wait(_launch.EXIT_GRACE)
        except subprocess.TimeoutExpired:
            raise errors.SandboxStartError(
                f"sandbox {self.object_id} did not become ready in time "
                f"(vmm's log: {self._entry.stderr_log})"
            ) from None
        raise _launch.start_error(self._entry, returncode)

    @classmethod
    def from_id(cls, sandbox_id: str) -> Sandbox:
        """The sandbox with this id, created by this or another process of this user on
        this host. Raises SandboxNotFoundError when there is none (it may have ended
        more than an hour ago), InvalidArgumentError for a malformed id."""
        _registry.check_id(sandbox_id)
        with _live_lock:
            live = _live.get(sandbox_id)
        if live is not None:
            return live
        entry = _registry.open_entry(sandbox_id)
        sandbox = cls(entry, entry.metadata())
        with _live_lock:
            return _live.setdefault(sandbox_id, sandbox)

    # -- identity and state ------------------------------------------------------------

    @property
    def object_id(self) -> str:
        """The sandbox's id ("sb-" and 16 hex digits), for `Sandbox.from_id`."""
        return self._entry.sandbox_id

    @property
    def api_socket(self) -> str:
        """The sandbox API's Unix socket (for `vmm exec --api-sock` and the like)."""
        return str(self._entry.api_socket)

    @property
    def ready_ms(self) -> float | None:
        """What vmm reported: from its start to the sandbox being ready, in ms."""
        value = self._meta.get("ready_ms")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def returncode(self) -> int | None:
        """vmm's exit status once the sandbox has ended, else None: 0 when terminated or
        powered off, 3 when its timeout ran out, the entrypoint's exit status when the
        entrypoint ended it (128+N for signal N), -N when vmm itself was killed by
        signal N."""
        try:
            return self.poll()
        except errors.SandboxError:
            return None

    def poll(self) -> int | None:
        """The exit status if the sandbox has ended, else None. Raises SandboxError when
        it ended but its status was lost (someone killed the keeper that waits for vmm)."""
        if self._returncode is not None:
            return self._returncode
        if self._process is not None:
            rc = self._process.poll()
            if rc is not None:
                self._set_returncode(rc)
            return rc
        recorded = self._entry.exit_status()
        if recorded is not None:
            self._returncode = recorded
            return recorded
        if self._vmm_alive():
            return None
        # vmm is gone: its parent, the keeper, records the status as it reaps it.
        if self._keeper_alive():
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                recorded = self._entry.exit_status()
                if recorded is not None:
                    self._returncode = recorded
                    return recorded
                time.sleep(0.02)
        raise errors.SandboxError(
            f"sandbox {self.object_id} has ended, but its exit status is unknown: the "
            "process waiting for its vmm was killed"
        )

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the sandbox to end; returns its exit status (see `returncode`).

        Raises TimeoutError when it still runs after `timeout` seconds, and
        SandboxTimeoutError when it ended because its own lifetime ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(
                    f"sandbox {self.object_id} still runs after {timeout} s"
                ) from None
        else:
            self._wait_foreign(deadline)
        rc = self.poll()
        assert rc is not None
        if self._lifetime_ran_out():
            lifetime = self._meta.get("timeout")
            raise errors.SandboxTimeoutError(
                f"sandbox {self.object_id} ended: its timeout of {lifetime} s ran out"
            )
        return rc

    def _wait_foreign(self, deadline: float | None) -> None:
        """Waits for the vmm of a sandbox that another process created (not our child:
        no waitpid). A pidfd says when it exits, without polling where there is one."""
        pid, start = self._meta.get("pid"), self._meta.get("pid_start_time")
        if not isinstance(pid, int) or not isinstance(start, int):
            return
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else -1
        except OSError:
            pidfd = -1
        try:
            while _registry.alive(pid, start) and self._entry.exit_status() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"sandbox {self.object_id} still runs")
                step = 0.1 if left is None else min(left, 0.1)
                if pidfd >= 0:
                    select.select([pidfd], [], [], None if left is None else left)
                else:
                    time.sleep(step)
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _lifetime_ran_out(self) -> bool:
        if self._returncode != EXIT_LIFETIME:
            return False
        try:
            log = self._entry.stderr_log.read_text(errors="replace")
        except OSError:
            log = ""
        # An entrypoint that exited with 3 ended the sandbox with 3 too; vmm says so.
        return "entrypoint exited" not in log

    def _set_returncode(self, rc: int) -> None:
        with self._lock:
            if self._returncode is not None:
                return
            self._returncode = rc
        # The overlay held the sandbox's writes; snapshots are files of their own.
        self._entry.remove_overlay()

    def _reap(self) -> None:
        assert self._process is not None
        self._set_returncode(self._process.wait())

    def _vmm_alive(self) -> bool:
        pid, start = self._meta.get("pid"), self._meta.get("pid_start_time")
        return isinstance(pid, int) and isinstance(start, int) and _registry.alive(pid, start)

    def _keeper_alive(self) -> bool:
        pid, start = self._meta.get("keeper_pid"), self._meta.get("keeper_start_time")
        return isinstance(pid, int) and isinstance(start, int) and _registry.alive(pid, start)

    def _ended_error(self) -> errors.SandboxError | None:
        """When a call found the API gone: the error saying the sandbox ended (waiting a
        moment for vmm to exit), or None if it still runs."""
        try:
            self.wait(2.0)
        except errors.SandboxTimeoutError as e:
            return e
        except (TimeoutError, errors.SandboxError):
            return None
        return errors.SandboxTerminatedError(
            f"sandbox {self.object_id} has ended (exit status {self._returncode})"
        )

    def _check_running(self) -> None:
        if self._closed or self.returncode is not None:
            error = self._ended_error()
            raise error or errors.SandboxTerminatedError(f"sandbox {self.object_id} was closed")

    # -- ending ------------------------------------------------------------------------

    def terminate(self) -> None:
        """Ends the sandbox: the Terminate call (the guest syncs and powers off), then
        waits for vmm to exit; SIGTERM, then SIGKILL, only if it does not. Doing it again,
        or on an ended sandbox, does nothing."""
        if self.returncode is None:
            try:
                grace_ms = int(TERMINATE_GRACE * 1000)
                self._stub.Terminate(
                    sandbox_pb2.TerminateRequest(grace_ms=grace_ms), timeout=UNARY_TIMEOUT
                )
            except grpc.RpcError:
                pass  # already ending, or the API is gone: the signals below remain
            if not self._wait_quietly(TERMINATE_GRACE + 10):
                self._stop_process()
        self._close()

    def _wait_quietly(self, timeout: float) -> bool:
        try:
            self.wait(timeout)
        except TimeoutError:
            return self.returncode is not None
        except errors.SandboxError:
            pass
        return True

    def _stop_process(self) -> None:
        """SIGTERM (vmm stops the VM and flushes its disks), then SIGKILL, to vmm's pid
        while its start time still matches (never to a recycled pid); then waits for
        the keeper to record the status."""
        pid = self._meta.get("pid")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._vmm_alive() and isinstance(pid, int):
                os.kill(pid, sig)
            elif self._process is not None and self._process.poll() is None:
                self._process.send_signal(sig)  # the keeper, if vmm never started
            deadline = time.monotonic() + 10
            while self._vmm_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self._process is not None:
                try:
                    self._process.wait(max(deadline - time.monotonic(), 0.1))
                    return
                except subprocess.TimeoutExpired:
                    continue
            if not self._vmm_alive():
                return

    def _close(self) -> None:
        """After the end: calls raise SandboxTerminatedError from now on. The channel
        stays open until this object goes (a call racing with this one then meets the
        closed socket, which says the same, instead of a closed channel)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    def __repr__(self) -> str:
        rc = self.returncode
        state = "running" if rc is None else f"returncode={rc}"
        return f"<Sandbox {self.object_id} {state}>"

    # -- processes ---------------------------------------------------------------------

    @overload
    def exec(
        self,
        *args: str,
        workdir: str | None = ...,
        env: Mapping[str, str] | None = ...,
        timeout: float | None = ...,
        pty: bool = ...,
        text: Literal[True] = ...,
    ) -> ContainerProcess[str]: ...

    @overload
    def exec(
        self,
        *args: str,
        workdir: str | None = ...,
        env: Mapping[str, str] | None = ...,
        timeout: float | None = ...,
        pty: bool = ...,
        text: Literal[False],
    ) -> ContainerProcess[bytes]: ...

    def exec(
        self,
        *args: str,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        pty: bool = False,
        text: bool = True,
    ) -> ContainerProcess[str] | ContainerProcess[bytes]:
        """Runs `args` in the sandbox and returns once it started (see the README).

        `args[0]` is looked up in PATH when it has no '/'. `workdir` and `env` add to
        the sandbox's (from create); `timeout` (seconds) kills it (SIGKILL) when it runs
        out; `pty=True` runs it on a terminal (stdout carries both streams); `text=False`
        gives bytes instead of str.

        Raises ProgramNotFoundError (the program or workdir does not exist), ExecError
        (it could not start otherwise), InvalidArgumentError, SandboxTerminatedError."""
        argv = _config.argv(args, "exec")
        if not argv:
            raise errors.InvalidArgumentError("exec: no command given")
        cwd = _config.workdir(workdir) or self._workdir or ""
        environment = {**self._env, **_config.environment(env)}
        timeout_ms = 0
        if timeout is not None:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not (math.isfinite(timeout) and timeout > 0)
            ):
                raise errors.InvalidArgumentError(
                    f"exec: timeout={timeout!r}: expected seconds > 0"
                )
            timeout_ms = math.ceil(timeout * 1000)
        self._check_running()
        start = agent_pb2.ExecStart(
            argv=list(argv),
            env=environment,
            cwd=cwd,
            tty=pty,
            window=agent_pb2.WindowSize(rows=24, cols=80) if pty else None,
            timeout_ms=timeout_ms,
        )
        request = sandbox_pb2.ExecRequest(start=sandbox_pb2.StartExec(process=start))
        what = f"exec {argv[0]!r} in {self.object_id}"
        process: ContainerProcess[str] | ContainerProcess[bytes]
        if text:
            process = ContainerProcess[str](self._stub, request, True, self._ended_error, what)
        else:
            process = ContainerProcess[bytes](self._stub, request, False, self._ended_error, what)
        process._wait_started()
        return process

    def _entrypoint_process(self) -> ContainerProcess[str]:
        with self._lock:
            if self._entrypoint is None:
                attach = sandbox_pb2.Attach(exec_id=ENTRYPOINT_ID, from_oldest=True)
                self._entrypoint = ContainerProcess[str](
                    self._stub,
                    sandbox_pb2.ExecRequest(attach=attach),
                    True,
                    self._ended_error,
                    f"the entrypoint of {self.object_id}",
                    drop_oldest=True,
                )
            process = self._entrypoint
        process._wait_started(missing_ok=True)
        return process

    @property
    def stdout(self) -> StreamReader[str]:
        """The entrypoint's stdout, from its oldest byte kept, as it streams in (empty
        and ended for a sandbox without an entrypoint)."""
        return self._entrypoint_process().stdout

    @property
    def stderr(self) -> StreamReader[str]:
        """The entrypoint's stderr (see stdout)."""
        return self._entrypoint_process().stderr

    # -- snapshots ---------------------------------------------------------------------

    def snapshot_filesystem(self, *, timeout: float = 300) -> Image:
        """A snapshot of the sandbox's root filesystem, as an Image that
        `Sandbox.create(image=...)` boots: the guest's filesystems are synced and frozen
        for the switch, the overlay is sealed (read-only from then on) and the sandbox
        carries on on a fresh one. Stored in the data directory's images/. Raises
        SnapshotError (e.g. the test jail, which has no VM disk to snapshot)."""
        self._check_running()
        path = _registry.images_dir() / f"{self.object_id}-{secrets.token_hex(4)}.qcow2"
        try:
            reply = self._stub.Snapshot(
                sandbox_pb2.SnapshotRequest(path=str(path)), timeout=timeout
            )
        except grpc.RpcError as e:
            what = f"snapshot of {self.object_id}"
            error = translate(e, what, self._ended_error, _SNAPSHOT_ERRORS)
            if isinstance(error, errors.SnapshotError):
                error = errors.SnapshotError(f"{what}: {error}")
            raise error from None
        return Image(path=Path(reply.path))


#: The Snapshot call's refusals and failures (the sandbox carries on unchanged).
_SNAPSHOT_ERRORS: dict[grpc.StatusCode, type[errors.SandboxError]] = {
    code: errors.SnapshotError
    for code in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
    )
}
