"""The runner's watch on its RPC workers, in a child process (it ends the process it runs in)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap

from homeport.engine.worker_watch import EXIT_STATUS

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
