"""The `vmm run --config` file of one sandbox, from the arguments of `Sandbox.create`.

Arguments are checked here, before anything runs, so that a wrong one is a one-line
`InvalidArgumentError` naming it rather than vmm's message about a config key.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidArgumentError

#: vmm's limits (vmm run --help): vCPUs and guest memory.
MAX_CPUS = 32
MIN_MEMORY_MIB = 16
#: An environment variable name as a shell accepts it.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Network:
    """The sandbox's network, as `[net]`: open egress (`mode = "auto"`), egress only to
    `allow`, or no NIC at all (`block`)."""

    block: bool = False
    allow: tuple[str, ...] | None = None


@dataclass(frozen=True)
class VmmConfig:
    """Everything `vmm run` is told about one sandbox."""

    rootfs: Path
    overlay: Path
    api_socket: Path
    lifetime_secs: int
    cpus: int
    memory_mib: int
    kernel: Path | None = None
    entrypoint: tuple[str, ...] = ()
    network: Network = field(default_factory=Network)
    #: The CPU request in cores (cpu.weight) and the cgroup vmm places itself in; no
    #: placement without a cgroup.
    cpu_request: float = 1.0
    cgroup: str | None = None

    def to_toml(self) -> str:
        """The config file's text (keys as `vmm run --help` lists them)."""
        lines = []
        if self.kernel is not None:
            lines.append(f"kernel = {toml_str(str(self.kernel))}")
        lines += [
            f"rootfs = {toml_str(str(self.rootfs))}",
            # The guest writes here, never to the image: a raw image is then a read-only
            # base, and a snapshot keeps its chain.
            f"overlay = {toml_str(str(self.overlay))}",
            f"cpus = {self.cpus}",
            f"memory_mib = {self.memory_mib}",
        ]
        if self.entrypoint:
            lines.append(f"entrypoint = {toml_list(self.entrypoint)}")
        lines += [
            "",
            "[api]",
            f"socket = {toml_str(str(self.api_socket))}",
            f"lifetime_secs = {self.lifetime_secs}",
            "",
            "[net]",
        ]
        if self.network.block:
            lines.append("block_network = true")
        else:
            lines.append('mode = "auto"')
            if self.network.allow is not None:
                lines.append(f"allow = {toml_list(self.network.allow)}")
        if self.cgroup is not None:
            # vmm's cgroup placement: cpu.weight from the unrounded request; memory.max
            # follows from memory_mib. `cpus` above is what the guest may burst to.
            lines += [
                "",
                "[resources]",
                f"cgroup = {toml_str(self.cgroup)}",
                f"cpu = {self.cpu_request!r}",
            ]
        return "\n".join(lines) + "\n"


def toml_str(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(toml_str(v) for v in values) + "]"


#: vmm's smallest CPU request (a cpu.weight of 1).
MIN_CPU = 0.01


def vcpus(cpu: float, host_cpus: int | None) -> int:
    """The vCPU count for a CPU request. CPU is elastic: the request is the sandbox's
    share under contention, and it may burst above it when the host is idle, so the
    guest gets a vCPU per host core, and never fewer than the request rounded up."""
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu):
        raise InvalidArgumentError(f"cpu={cpu!r}: expected a number of cores, e.g. 1 or 0.5")
    if not MIN_CPU <= cpu <= MAX_CPUS:
        raise InvalidArgumentError(f"cpu={cpu!r}: must be between {MIN_CPU} and {MAX_CPUS}")
    return min(MAX_CPUS, max(math.ceil(cpu), host_cpus or 1))


def memory_mib(memory: int) -> int:
    if isinstance(memory, bool) or not isinstance(memory, int):
        raise InvalidArgumentError(f"memory={memory!r}: expected MiB as an integer, e.g. 1024")
    if memory < MIN_MEMORY_MIB:
        raise InvalidArgumentError(f"memory={memory}: at least {MIN_MEMORY_MIB} MiB")
    return memory


def lifetime_secs(timeout: float) -> int:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgumentError(f"timeout={timeout!r}: expected seconds, e.g. 300")
    if not (math.isfinite(timeout) and timeout > 0):
        raise InvalidArgumentError(f"timeout={timeout!r}: must be more than 0 seconds")
    return math.ceil(timeout)


def network(block_network: bool, cidr_allowlist: Sequence[str] | None) -> Network:
    if block_network and cidr_allowlist is not None:
        raise InvalidArgumentError(
            "block_network=True and cidr_allowlist: a sandbox without a network has no "
            "egress to allow"
        )
    if block_network:
        return Network(block=True)
    if cidr_allowlist is None:
        return Network()
    if isinstance(cidr_allowlist, str):
        raise InvalidArgumentError(
            f"cidr_allowlist={cidr_allowlist!r}: expected a list of CIDRs, not one string"
        )
    allow = []
    for cidr in cidr_allowlist:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"cidr_allowlist: {cidr!r} is not a CIDR like 10.0.0.0/8"
            ) from None
        if net.version != 4:
            raise InvalidArgumentError(
                f"cidr_allowlist: {cidr!r} is IPv6; the sandbox network is IPv4 only"
            )
        allow.append(str(net))
    return Network(allow=tuple(allow))


def argv(args: Sequence[str], what: str) -> tuple[str, ...]:
    for a in args:
        if not isinstance(a, str):
            raise InvalidArgumentError(f"{what}: {a!r} is not a string")
        if "\0" in a:
            raise InvalidArgumentError(f"{what}: {a!r} contains a NUL byte")
    return tuple(args)


def environment(env: Mapping[str, str] | None, what: str = "env") -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidArgumentError(f"{what}: expected a mapping of names to values")
    out = {}
    for k, v in env.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise InvalidArgumentError(f"{what}: {k!r} is not a variable name")
        if not isinstance(v, str) or "\0" in v:
            raise InvalidArgumentError(f"{what}[{k!r}]: expected a string without NUL")
        out[k] = v
    return out


def workdir(path: str | None, what: str = "workdir") -> str | None:
    if path is None:
        return None
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidArgumentError(f"{what}={path!r}: expected an absolute path in the sandbox")
    return path


def entrypoint_argv(
    entrypoint: tuple[str, ...], cwd: str | None, env: Mapping[str, str]
) -> tuple[str, ...]:
    """The entrypoint, run through env(1) when it needs a working directory or
    variables: vmm's config has no keys for those. env(1) exits 125 when it cannot
    change directory, 126/127 when the program cannot run / does not exist, as the
    agent reports them. (`env -C` needs coreutils 8.28 or later in the image.)"""
    if not entrypoint or (cwd is None and not env):
        return entrypoint
    wrapper = ["/usr/bin/env"]
    if cwd is not None:
        wrapper += ["-C", cwd]
    wrapper.append("--")
    wrapper += [f"{k}={v}" for k, v in env.items()]
    if "=" in entrypoint[0]:
        # env(1) would take it for one more variable.
        raise InvalidArgumentError(
            f"entrypoint {entrypoint[0]!r}: a program name with '=' cannot be combined "
            "with workdir or env"
        )
    return (*wrapper, *entrypoint)
