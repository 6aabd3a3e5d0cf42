"""sb.snapshot_filesystem(): a live snapshot that new sandboxes boot from (a VM's disk)."""

from __future__ import annotations

import pytest

from vmm_sandbox import Image, Sandbox

pytestmark = pytest.mark.vm


def test_snapshot_boots_new_sandboxes() -> None:
    with Sandbox.create(block_network=True) as sb:
        sb.filesystem.write_text("before\n", "/root/state")
        image = sb.snapshot_filesystem()
        assert isinstance(image, Image) and image.path.is_file()
        sb.filesystem.write_text("after\n", "/root/state")  # the original carries on
        with Sandbox.create(image=image, block_network=True) as child:
            assert child.filesystem.read_text("/root/state") == "before\n"
            child.filesystem.write_text("child\n", "/root/state")
        assert sb.filesystem.read_text("/root/state") == "after\n"
    # Sealed: read-only and never written by the sandboxes that booted from it.
    assert image.path.stat().st_mode & 0o222 == 0
    image.remove()
    assert not image.path.exists()
