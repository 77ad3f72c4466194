"""The rules of homeport.net without a server: policy file, decisions, limits, tokens, browsers, audit."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from homeport.durations import parse_span
from homeport.errors import ConfigError, ForbiddenError, RateLimitedError, UnauthorizedError
from homeport.net.addresses import is_tailnet_ip, parse_ip
from homeport.net.audit import AuditLog, read_entries, summarise
from homeport.net.browser import browser_rules, host_name
from homeport.net.caller import Caller, Grant, Limits, RequestRecord
from homeport.net.limits import Limiter
from homeport.net.localapi import WhoIs
from homeport.net.machine import MachineView
from homeport.net.policy import Policy
from homeport.net.policy_file import parse_policy
from homeport.net.tokens import TokenChecker, TokenStore


def whois(login: str = "alice@example.com", user: int = 10, name: str = "laptop",
          tags: list[str] | None = None, capmap: dict[str, Any] | None = None) -> WhoIs:
    return WhoIs.model_validate({
        "Node": {"ID": 1, "Name": f"{name}.tail1234.ts.net.", "ComputedName": name, "User": user,
                 "Tags": tags},
        "UserProfile": {"ID": user, "LoginName": "tagged-devices" if tags else login},
        "CapMap": capmap,
    })


def policy(text: str) -> Policy:
    return Policy.from_file(parse_policy(text), "policy.toml")


# --- the policy file --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('[defaults]\nmodels = ["*"]\n\n[[allow]]\nlogins = ["a@b"]\n\n[[allow]]\nnodes = ["x"]\n'
     'admin = "yes"\n', 'line 9: allow[2].admin: Input should be a valid boolean'),
    ('[[allow]]\nmodels = ["*"]\n', "line 1: allow[1]: an [[allow]] rule needs logins"),
    ('[tailnet]\ncapability = "homeport"\n', 'line 2: tailnet.capability: a capability looks'),
    ('[serve]\nproxy = "192.168.1.5"\n', "line 2: serve.proxy: proxy must be a loopback"),
    ('[http]\nhosts = ["ok"]\ncolour = "red"\n', "line 3: unknown setting 'http.colour'"),
    ('[[allow]]\ntags = [\n  "tag:ok",\n  "ci",\n]\n', "line 2: allow[1].tags[2]: 'ci' is not"),
    ('[defaults]\nmax_num_ctx = 16\n', "line 2: defaults.max_num_ctx"),
    ("[defaults\n", "(at line 1, column 10)"),
])
def test_policy_errors_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "policy.toml")
    assert expected in info.value.message


def test_an_absent_policy_file_means_the_built_in_one_unless_it_was_named(tmp_path: Path) -> None:
    built_in = Policy.load(tmp_path / "policy.toml", required=False)
    assert built_in.owner
    assert not built_in.has_file
    assert built_in.rules == ()
    with pytest.raises(ConfigError, match="does not exist"):
        Policy.load(tmp_path / "policy.toml", required=True)


# --- decisions --------------------------------------------------------------------------------


def test_the_first_matching_rule_decides() -> None:
    rules = policy('[defaults]\nrequests_per_minute = 5\n'
                   '[[allow]]\nlogins = ["Alice@Example.com"]\nmodels = ["llama3*"]\n'
                   '[[allow]]\nuser_ids = [10]\nadmin = true\n'
                   '[[allow]]\nnodes = ["desk.tail1234.ts.net"]\n')
    grant = rules.grant_for(whois(), owner_user_id=None)
    assert grant.models == ("llama3*",)
    assert grant.admin is False
    assert grant.limits.requests_per_minute == 5
    assert rules.grant_for(whois("bob@example.com", user=10), None).admin is True
    assert rules.grant_for(whois("carol@example.com", 30, name="desk"), None).models == ("*",)
    with pytest.raises(ForbiddenError, match=r'add logins = \["dave@example.com"\]'):
        rules.grant_for(whois("dave@example.com", 40), None)


def test_tagged_nodes_match_only_by_tag_and_never_as_the_owner() -> None:
    rules = policy('[[allow]]\nlogins = ["tagged-devices"]\nnodes = ["runner"]\nuser_ids = [1]\n')
    tagged = whois(user=1, name="runner", tags=["tag:ci"])
    with pytest.raises(ForbiddenError, match=r'tags = \["tag:ci"\]'):
        rules.grant_for(tagged, owner_user_id=1)
    allowed = policy('[[allow]]\ntags = ["tag:build", "tag:ci"]\nmodels = ["qwen*"]\n')
    assert allowed.grant_for(tagged, 1).models == ("qwen*",)


def test_the_owner_is_allowed_everything_unless_turned_off() -> None:
    assert Policy.built_in().grant_for(whois(user=7), owner_user_id=7).admin
    with pytest.raises(ForbiddenError):
        Policy.built_in().grant_for(whois(user=8), owner_user_id=7)
    with pytest.raises(ForbiddenError):
        policy("[tailnet]\nowner = false\n").grant_for(whois(user=7), owner_user_id=7)


def test_capability_grants_add_up() -> None:
    cap = "example.com/cap/homeport"
    rules = policy(f'[defaults]\ntokens_per_minute = 100\n[tailnet]\ncapability = "{cap}"\n')
    grant = rules.grant_for(whois(capmap={cap: [
        {"models": ["llama3*"], "requests_per_minute": 10},
        {"models": ["qwen*"], "admin": True, "requests_per_minute": 30},
        {"models": "not a list"},  # malformed: ignored
    ]}), None)
    assert grant.models == ("llama3*", "qwen*")
    assert grant.admin
    assert grant.limits == Limits(requests_per_minute=30, tokens_per_minute=100)
    with pytest.raises(ForbiddenError, match=f"grant them {cap}"):
        rules.grant_for(whois(capmap={"example.com/cap/other": [{}]}), None)


def test_model_globs_match_names_with_or_without_latest() -> None:
    grant = Grant(models=("llama3*", "mistral", "hf.co/bartowski/*"))
    assert grant.allows_model("llama3.2:latest")
    assert grant.allows_model("mistral:latest")
    assert grant.allows_model("MISTRAL:latest")
    assert not grant.allows_model("mistral:7b")
    assert grant.allows_model("hf.co/bartowski/qwen:q4")
    assert not grant.allows_model("smollm2:135m")
    caller = Caller(kind="tailnet", identity="a@b", grant=Grant(
        models=("x*",), model_hint='add "{model}" to models'))
    with pytest.raises(ForbiddenError, match=re.escape("a@b may not use model 'smollm2:135m'; add")):
        caller.check_model("smollm2:135m")


# --- limits -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(**limits: int) -> Caller:
    return Caller(kind="tailnet", identity="a@b", grant=Grant(limits=Limits(**limits)))


def test_requests_per_minute_slide_and_say_when_to_retry() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    caller = limited(requests_per_minute=2)
    for _ in range(2):
        limiter.admit(caller)
        limiter.finish(caller, 0)
    clock.now += 20
    with pytest.raises(RateLimitedError) as info:
        limiter.admit(caller)
    assert info.value.retry_after == 40
    clock.now += 40
    limiter.admit(caller)


def test_concurrency_and_tokens_per_minute() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    caller = limited(concurrent_requests=1, tokens_per_minute=100)
    limiter.admit(caller)
    with pytest.raises(RateLimitedError) as busy:
        limiter.admit(caller)
    assert busy.value.retry_after == 1
    limiter.finish(caller, 70)
    clock.now += 10
    limiter.admit(caller)
    limiter.finish(caller, 50)  # 120 in the window now
    clock.now += 5
    with pytest.raises(RateLimitedError) as spent:
        limiter.admit(caller)
    assert spent.value.retry_after == 45  # when the first 70 leave the window
    clock.now += 45
    limiter.admit(caller)
    limiter.finish(caller, 0)
    clock.now += 61
    limiter.admit(caller)
    limiter.finish(caller, 0)
    clock.now += 61
    limiter.admit(limited(requests_per_minute=1000))  # a sweep-free other identity
    assert limiter.tracked() >= 1


def test_local_and_unlimited_callers_are_not_tracked() -> None:
    limiter = Limiter(Clock())
    for _ in range(1000):
        limiter.admit(Caller(kind="local", identity="local"))
        limiter.admit(Caller(kind="tailnet", identity="free", grant=Grant()))
    assert limiter.tracked() == 0


# --- tokens -----------------------------------------------------------------------------------


def test_tokens_are_stored_as_hashes_and_checked(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    checker = TokenChecker(store)
    secret, _ = store.create("ci", ("smollm2*",), admin=False)
    assert secret.startswith("homeport_")
    assert len(secret) > 50
    assert secret not in store.path.read_text()
    assert checker.verify(secret).name == "ci"
    assert checker.active_count() == 1
    with pytest.raises(UnauthorizedError, match="invalid token"):
        checker.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    store.revoke("ci")
    with pytest.raises(UnauthorizedError, match="revoked"):
        checker.verify(secret)
    again, _ = store.create("ci")  # a revoked name may be used again
    assert checker.verify(again).models == ("*",)
    with pytest.raises(UnauthorizedError, match="revoked"):
        checker.verify(secret)


def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    secret, token = store.create("old", lifetime=3600)
    assert token.state(datetime.now(UTC) + timedelta(hours=2)) == "expired"
    entries = json.loads(store.path.read_text())
    entries["tokens"][0]["expires"] = "2020-01-01T00:00:00Z"
    store.path.write_text(json.dumps(entries))
    with pytest.raises(UnauthorizedError, match="expired on 2020-01-01"):
        TokenChecker(store).verify(secret)


def test_spans_for_expiry_and_reports() -> None:
    assert parse_span("30d") == 30 * 86400
    assert parse_span("2w") == 14 * 86400
    assert parse_span("1h30m") == 5400
    for bad in ("soon", "0s", "-5m", ""):
        with pytest.raises(ValueError, match="30d"):
            parse_span(bad)


# --- browsers and addresses -------------------------------------------------------------------


def test_host_allow_list() -> None:
    rules = browser_rules(["gpu.home.arpa", "*.lab.example"], [], [])
    machine = MachineView(addresses=frozenset({parse_ip("100.80.1.1")}),  # type: ignore[arg-type]
                          names=frozenset({"homebox", "homebox.tail1234.ts.net", "localhost"}))
    for header in ("localhost:11434", "127.0.0.1:11434", "[::1]:11434", "homebox",
                   "HOMEBOX.tail1234.ts.net.:11434", "100.80.1.1:11434", "gpu.home.arpa",
                   "a.lab.example", "app.localhost", None, ""):
        rules.check_host(header, machine)
    for header in ("evil.example", "100.80.1.2:11434", "homebox.evil.example", "10.0.0.1"):
        with pytest.raises(ForbiddenError):
            rules.check_host(header, machine)
    assert host_name("[fd7a::1]:80") == "[fd7a::1]"


def test_origins_are_ollamas_defaults_plus_configured_and_never_everything() -> None:
    rules = browser_rules([], ["https://chat.example.com"], ["*", "http://tool.lan:*"])
    for origin in ("http://localhost", "http://localhost:3000", "https://127.0.0.1:8443",
                   "app://obsidian.md", "vscode-webview://abc", "https://chat.example.com",
                   "http://tool.lan:9000"):
        assert rules.origin_allowed(origin), origin
    for origin in ("https://evil.example", "http://localhost.evil.example", "null",
                   "https://chat.example.com.evil.example"):
        assert not rules.origin_allowed(origin), origin


def test_tailnet_ranges() -> None:
    def tailnet(text: str) -> bool:
        address = parse_ip(text)
        return address is not None and is_tailnet_ip(address)

    assert tailnet("100.64.0.1")
    assert tailnet("100.127.255.254")
    assert tailnet("fd7a:115c:a1e0::1")
    assert tailnet("::ffff:100.80.1.2")
    assert not tailnet("100.115.92.5")  # ChromeOS
    assert not tailnet("100.100.100.100")  # Tailscale's DNS
    assert not tailnet("100.128.0.1")
    assert not tailnet("192.168.1.1")


# --- audit ------------------------------------------------------------------------------------


def test_audit_rotates_and_is_summarised_across_files(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", max_bytes=600, backups=10, keep_text=False)
    for index in range(12):
        record = RequestRecord(identity="alice@example.com" if index % 3 else "bob@example.com",
                               node="laptop", via="tailnet", model="smollm2:135m",
                               tokens_in=10, tokens_out=5, prompt="secret prompt")
        log.write(record, "POST", "/api/chat", 403 if index == 0 else 200, 0.5)
    log.close()
    files = sorted(path.name for path in (tmp_path / "audit").iterdir())
    assert len(files) > 2, files  # rotated
    assert oct((tmp_path / "audit").stat().st_mode & 0o777) == "0o700"
    entries = list(read_entries(tmp_path / "audit"))
    assert len(entries) == 12
    assert all("prompt" not in entry for entry in entries)
    rows = {row.identity: row for row in summarise(iter(entries))}
    alice = rows["alice@example.com (laptop)"]
    assert (alice.requests, alice.tokens_in, alice.tokens_out) == (8, 80, 40)
    assert rows["bob@example.com (laptop)"].denied == 1
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert list(read_entries(tmp_path / "audit", since=future)) == []

