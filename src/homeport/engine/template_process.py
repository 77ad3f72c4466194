"""Chat templates render in a child process that may use only so much time and memory.

The sandbox (``templates``) keeps a template from reaching Python's internals, but not from
looping for hours (``range`` inside ``range``) or doubling a string until memory runs out, and a
template comes with any model file pulled from anywhere. Rendered in the server, such a template
would stop every stream of every model; rendered here, the request gets a 400 after
``timeout`` seconds, the child is replaced, and everything else goes on.

One child serves one render at a time (a render takes about a millisecond), over a pipe: a JSON
line with the template, messages and options in, a JSON line with the text or an error out. The
child limits its own address space, and exits when the server closes the pipe or dies.
"""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import threading
from typing import IO, Any

from homeport.engine.templates import TemplateRenderError

log = logging.getLogger(__name__)

RENDER_TIMEOUT_SECONDS = 5.0
RENDER_MEMORY_BYTES = 2 * 1024**3


class TemplateRenderer:
    """``render_chat`` in a child process (blocking: call it from a worker thread)."""

    def __init__(self, timeout: float = RENDER_TIMEOUT_SECONDS,
                 memory_bytes: int = RENDER_MEMORY_BYTES) -> None:
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None

    def render(self, source: str | None, messages: list[dict[str, Any]],
               **options: Any) -> str:
        """What ``templates.render_chat(source, messages, **options)`` returns, or its
        TemplateRenderError; also one when the render takes too long or too much memory."""
        request = json.dumps({"source": source, "messages": messages, "options": options},
                             ensure_ascii=False).encode() + b"\n"
        with self._lock:
            child = self._running_child()
            assert child.stdin is not None
            assert child.stdout is not None
            try:
                child.stdin.write(request)
                child.stdin.flush()
            except OSError:
                self._stop_child()
                raise TemplateRenderError("the chat template renderer stopped unexpectedly; "
                                          "try again") from None
            answer = self._read_answer(child.stdout)
        if "text" in answer:
            return str(answer["text"])
        raise TemplateRenderError(str(answer.get("error", "chat template failed to render")))

    def _read_answer(self, stdout: IO[bytes]) -> dict[str, Any]:
        ready, _, _ = select.select([stdout], [], [], self.timeout)
        if not ready:
            self._stop_child()
            log.warning("a chat template ran for over %gs and was stopped", self.timeout)
            raise TemplateRenderError(
                f"chat template took longer than {self.timeout:g}s to render and was stopped")
        line = stdout.readline()
        if not line:  # the child died: its memory limit, or killed from outside
            self._stop_child()
            raise TemplateRenderError(
                "the chat template renderer stopped while rendering (over its "
                f"{self.memory_bytes // 1024**2} MiB memory limit, or killed)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _running_child(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is not None:
            self._stop_child()  # died between renders: its pipes go with it
        if self._child is None:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "homeport.engine.template_process",
                 str(self.memory_bytes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
        return self._child

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    pipe.close()

    def start(self) -> None:
        """Start the child now, so the first request does not wait for it."""
        with self._lock:
            self._running_child()

    def close(self) -> None:
        with self._lock:
            self._stop_child()


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
