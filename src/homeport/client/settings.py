"""The client's part of config.toml: adapters, the default adapter of each strategy, models.

    endpoint = "http://100.101.102.103:11434"     # see endpoints.resolve_endpoint
    token = "env:HOMEPORT_TOKEN"                  # or "cmd:pass show homeport/token"

    [strategies.chat]
    adapter = "anthropic_haiku"                   # or "ollama"
    [strategies.inline]
    adapter = "ollama"
    model = "qwen2.5-coder:7b"

    [adapters.ollama]
    model = "mistral"                             # falls back, with a notice, to what the server has
    num_ctx = 16384
    keep_alive = "30m"

    [adapters.anthropic_haiku]
    model = "claude-haiku-5-5"
    api_key = "cmd:pass show anthropic"           # default: $ANTHROPIC_API_KEY

Every value is optional; each lookup returns the value and where it came from, for
``homeport config``. Secrets are references only (see ``homeport.secrets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from homeport import config, endpoints
from homeport.errors import ConfigError
from homeport.secrets import check_reference, resolve_secret

ADAPTERS = ("anthropic", "anthropic_opus", "anthropic_haiku", "ollama")
ANTHROPIC_ADAPTERS = ("anthropic", "anthropic_opus", "anthropic_haiku")
DEFAULT_MODELS = {
    "anthropic": "claude-sonnet-5-5",
    "anthropic_opus": "claude-opus-5-5",
    "anthropic_haiku": "claude-haiku-5-5",
    "ollama": "mistral",
}
DEFAULT_ADAPTER = "anthropic_haiku"
DEFAULT_MAX_TOKENS = 4096
ANTHROPIC_URL = "https://api.anthropic.com"

OLLAMA_ONLY = ("num_ctx", "keep_alive", "temperature")
ANTHROPIC_ONLY = ("api_key", "base_url")

StrategyName = Literal["chat", "inline"]
STRATEGIES: tuple[StrategyName, ...] = ("chat", "inline")
T = TypeVar("T")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AdapterSection(_Section):
    model: str | None = None
    api_key: str | None = None  # a reference, for the anthropic adapters
    base_url: str | None = None
    max_tokens: int | None = None  # the longest answer (ollama: options.num_predict)
    temperature: float | None = None
    num_ctx: int | None = None
    keep_alive: str | None = None


class StrategySection(_Section):
    adapter: Literal["anthropic", "anthropic_opus", "anthropic_haiku", "ollama"] | None = None
    model: str | None = None


class ClientFile(BaseModel):
    # Other sections of config.toml belong to other parts of homeport: ignore them here.
    model_config = ConfigDict(extra="ignore", strict=True)

    adapters: dict[str, AdapterSection] = {}
    strategies: dict[str, StrategySection] = {}

    @field_validator("adapters")
    @classmethod
    def _known_adapters(cls, value: dict[str, AdapterSection]) -> dict[str, AdapterSection]:
        return _known(value, ADAPTERS, "adapter")

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, value: dict[str, StrategySection]) -> dict[str, StrategySection]:
        return _known(value, STRATEGIES, "strategy")


def _known(value: dict[str, T], names: tuple[str, ...], kind: str) -> dict[str, T]:
    for name in value:
        if name not in names:
            raise ValueError(f"unknown {kind} {name!r} (known: {', '.join(names)})")
    return value


@dataclass(frozen=True)
class Sourced:
    """A setting's effective value and where it came from."""

    value: Any
    source: str


class ClientSettings:
    """The client settings, read from config.toml once; lookups say where each value came from."""

    def __init__(self, raw: dict[str, Any] | None = None) -> None:
        raw = config.read_config_file() if raw is None else raw
        try:
            self._file = ClientFile.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            message = str(problem["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{config.config_file()}: {where}: {message}") from None
        self._where = str(config.config_file())
        self._token_reference = raw.get("token")
        for name, section in self._file.adapters.items():
            wrong = ANTHROPIC_ONLY if name == "ollama" else OLLAMA_ONLY
            for key in wrong:
                if getattr(section, key) is not None:
                    raise ConfigError(f"{self._where}: adapters.{name}.{key}: the {name} adapter "
                                      "has no such setting")
            if section.api_key is not None:
                check_reference(section.api_key, self._key_where(name))

    def _section(self, adapter: str) -> AdapterSection:
        return self._file.adapters.get(adapter, AdapterSection())

    def _key_where(self, adapter: str) -> str:
        return f"adapters.{adapter}.api_key in {self._where}"

    def adapter_for(self, strategy: StrategyName) -> Sourced:
        chosen = self._file.strategies.get(strategy)
        if chosen is not None and chosen.adapter:
            return Sourced(chosen.adapter, f"{self._where} (strategies.{strategy})")
        return Sourced(DEFAULT_ADAPTER, "default")

    def effective_adapter(self, strategy: StrategyName, requested: str | None = None
                          ) -> tuple[Sourced, str | None]:
        """The adapter to use, and a notice when the built-in default could not be used.

        The built-in default is anthropic_haiku; without an Anthropic key it gives way to
        ollama, so a fresh install chats with the server's models. A chosen one is never replaced.
        """
        if requested:
            return Sourced(requested, "--adapter"), None
        chosen = self.adapter_for(strategy)
        if (chosen.source == "default" and chosen.value in ANTHROPIC_ADAPTERS
                and not self.anthropic_key(chosen.value).value):
            notice = (f"no Anthropic API key, so {strategy} uses the ollama adapter (set "
                      f"ANTHROPIC_API_KEY to use {chosen.value}, or pick one with --adapter)")
            return Sourced("ollama", f"default ({chosen.value} without an Anthropic key)"), notice
        return chosen, None

    def strategy_model(self, strategy: StrategyName, adapter: str) -> str | None:
        """The model the strategy names for this adapter, if it names one."""
        chosen = self._file.strategies.get(strategy)
        if chosen is not None and chosen.model and (chosen.adapter in (None, adapter)):
            return chosen.model
        return None

    def model_for(self, strategy: StrategyName, adapter: str) -> Sourced:
        """The strategy's model when it names one for this adapter, else the adapter's model."""
        named = self.strategy_model(strategy, adapter)
        if named is not None:
            return Sourced(named, f"{self._where} (strategies.{strategy}.model)")
        return self.model(adapter)

    def model(self, adapter: str) -> Sourced:
        configured = self._section(adapter).model
        if configured:
            return Sourced(configured, f"{self._where} (adapters.{adapter}.model)")
        return Sourced(DEFAULT_MODELS[adapter], "default")

    def option(self, adapter: str, name: str, default: Any) -> Sourced:
        value = getattr(self._section(adapter), name)
        if value is not None:
            return Sourced(value, f"{self._where} (adapters.{adapter}.{name})")
        return Sourced(default, "default")

    def api_key_reference(self, adapter: str) -> str | None:
        """The config file's reference for an adapter's key (never the key)."""
        return self._section(adapter).api_key

    def anthropic_key(self, adapter: str) -> Sourced:
        """The API key (resolved now) and its source; value "" when none is configured."""
        reference = self._section(adapter).api_key
        if reference:
            return Sourced(resolve_secret(reference, self._key_where(adapter)),
                           f"{self._where} (adapters.{adapter}.api_key = {reference})")
        value, source = config.ANTHROPIC_API_KEY.lookup()
        return Sourced(value, source if value else "not set")

    def anthropic_url(self, adapter: str) -> Sourced:
        configured = self._section(adapter).base_url
        if configured:
            return Sourced(configured, f"{self._where} (adapters.{adapter}.base_url)")
        value, source = config.ANTHROPIC_BASE_URL.lookup()
        return Sourced(value, source) if value else Sourced(ANTHROPIC_URL, "default")

    def explicit_token_reference(self) -> str | None:
        """The config file's token reference, for generated editor configs (never the token)."""
        reference = self._token_reference
        return check_reference(reference, f"`token` in {self._where}") if reference else None


def describe(settings: ClientSettings, explicit_endpoint: str | None = None
             ) -> list[tuple[str, str, str]]:
    """(setting, effective value, source) for ``homeport config``; secrets shown as set or not."""
    rows: list[tuple[str, str, str]] = []

    def secret(name: str, lookup: Any) -> None:
        try:
            value, source = lookup()
        except ConfigError as exc:
            rows.append((name, "error", exc.message))
            return
        rows.append((name, "set" if value else "not set", source))

    try:
        rows.append(("endpoint", *endpoints.endpoint_url(explicit_endpoint)))
    except ConfigError as exc:
        rows.append(("endpoint", "error", exc.message))
    secret("token", endpoints.resolve_token)
    for strategy in STRATEGIES:
        try:
            chosen, _ = settings.effective_adapter(strategy)
            rows.append((f"{strategy} adapter", chosen.value, chosen.source))
        except ConfigError as exc:
            rows.append((f"{strategy} adapter", "error", exc.message))
    for adapter in ADAPTERS:
        model = settings.model(adapter)
        rows.append((f"{adapter} model", model.value, model.source))
    for key in (*OLLAMA_ONLY, "max_tokens"):
        option = settings.option("ollama", key, None)
        rows.append((f"ollama {key}", str(option.value) if option.value is not None
                     else "(server default)", option.source))
    for adapter in ANTHROPIC_ADAPTERS:
        secret(f"{adapter} key", lambda name=adapter: _pair(settings.anthropic_key(name)))
    url = settings.anthropic_url("anthropic")
    rows.append(("anthropic url", url.value, url.source))
    file = config.config_file()
    rows.append(("config file", str(file), "exists" if file.exists() else "absent"))
    rows.append(("data folder", str(config.data_dir()),
                 config.DATA_DIR.lookup()[1]))
    return rows


def _pair(sourced: Sourced) -> tuple[Any, str]:
    return sourced.value, sourced.source
