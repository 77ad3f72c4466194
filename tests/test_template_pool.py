"""Chat templates render in a pool of child processes: requests stuck on slow templates do not
hold up anyone else's render, and a child stopped at its limit (or killed) is replaced."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from homeport.engine.template_process import TemplateRenderer, default_pool_size
from homeport.engine.templates import TemplateRenderError
from tests.conftest import MODEL
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

# Spins for 10^10 steps, but only for a message that says "spin": /api/create's trial render
# (of "hello") passes, and each chat decides whether its render is slow.
SPINNING_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] == 'spin' %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHILD_MODULE = b"homeport.engine.template_process"
SPINNING_CPU_SECONDS = 2.0  # an ordinary render (and a child's start) takes far less


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A long limit: the slow renders cannot end by themselves while the test runs; the test
    # ends them by killing their children.
    env = {"HOMEPORT_CONTEXT_LENGTH": "256", "HOMEPORT_TEMPLATE_TIMEOUT": "10m"}
    with ServerProcess(tmp_path_factory.mktemp("template-pool"), env=env) as process:
        reply = httpx.post(f"{process.url}/api/create", timeout=120, json={
            "model": "spinner", "from": MODEL, "template": SPINNING_TEMPLATE, "stream": False})
        assert reply.status_code == 200, reply.text
        yield process


def _spinning_children(server_pid: int) -> list[int]:
    """The server's render children that have spent seconds of CPU: rendering a spin."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent, cpu_ticks = int(fields[1]), int(fields[11]) + int(fields[12])
        if parent == server_pid and CHILD_MODULE in cmdline \
                and cpu_ticks / os.sysconf("SC_CLK_TCK") >= SPINNING_CPU_SECONDS:
            found.append(int(entry.name))
    return found



def _chat(url: str, model: str, content: str) -> httpx.Response:
    return httpx.post(f"{url}/api/chat", timeout=600, json={
        "model": model, "stream": False, "messages": [{"role": "user", "content": content}],
        "options": {"temperature": 0, "num_predict": 4}})


def test_slow_templates_do_not_hold_up_other_chats(server: ServerProcess) -> None:
    assert server.process is not None
    slow_count = default_pool_size() - 1  # every child but one stuck on a slow template
    with concurrent.futures.ThreadPoolExecutor(slow_count) as pool:
        slow = [pool.submit(_chat, server.url, "spinner", "spin") for _ in range(slow_count)]
        assert wait_for(lambda: len(_spinning_children(server.process.pid)) == slow_count, timeout=300)
        ordinary = _chat(server.url, MODEL, "hi")
        assert ordinary.status_code == 200, ordinary.text
        assert ordinary.json()["done"] is True
        assert not any(future.done() for future in slow), "answered while the slow ones render"
        for pid in _spinning_children(server.process.pid):
            os.kill(pid, signal.SIGKILL)
        for future in slow:
            reply = future.result()
            assert reply.status_code == 400
            assert "renderer stopped while rendering" in reply.json()["error"]
    # the killed children are replaced: the pool renders as many at once as before
    with concurrent.futures.ThreadPoolExecutor(default_pool_size()) as pool:
        replies = list(pool.map(lambda _: _chat(server.url, "spinner", "hello"),
                                range(default_pool_size())))
    assert [reply.status_code for reply in replies] == [200] * default_pool_size()


def test_a_child_stopped_at_its_time_limit_is_replaced() -> None:
    renderer = TemplateRenderer(timeout=1.0, size=1)
    try:
        with pytest.raises(TemplateRenderError, match="took longer than 1s"):
            renderer.render(SPINNING_TEMPLATE, [{"role": "user", "content": "spin"}])
        text = renderer.render(SPINNING_TEMPLATE, [{"role": "user", "content": "hello"}])
        assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    finally:
        renderer.close()
