"""The anthropic adapters, through the official SDK, against a fake Messages API (real SSE)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from homeport.client.adapters import (
    AdapterError,
    Finished,
    Message,
    TextDelta,
    ThinkingDelta,
    open_adapter,
)
from homeport.client.settings import ClientSettings
from tests.support.fake_anthropic import API_KEY, MISSING_MODEL, FakeAnthropic


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
        yield server


def write_config(text: str) -> None:
    from homeport.config import config_file

    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_streams_text_and_reports_usage(fake: FakeAnthropic) -> None:
    adapter = open_adapter("anthropic_haiku", ClientSettings())
    events = list(adapter.stream([Message("user", "Hello?")], system="Be brief."))
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    assert text == fake.reply
    assert sum(isinstance(event, TextDelta) for event in events) > 3, "streamed in pieces"
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.usage.input_tokens == 21
    assert final.usage.output_tokens == len(fake.reply.split())
    assert final.stop_reason == "end_turn"
    request = fake.requests[-1]
    sent_key = request["headers"].get("x-api-key") or request["headers"]["authorization"]
    assert sent_key.removeprefix("Bearer ") == API_KEY
    assert request["headers"]["anthropic-version"]
    assert request["body"]["model"] == "claude-haiku-5-5"
    assert request["body"]["system"] == "Be brief."
    assert request["body"]["stream"] is True
    assert request["body"]["messages"] == [{"role": "user", "content": "Hello?"}]


@pytest.mark.parametrize(("name", "model"), [("anthropic", "claude-sonnet-5-5"),
                                             ("anthropic_opus", "claude-opus-5-5"),
                                             ("anthropic_haiku", "claude-haiku-5-5")])
def test_each_variant_sends_its_default_model(fake: FakeAnthropic, name: str, model: str) -> None:
    adapter = open_adapter(name, ClientSettings())
    reply = adapter.complete([Message("user", "hi")])
    assert reply.text == fake.reply
    assert fake.requests[-1]["body"]["model"] == model


def test_models_and_keys_come_from_the_config_file(fake: FakeAnthropic,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("MY_CLAUDE_KEY", API_KEY)
    write_config('[adapters.anthropic_opus]\nmodel = "claude-opus-4-8"\n'
                 'api_key = "env:MY_CLAUDE_KEY"\nmax_tokens = 99\n')
    adapter = open_adapter("anthropic_opus", ClientSettings())
    adapter.complete([Message("user", "hi")])
    body = fake.requests[-1]["body"]
    assert body["model"] == "claude-opus-4-8"
    assert body["max_tokens"] == 99


def test_key_from_a_command(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    write_config(f'[adapters.anthropic]\napi_key = "cmd:echo {API_KEY}"\n')
    assert open_adapter("anthropic", ClientSettings()).complete(
        [Message("user", "hi")]).text == fake.reply


def test_a_key_in_clear_is_refused(fake: FakeAnthropic) -> None:
    write_config(f'[adapters.anthropic]\napi_key = "{API_KEY}"\n')
    with pytest.raises(Exception, match="must be a reference") as info:
        ClientSettings()
    assert API_KEY not in str(info.value)


def test_thinking_and_pings_are_handled(fake: FakeAnthropic) -> None:
    adapter = open_adapter("anthropic", ClientSettings())
    events = list(adapter.stream([Message("user", "[think] why?")]))
    assert isinstance(events[0], ThinkingDelta)
    assert events[0].text == "Let me think."
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == fake.reply


def test_error_event_mid_stream_is_one_clear_line(fake: FakeAnthropic) -> None:
    adapter = open_adapter("anthropic", ClientSettings())
    events = adapter.stream([Message("user", "[overload] go")])
    assert isinstance(next(events), TextDelta), "the text before the error arrives"
    with pytest.raises(AdapterError) as info:
        list(events)
    assert str(info.value) == ("Anthropic stopped the answer: Overloaded (overloaded_error); "
                               "try again")


def test_no_key(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AdapterError, match=r"no Anthropic API key for the anthropic_haiku adapter: "
                                           r"set ANTHROPIC_API_KEY"):
        open_adapter("anthropic_haiku", ClientSettings())
    assert fake.requests == []


def test_wrong_key(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    adapter = open_adapter("anthropic", ClientSettings())
    with pytest.raises(AdapterError, match=r"Anthropic rejected the API key of the anthropic "
                                           r"adapter \(401: invalid x-api-key "
                                           r"\(authentication_error\)\)") as info:
        adapter.complete([Message("user", "hi")])
    assert "sk-ant-wrong" not in str(info.value)


def test_missing_model(fake: FakeAnthropic) -> None:
    adapter = open_adapter("anthropic", ClientSettings(), model=MISSING_MODEL)
    with pytest.raises(AdapterError, match=r"Anthropic has no model 'claude-missing' \(404"):
        adapter.complete([Message("user", "hi")])


def test_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    adapter = open_adapter("anthropic", ClientSettings())
    started = time.monotonic()
    with pytest.raises(AdapterError, match=f"could not reach Anthropic at {url}"):
        adapter.complete([Message("user", "hi")])
    assert time.monotonic() - started < 15


def test_lists_models(fake: FakeAnthropic) -> None:
    assert open_adapter("anthropic", ClientSettings()).models() == [
        "claude-sonnet-5-5", "claude-opus-5-5", "claude-haiku-5-5"]
