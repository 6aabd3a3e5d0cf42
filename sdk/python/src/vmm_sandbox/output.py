"""Progress lines on stderr while sandboxes start, as `modal.enable_output()` shows them:
off by default, on inside `with enable_output():`."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_lock = threading.Lock()


@contextmanager
def enable_output() -> Iterator[None]:
    """Within this block, `Sandbox.create` says what it starts and when it is ready."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1


def progress(message: str) -> None:
    """Prints `message` on stderr when output is enabled."""
    if _depth > 0:
        print(f"vmm_sandbox: {message}", file=sys.stderr, flush=True)
