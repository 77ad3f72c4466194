"""`homeport serve` refuses to listen where it should not, and says why, before loading anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.server import free_port, isolated_env


def serve(home: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeport", "serve", *args],
                          env={**isolated_env(home), "COLUMNS": "300", **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_binding_every_interface_without_expose_is_refused(tmp_path: Path) -> None:
    port = free_port()
    for args, env in ((("--host", f"0.0.0.0:{port}"), {}),
                      ((), {"OLLAMA_HOST": f"0.0.0.0:{port}"}),
                      (("--host", f"[::]:{port}"), {})):
        result = serve(tmp_path, *args, env=env)
        assert result.returncode == 1, result.stderr
        assert "refusing to listen on" in result.stderr
        assert "--tailnet" in result.stderr
        assert "homeport token create" in result.stderr
        assert "Traceback" not in result.stderr


def test_expose_without_authentication_refuses_to_start(tmp_path: Path) -> None:
    result = serve(tmp_path, "--host", f"0.0.0.0:{free_port()}", "--expose")
    assert result.returncode == 1
    assert "--expose needs authentication first" in result.stderr
    assert "Traceback" not in result.stderr


def test_tailnet_gives_up_after_the_configured_wait(tmp_path: Path) -> None:
    result = serve(tmp_path, "--tailnet", "--host", f"127.0.0.1:{free_port()}",
                   env={"HOMEPORT_TAILNET_WAIT": "1s",
                        "HOMEPORT_TAILSCALED_SOCKET": str(tmp_path / "absent.sock"),
                        "HOMEPORT_TAILSCALE_INTERFACE": "hp-none0"})
    assert result.returncode == 1
    assert "waiting for the tailnet to come up: tailscaled is not running" in result.stderr
    assert "the tailnet did not come up within 1s" in result.stderr
    assert "tailscale up" in result.stderr


def test_a_broken_policy_file_stops_the_start_naming_the_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[defaults]\nmodels = ["*"]\n\n[[allow]]\nlogins = ["a@b.c"]\n'
                      "requests_per_minute = -1\n")
    result = serve(tmp_path, "--host", f"127.0.0.1:{free_port()}",
                   env={"HOMEPORT_POLICY": str(policy)})
    assert result.returncode == 1
    assert "line 6: allow[1].requests_per_minute" in result.stderr
    missing = serve(tmp_path, env={"HOMEPORT_POLICY": str(tmp_path / "nope.toml")})
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
