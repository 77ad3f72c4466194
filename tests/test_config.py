"""Settings: OLLAMA_HOST parsed exactly as Ollama parses it, durations, the registry."""

from __future__ import annotations

import math

import pytest

from homeport import config, endpoints
from homeport.durations import parse_go_duration
from homeport.errors import ServerBusyError


@pytest.mark.parametrize(("value", "expected"), [
    ("", ("http", "127.0.0.1", 11434)),
    ("1.2.3.4", ("http", "1.2.3.4", 11434)),
    (":1234", ("http", "", 1234)),
    ("1.2.3.4:1234", ("http", "1.2.3.4", 1234)),
    ("example.com", ("http", "example.com", 11434)),
    ("example.com:1234", ("http", "example.com", 1234)),
    ("http://example.com", ("http", "example.com", 80)),
    ("https://example.com", ("https", "example.com", 443)),
    ("https://example.com:1234", ("https", "example.com", 1234)),
    ("[0::1]", ("http", "::1", 11434)),
    ("[::1]:1234", ("http", "::1", 1234)),
    ("  'example.com:56789'  ", ("http", "example.com", 56789)),
    ("example.com:99999", ("http", "example.com", 11434)),  # bad port: the default
    ("example.com:abc", ("http", "example.com", 11434)),
    ("http://example.com/path/", ("http", "example.com", 80)),
])
def test_parse_host_like_ollama(value: str, expected: tuple[str, str, int]) -> None:
    address = endpoints.parse_host(value)
    assert (address.scheme, address.host, address.port) == expected


def test_bind_address_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert endpoints.bind_address().url == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:9999")
    assert (endpoints.bind_address().host, endpoints.bind_address().port) == ("0.0.0.0", 9999)
    monkeypatch.setenv("HOMEPORT_HOST", "127.0.0.1:7777")
    assert endpoints.bind_address().port == 7777


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300), ("1h30m", 5400), ("-1m", -60), ("0", 0), ("1.5s", 1.5), ("300ms", 0.3),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert math.isclose(parse_go_duration(text), seconds)


@pytest.mark.parametrize("text", ["3600", "", "5 m", "m", "1d", "--1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_go_duration(text)


def test_keep_alive_setting_accepts_bare_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.KEEP_ALIVE.get() == 300
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "3600")
    assert config.KEEP_ALIVE.get() == 3600
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "-1")
    assert config.KEEP_ALIVE.get() == math.inf


def test_bad_setting_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "lots")
    assert config.NUM_PARALLEL.get() == 4
    assert "OLLAMA_NUM_PARALLEL" in caplog.text
    monkeypatch.setenv("HOMEPORT_NUM_PARALLEL", "2")
    assert config.NUM_PARALLEL.lookup() == (2, "HOMEPORT_NUM_PARALLEL")


def test_every_setting_is_documented() -> None:
    for names, _, description in config.describe_settings():
        assert names
        assert description


def test_queue_full_error_is_the_only_retryable_5xx() -> None:
    assert ServerBusyError().status == 503
    assert "maximum pending requests exceeded" in ServerBusyError().message
