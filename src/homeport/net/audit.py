"""The audit log: one JSON line per request, in a rotating file; and reading it back as a summary.

A line says who (identity, node, how they came), what (method, route, model), the outcome (status,
tokens in and out, duration). Prompt and answer text are written only when the owner turns on
HOMEPORT_AUDIT_CONTENT. The folder is private to the server's user (0700).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from homeport.net.caller import RequestRecord

FILE_NAME = "audit.jsonl"
DENIED = frozenset({401, 403, 429})


class AuditLog:
    """Appends audit lines; rotation by size is the standard library's RotatingFileHandler."""

    def __init__(self, directory: Path, max_bytes: int, backups: int, keep_text: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        self.path = directory / FILE_NAME
        self.keep_text = keep_text
        self._handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        # The file is written on a thread of its own, so no request waits on the disk.
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, self._handler)
        self._listener.start()
        self._logger = logging.Logger("homeport.audit", logging.INFO)
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))

    def write(self, record: RequestRecord, method: str, route: str, status: int,
              seconds: float) -> None:
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "identity": record.identity or "unknown",
            "node": record.node,
            "via": record.via,
            "address": record.address,
            "method": method,
            "route": route,
            "model": record.model,
            "status": status,
            "tokens_in": record.tokens_in,
            "tokens_out": record.tokens_out,
            "duration_ms": round(seconds * 1000, 1),
        }
        if self.keep_text:
            entry["prompt"] = record.prompt
            entry["answer"] = "".join(record.answer)
        self._logger.info(json.dumps(entry, ensure_ascii=False))

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self._listener.stop()
        self._handler.close()


def read_entries(directory: Path, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Every audit line, oldest file first, newer than ``since``; damaged lines are skipped."""
    files = sorted(directory.glob(f"{FILE_NAME}.*"),
                   key=lambda path: int(path.suffix[1:]) if path.suffix[1:].isdigit() else 0,
                   reverse=True)
    for path in [*files, directory / FILE_NAME]:
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        with handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(entry, dict):
                    continue
                if since is not None and _time(entry) < since:
                    continue
                yield entry


def _time(entry: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


@dataclass
class UsageRow:
    identity: str
    model: str
    requests: int = 0
    denied: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    last: str = ""


def summarise(entries: Iterator[dict[str, Any]]) -> list[UsageRow]:
    """Who used what and how much: one row per identity and model, busiest first."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for entry in entries:
        identity = str(entry.get("identity") or "unknown")
        node = str(entry.get("node") or "")
        who = f"{identity} ({node})" if node and node not in identity else identity
        key = (who, str(entry.get("model") or ""))
        row = rows.setdefault(key, UsageRow(*key))
        status = int(entry.get("status") or 0)
        row.requests += 1
        row.denied += status in DENIED
        row.failed += status >= 500
        row.tokens_in += int(entry.get("tokens_in") or 0)
        row.tokens_out += int(entry.get("tokens_out") or 0)
        row.last = max(row.last, str(entry.get("time", "")))
    return sorted(rows.values(), key=lambda row: (-row.tokens_in - row.tokens_out, -row.requests))
