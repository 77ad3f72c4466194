"""Every number a caller sends is bounded before llama.cpp sees it: absurd values are clamped (as
Ollama clamps num_ctx) or refused with a 400, never a 5xx, and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from homeport import config
from homeport.durations import parse_go_duration, seconds_from_number
from homeport.engine.options import INT32_MAX, resolve_options
from homeport.errors import InvalidOptionError
from homeport.store.modelfile import ModelfileError, parse_modelfile
from tests.conftest import DETERMINISTIC, MODEL
from tests.support.server import ServerProcess, resident_bytes

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def _post_raw(http: httpx.Client, path: str, text: str) -> httpx.Response:
    """A body as written: Python's json module (the server's) reads NaN, Infinity and 1e400,
    which json.dumps will not write."""
    return http.post(path, content=text.encode(), headers={"content-type": "application/json"})


def _chat_body(options: str, **fields: Any) -> str:
    extra = "".join(f', "{key}": {value}' for key, value in fields.items())
    return (f'{{"model": "{MODEL}", "stream": false, "messages": {json.dumps(HI)}, '
            f'"options": {options}{extra}}}')


def _still_serving(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={"model": MODEL, "stream": False, "messages": HI,
                                         "options": DETERMINISTIC})
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True


# --- over the wire -------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    '{"num_ctx": 1e400}', '{"num_ctx": -Infinity}', '{"num_ctx": NaN}',
    '{"temperature": NaN}', '{"top_p": Infinity}', '{"seed": 1e400}',
    '{"num_batch": -Infinity}', '{"mirostat_tau": NaN}',
    '{"repeat_penalty": ' + "9" * 400 + ".0}",  # 1e400 spelled out: float() gives inf
])
def test_non_finite_options_are_400(http: httpx.Client, options: str) -> None:
    reply = _post_raw(http, "/api/chat", _chat_body(options))
    assert reply.status_code == 400, reply.text
    assert "finite number" in reply.json()["error"]
    _still_serving(http)


def test_an_integer_too_long_for_a_float_is_400(http: httpx.Client) -> None:
    reply = _post_raw(http, "/api/chat", _chat_body('{"temperature": ' + "9" * 400 + "}"))
    assert reply.status_code == 400, reply.text
    assert 'option "temperature" must be a finite number' in reply.json()["error"]


def test_a_repeat_penalty_of_zero_is_400(http: httpx.Client) -> None:
    reply = http.post("/api/chat", json={"model": MODEL, "messages": HI,
                                         "options": {"repeat_penalty": 0}})
    assert reply.status_code == 400
    assert "repeat_penalty" in reply.json()["error"]


@pytest.mark.parametrize("options", [
    {"num_thread": 2**31 - 1},
    {"num_thread": -7},
    {"num_batch": 10**12},
    {"num_batch": -5},
    {"num_keep": 10**30},
    {"num_keep": -(10**30)},
    {"top_k": 10**20},
    {"top_k": -3},
    {"seed": 2**70},
    {"temperature": 1e308},
    {"top_p": 5.0, "min_p": -2.0, "typical_p": 9.0},
    {"presence_penalty": -1e308, "frequency_penalty": 1e308},
    {"repeat_last_n": -1},
    {"repeat_last_n": -(10**9)},
    {"num_gpu": 10**12, "main_gpu": -5},
    {"draft_num_predict": 10**12},
    {"draft_num_predict": -(10**12)},
])
def test_absurd_options_are_clamped(http: httpx.Client, options: dict[str, Any]) -> None:
    reply = http.post("/api/chat", json={"model": MODEL, "stream": False, "messages": HI,
                                         "options": {**DETERMINISTIC, **options}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True
    _still_serving(http)


def test_a_huge_repeat_last_n_costs_no_memory(http: httpx.Client, server: ServerProcess) -> None:
    # Unbounded, 134,217,728 tokens of history are 512 MiB per request; held to the context,
    # a few KiB.
    _still_serving(http)
    before = resident_bytes(server.process.pid)
    reply = http.post("/api/chat", json={"model": MODEL, "stream": False, "messages": HI,
                                         "options": {**DETERMINISTIC, "repeat_last_n": 134217728}})
    assert reply.status_code == 200, reply.text
    assert resident_bytes(server.process.pid) - before < 256 * 1024**2


@pytest.mark.parametrize("num_predict", [10**30, -(10**30)])
def test_absurd_num_predict_is_clamped(http: httpx.Client, num_predict: int) -> None:
    # Held to "until the context is full": the answer starts, and is abandoned after one line.
    body = {"model": MODEL, "messages": HI, "options": {"temperature": 0, "seed": 1,
                                                       "num_predict": num_predict}}
    with http.stream("POST", "/api/chat", json=body) as reply:
        assert reply.status_code == 200
        first = json.loads(next(reply.iter_lines()))
        assert "message" in first, first
    _still_serving(http)


@pytest.mark.parametrize("keep_alive", [
    "9" * 400, "-" + "9" * 400, "1e400", "-Infinity", "NaN", '"' + "9" * 400 + 'h"',
    '"9999999999999h"',
])
def test_absurd_keep_alive_is_400(http: httpx.Client, keep_alive: str) -> None:
    reply = _post_raw(http, "/api/chat", _chat_body("{}", keep_alive=keep_alive))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "keep_alive" in error
    assert "out of range" in error or "invalid duration" in error
    _still_serving(http)


def test_create_with_nan_parameters_is_400(http: httpx.Client) -> None:
    for parameters in ('{"temperature": NaN}', '{"num_ctx": 1e400}', '{"anything": -Infinity}'):
        reply = _post_raw(http, "/api/create",
                          f'{{"model": "nan-model", "from": "{MODEL}", "stream": false, '
                          f'"parameters": {parameters}}}')
        assert reply.status_code == 400, reply.text
        assert "finite number" in reply.json()["error"]
    assert "nan-model:latest" not in {m["name"] for m in http.get("/api/tags").json()["models"]}
    _still_serving(http)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions",
     f'{{"model": "{MODEL}", "messages": {json.dumps(HI)}, "temperature": NaN}}'),
    ("/v1/chat/completions",
     f'{{"model": "{MODEL}", "messages": {json.dumps(HI)}, "presence_penalty": 1e400}}'),
    ("/v1/completions", f'{{"model": "{MODEL}", "prompt": "hi", "top_p": -Infinity}}'),
    ("/v1/messages",
     f'{{"model": "{MODEL}", "max_tokens": 8, "messages": {json.dumps(HI)}, '
     '"temperature": Infinity}'),
    ("/v1/responses", f'{{"model": "{MODEL}", "input": "hi", "temperature": NaN}}'),
])
def test_other_apis_refuse_non_finite_numbers(http: httpx.Client, path: str, body: str) -> None:
    reply = _post_raw(http, path, body)
    assert reply.status_code == 400, reply.text
    _still_serving(http)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 10**30,
                              "stream": True}),
    ("/v1/chat/completions", {"model": MODEL, "messages": HI, "seed": -(10**40), "max_tokens": 4}),
    ("/v1/messages", {"model": MODEL, "messages": HI, "max_tokens": 4, "top_k": 10**40}),
])
def test_other_apis_clamp_huge_integers(http: httpx.Client, path: str,
                                        body: dict[str, Any]) -> None:
    with http.stream("POST", path, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        assert next(reply.iter_bytes())
    _still_serving(http)


def test_huge_dimensions_are_the_whole_vector(http: httpx.Client) -> None:
    whole = http.post("/api/embed", json={"model": MODEL, "input": "hi"}).json()["embeddings"][0]
    reply = http.post("/api/embed", json={"model": MODEL, "input": "hi", "dimensions": 10**30})
    assert reply.status_code == 200, reply.text
    assert reply.json()["embeddings"][0] == whole


# --- the rules themselves ------------------------------------------------------------------------


def test_resolve_options_holds_every_number() -> None:
    options = resolve_options(
        {}, {"num_thread": INT32_MAX, "num_batch": -1, "num_keep": 10**9, "num_predict": -9,
             "top_k": -1, "repeat_last_n": -1, "seed": 2**32 + 5, "num_ctx": 10**9},
        default_num_ctx=2048, model_context_length=8192, max_threads=2)
    assert (options.num_thread, options.num_batch, options.num_keep) == (2, 32, 8192)
    assert (options.num_predict, options.top_k, options.seed) == (-1, 0, 5)
    assert options.num_ctx == options.repeat_last_n == 8192
    held = resolve_options({}, {"repeat_last_n": 10**8, "num_ctx": 512}, 2048, 8192)
    assert held.repeat_last_n == 512
    assert resolve_options({}, {"seed": -(10**40)}, 2048, 8192).seed == -1
    assert resolve_options({}, {"draft_num_predict": 10**9}, 2048, 8192).draft_num_predict == 32
    assert resolve_options({}, {"draft_num_predict": -9}, 2048, 8192).draft_num_predict == -1


def test_modelfile_parameters_must_be_finite() -> None:
    for value in ("NaN", "inf", "-Infinity", "1e400"):
        with pytest.raises(ModelfileError, match="Modelfile line 2: parameter temperature"):
            parse_modelfile(f"FROM x\nPARAMETER temperature {value}\n")
    assert parse_modelfile("FROM x\nPARAMETER temperature 0.5\n").parameters == {
        "temperature": 0.5}
    with pytest.raises(InvalidOptionError):
        resolve_options({"top_p": float("nan")}, None, 2048, 8192)


def test_durations_past_go_range_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration("9" * 400 + "h")
    with pytest.raises(ValueError, match="out of range"):
        seconds_from_number(10**400)
    assert parse_go_duration("2562047h") == 2562047 * 3600.0  # Go's largest whole hour


def test_a_400_digit_keep_alive_setting_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "9" * 400)
    assert config.KEEP_ALIVE.lookup() == (300.0, "default")
