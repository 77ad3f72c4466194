"""Secrets by reference: ``env:NAME`` or ``cmd:COMMAND``, never the secret itself.

The config file names where a secret lives (an environment variable, or a command such as
``pass show homeport/token`` that prints it); the value is fetched when needed, kept in memory only,
and never written to logs, history or error messages. A reference is not secret, so it may be shown.
"""

from __future__ import annotations

import os
import subprocess

from homeport.errors import ConfigError

COMMAND_TIMEOUT = 20.0
PREFIXES = ("env:", "cmd:")
EXAMPLE = '"env:NAME" or "cmd:COMMAND"'


def is_reference(value: str) -> bool:
    return value.startswith(PREFIXES) and bool(value.partition(":")[2].strip())


def check_reference(value: object, where: str) -> str:
    """``value`` if it is a reference; a ConfigError naming ``where`` if it is anything else."""
    if not isinstance(value, str) or not is_reference(value.strip()):
        raise ConfigError(
            f"{where} must be a reference such as {EXAMPLE}, not the secret itself: "
            "homeport never stores secrets in clear")
    return value.strip()


def resolve_secret(reference: str, where: str) -> str:
    """The secret a reference points at; a ConfigError (without the secret) when it cannot."""
    kind, _, target = check_reference(reference, where).partition(":")
    target = target.strip()
    if kind == "env":
        value = os.environ.get(target, "").strip()
        if not value:
            raise ConfigError(f"{where} refers to ${target}, which is not set")
        return value
    return _run_command(target, where)


# A command's output, kept for the process's life: a password manager is asked once, however
# many settings (``where``, only for messages) refer to the same command. Failures are not kept.
_outputs: dict[str, str] = {}


def _run_command(command: str, where: str) -> str:
    if command in _outputs:
        return _outputs[command]
    try:
        result = subprocess.run(command, shell=True, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{where}: the command `{command}` did not finish within "
                          f"{COMMAND_TIMEOUT:.0f}s") from None
    if result.returncode != 0:
        # stderr may echo part of a secret, so only the exit status is reported.
        raise ConfigError(f"{where}: the command `{command}` failed with exit status "
                          f"{result.returncode}")
    value = result.stdout.strip()
    if not value:
        raise ConfigError(f"{where}: the command `{command}` printed nothing")
    _outputs[command] = value
    return value
