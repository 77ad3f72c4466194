"""A CodeCompanion-shaped exchange replayed against the real server with curl, as CodeCompanion
sends it (plenary.curl: the same flags, a header file, a body file): model discovery, a chat
stream, an inline request with ``stream: false``; with the URL's trailing slash kept."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL
from tests.support import metrics

CURL = shutil.which("curl") or "curl"
# CodeCompanion's flags for every request (http.lua build_curl_args), plus streaming ones.
FLAGS = ["--retry", "3", "--retry-delay", "1", "--keepalive-time", "60",
         "--connect-timeout", "10", "--silent", "--show-error"]
STREAM_FLAGS = ["--tcp-nodelay", "--no-buffer"]
SYSTEM = ('You are an AI programming assistant named "CodeCompanion". You are currently '
          "plugged in to the Neovim text editor on a user's machine.")
INLINE_SYSTEM = ("You are a knowledgeable developer working in the Neovim text editor. You write "
                 "lua code on behalf of a user, directly into their active Neovim buffer. "
                 "Output only valid JSON: {\"code\": \"...\", \"language\": \"...\", "
                 "\"placement\": \"replace|add|before|new|chat\"}")


@pytest.fixture
def url(base_url: str) -> str:
    """The adapter's URL as a user may write it: with a trailing slash (so //api/... goes out)."""
    return base_url + "/"


def curl(tmp_path: Path, method: str, url: str, body: dict[str, Any] | None = None,
         stream: bool = False, max_time: float | None = None) -> subprocess.Popen[str]:
    headers = tmp_path / f"headers-{time.monotonic_ns()}"
    headers.write_text("Content-Type: application/json\n")
    args = [CURL, *FLAGS, *(STREAM_FLAGS if stream else []), "--header", f"@{headers}",
            "-X", method, "--write-out", "\n%{http_code}"]
    if max_time is not None:
        args += ["--max-time", str(max_time)]
    if body is not None:
        payload = tmp_path / f"body-{time.monotonic_ns()}.json"
        payload.write_text(json.dumps(body))
        args += ["--data-binary", f"@{payload}"]
    return subprocess.Popen([*args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    text, _, status = out.rpartition("\n")
    return int(status), text


def test_model_discovery_well_inside_three_seconds(tmp_path: Path, url: str) -> None:
    started = time.monotonic()
    status, text = finish(curl(tmp_path, "GET", url + "/api/tags", max_time=3))
    assert status == 200
    names = [model["name"] for model in json.loads(text)["models"]]
    assert MODEL in names
    # Then /api/show for every model at once, 3 s each.
    shows = [curl(tmp_path, "POST", url + "/api/show", {"model": name}, max_time=3)
             for name in names]
    results = [finish(process) for process in shows]
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"discovery took {elapsed:.2f}s"
    info = dict(zip(names, (json.loads(body) for _, body in results), strict=True))[MODEL]
    assert all(status == 200 for status, _ in results)
    assert "completion" in info["capabilities"]
    assert "tools" not in info["capabilities"], "CodeCompanion then switches tools off"
    assert "thinking" not in info["capabilities"]
    family = info["details"]["family"]
    assert info["model_info"][f"{family}.context_length"] == 8192


def codecompanion_lines(text: str) -> list[dict[str, Any]]:
    """Parse a stream as CodeCompanion does: drop what precedes the first '{', then JSON."""
    chunks = []
    for line in text.splitlines():
        start = line.find("{")
        if start >= 0:
            chunks.append(json.loads(line[start:]))
    return chunks


def chat_body(stream: bool, system: str, question: str) -> dict[str, Any]:
    return {
        "model": MODEL, "stream": stream, "think": False, "keep_alive": "30m",
        # Only the options the user set; num_ctx as the server's own, so nothing reloads.
        "options": {"temperature": 0, "num_ctx": 2048, "num_predict": 24},
        "messages": [{"role": "system", "content": system},
                     {"role": "system", "content": "The user is working on a Linux machine."},
                     {"role": "user", "content": question}],
    }


def test_chat_stream(tmp_path: Path, url: str) -> None:
    started = time.monotonic()
    status, text = finish(curl(tmp_path, "POST", url + "/api/chat",
                               chat_body(True, SYSTEM, "Write hello world in Lua."), stream=True))
    assert status == 200
    chunks = codecompanion_lines(text)
    assert len(chunks) > 3, "one line per token"
    assert not any("error" in chunk for chunk in chunks)
    assert all(chunk["message"]["role"] == "assistant" for chunk in chunks)
    assert all("thinking" not in chunk["message"] for chunk in chunks), "think: false"
    content = "".join(chunk["message"]["content"] for chunk in chunks)
    assert content.strip()
    final = chunks[-1]
    assert final["done"] is True
    assert final["done_reason"] in ("stop", "length")
    tokens = final["prompt_eval_count"] + final["eval_count"]  # CodeCompanion's token count
    assert tokens > final["eval_count"] > 0
    assert time.monotonic() - started < 60


def test_inline_request_without_streaming(tmp_path: Path, url: str) -> None:
    status, text = finish(curl(tmp_path, "POST", url + "/api/chat",
                               chat_body(False, INLINE_SYSTEM, "<prompt>add a comment</prompt>")))
    assert status == 200
    body = json.loads(text)  # CodeCompanion reads data.body as one JSON object
    assert isinstance(body["message"]["content"], str)
    assert body["message"]["content"].strip()
    assert "thinking" not in body["message"]
    assert body["done"] is True


def test_a_missing_model_is_a_4xx_so_curl_does_not_retry(tmp_path: Path, url: str,
                                                         base_url: str) -> None:
    body = chat_body(True, SYSTEM, "hi")
    body["model"] = "mistral"
    before = metrics.value(base_url, "homeport_requests_total", route="/api/chat", status="404")
    status, text = finish(curl(tmp_path, "POST", url + "/api/chat", body, stream=True))
    assert status == 404
    assert text.startswith('{"error"')
    assert "mistral" in json.loads(text)["error"]
    after = metrics.value(base_url, "homeport_requests_total", route="/api/chat", status="404")
    assert after - before == 1, "curl --retry 3 sent it once: a 4xx is not retried"


def test_older_releases_openai_routes(tmp_path: Path, url: str) -> None:
    status, text = finish(curl(tmp_path, "GET", url + "/v1/models"))
    assert status == 200
    assert MODEL in [model["id"] for model in json.loads(text)["data"]]
