"""The ``homeport`` commands that move models: pull (with progress), create -f Modelfile, import,
list, show, rm, and run offering to pull a model the server lacks (at a real terminal, by pexpect).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.gguf_files import bad_gguf_files, write_tiny_llama
from tests.support.registry import DockerRegistry
from tests.support.server import ServerProcess, isolated_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("cli-server")
    with ServerProcess(home, env={"HOMEPORT_MODELS": str(home / "models"),
                                  "HOMEPORT_CONTEXT_LENGTH": "256"}) as server:
        yield server


@pytest.fixture(scope="module")
def pushed_name(registry: DockerRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    gguf = write_tiny_llama(tmp_path_factory.mktemp("gguf") / "cli.gguf", seed=40)
    registry.push_model("library/clitiny", "v1", gguf, template="{{ .Prompt }}",
                        params={"temperature": 0.5})
    return f"{registry.host}/library/clitiny:v1"


def homeport(server: ServerProcess, *args: str, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "homeport", *args, "--endpoint", server.url],
        env=isolated_env(server.home / "cli"), cwd=cwd, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL)


def show(server: ServerProcess, name: str) -> dict[str, object]:
    response = httpx.post(f"{server.url}/api/show", json={"model": name})
    assert response.status_code == 200, response.text
    info: dict[str, object] = response.json()
    return info


def test_pull_list_show_rm(server: ServerProcess, pushed_name: str) -> None:
    pulled = homeport(server, "pull", "--insecure", pushed_name)
    assert pulled.returncode == 0, pulled.stderr
    assert "pulling manifest" in pulled.stderr
    assert pulled.stderr.rstrip().endswith("success")

    listed = homeport(server, "list")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if "clitiny" in line)
    assert pushed_name in row
    assert "llama" in row
    assert "F32" in row
    assert "KiB" in row

    shown = homeport(server, "show", pushed_name)
    assert shown.returncode == 0
    assert "architecture" in shown.stdout
    assert "temperature" in shown.stdout
    template = homeport(server, "show", "--template", pushed_name)
    assert template.stdout.strip() == "{{ .Prompt }}"

    copied = homeport(server, "cp", pushed_name, "clitiny-copy")
    assert copied.returncode == 0
    removed = homeport(server, "rm", pushed_name, "clitiny-copy")
    assert removed.returncode == 0
    assert removed.stdout.count("deleted") == 2
    assert "clitiny" not in homeport(server, "list").stdout
    missing = homeport(server, "show", pushed_name)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"Error: model '{pushed_name}' not found, try pulling it first"


MODELFILE = '''# a model made by hand
FROM ./weights/tiny.gguf
PARAMETER temperature 0.4
PARAMETER num_ctx 128
PARAMETER stop "<|end|>"
PARAMETER stop "[user]"
SYSTEM """You answer
in two lines."""
TEMPLATE """{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}
{% endfor %}[assistant] """
MESSAGE user "hello there"
MESSAGE assistant hi!
LICENSE MIT
'''


def test_create_from_a_modelfile(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    write_tiny_llama(tmp_path / "weights" / "tiny.gguf", seed=41)
    (tmp_path / "Modelfile").write_text(MODELFILE)
    created = homeport(server, "create", "handmade", "-f", "Modelfile", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "copied tiny.gguf" in created.stderr
    assert created.stderr.rstrip().endswith("success")

    info = show(server, "handmade")
    assert info["system"] == "You answer\nin two lines."
    assert str(info["template"]).startswith("{% for m in messages %}")
    assert info["license"] == "MIT"
    assert info["messages"] == [{"role": "user", "content": "hello there"},
                                {"role": "assistant", "content": "hi!"}]
    parameters = str(info["parameters"])
    assert "num_ctx" in parameters
    assert '"[user]"' in parameters
    assert '"<|end|>"' in parameters

    again = homeport(server, "create", "handmade", "-f", "Modelfile", cwd=tmp_path)
    assert again.returncode == 0
    assert "copied" not in again.stderr  # the server already had the file
    assert "using existing layer sha256:" in again.stderr
    answer = homeport(server, "run", "handmade", "hi")
    assert answer.returncode == 0, answer.stderr


def test_create_with_a_draft_line(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    write_tiny_llama(tmp_path / "weights" / "tiny.gguf", seed=45)
    write_tiny_llama(tmp_path / "weights" / "small.gguf", seed=46)
    (tmp_path / "Modelfile").write_text("FROM ./weights/tiny.gguf\nDRAFT weights/small.gguf\n")
    created = homeport(server, "create", "drafted", "-f", "Modelfile", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "copied small.gguf" in created.stderr
    assert "parsing draft GGUF" in created.stderr
    modelfile = str(show(server, "drafted")["modelfile"])
    draft = next(line for line in modelfile.splitlines() if line.startswith("DRAFT "))
    small = hashlib.sha256((tmp_path / "weights" / "small.gguf").read_bytes()).hexdigest()
    assert draft == f"DRAFT sha256-{small}"  # the blob, not the server's path to it
    shown = homeport(server, "show", "--modelfile", "drafted")
    assert draft in shown.stdout

    (tmp_path / "Modelfile").write_text(
        "FROM ./weights/tiny.gguf\nDRAFT ./weights/../weights/tiny.gguf\n")
    same = homeport(server, "create", "self-drafted", "-f", "Modelfile", cwd=tmp_path)
    assert same.returncode == 1
    assert same.stderr.strip() == ("Error: DRAFT must not reference the same local path as "
                                   "FROM: ./weights/../weights/tiny.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./weights/tiny.gguf\nDRAFT smollm2:135m\n")
    named = homeport(server, "create", "name-drafted", "-f", "Modelfile", cwd=tmp_path)
    assert named.returncode == 1
    assert named.stderr.strip() == (
        "Error: no such file: smollm2:135m (DRAFT takes a GGUF file's path)")


def test_import_a_gguf_file(server: ServerProcess, tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "downloaded-Q8_0.gguf", seed=42)
    imported = homeport(server, "import", str(gguf), "--name", "hf-download:q8",
                        "--parameter", "num_ctx=128", "--system", "Be terse.")
    assert imported.returncode == 0, imported.stderr
    assert "imported downloaded-Q8_0.gguf as 'hf-download:q8'" in imported.stderr
    info = show(server, "hf-download:q8")
    assert info["system"] == "Be terse."
    assert "num_ctx" in str(info["parameters"])


def test_create_and_import_errors_are_one_line(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM smollm2:135m\nFORM oops\n")
    typo = homeport(server, "create", "typo", cwd=tmp_path)
    assert typo.returncode == 1
    assert typo.stderr.strip() == "Error: Modelfile line 2: unknown instruction 'FORM'"
    (tmp_path / "Modelfile").write_text("FROM ./not-there.gguf\n")
    missing = homeport(server, "create", "missing", cwd=tmp_path)
    assert missing.returncode == 1
    assert "no such file: ./not-there.gguf" in missing.stderr
    broken = bad_gguf_files(tmp_path / "bad")["tensor-offset-past-end"]
    refused = homeport(server, "import", str(broken), "--name", "broken")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("Error: invalid GGUF file")
    assert "Traceback" not in refused.stderr


def test_import_to_a_server_that_wants_a_token_says_what_to_do(tmp_path: Path) -> None:
    """The first request of an import (does the server have the file?) is refused with 401:
    the error names the server and says how to send a token, as every other command's does."""
    gguf = write_tiny_llama(tmp_path / "tiny.gguf", seed=44)
    with FakeOllama() as fake:
        fake.token = "hp_right"
        refused = subprocess.run(
            [sys.executable, "-m", "homeport", "import", str(gguf), "--name", "tiny",
             "--endpoint", fake.url],
            env=isolated_env(tmp_path / "cli"), capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
    assert refused.returncode == 1
    assert f"the server at {fake.url} answered 401" in refused.stderr
    assert "this server wants a token: set HOMEPORT_TOKEN" in refused.stderr
    assert fake.requests[-1]["path"].startswith("/api/blobs/sha256:")


def test_run_offers_to_pull_a_missing_model(server: ServerProcess, registry: DockerRegistry,
                                            tmp_path: Path) -> None:
    gguf = write_tiny_llama(tmp_path / "run.gguf", seed=43)
    registry.push_model("library/runme", "latest", gguf)
    name = f"{registry.host}/library/runme"
    command = [sys.executable, "-m", "homeport", "run", "--insecure", "--endpoint", server.url]
    env = isolated_env(server.home / "cli")

    declined = pexpect.spawn(command[0], [*command[1:], name, "hi"], env=env, timeout=60,
                             encoding="utf-8")
    declined.expect(r"not on the server; pull it now\? \[Y/n\]")
    declined.sendline("n")
    declined.expect(pexpect.EOF)
    declined.close()
    assert declined.exitstatus == 1
    assert show_status(server, name) == 404

    accepted = pexpect.spawn(command[0], [*command[1:], name, "hi"], env=env, timeout=60,
                             encoding="utf-8")
    accepted.expect(r"pull it now\? \[Y/n\]")
    accepted.sendline("y")
    accepted.expect("success")
    accepted.expect(pexpect.EOF)
    accepted.close()
    assert accepted.exitstatus == 0
    assert show_status(server, name) == 200


def show_status(server: ServerProcess, name: str) -> int:
    return httpx.post(f"{server.url}/api/show", json={"model": name}).status_code
