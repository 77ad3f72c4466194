"""Endpoint resolution: every source, their precedence, and bad values handled as Ollama does;
the token and secrets by reference; ``homeport config`` naming the source of each setting."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from homeport import config, endpoints
from homeport.errors import ConfigError
from homeport.secrets import resolve_secret
from tests.support.cli import homeport


def write_config(text: str) -> None:
    config.config_file().parent.mkdir(parents=True, exist_ok=True)
    config.config_file().write_text(text)


@pytest.mark.parametrize(("value", "url"), [
    ("1.2.3.4", "http://1.2.3.4:11434"),
    ("1.2.3.4:1234", "http://1.2.3.4:1234"),
    (":1234", "http://127.0.0.1:1234"),
    ("example.com", "http://example.com:11434"),
    ("example.com:1234", "http://example.com:1234"),
    ("example.com/", "http://example.com:11434"),
    ("http://1.2.3.4", "http://1.2.3.4:80"),
    ("http://example.com:8080/", "http://example.com:8080"),
    ("https://1.2.3.4", "https://1.2.3.4:443"),
    ("https://example.com/ollama", "https://example.com:443/ollama"),
    ("https://example.com/ollama/", "https://example.com:443/ollama"),
    ("[::1]", "http://[::1]:11434"),
    ("::1", "http://[::1]:11434"),
    ("[::1]:1337", "http://[::1]:1337"),
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:8000", "http://127.0.0.1:8000"),
    ("[::]", "http://[::1]:11434"),
    (" \"1.2.3.4\" ", "http://1.2.3.4:11434"),
    ("'1.2.3.4'", "http://1.2.3.4:11434"),
    ("ollama.com", "https://ollama.com:443"),
    ("100.101.102.103:11434", "http://100.101.102.103:11434"),
])
def test_values_parse_as_ollama_parses_them(value: str, url: str) -> None:
    assert endpoints.resolve_endpoint(value).url == url


def test_a_bad_port_warns_naming_the_source_and_uses_the_default(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OLLAMA_ENDPOINT", "example.com:99999")
    with caplog.at_level(logging.WARNING):
        assert endpoints.resolve_endpoint().url == "http://example.com:11434"
    assert "OLLAMA_ENDPOINT: invalid port '99999', using the default 11434" in caplog.text
    assert endpoints.resolve_endpoint("https://example.com:-1").url == "https://example.com:443"


def test_an_unsupported_scheme_is_an_error_naming_the_source(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "ftp://example.com")
    with pytest.raises(ConfigError, match=r"^OLLAMA_HOST: unsupported scheme 'ftp' in "
                                          r"'ftp://example.com'; use http:// or https://$"):
        endpoints.resolve_endpoint()


def test_every_source_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (endpoints.resolve_endpoint().url, endpoints.resolve_endpoint().source) == (
        "http://localhost:11434", "default")
    write_config('endpoint = "100.64.0.5"\n')
    endpoint = endpoints.resolve_endpoint()
    assert endpoint.url == "http://100.64.0.5:11434"
    assert endpoint.source == f"{config.config_file()} (endpoint)"
    monkeypatch.setenv("OLLAMA_HOST", "host.example:1111")
    assert endpoints.resolve_endpoint().source == "OLLAMA_HOST"
    assert endpoints.resolve_endpoint().url == "http://host.example:1111"
    monkeypatch.setenv("OLLAMA_ENDPOINT", "endpoint.example:2222")
    assert endpoints.resolve_endpoint().url == "http://endpoint.example:2222"
    assert endpoints.resolve_endpoint().source == "OLLAMA_ENDPOINT"
    endpoint = endpoints.resolve_endpoint("flag.example:3333")
    assert (endpoint.url, endpoint.source) == ("http://flag.example:3333", "--endpoint")
    monkeypatch.setenv("OLLAMA_ENDPOINT", "  ")  # blank counts as unset, as in Ollama
    assert endpoints.resolve_endpoint().source == "OLLAMA_HOST"


def test_broken_config_files(monkeypatch: pytest.MonkeyPatch) -> None:
    write_config("endpoint = 11434\n")
    with pytest.raises(ConfigError, match=r"\(endpoint\) must be a string"):
        endpoints.resolve_endpoint()
    write_config("endpoint = [\n")
    with pytest.raises(ConfigError, match=str(config.config_file())):
        endpoints.resolve_endpoint()


def test_token_sources_and_references(monkeypatch: pytest.MonkeyPatch) -> None:
    assert endpoints.resolve_endpoint().headers == {}
    write_config('token = "env:MY_SERVER_TOKEN"\n')
    with pytest.raises(ConfigError, match=r"refers to \$MY_SERVER_TOKEN, which is not set"):
        endpoints.resolve_endpoint()
    monkeypatch.setenv("MY_SERVER_TOKEN", "hp_from_env_ref")
    endpoint = endpoints.resolve_endpoint()
    assert endpoint.headers == {"Authorization": "Bearer hp_from_env_ref"}
    assert endpoint.token_source == f"{config.config_file()} (token = env:MY_SERVER_TOKEN)"
    assert "hp_from_env_ref" not in repr(endpoint)
    monkeypatch.setenv("HOMEPORT_TOKEN", "hp_direct")
    assert endpoints.resolve_endpoint().headers == {"Authorization": "Bearer hp_direct"}
    assert endpoints.resolve_endpoint().token_source == "HOMEPORT_TOKEN"


def test_a_secret_in_clear_is_refused_without_echoing_it() -> None:
    write_config('token = "hp_0123456789abcdef"\n')
    with pytest.raises(ConfigError) as info:
        endpoints.resolve_endpoint()
    assert "must be a reference such as" in str(info.value)
    assert "hp_0123456789abcdef" not in str(info.value)


def test_a_failing_command_reference_does_not_show_its_output(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_SECRET", "hp_leaked")
    write_config('token = "cmd:echo $VAULT_SECRET; echo $VAULT_SECRET >&2; exit 3"\n')
    with pytest.raises(ConfigError, match="failed with exit status 3") as info:
        endpoints.resolve_endpoint()
    assert "hp_leaked" not in str(info.value)


def test_a_command_reference_runs_once_for_every_setting_that_names_it(tmp_path: Path) -> None:
    """Three adapters whose keys come from one ``cmd:`` ask the password manager once."""
    runs = tmp_path / "runs"
    command = f"cmd:echo run >> {runs}; echo the-secret"
    for where in ("adapters.anthropic.api_key", "adapters.anthropic_opus.api_key"):
        assert resolve_secret(command, where) == "the-secret"
    assert runs.read_text().splitlines() == ["run"]


def test_secret_settings_never_show_their_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMEPORT_TOKEN", "hp_supersecret")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-supersecret")
    rows = {names: value for names, value, _ in config.describe_settings()}
    assert rows["HOMEPORT_TOKEN"] == "set"
    assert rows["ANTHROPIC_API_KEY"] == "set"
    assert "supersecret" not in json.dumps(config.describe_settings())


def test_homeport_config_shows_each_source(monkeypatch: pytest.MonkeyPatch) -> None:
    write_config('endpoint = "100.64.0.5"\n[strategies.inline]\nadapter = "ollama"\n'
                 '[adapters.ollama]\nmodel = "qwen2.5-coder:7b"\nnum_ctx = 8192\n'
                 '[adapters.anthropic_opus]\napi_key = "cmd:printf %s $OPUS_KEY"\n')
    result = homeport("config", "--json", env={"OLLAMA_HOST": "10.0.0.2:1234",
                                               "HOMEPORT_TOKEN": "hp_supersecret",
                                               "ANTHROPIC_API_KEY": "sk-ant-supersecret",
                                               "OPUS_KEY": "sk-ant-from-cmd"})
    assert result.returncode == 0, result.stderr
    assert "supersecret" not in result.stdout
    assert "sk-ant-from-cmd" not in result.stdout
    rows = {row["setting"]: (row["value"], row["source"]) for row in json.loads(result.stdout)}
    path = str(config.config_file())
    assert rows["endpoint"] == ("http://10.0.0.2:1234", "OLLAMA_HOST")
    assert rows["token"] == ("set", "HOMEPORT_TOKEN")
    assert rows["chat adapter"] == ("anthropic_haiku", "default")
    assert rows["inline adapter"] == ("ollama", f"{path} (strategies.inline)")
    assert rows["ollama model"] == ("qwen2.5-coder:7b", f"{path} (adapters.ollama.model)")
    assert rows["ollama num_ctx"] == ("8192", f"{path} (adapters.ollama.num_ctx)")
    assert rows["anthropic_haiku model"] == ("claude-haiku-5-5", "default")
    assert rows["anthropic key"] == ("set", "ANTHROPIC_API_KEY")
    assert rows["anthropic_opus key"] == (
        "set", f"{path} (adapters.anthropic_opus.api_key = cmd:printf %s $OPUS_KEY)")
    result = homeport("config", "--endpoint", "https://flag.example")
    assert "https://flag.example:443" in result.stdout
    assert "--endpoint" in result.stdout


def test_homeport_config_without_a_key_shows_the_fallback() -> None:
    result = homeport("config", "--json")
    rows = {row["setting"]: (row["value"], row["source"]) for row in json.loads(result.stdout)}
    assert rows["chat adapter"] == ("ollama", "default (anthropic_haiku without an Anthropic key)")
    assert rows["endpoint"] == ("http://localhost:11434", "default")
    assert rows["token"] == ("not set", "not set")


def test_config_init_and_bad_files() -> None:
    result = homeport("config", "init")
    assert result.returncode == 0
    assert config.config_file().read_text().startswith("# homeport client settings")
    assert homeport("config", "init").returncode == 1, "never overwrites"
    write_config('[adapters.olama]\nmodel = "x"\n')
    result = homeport("config")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: {config.config_file()}: adapters: unknown adapter "
                                     "'olama' (known: anthropic, anthropic_opus, "
                                     "anthropic_haiku, ollama)")
    write_config('[adapters.ollama]\napi_key = "env:X"\n')
    assert "the ollama adapter has no such setting" in homeport("config").stderr
