"""Waiting for a condition that is certain to come, with a bound that only a broken server meets."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
