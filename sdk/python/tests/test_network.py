"""The network arguments of Sandbox.create, against the lab's world (conftest.py)."""

from __future__ import annotations

import pytest

from conftest import FAR, HTTP_PORT, WORLD
from vmm_sandbox import Sandbox

pytestmark = pytest.mark.net


def fetch(sb: Sandbox, addr: str, wait: float = 5) -> str:
    """HTTP GET from inside the sandbox with bash's /dev/tcp (no client needed)."""
    script = (
        f"exec 3<>/dev/tcp/{addr}/{HTTP_PORT} || exit 9; "
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    )
    p = sb.exec("timeout", str(wait), "bash", "-c", script)
    p.wait()
    return p.stdout.read()


def interfaces(sb: Sandbox) -> list[str]:
    lines = sb.filesystem.read_text("/proc/net/dev").splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def test_default_is_open_egress() -> None:
    with Sandbox.create() as sb:
        assert "eth0" in interfaces(sb)
        assert f"world {WORLD} saw" in fetch(sb, WORLD)
        assert f"world {FAR} saw" in fetch(sb, FAR)


def test_cidr_allowlist_limits_egress() -> None:
    with Sandbox.create(cidr_allowlist=[f"{FAR}/32"]) as sb:
        assert f"world {FAR} saw" in fetch(sb, FAR)
        assert fetch(sb, WORLD, wait=1.5) == ""


def test_empty_allowlist_allows_nothing() -> None:
    with Sandbox.create(cidr_allowlist=[]) as sb:
        assert "eth0" in interfaces(sb)
        assert fetch(sb, FAR, wait=1.5) == ""


def test_block_network_has_no_nic() -> None:
    with Sandbox.create(block_network=True) as sb:
        assert interfaces(sb) == ["lo"]
        assert fetch(sb, WORLD, wait=1.5) == ""
