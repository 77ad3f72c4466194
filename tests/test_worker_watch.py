"""The runner's watch on its RPC workers, in a child process (it ends the process it runs in)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap

from homeport.engine.worker_watch import EXIT_STATUS
from homeport.net import keepalive

# The child connects, starts watching, says so, then idles as a runner with nothing to do would.
CHILD = textwrap.dedent("""
    import socket, sys, time
    from homeport.engine.worker_watch import start_watching
    endpoint = sys.argv[1]
    host, _, port = endpoint.rpartition(":")
    connection = socket.create_connection((host, int(port)))
    start_watching((endpoint,))
    print("watching", flush=True)
    time.sleep(120)
""")


def watched_child(listener: socket.socket) -> tuple[subprocess.Popen[str], socket.socket]:
    host, port = listener.getsockname()
    child = subprocess.Popen([sys.executable, "-c", CHILD, f"{host}:{port}"],
                             stdout=subprocess.PIPE, text=True)
    accepted, _ = listener.accept()
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "watching"
    return child, accepted


def test_a_worker_that_closes_before_the_first_look_still_ends_the_runner() -> None:
    # The worker goes at once, long before the watch thread's first look: the connection the
    # load left open was noted before the runner said it was ready, so its close counts.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        child, accepted = watched_child(listener)
        accepted.close()
        try:
            assert child.wait(timeout=60) == EXIT_STATUS
        finally:
            child.kill()


def test_a_worker_that_stays_keeps_the_runner() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        child, accepted = watched_child(listener)
        try:
            # Three looks at an open connection: the child is still running.
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=3.5)
            assert child.poll() is None
        finally:
            child.kill()
            child.wait()
            accepted.close()


def test_keepalive_set_through_a_duplicate_reaches_the_socket_itself() -> None:
    # As the runner does to ggml's sockets: the options go on through a dup of the descriptor.
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as client:
        assert keepalive.enable_on_fd(client.fileno())
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == keepalive.KEEPIDLE
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == keepalive.KEEPCNT
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == \
            keepalive.USER_TIMEOUT_MS
        client.sendall(b"still open")  # the duplicate's close left the socket alone
    read, write = os.pipe()  # a descriptor that is not a socket is left alone
    try:
        assert not keepalive.enable_on_fd(read)
    finally:
        os.close(read)
        os.close(write)
