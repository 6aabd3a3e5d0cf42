"""Fixtures of the SDK's tests, which run against real sandboxes.

The backend is whatever VMM_BIN names (default: the checkout's target/debug/vmm_jail):
- `vmm_jail` (tier 2): the real agent as PID 1 of the real rootfs, in fresh
  namespaces on this host's kernel, behind the real `vmm supervise`. Fast; runs here.
- `vmm` (tier 3): real Linux VMs (in the emulated KVM host on our development machines).
Tests marked `vm` need a real guest kernel (snapshots of a live disk...) and are skipped
with the jail.

The sandboxes' network (the SDK's default is open egress, `--net auto`) is a small lab
in network namespaces, never the machine's own: a "host" namespace where `vmm net setup`
runs and where this test process (so every vmm it starts) lives, and a "world" behind it
serving HTTP on WORLD and FAR (198.18.0.0/15, the benchmarking range), like the Rust
tests' tests/src/netlab.rs.
"""

from __future__ import annotations

import ctypes
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmm_sandbox import Sandbox

REPO = Path(__file__).resolve().parents[3]
WORLD = "198.18.0.2"
FAR = "198.18.1.2"
HOST_WAN = "198.18.0.1"
HTTP_PORT = 8080
CLONE_NEWNET = 0x40000000

if not os.environ.get("VMM_BIN"):
    os.environ["VMM_BIN"] = str(REPO / "target" / "debug" / "vmm_jail")
JAIL = Path(os.environ["VMM_BIN"]).name == "vmm_jail"


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError(
            "the SDK tests need root: the test jail (loop mounts, namespaces) and the "
            "sandboxes' network (vmm net setup, --net auto)"
        )


def pytest_report_header(config: pytest.Config) -> str:
    kind = "the test jail (tier 2)" if JAIL else "real Linux VMs (tier 3)"
    return f"vmm_sandbox backend: VMM_BIN={os.environ['VMM_BIN']}: {kind}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not JAIL:
        return
    skip = pytest.mark.skip(reason="needs a real Linux guest (VMM_BIN=vmm_jail runs none)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        host = self.connection.getsockname()[0]  # the address the request arrived at
        body = f"world {host} saw {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class NetLab:
    """The lab's two namespaces, the world's HTTP servers and `vmm net setup`."""

    def __init__(self) -> None:
        self._remove_stale()
        tag = str(os.getpid())
        self.host, self.world = f"vmmsdk-h-{tag}", f"vmmsdk-w-{tag}"
        _ip("netns", "add", self.host)
        _ip("netns", "add", self.world)
        _ip(
            "-n",
            self.host,
            "link",
            "add",
            "wan0",
            "type",
            "veth",
            "peer",
            "name",
            "wan0",
            "netns",
            self.world,
        )
        for ns, addrs in (
            (self.host, [f"{HOST_WAN}/24"]),
            (self.world, [f"{WORLD}/24", f"{FAR}/24"]),
        ):
            _ip("-n", ns, "link", "set", "lo", "up")
            for a in addrs:
                _ip("-n", ns, "addr", "add", a, "dev", "wan0")
            _ip("-n", ns, "link", "set", "wan0", "up")
        _ip("-n", self.host, "route", "add", "default", "via", WORLD)
        self.servers = [self._serve(addr) for addr in (WORLD, FAR)]
        # This thread, and every thread and process it starts from now on, lives in the
        # lab's host namespace: the sandboxes' vmm processes do.
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{self.host}")
        subprocess.run([os.environ["VMM_BIN"], "net", "setup"], check=True, capture_output=True)

    @staticmethod
    def _remove_stale() -> None:
        """Namespaces of earlier runs that were killed before their teardown."""
        for ns in Path("/run/netns").glob("vmmsdk-[hw]-*") if Path("/run/netns").is_dir() else ():
            pid = ns.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)

    def _serve(self, addr: str) -> http.server.ThreadingHTTPServer:
        ready: list[http.server.ThreadingHTTPServer] = []
        done = threading.Event()

        def run() -> None:
            _setns(f"/run/netns/{self.world}")
            server = http.server.ThreadingHTTPServer((addr, HTTP_PORT), _Quiet)
            ready.append(server)
            done.set()
            server.serve_forever(poll_interval=0.2)

        threading.Thread(target=run, daemon=True, name=f"world {addr}").start()
        done.wait(10)
        return ready[0]

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(self._home, CLONE_NEWNET)
        os.close(self._home)
        for ns in (self.host, self.world):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def lab() -> Iterator[NetLab]:
    lab = NetLab()
    yield lab
    lab.close()


@pytest.fixture(scope="session", autouse=True)
def registry(lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry and data directory of the suite's own."""
    root = tmp_path_factory.mktemp("sdk")
    os.environ["VMM_SANDBOX_DIR"] = str(root / "run")
    os.environ["VMM_SANDBOX_DATA"] = str(root / "data")
    yield root
    # A failed test may have left its sandbox running: end every one still registered.
    for d in sorted((root / "run").glob("sb-*")):
        try:
            Sandbox.from_id(d.name).terminate()
        except Exception:  # noqa: BLE001 - best effort; it ends with its timeout anyway
            pass


@pytest.fixture(scope="module")
def sb(lab: NetLab, registry: Path) -> Iterator[Sandbox]:
    """A sandbox shared by the tests of one module that do not end it."""
    with Sandbox.create(block_network=True) as sandbox:
        yield sandbox
