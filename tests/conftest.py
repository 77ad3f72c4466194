"""Fixtures: a real homeport server (one per session for most tests), isolated folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.models import WITH_GEMMA
from tests.support.registry import DockerRegistry
from tests.support.server import ServerProcess

MODEL = "smollm2:135m"
# Deterministic answers: greedy decoding, fixed seed, short.
DETERMINISTIC = {"temperature": 0, "seed": 42, "num_predict": 24}


@pytest.fixture(autouse=True)
def _isolated_homeport(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's settings, data and config live under its own tmp dir, never the user's."""
    for name in list(__import__("os").environ):
        if name.startswith(("HOMEPORT_", "OLLAMA_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOMEPORT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOMEPORT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HOMEPORT_EXTRA_STORES", "")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole session, with the bundled model and small limits for speed."""
    home = tmp_path_factory.mktemp("server")
    process = ServerProcess(home, env={"HOMEPORT_CONTEXT_LENGTH": "2048",
                                       "HOMEPORT_MAX_BODY_BYTES": "1MiB"})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with both bundled models: ``smollm2:135m`` and ``gemma3:270m`` (GEMMA)."""
    home = tmp_path_factory.mktemp("gemma-server")
    process = ServerProcess(home, env={"HOMEPORT_CONTEXT_LENGTH": "2048", **WITH_GEMMA})
    process.start()
    yield process
    process.stop()


@pytest.fixture
def base_url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    """A real OCI registry (Debian's docker-registry) on a free loopback port; each test pushes
    to repositories of its own."""
    registry = DockerRegistry(tmp_path_factory.mktemp("registry")).start()
    yield registry
    registry.stop()
