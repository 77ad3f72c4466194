"""A runner's watch on its RPC workers while it idles.

llama.cpp notices a dead worker only when it next sends it something, and then aborts the runner:
a model loaded on a worker that died while it idled would fail the next request instead of being
loaded again on what is left. So a runner that uses workers looks at its own TCP connections every
``INTERVAL`` seconds (llama.cpp keeps one open to each worker while the model is loaded); when a
worker has closed its end (the socket waits in CLOSE_WAIT, or a reset removed it), the runner
exits, and the server forgets the model at once.

A worker that vanishes without closing (switched off, unplugged) never makes its connection close
on its own: the runner turns on TCP keepalive and a send timeout (``net.keepalive``) on each of its
connections to a worker, on ggml's own sockets, so the kernel drops such a connection within
about 30 s. A stream waiting on it fails (llama.cpp aborts the runner), an idle runner sees it gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import psutil

from homeport.net import keepalive

log = logging.getLogger("homeport.runner")

INTERVAL = 1.0
EXIT_STATUS = 3
# A connection the worker has closed waits in CLOSE_WAIT until this process closes its end.
OPEN_OR_CLOSING = frozenset({psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT})


def _addresses(endpoint: str) -> set[tuple[str, int]]:
    host, _, port = endpoint.rpartition(":")
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return set()
    return {(str(info[4][0]), int(port)) for info in infos}


class Prober:
    """Turns keepalive on for each connection to a worker the first time it is seen."""

    def __init__(self) -> None:
        self._done: set[tuple[int, int]] = set()  # (fd, local port): a reused fd is a new one

    def see(self, fd: int, local_port: int) -> None:
        if fd < 0 or (fd, local_port) in self._done:
            return
        if keepalive.enable_on_fd(fd):
            self._done.add((fd, local_port))


def open_workers(endpoints: tuple[str, ...], addresses: dict[str, set[tuple[str, int]]],
                 prober: Prober,
                 states: frozenset[str] = frozenset({psutil.CONN_ESTABLISHED})) -> set[str]:
    """The workers this process has a connection to in one of ``states``; ``prober`` sees each
    such connection."""
    found: set[str] = set()
    for conn in psutil.Process().net_connections(kind="tcp4"):
        if not conn.raddr or conn.status not in states:
            continue
        mine = {endpoint for endpoint in endpoints
                if (conn.raddr.ip, conn.raddr.port) in addresses[endpoint]}
        if mine:
            found |= mine
            prober.see(conn.fd, conn.laddr.port if conn.laddr else 0)
    return found


def watch(endpoints: tuple[str, ...], addresses: dict[str, set[tuple[str, int]]],
          connected: set[str], prober: Prober) -> None:
    """Exit this process when a worker it was connected to closes on it, or the kernel drops the
    connection for want of answers (a daemon thread)."""
    while True:
        time.sleep(INTERVAL)
        now = open_workers(endpoints, addresses, prober)
        gone = sorted(connected - now)
        connected |= now
        if gone:
            # CRITICAL: the server reads this line as the runner's reason for ending.
            log.critical("RPC worker %s closed its connection or stopped answering", ", ".join(gone))
            logging.shutdown()
            os._exit(EXIT_STATUS)


def start_watching(endpoints: tuple[str, ...]) -> None:
    """Watch the workers of a model just loaded; call before the runner says it is ready.

    The connections the load left open are noted here, before any request: a worker killed
    before the watch thread's first look (a busy machine can delay it past a whole request)
    leaves its connection half-closed, which still counts as one that was open. Keepalive is
    turned on for each of them here too, and for any opened later when the watch first sees it.
    """
    if not endpoints:
        return
    addresses = {endpoint: _addresses(endpoint) for endpoint in endpoints}
    prober = Prober()
    connected = open_workers(endpoints, addresses, prober, OPEN_OR_CLOSING)
    threading.Thread(target=watch, args=(endpoints, addresses, connected, prober),
                     name="worker-watch", daemon=True).start()
