"""Everything the guard consults, built once per server: policy, tokens, tailscaled, limits, audit.

The policy is reloaded on SIGHUP: a new file replaces the old only when it validates, otherwise the
old one stays and the log says why (naming the line). Requests already running keep the decision
they were admitted with, so reloading never cuts a stream.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from homeport import config
from homeport.errors import ConfigError
from homeport.net.audit import AuditLog
from homeport.net.browser import BrowserRules, browser_rules
from homeport.net.identify import Identifier
from homeport.net.limits import Limiter
from homeport.net.localapi import LocalAPI
from homeport.net.machine import MachineWatcher
from homeport.net.policy import Policy, describe
from homeport.net.tokens import TokenChecker

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, policy_path: Path, policy_required: bool, policy: Policy,
                 localapi: LocalAPI, tokens: TokenChecker, audit: AuditLog | None,
                 env_origins: tuple[str, ...], bind_host: str = "") -> None:
        self.policy_path = policy_path
        self.policy_required = policy_required  # named explicitly (HOMEPORT_POLICY): must exist
        self.localapi = localapi
        self.tokens = tokens
        self.audit = audit
        self.identifier = Identifier(localapi, tokens)
        self.machine = MachineWatcher(localapi)
        self.limiter = Limiter()
        self._env_origins = env_origins
        self._bind_host = bind_host
        self.policy = policy
        self.browser: BrowserRules = self._browser_rules(policy)
        self._refreshing: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, policy: Policy, tokens: TokenChecker, bind_host: str = "") -> Gate:
        """A gate from homeport's settings (tailscaled socket, audit), around the policy loaded
        from the configured file and the token file's checker."""
        policy_path, policy_required = config.policy_file()
        audit = None
        if config.AUDIT.get():
            audit = AuditLog(config.audit_dir(), config.AUDIT_MAX_BYTES.get(),
                             config.AUDIT_BACKUPS.get(), config.AUDIT_CONTENT.get())
        return cls(policy_path, policy_required, policy, LocalAPI(config.tailscaled_socket()),
                   tokens, audit, config.ORIGINS.get(), bind_host)

    def _browser_rules(self, policy: Policy) -> BrowserRules:
        return browser_rules(policy.hosts, policy.origins, self._env_origins, self._bind_host)

    def reload(self) -> None:
        """Load the policy file again; keep the current policy (and say why) if it is broken."""
        try:
            policy = Policy.load(self.policy_path, self.policy_required)
        except ConfigError as exc:
            log.error("policy not reloaded, the previous one stays in force: %s", exc.message)
            return
        if policy.proxy != self.policy.proxy and (policy.proxy or "").startswith("unix:"):
            log.warning("the [serve] proxy socket changed; restart the server to listen on it")
        self.policy = policy
        self.browser = self._browser_rules(policy)
        log.info("policy reloaded from %s: allows %s", policy.source, describe(policy))

    async def start(self) -> None:
        """Learn about this machine, and reload on SIGHUP (called in the lifespan)."""
        await self.machine.refresh()
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, AttributeError):
            log.info("SIGHUP is not available here; restart the server to change the policy")

    def _on_sighup(self) -> None:
        self._refreshing = asyncio.get_running_loop().create_task(self._reload_everything())

    async def _reload_everything(self) -> None:
        """Look at tailscaled again (its mode or names may have changed), then reload the policy."""
        await self.machine.refresh()
        self.reload()

    async def close(self) -> None:
        await self.localapi.aclose()
        if self.audit is not None:
            self.audit.close()
