"""Stress, bounded in count and time: mixed requests from many clients, some leaving early."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx

from tests.conftest import MODEL
from tests.support.metrics import value
from tests.support.server import ServerProcess

TOTAL_REQUESTS = 200
CLIENTS = 16
TIME_LIMIT = 420.0
OPTIONS = {"temperature": 0.7, "num_predict": 12}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def request_for(index: int, rng: random.Random) -> tuple[str, dict[str, object], bool]:
    """(path, body, streamed) for the index-th request: a mix of every kind."""
    prompt = f"Request {index}: say something about the number {index}."
    kind = index % 8
    if kind == 0:
        return "/api/chat", {"model": MODEL, "options": OPTIONS,
                             "messages": [{"role": "user", "content": prompt}]}, True
    if kind == 1:
        return "/api/chat", {"model": MODEL, "options": OPTIONS, "stream": False,
                             "messages": [{"role": "user", "content": prompt}]}, False
    if kind == 2:
        return "/api/generate", {"model": MODEL, "prompt": prompt, "options": OPTIONS}, True
    if kind == 3:
        return "/api/generate", {"model": MODEL, "prompt": prompt, "options": OPTIONS,
                                 "stream": False}, False
    if kind == 4:
        return "/api/embed", {"model": MODEL, "input": [prompt, prompt[::-1]]}, False
    if kind == 5:
        return "/v1/messages", {"model": MODEL, "stream": True, "max_tokens": 12,
                                "messages": [{"role": "user", "content": prompt}]}, True
    if kind == 6:
        return "/v1/responses", {"model": MODEL, "stream": True, "max_output_tokens": 12,
                                 "input": prompt}, True
    return "/v1/chat/completions", {"model": MODEL, "stream": True, "max_tokens": 12,
                                    "messages": [{"role": "user", "content": prompt}]}, True


def record_of(line: str) -> dict[str, object] | None:
    payload = line.removeprefix("data: ")
    return None if payload == "[DONE]" else dict(json.loads(payload))


def is_error(line: str) -> bool:
    """An error record, in any of the four APIs' wire formats."""
    record = record_of(line)
    return record is not None and (bool(record.get("error")) or record.get("type") == "error")


def finished(last: str) -> bool:
    """Whether a stream's last line ends it, in any of the four APIs' wire formats."""
    record = record_of(last)
    return record is None or record.get("done") is True or record.get("type") in (
        "message_stop", "response.completed", "response.incomplete")


async def one(http: httpx.AsyncClient, index: int, rng: random.Random,
              outcomes: list[str]) -> None:
    path, body, streamed = request_for(index, rng)
    leave_early = streamed and rng.random() < 0.2
    if not streamed:
        reply = await http.post(path, json=body)
        assert reply.status_code in (200, 503), (path, reply.status_code, reply.text)
        outcomes.append("ok" if reply.status_code == 200 else "busy")
        return
    async with http.stream("POST", path, json=body) as reply:
        assert reply.status_code in (200, 503), (path, reply.status_code)
        if reply.status_code == 503:
            outcomes.append("busy")
            return
        lines = 0
        last = ""
        async for line in reply.aiter_lines():
            if not line.strip() or line.startswith("event: "):
                continue
            lines += 1
            last = line
            assert not is_error(line), line
            if leave_early and lines >= 2:
                outcomes.append("left")
                return  # closing the response mid-stream: the client is gone
        assert finished(last), (path, last)
        outcomes.append("ok")


def test_mixed_load_with_disconnects(tmp_path: Path) -> None:
    env = {"HOMEPORT_NUM_PARALLEL": "4", "HOMEPORT_CONTEXT_LENGTH": "1024",
           "HOMEPORT_MAX_QUEUE": "64"}
    with ServerProcess(tmp_path / "stress", env=env) as server:
        assert server.process is not None
        rng = random.Random(1234)
        outcomes: list[str] = []

        async def run(indices: range) -> None:
            limit = asyncio.Semaphore(CLIENTS)
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                async def guarded(index: int) -> None:
                    async with limit:
                        await one(http, index, rng, outcomes)
                await asyncio.gather(*(guarded(index) for index in indices))

        asyncio.run(asyncio.wait_for(run(range(20)), TIME_LIMIT))  # warm up, then measure
        rss_before = rss_bytes(server.process.pid)
        asyncio.run(asyncio.wait_for(run(range(20, TOTAL_REQUESTS)), TIME_LIMIT))
        rss_after = rss_bytes(server.process.pid)

        assert len(outcomes) == TOTAL_REQUESTS
        assert outcomes.count("left") >= 5
        assert outcomes.count("ok") >= TOTAL_REQUESTS - outcomes.count("left") - \
            outcomes.count("busy")
        models = httpx.get(f"{server.url}/api/ps", timeout=10).json()["models"]
        assert models
        assert all(model["slots"]["busy"] == 0 for model in models)
        assert value(server.url, "homeport_queue_depth") == 0
        assert value(server.url, "homeport_busy_slots", model=MODEL) == 0
        five_hundreds = [key for key, count in _status_counts(server.url).items()
                         if key.startswith("5") and key != "503" and count]
        assert not five_hundreds
        assert rss_after - rss_before < 64 * 1024 * 1024, (rss_before, rss_after)
        assert server.alive()


def _status_counts(url: str) -> dict[str, float]:
    from tests.support.metrics import scrape

    counts: dict[str, float] = {}
    for (name, labels), sample in scrape(url).items():
        if name == "homeport_requests_total":
            status = dict(labels)["status"]
            counts[status] = counts.get(status, 0) + sample
    return counts
