"""Figures for the SDK against the same sandbox backend (whatever VMM_BIN names):
create -> ready through Sandbox.create, and the exec round trip (`true`, started to
exit status) through the SDK, through the CLI (`vmm exec`, a process per call) and
through the raw generated gRPC client on one channel.

    VMM_BIN=target/debug/vmm_jail python sdk/python/tools/bench.py [--creates N] [--execs N]

Absolute times mean little on a loaded 2-core machine; the three exec paths run
interleaved against one sandbox so they compare side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vmm_sandbox import Sandbox, _locate
from vmm_sandbox._proto import agent_pb2, sandbox_pb2
from vmm_sandbox._rpc import connect


def timed(f: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def summary(name: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=10) if len(ms) >= 10 else [min(ms)] * 9
    return (
        f"{name:<34} median {statistics.median(ms):7.2f} ms   p10 {q[0]:7.2f}   "
        f"p90 {q[-1]:7.2f}   (n={len(ms)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=10)
    ap.add_argument("--execs", type=int, default=200)
    args = ap.parse_args()
    print(f"VMM_BIN={os.environ.get('VMM_BIN', '(PATH / checkout)')}")

    ready_ms: list[float] = []

    def create() -> None:
        sb = Sandbox.create(block_network=True)
        ready_ms.append(sb.ready_ms or 0.0)
        sb.terminate()

    print(summary("Sandbox.create -> ready", timed(create, args.creates)))
    print(summary("  of which vmm's own ready_ms", ready_ms))

    with Sandbox.create(block_network=True) as sb:
        vmm = str(_locate.vmm_bin())
        _, stub = connect(Path(sb.api_socket))

        def sdk() -> None:
            assert sb.exec("true").wait() == 0

        def cli() -> None:
            subprocess.run([vmm, "exec", "--api-sock", sb.api_socket, "--", "true"], check=True)

        def raw() -> None:
            start = agent_pb2.ExecStart(argv=["true"])
            request = sandbox_pb2.ExecRequest(start=sandbox_pb2.StartExec(process=start))
            for event in stub.Exec(iter([request])):
                if event.WhichOneof("event") == "exited":
                    assert event.exited.code == 0

        for f in (sdk, cli, raw):  # warm up
            timed(f, 5)
        results: dict[str, list[float]] = {"sdk": [], "cli": [], "raw": []}
        rounds = 10
        for _ in range(rounds):
            results["sdk"] += timed(sdk, args.execs // rounds)
            results["cli"] += timed(cli, max(args.execs // rounds // 4, 2))
            results["raw"] += timed(raw, args.execs // rounds)
        print(summary("exec round trip: SDK (sb.exec)", results["sdk"]))
        print(summary("exec round trip: CLI (vmm exec)", results["cli"]))
        print(summary("exec round trip: raw gRPC stub", results["raw"]))


if __name__ == "__main__":
    main()
