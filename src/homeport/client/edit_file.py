"""A file being edited: its target range, what it held when read, and a safe write.

The write is atomic (``homeport.fileio.atomic_write``, keeping the file's permissions) after a
backup of the original; it is refused if the file changed on disk since it was read, so an edit
never overwrites work done meanwhile.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from homeport.errors import HomeportError
from homeport.fileio import atomic_write

_RANGE = re.compile(r"^(?P<path>.+):(?P<start>\d+)(?:-(?P<end>\d+))?$")
BACKUP_SUFFIX = ".bak"


@dataclass(frozen=True)
class Target:
    path: Path
    start: int | None  # 1-based, inclusive; None: the whole file
    end: int | None


def parse_target(text: str) -> Target:
    """``FILE``, ``FILE:LINE`` or ``FILE:START-END`` (a file whose name has a colon wins)."""
    match = _RANGE.match(text)
    if match is None or Path(text).exists():
        return Target(Path(text), None, None)
    start = int(match["start"])
    end = int(match["end"]) if match["end"] else start
    if start < 1 or end < start:
        raise HomeportError(f"bad line range in {text!r}: use FILE:START-END with 1 <= START <= END")
    return Target(Path(match["path"]), start, end)


@dataclass
class EditFile:
    path: Path
    data: bytes
    text: str
    start: int  # 0-based, inclusive
    end: int  # 0-based, exclusive

    @classmethod
    def open(cls, target: Target) -> EditFile:
        try:
            data = target.path.read_bytes()
        except OSError as exc:
            raise HomeportError(f"cannot read {target.path}: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise HomeportError(f"{target.path} is not UTF-8 text; homeport edits text files "
                                "only") from None
        count = len(text.splitlines())
        if target.start is None or target.end is None:
            return cls(target.path, data, text, 0, count)
        if target.start > count:
            raise HomeportError(f"{target.path} has {count} lines; line {target.start} is past "
                                "its end")
        return cls(target.path, data, text, target.start - 1, min(target.end, count))

    def changed_on_disk(self) -> bool:
        try:
            now = self.path.read_bytes()
        except OSError:
            return True
        return now != self.data

    def write(self, text: str) -> Path:
        """Back up the original, then replace the file atomically; returns the backup's path."""
        if self.changed_on_disk():
            raise HomeportError(f"{self.path} changed on disk while the model was answering; "
                                "nothing was written: run the edit again")
        backup = self.path.with_name(self.path.name + BACKUP_SUFFIX)
        shutil.copy2(self.path, backup)
        atomic_write(self.path, text.encode("utf-8"), mode=self.path.stat().st_mode)
        return backup
