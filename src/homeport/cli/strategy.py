"""What ``chat`` and ``edit`` share: choosing and opening the adapter of a strategy, notices."""

from __future__ import annotations

from rich.markup import escape

from homeport.cli import err_console
from homeport.client.adapters import Adapter, open_adapter
from homeport.client.settings import ClientSettings, StrategyName
from homeport.endpoints import resolve_endpoint


def notify(message: str) -> None:
    """A line for the user on stderr, so it never mixes with an answer piped from stdout."""
    err_console.print(f"[dim]{escape(message)}[/]", markup=True, soft_wrap=True)


def open_for(strategy: StrategyName, settings: ClientSettings, requested: str | None,
             model: str | None, endpoint: str | None, preferred_model: str | None = None,
             quiet: bool = False) -> Adapter:
    """The strategy's adapter (``requested`` or the configured one), its notices shown."""
    chosen, notice = settings.effective_adapter(strategy, requested)
    if notice and not quiet:
        notify(notice)
    adapter = open_adapter(
        chosen.value, settings, strategy=strategy, model=model, preferred_model=preferred_model,
        endpoint=resolve_endpoint(endpoint) if chosen.value == "ollama" else None)
    for message in [] if quiet else adapter.notices:
        notify(message)
    return adapter
