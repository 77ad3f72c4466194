"""A runner's watch on its RPC workers while it idles.

llama.cpp notices a dead worker only when it next sends it something, and then aborts the runner:
a model loaded on a worker that died while it idled would fail the next request instead of being
loaded again on what is left. So a runner that uses workers looks at its own TCP connections every
``INTERVAL`` seconds (llama.cpp keeps one open to each worker while the model is loaded); when a
worker has closed its end (the socket waits in CLOSE_WAIT, or a reset removed it), the runner
exits, and the server forgets the model at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import psutil

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


def open_workers(endpoints: tuple[str, ...], addresses: dict[str, set[tuple[str, int]]],
                 states: frozenset[str] = frozenset({psutil.CONN_ESTABLISHED})) -> set[str]:
    """The workers this process has a connection to in one of ``states``."""
    found: set[str] = set()
    for conn in psutil.Process().net_connections(kind="tcp4"):
        if conn.raddr and conn.status in states:
            found.update(endpoint for endpoint in endpoints
                         if (conn.raddr.ip, conn.raddr.port) in addresses[endpoint])
    return found


def watch(endpoints: tuple[str, ...], addresses: dict[str, set[tuple[str, int]]],
          connected: set[str]) -> None:
    """Exit this process when a worker it was connected to closes on it (a daemon thread)."""
    while True:
        time.sleep(INTERVAL)
        now = open_workers(endpoints, addresses)
        gone = sorted(connected - now)
        connected |= now
        if gone:
            # CRITICAL: the server reads this line as the runner's reason for ending.
            log.critical("RPC worker %s closed its connection", ", ".join(gone))
            logging.shutdown()
            os._exit(EXIT_STATUS)


def start_watching(endpoints: tuple[str, ...]) -> None:
    """Watch the workers of a model just loaded; call before the runner says it is ready.

    The connections the load left open are noted here, before any request: a worker killed
    before the watch thread's first look (a busy machine can delay it past a whole request)
    leaves its connection half-closed, which still counts as one that was open.
    """
    if not endpoints:
        return
    addresses = {endpoint: _addresses(endpoint) for endpoint in endpoints}
    connected = open_workers(endpoints, addresses, OPEN_OR_CLOSING)
    threading.Thread(target=watch, args=(endpoints, addresses, connected), name="worker-watch",
                     daemon=True).start()
