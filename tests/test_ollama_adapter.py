"""The ollama adapter (official ``ollama`` client) against the real server and the bundled model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from homeport.client.adapters import AdapterError, Finished, Message, TextDelta, open_adapter
from homeport.client.api import ServerUnreachableError
from homeport.client.settings import ClientSettings
from homeport.config import config_file
from homeport.endpoints import resolve_endpoint
from tests.conftest import DETERMINISTIC, MODEL
from tests.support.fake_ollama import FakeOllama
from tests.support.server import free_port


def write_config(text: str) -> None:
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text(text)


@pytest.fixture
def endpoint_env(base_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OLLAMA_ENDPOINT", base_url)
    return base_url


def deterministic_config(model: str = MODEL) -> None:
    """Greedy and short: the bundled model would otherwise write until its context is full."""
    write_config(f'[adapters.ollama]\n{f"model = {model!r}" if model else ""}\n'
                 f'temperature = {DETERMINISTIC["temperature"]}\n'
                 f'max_tokens = {DETERMINISTIC["num_predict"]}\n')


def test_streams_an_answer_with_usage(endpoint_env: str) -> None:
    deterministic_config()
    adapter = open_adapter("ollama", ClientSettings())
    assert adapter.model == MODEL
    assert adapter.notices == []
    events = list(adapter.stream([Message("user", "Name a colour.")], system="Answer briefly."))
    texts = [event.text for event in events if isinstance(event, TextDelta)]
    assert len(texts) > 1
    assert "".join(texts).strip()
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.usage.input_tokens > 5
    assert final.usage.output_tokens == len(texts)
    assert final.stop_reason in ("stop", "length")


def test_default_model_falls_back_with_a_notice(endpoint_env: str) -> None:
    deterministic_config(model="")
    adapter = open_adapter("ollama", ClientSettings())  # the built-in default, mistral
    assert adapter.model == MODEL
    assert adapter.notices == [
        f"model 'mistral' is not on the server at {endpoint_env}; using '{MODEL}' "
        f"(set model under [adapters.ollama] in {config_file()})"]
    assert adapter.complete([Message("user", "hi")]).text


def test_an_explicit_model_must_exist(endpoint_env: str) -> None:
    with pytest.raises(AdapterError) as info:
        open_adapter("ollama", ClientSettings(), model="mistral")
    assert str(info.value) == (
        f"model 'mistral' not found on the server at {endpoint_env} (from OLLAMA_ENDPOINT) "
        f"(it has: {MODEL}); pull it with `homeport pull mistral`")


def test_tag_defaults_to_latest_and_names_ignore_case(endpoint_env: str) -> None:
    assert open_adapter("ollama", ClientSettings(), model=MODEL.upper()).model == MODEL
    with FakeOllama(models=("mistral:latest",)) as fake:
        adapter = open_adapter("ollama", ClientSettings(), model="mistral",
                               endpoint=resolve_endpoint(fake.url))
        assert adapter.model == "mistral:latest"


def test_unreachable_names_the_endpoint_and_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("OLLAMA_HOST", url)
    with pytest.raises(ServerUnreachableError) as info:
        open_adapter("ollama", ClientSettings())
    assert str(info.value).startswith(f"could not reach a server at {url} (from OLLAMA_HOST): ")


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


def test_token_is_sent_and_401_says_what_to_do(fake: FakeOllama,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake.token = "hp_secret_token"
    monkeypatch.setenv("OLLAMA_ENDPOINT", fake.url)
    with pytest.raises(AdapterError) as info:
        open_adapter("ollama", ClientSettings())
    assert str(info.value).startswith(
        f"the server at {fake.url} answered 401: unauthorized: a valid bearer token is "
        "required; this server wants a token: set HOMEPORT_TOKEN")
    monkeypatch.setenv("HOMEPORT_TOKEN", "hp_secret_token")
    adapter = open_adapter("ollama", ClientSettings())
    assert adapter.complete([Message("user", "hi")]).text == fake.reply
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer hp_secret_token"
    monkeypatch.setenv("HOMEPORT_TOKEN", "hp_wrong")
    with pytest.raises(AdapterError, match="the token from HOMEPORT_TOKEN was refused") as info:
        open_adapter("ollama", ClientSettings())
    assert "hp_wrong" not in str(info.value)


def test_403_says_ask_the_owner(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.forbidden = True
    monkeypatch.setenv("OLLAMA_ENDPOINT", fake.url)
    with pytest.raises(AdapterError, match=r"answered 403: forbidden: .*ask its owner"):
        open_adapter("ollama", ClientSettings())


def test_token_by_command_reference(fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.token = "hp_from_a_password_manager"
    monkeypatch.setenv("OLLAMA_ENDPOINT", fake.url)
    write_config('token = "cmd:printf hp_from_a_password_manager"\n')
    adapter = open_adapter("ollama", ClientSettings())
    assert adapter.complete([Message("user", "hi")]).text == fake.reply


def test_options_from_the_config_file_reach_the_server(fake: FakeOllama,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_ENDPOINT", fake.url)
    write_config('[adapters.ollama]\nmodel = "fake-coder"\nnum_ctx = 8192\nkeep_alive = "30m"\n')
    open_adapter("ollama", ClientSettings()).complete([Message("user", "hi")], system="S")
    body = fake.chat_bodies()[-1]
    assert body["model"] == "fake-coder:latest"
    assert body["options"] == {"num_ctx": 8192}
    assert body["keep_alive"] == "30m"
    assert body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "S"},
                                {"role": "user", "content": "hi"}]


def test_unset_num_ctx_and_keep_alive_are_left_to_the_server(
        fake: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlike the Neovim configuration (EDITOR_NUM_CTX, EDITOR_KEEP_ALIVE; see test_nvim)."""
    monkeypatch.setenv("OLLAMA_ENDPOINT", fake.url)
    write_config('[adapters.ollama]\nmodel = "fake-coder"\n')
    open_adapter("ollama", ClientSettings()).complete([Message("user", "hi")])
    body = fake.chat_bodies()[-1]
    assert "options" not in body
    assert "keep_alive" not in body
