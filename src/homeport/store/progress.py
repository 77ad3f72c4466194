"""What long store operations (pull, create) report as they go: Ollama's progress lines."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One status line: ``pulling manifest``, ``pulling 8eeb52dfb3bb`` (with byte counts), ..."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0
