"""Many sandboxes at once from one process (threads). (256 MiB each: 20 VMs fit in the
emulated KVM host too.)"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from vmm_sandbox import Sandbox

N = 20


def test_twenty_sandboxes_at_once() -> None:
    def life(i: int) -> tuple[str, float]:
        t0 = time.monotonic()
        with Sandbox.create(
            "sh", "-c", f"echo entry-{i}; sleep 600", memory=256, block_network=True
        ) as sb:
            ready = time.monotonic() - t0
            sb.filesystem.write_text(f"{i}\n", "/tmp/me")
            p = sb.exec("sh", "-c", "cat /tmp/me; hostname")
            out = p.stdout.read()
            assert p.wait() == 0
            assert sb.stdout.readline() == f"entry-{i}\n"
            return out.split("\n")[0], ready

    t0 = time.monotonic()
    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(life, range(N)))
    wall = time.monotonic() - t0
    assert [r[0] for r in results] == [str(i) for i in range(N)]
    readies = sorted(r[1] for r in results)
    print(
        f"{N} sandboxes: wall {wall:.1f} s, create->ready median {readies[N // 2]:.2f} s, "
        f"max {readies[-1]:.2f} s"
    )
