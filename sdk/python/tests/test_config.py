"""The config file the SDK writes for vmm (no sandbox needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from vmm_sandbox import _config


def test_toml_round_trips_odd_strings() -> None:
    odd = 'a "quoted" \\ back\tslash\nnew\x01line\x7f é'
    cfg = _config.VmmConfig(
        rootfs=Path("/img"),
        overlay=Path("/o.qcow2"),
        api_socket=Path("/run/x/api.sock"),
        lifetime_secs=5,
        cpus=1,
        memory_mib=64,
        entrypoint=("sh", "-c", odd),
        network=_config.Network(allow=("10.0.0.0/8",)),
    )
    parsed = tomllib.loads(cfg.to_toml())
    assert parsed["entrypoint"] == ["sh", "-c", odd]
    assert parsed["net"] == {"mode": "auto", "allow": ["10.0.0.0/8"]}
    assert "kernel" not in parsed


def test_vcpus_leave_room_to_burst_and_networks() -> None:
    # One vCPU per host core, never fewer than the request rounded up.
    assert [_config.vcpus(c, 1) for c in (0.1, 1, 1.0, 1.01, 2.5, 32)] == [1, 1, 1, 2, 3, 32]
    assert [_config.vcpus(c, 4) for c in (0.5, 1, 4.5)] == [4, 4, 5]
    assert _config.vcpus(1, 64) == 32
    assert _config.network(False, None) == _config.Network()
    assert _config.network(True, None) == _config.Network(block=True)
    assert _config.network(False, ["10.1.2.3/8"]).allow == ("10.0.0.0/8",)


def test_entrypoint_wrapper() -> None:
    assert _config.entrypoint_argv(("a",), None, {}) == ("a",)
    assert _config.entrypoint_argv(("a", "b"), "/w", {"K": "v"}) == (
        "/usr/bin/env",
        "-C",
        "/w",
        "--",
        "K=v",
        "a",
        "b",
    )


def test_the_cpu_request_goes_to_resources_with_a_cgroup() -> None:
    base = dict(
        rootfs=Path("/img"),
        overlay=Path("/o.qcow2"),
        api_socket=Path("/run/x/api.sock"),
        lifetime_secs=5,
        cpus=2,
        memory_mib=64,
    )
    without = tomllib.loads(_config.VmmConfig(**base).to_toml())  # type: ignore[arg-type]
    assert "resources" not in without
    placed = _config.VmmConfig(**base, cpu_request=0.5, cgroup="vmm-sandboxes/sb-1")  # type: ignore[arg-type]
    parsed = tomllib.loads(placed.to_toml())
    assert parsed["resources"] == {"cgroup": "vmm-sandboxes/sb-1", "cpu": 0.5}
    assert parsed["cpus"] == 2
