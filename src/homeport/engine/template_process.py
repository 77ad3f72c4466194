"""Chat templates render in child processes that may use only so much time and memory.

The sandbox (``templates``) keeps a template from reaching Python's internals, but not from
looping for hours (``range`` inside ``range``) or doubling a string until memory runs out, and a
template comes with any model file pulled from anywhere. Rendered in the server, such a template
would stop every stream of every model; rendered here, the request gets a 400 after
``timeout`` seconds, the child is replaced, and everything else goes on.

A small pool of children (grown as renders overlap) serves the renders, each child one at a
time, so that a slow template holds up only its own request, never everyone's. A render takes an
idle child and talks to it over pipes: a JSON line with the template, messages and options in, a
JSON line with the text or an error out. Each child limits its own address space, and exits when
the server closes its pipe or dies.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
from typing import Any

from homeport.engine.templates import TemplateRenderError

log = logging.getLogger(__name__)

RENDER_TIMEOUT_SECONDS = 5.0
RENDER_MEMORY_BYTES = 2 * 1024**3


def default_pool_size() -> int:
    """Children rendering at once: one more than the cores, so that renders stuck on a slow
    template leave one for everyone else; never more than four (each is a Python process)."""
    return min(4, (os.cpu_count() or 1) + 1)


class _Child:
    """One render process and its pipes."""

    def __init__(self, memory_bytes: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "homeport.engine.template_process", str(memory_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, request: bytes) -> bool:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
        except OSError:
            return False
        return True

    def answer(self, timeout: float) -> bytes | None:
        """The answer line; None after ``timeout`` seconds; b"" if the child died."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline() if ready else None

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class TemplateRenderer:
    """``render_chat`` in a pool of child processes (blocking: call it from a worker thread)."""

    def __init__(self, timeout: float = RENDER_TIMEOUT_SECONDS,
                 memory_bytes: int = RENDER_MEMORY_BYTES, size: int | None = None) -> None:
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self.size = size or default_pool_size()
        self._pool = threading.Condition()
        self._idle: list[_Child] = []
        self._busy = 0  # children out rendering, or being started for a render
        self._closed = False

    def render(self, source: str | None, messages: list[dict[str, Any]],
               **options: Any) -> str:
        """What ``templates.render_chat(source, messages, **options)`` returns, or its
        TemplateRenderError; also one when the render takes too long or too much memory."""
        request = json.dumps({"source": source, "messages": messages, "options": options},
                             ensure_ascii=False).encode() + b"\n"
        child = self._take()
        healthy = False
        try:
            if not child.send(request):
                raise TemplateRenderError("the chat template renderer stopped unexpectedly; "
                                          "try again")
            line = child.answer(self.timeout)
            if line is None:
                log.warning("a chat template ran for over %gs and was stopped", self.timeout)
                raise TemplateRenderError(
                    f"chat template took longer than {self.timeout:g}s to render and was stopped")
            if not line:  # the child died: its memory limit, or killed from outside
                raise TemplateRenderError(
                    "the chat template renderer stopped while rendering (over its "
                    f"{self.memory_bytes // 1024**2} MiB memory limit, or killed)")
            healthy = True
        finally:
            self._give_back(child, healthy)
        answer: dict[str, Any] = json.loads(line)
        if "text" in answer:
            return str(answer["text"])
        raise TemplateRenderError(str(answer.get("error", "chat template failed to render")))

    def _take(self) -> _Child:
        """An idle child, a new one while the pool is not full, else the next one freed."""
        with self._pool:
            while True:
                if self._closed:
                    raise TemplateRenderError("the server is shutting down")
                while self._idle:
                    child = self._idle.pop()
                    if child.alive():
                        self._busy += 1
                        return child
                    child.stop()  # died between renders: its pipes go with it
                if self._busy < self.size:
                    self._busy += 1
                    break
                self._pool.wait()
        try:
            return _Child(self.memory_bytes)
        except BaseException:
            self._give_back(None, False)
            raise

    def _give_back(self, child: _Child | None, healthy: bool) -> None:
        """Back to the pool; a child that overran its limits (or the pool closed) is killed,
        and its place is taken by a fresh child when a render next needs one."""
        with self._pool:
            self._busy -= 1
            keep = child is not None and healthy and not self._closed
            if keep:
                assert child is not None
                self._idle.append(child)
            self._pool.notify()
        if child is not None and not keep:
            child.stop()

    def start(self) -> None:
        """Start one child now, so the first request does not wait for it."""
        self._give_back(self._take(), True)

    def close(self) -> None:
        """Stop the idle children; busy ones are stopped as their renders end."""
        with self._pool:
            self._closed = True
            idle, self._idle = self._idle, []
            self._pool.notify_all()
        for child in idle:
            child.stop()


def _serve(memory_bytes: int) -> None:
    """The child: answer render requests from stdin until it closes."""
    import resource
    import signal

    from homeport.engine.templates import render_chat

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # Ctrl-C at the server's terminal reaches this process too; the server stops it when done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            text = render_chat(request["source"], request["messages"], **request["options"])
            answer: dict[str, str] = {"text": text}
        except TemplateRenderError as exc:
            answer = {"error": exc.message}
        except MemoryError:
            answer = {"error": f"chat template used more than {memory_bytes // 1024**2} MiB of "
                               "memory while rendering"}
        except Exception as exc:  # RecursionError from a recursive macro, and the like
            answer = {"error": f"chat template failed to render: {type(exc).__name__}"}
        sys.stdout.buffer.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
