"""Loaded by a homeport server under test (through PYTHONPATH): an audit hook that records every
file operation the process makes inside a watched folder (a canary beside the store), so a test can
assert that nothing was written, read, listed or deleted there."""

import os
import sys

_WATCHED = os.environ.get("HOMEPORT_TEST_WATCH_DIR", "")
_LOG = os.environ.get("HOMEPORT_TEST_WATCH_LOG", "")
_EVENTS = {"open", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.listdir", "os.scandir",
           "os.truncate", "os.chmod", "os.link", "os.symlink", "os.utime", "shutil.rmtree",
           "shutil.copyfile", "shutil.move"}


def _watched(argument: object) -> bool:
    if not isinstance(argument, str | bytes | os.PathLike):
        return False
    path = os.path.abspath(os.fsdecode(argument))
    return path == _WATCHED or path.startswith(_WATCHED + os.sep)


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event in _EVENTS and any(_watched(argument) for argument in args[:2]):
        with open(_LOG, "a") as log:
            log.write(f"{event} {args[:2]!r}\n")


if _WATCHED and _LOG:
    _WATCHED = os.path.abspath(_WATCHED)
    sys.addaudithook(_hook)
