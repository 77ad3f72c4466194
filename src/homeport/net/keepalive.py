"""TCP keepalive and a send timeout for the connections between a server and its RPC workers.

A worker that vanishes without closing its connections (switched off, cable pulled, out of Wi-Fi)
sends no FIN and no reset: without help the other end waits forever. ggml's RPC client sets no
timeout and no keepalive, so a stream blocked on such a worker hangs and an idle model on it stays
listed; the worker's gate, likewise, would hold the slot of a server that vanished. Both ends
therefore probe an idle connection and give up on data that goes unacknowledged.

The numbers trade false alarms for detection time: a worker is a machine on the same tailnet, so
a reply to a probe comes within milliseconds, and several seconds of silence mean it is gone. Probes
start after ``KEEPIDLE`` s of quiet, and data unacknowledged for ``USER_TIMEOUT_MS`` drops the
connection (only TCP acknowledgements count, not ggml's reply, so a busy worker is not cut short).
Linux lets that timeout, once set, also decide when unanswered probes drop an idle connection
(instead of ``KEEPCNT``): either way a vanished peer is noticed after about 30 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Protocol

KEEPIDLE = 10  # seconds a connection idles before the first probe
KEEPINTVL = 5  # seconds between unanswered probes
KEEPCNT = 3  # unanswered probes before the connection is dropped
USER_TIMEOUT_MS = 30_000  # sent data unacknowledged this long drops the connection

# (level, option, value); options this platform lacks are left out (macOS has no TCP_USER_TIMEOUT
# and names the idle time TCP_KEEPALIVE).
_OPTIONS = [(level, getattr(socket, name), value) for level, name, value in (
    (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
    (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPIDLE),
    (socket.IPPROTO_TCP, "TCP_KEEPINTVL", KEEPINTVL),
    (socket.IPPROTO_TCP, "TCP_KEEPCNT", KEEPCNT),
    (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
) if hasattr(socket, name)]


class Settable(Protocol):
    """What ``enable`` needs of a socket (asyncio's TransportSocket has it too)."""

    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


def enable(sock: Settable) -> None:
    """Probe ``sock`` when it idles and drop it when its peer stops answering (see the module)."""
    for level, option, value in _OPTIONS:
        sock.setsockopt(level, option, value)


def enable_on_fd(fd: int) -> bool:
    """``enable`` on a socket this process holds but does not own (ggml's): options set through a
    duplicate of its descriptor apply to the socket itself. False when the descriptor is no longer
    a TCP socket (closed, or reused) or refuses the options."""
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return False
    with contextlib.closing(sock):
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            enable(sock)
        except OSError:
            return False
    return True
