"""Running the real ``homeport`` command as a process, with the test's isolated environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from tests.support.server import PROJECT_SRC


def homeport(*args: str, input: str | None = None, env: Mapping[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m homeport ARGS``; stdin is ``input`` (or empty: not a terminal)."""
    full = {**os.environ, "PYTHONPATH": str(PROJECT_SRC), "PYTHONUNBUFFERED": "1",
            "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "homeport", *args], input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, env=full, timeout=timeout, check=False)
