"""A CodeCompanion configuration (Lua) with homeport's adapters, models and strategy defaults.

Adapters ``anthropic``, ``anthropic_opus``, ``anthropic_haiku`` (CodeCompanion's Anthropic adapter
with homeport's models and key references) and ``ollama`` (its Ollama adapter pointed at the
server: ``OLLAMA_ENDPOINT`` read at every request, parsed as Ollama parses a host, else the
configured default; the bearer token header when a token is configured); the chat and inline
defaults; ``<leader>cll`` opening a chat with ollama. Secrets appear only as references: the name
of a variable, or ``cmd:COMMAND``, which CodeCompanion runs itself.

One difference from homeport's own ollama adapter, on purpose: that one sends num_ctx and
keep_alive only when ``[adapters.ollama]`` sets them (the server's defaults apply otherwise),
while the editor asks for ``EDITOR_NUM_CTX`` and ``EDITOR_KEEP_ALIVE`` unless they are set:
buffers and files need a long context, and editing leaves long pauses between requests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import platformdirs

from homeport import __version__, config, endpoints
from homeport.client.settings import (
    ANTHROPIC_ADAPTERS,
    ANTHROPIC_URL,
    STRATEGIES,
    ClientSettings,
    StrategyName,
)

MARKER = "-- homeport: CodeCompanion configuration"
FILE_NAME = "homeport-codecompanion.lua"
KEYMAP = "<leader>cll"
# The ollama adapter's num_ctx and keep_alive in the editor, unless [adapters.ollama] sets them.
EDITOR_NUM_CTX = 16384
EDITOR_KEEP_ALIVE = "30m"


def lua_string(value: str) -> str:
    """A double-quoted Lua string literal (bytes kept, specials escaped)."""
    escaped = []
    for char in value:
        if char in '\\"':
            escaped.append("\\" + char)
        elif char == "\n":
            escaped.append("\\n")
        elif ord(char) < 32 or ord(char) == 127:
            escaped.append(f"\\{ord(char):03d}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def env_reference(reference: str | None, variable: str) -> str:
    """What CodeCompanion's ``env`` takes for a homeport secret reference."""
    if reference is None:
        return variable
    kind, _, target = reference.partition(":")
    return target.strip() if kind == "env" else f"cmd:{target.strip()}"


def _token_reference(settings: ClientSettings) -> str | None:
    if config.TOKEN.get():
        return "HOMEPORT_TOKEN"
    reference = settings.explicit_token_reference()
    return env_reference(reference, "HOMEPORT_TOKEN") if reference else None


def _adapter(settings: ClientSettings, strategy: StrategyName) -> str:
    """A strategy's adapter as CodeCompanion takes it: a name, or a name and a model."""
    adapter = settings.adapter_for(strategy).value
    model = settings.strategy_model(strategy, adapter)
    if model is not None:
        return f"{{ name = {lua_string(adapter)}, model = {lua_string(model)} }}"
    return lua_string(adapter)


def render(settings: ClientSettings, explicit_endpoint: str | None = None) -> str:
    """The Lua file: load it once at startup (``homeport nvim --install`` puts it in plugin/)."""
    default_url, _ = endpoints.endpoint_url(explicit_endpoint, environment=False)
    token = _token_reference(settings)
    anthropic = []
    for name in ANTHROPIC_ADAPTERS:
        reference = settings.api_key_reference(name)
        url = settings.anthropic_url(name).value
        extra = "" if url == ANTHROPIC_URL else f", {lua_string(url.rstrip('/') + '/v1/messages')}"
        anthropic.append(f"      {name} = anthropic({lua_string(settings.model(name).value)}, "
                         f"{lua_string(env_reference(reference, 'ANTHROPIC_API_KEY'))}{extra}),")
    ollama_env = "url = homeport_url" + (f", api_key = {lua_string(token)}" if token else "")
    auth = ' Authorization = "Bearer ${api_key}",' if token else ""
    interactions = "\n".join(f"  {strategy} = {{ adapter = {_adapter(settings, strategy)} }},"
                             for strategy in STRATEGIES)
    chat_default = _adapter(settings, "chat")
    num_ctx = settings.option("ollama", "num_ctx", EDITOR_NUM_CTX).value
    keep_alive = settings.option("ollama", "keep_alive", EDITOR_KEEP_ALIVE).value
    return TEMPLATE.format(
        marker=MARKER, version=__version__, default_url=lua_string(default_url),
        anthropic="\n".join(anthropic), ollama_env=ollama_env, auth=auth,
        model=lua_string(settings.model("ollama").value), num_ctx=int(num_ctx),
        keep_alive=lua_string(str(keep_alive)), interactions=interactions,
        cmd=chat_default, keymap=KEYMAP)


def neovim_config_dir() -> Path:
    """Where Neovim reads its configuration: asked of ``nvim`` itself when it is installed."""
    try:
        result = subprocess.run(
            ["nvim", "--headless", "--clean", "-es", "+lua io.write(vim.fn.stdpath('config'))",
             "+qa!"], capture_output=True, text=True, timeout=20, check=False)
        if result.returncode == 0 and result.stdout.strip():
            return Path(result.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    if sys.platform == "darwin":
        return Path.home() / ".config" / "nvim"
    return Path(platformdirs.user_config_dir("nvim", appauthor=False))


def install_path() -> Path:
    return neovim_config_dir() / "plugin" / FILE_NAME


TEMPLATE = """\
{marker} (homeport {version}).
-- Regenerate with `homeport nvim --install`; edits here are overwritten.
local ok, codecompanion = pcall(require, "codecompanion")
if not ok then
  vim.notify("homeport: CodeCompanion is not installed (olimorris/codecompanion.nvim)",
    vim.log.levels.WARN)
  return
end

-- The server: $OLLAMA_ENDPOINT, read at every request, parsed as Ollama parses a host
-- (no scheme: http and port 11434; 0.0.0.0 means this machine; no trailing slash).
local function homeport_url()
  local value = vim.trim(os.getenv("OLLAMA_ENDPOINT") or ""):gsub("^[\\"']", ""):gsub("[\\"']$", "")
  value = vim.trim(value)
  if value == "" then
    return {default_url}
  end
  local scheme, rest = value:match("^(%a[%w+.-]*)://(.*)$")
  local explicit = scheme ~= nil
  scheme, rest = scheme or "http", rest or value
  local hostport, path = rest:match("^([^/]*)(.*)$")
  local host, port
  if hostport:sub(1, 1) == "[" then
    host, port = hostport:match("^%[(.-)%]:?(%d*)$")
    host = host or hostport
  elseif select(2, hostport:gsub(":", "")) == 1 then
    host, port = hostport:match("^(.*):(%d*)$")
  else
    host, port = hostport, ""
  end
  if host == "" or host == "0.0.0.0" then
    host = "127.0.0.1"
  elseif host == "::" then
    host = "::1"
  end
  if host:find(":", 1, true) then
    host = "[" .. host .. "]"
  end
  if port ~= nil and port ~= "" and tonumber(port) > 65535 then
    port = "" -- a bad port: the default, as Ollama does
  end
  if (port == nil or port == "") and not explicit then
    port = "11434"
  end
  local url = scheme .. "://" .. host .. ((port and port ~= "") and (":" .. port) or "") .. path
  return (url:gsub("/+$", ""))
end

local function anthropic(model, api_key, url)
  return function()
    return require("codecompanion.adapters").extend("anthropic", {{
      url = url,
      env = {{ api_key = api_key }},
      schema = {{ model = {{ default = model }} }},
    }})
  end
end

-- The configured model when the server has it, else (as homeport's own client does) the first
-- model the server lists.
local function ollama_model(preferred)
  return function(self)
    local choices = self and self.schema and self.schema.model and self.schema.model.choices
    if type(choices) == "function" then
      local done, listed = pcall(choices, self)
      choices = done and listed or nil
    end
    if type(choices) ~= "table" or next(choices) == nil then
      return preferred
    end
    for _, name in ipairs({{ preferred, preferred .. ":latest" }}) do
      if choices[name] ~= nil then
        return name
      end
    end
    local names = vim.tbl_keys(choices)
    table.sort(names)
    return names[1]
  end
end

local interactions = {{
{interactions}
  cmd = {{ adapter = {cmd} }},
}}

codecompanion.setup({{
  adapters = {{
    http = {{
{anthropic}
      ollama = function()
        return require("codecompanion.adapters").extend("ollama", {{
          env = {{ {ollama_env} }},
          headers = {{ ["Content-Type"] = "application/json",{auth} }},
          -- num_ctx and keep_alive: [adapters.ollama] in homeport's config.toml, else defaults
          -- for editing (`homeport chat` leaves those that are not set to the server).
          schema = {{
            model = {{ default = ollama_model({model}) }},
            num_ctx = {{ default = {num_ctx} }},
            keep_alive = {{ default = {keep_alive} }},
          }},
        }})
      end,
    }},
  }},
  interactions = interactions,
  strategies = interactions, -- the same, for releases before "interactions"
}})

vim.keymap.set("n", "{keymap}", "<cmd>CodeCompanionChat adapter=ollama<cr>",
  {{ desc = "CodeCompanion: chat with ollama (homeport)" }})
"""
