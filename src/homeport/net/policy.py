"""The policy in force: who on the tailnet may connect, and what each identity may do.

Decisions for a tailnet peer, in order: the first ``[[allow]]`` rule that matches it; else the
capability grant from the tailnet policy (whois ``CapMap``); else, for the machine owner's own
devices, everything; else 403 with the line to add. A tagged node matches only by its tags: its
login ("tagged-devices") and node name say nothing about who runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from homeport.errors import ForbiddenError
from homeport.net.caller import EVERYTHING, Grant, Limits
from homeport.net.localapi import WhoIs
from homeport.net.policy_file import LimitsTable, PolicyFile, RuleTable, load_policy_file

log = logging.getLogger(__name__)

DEFAULT_GRANT = Grant(models=("*",), admin=False)
POLICY_HINT = "in the policy file (HOMEPORT_POLICY), then reload it with SIGHUP"


def _limits(table: LimitsTable, fallback: Limits) -> Limits:
    return Limits(
        concurrent_requests=table.concurrent_requests or fallback.concurrent_requests,
        requests_per_minute=table.requests_per_minute or fallback.requests_per_minute,
        tokens_per_minute=table.tokens_per_minute or fallback.tokens_per_minute,
        max_num_ctx=table.max_num_ctx or fallback.max_num_ctx,
    )


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class Rule:
    """One ``[[allow]]`` rule, normalised for matching."""

    label: str
    logins: frozenset[str]
    user_ids: frozenset[int]
    nodes: frozenset[str]
    tags: frozenset[str]
    grant: Grant

    @classmethod
    def build(cls, index: int, table: RuleTable, defaults: Grant) -> Rule:
        who = table.name or next(iter([*table.logins, *table.tags, *table.nodes,
                                       *map(str, table.user_ids)]))
        label = _escape(f"the [[allow]] rule for {who} (rule {index})")
        grant = Grant(
            models=tuple(table.models) if table.models is not None else defaults.models,
            admin=table.admin if table.admin is not None else defaults.admin,
            limits=_limits(table, defaults.limits),
            model_hint=f'add "{{model}}" to models in {label} {POLICY_HINT}',
            admin_hint=f"add admin = true to {label} {POLICY_HINT}",
        )
        return cls(label=label,
                   logins=frozenset(login.lower() for login in table.logins),
                   user_ids=frozenset(table.user_ids),
                   nodes=frozenset(node.lower().rstrip(".") for node in table.nodes),
                   tags=frozenset(table.tags), grant=grant)

    def matches(self, whois: WhoIs) -> bool:
        if whois.tags:
            return bool(self.tags.intersection(whois.tags))
        node_names = {whois.node_name.lower(), whois.Node.Name.lower().rstrip(".")}
        return (whois.UserProfile.LoginName.lower() in self.logins
                or whois.UserProfile.ID in self.user_ids
                or bool(self.nodes.intersection(node_names)))


class _CapabilityValue(BaseModel):
    """One value of the homeport capability in a tailnet grant; other keys are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)
    models: list[str] | None = None
    admin: bool = False
    concurrent_requests: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_num_ctx: int | None = None


@dataclass(frozen=True)
class Policy:
    source: str
    defaults: Grant = DEFAULT_GRANT
    rules: tuple[Rule, ...] = ()
    owner: bool = True
    capability: str | None = None
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    proxy: str | None = None
    has_file: bool = False
    forwarders: tuple[str, ...] = ()  # homeport nodes believed about the caller they forward

    @classmethod
    def built_in(cls) -> Policy:
        """No policy file: the machine and its owner's own devices, nobody else."""
        return cls(source="built-in default")

    @classmethod
    def from_file(cls, parsed: PolicyFile, source: str) -> Policy:
        table = parsed.defaults
        defaults = Grant(models=tuple(table.models), admin=table.admin,
                         limits=_limits(table, Limits()))
        rules = tuple(Rule.build(index, rule, defaults)
                      for index, rule in enumerate(parsed.allow, start=1))
        return cls(source=source, defaults=defaults, rules=rules, owner=parsed.tailnet.owner,
                   capability=parsed.tailnet.capability,
                   hosts=tuple(host.lower() for host in parsed.http.hosts),
                   origins=tuple(parsed.http.origins), proxy=parsed.serve.proxy, has_file=True,
                   forwarders=tuple(name.lower().rstrip(".") for name in parsed.tailnet.forwarders))

    @classmethod
    def load(cls, path: Path, required: bool) -> Policy:
        """The policy at ``path``; the built-in one when it is absent and was not named."""
        if not path.exists() and not required:
            return cls.built_in()
        return cls.from_file(load_policy_file(path), str(path))

    # --- decisions -------------------------------------------------------------------------------

    def token_grant(self, name: str, models: tuple[str, ...], admin: bool) -> Grant:
        return Grant(
            models=models, admin=admin, limits=self.defaults.limits,
            model_hint=_escape(f"token '{name}' does not allow it; create one that does with "
                               f"`homeport token create NAME --models ") + '"{model}"`',
            admin_hint=_escape(f"token '{name}' is not an admin token; create one with "
                               "`homeport token create NAME --admin`"))

    def grant_for(self, whois: WhoIs, owner_user_id: int | None) -> Grant:
        """What this tailnet peer may do; ForbiddenError saying what to add when nothing allows it."""
        for rule in self.rules:
            if rule.matches(whois):
                return rule.grant
        if whois.tags:
            tag = whois.tags[0]
            raise ForbiddenError(
                f"node {whois.node_name} is tagged {', '.join(whois.tags)}, and tagged nodes are "
                f'denied unless their tag is allowed: add tags = ["{tag}"] to an [[allow]] rule '
                f"{POLICY_HINT}")
        granted = self._capability_grant(whois)
        if granted is not None:
            return granted
        if self.owner and owner_user_id and whois.Node.User == owner_user_id:
            return EVERYTHING
        login = whois.UserProfile.LoginName or f"user {whois.UserProfile.ID}"
        also = (f", or grant them {self.capability} in your tailnet policy"
                if self.capability else "")
        raise ForbiddenError(
            f"{login} (node {whois.node_name}) may not use this server: add "
            f'logins = ["{login}"] to an [[allow]] rule {POLICY_HINT}{also}')

    def is_forwarder(self, whois: WhoIs) -> bool:
        """Whether this peer is a homeport node whose forwarded caller is believed."""
        if whois.tags:  # a tagged node is known by its tags alone
            return any(tag.lower() in self.forwarders for tag in whois.tags)
        return bool({whois.node_name.lower(), whois.Node.Name.lower().rstrip(".")}
                    .intersection(self.forwarders))

    def forwarded_grant(self, identity: str, forwarder: str) -> Grant:
        """What a caller that a forwarder names (a login, or its tags) may do: only what an
        [[allow]] rule grants it; no owner or capability check can be made about a name."""
        tags = {tag for tag in identity.split(",") if tag.startswith("tag:")}
        for rule in self.rules:
            if (rule.tags.intersection(tags) if tags else identity.lower() in rule.logins):
                return rule.grant
        key = "tags" if tags else "logins"
        raise ForbiddenError(
            f"{identity} (forwarded by node {forwarder}) may not use this server: add "
            f'{key} = ["{identity.split(",")[0]}"] to an [[allow]] rule {POLICY_HINT}')

    def _capability_grant(self, whois: WhoIs) -> Grant | None:
        if not self.capability or not whois.CapMap or self.capability not in whois.CapMap:
            return None
        values: list[_CapabilityValue] = []
        for raw in whois.CapMap.get(self.capability) or [{}]:
            try:
                values.append(_CapabilityValue.model_validate(raw if raw is not None else {}))
            except ValidationError:
                log.warning("ignoring a malformed %s value from the tailnet policy: %.200r",
                            self.capability, raw)
        if not values:
            return None
        return _merge_capability(values, self.defaults, self.capability)


def _merge_capability(values: list[_CapabilityValue], defaults: Grant, capability: str) -> Grant:
    """Several matching grants add up: all their models, admin if any says so, the highest limits."""
    models: list[str] = []
    for value in values:
        models.extend(value.models if value.models is not None else defaults.models)

    def highest(name: str) -> int | None:
        given = [getattr(value, name) for value in values if getattr(value, name) is not None]
        return max(given) if given else getattr(defaults.limits, name)  # type: ignore[no-any-return]

    hint = _escape(f'add "MODEL" to "models" in the {capability} grant of your tailnet policy')
    return Grant(
        models=tuple(dict.fromkeys(models)),
        admin=any(value.admin for value in values),
        limits=Limits(concurrent_requests=highest("concurrent_requests"),
                      requests_per_minute=highest("requests_per_minute"),
                      tokens_per_minute=highest("tokens_per_minute"),
                      max_num_ctx=highest("max_num_ctx")),
        model_hint=hint.replace("MODEL", "{model}"),
        admin_hint=_escape(f'set "admin": true in the {capability} grant of your tailnet policy'),
    )


def describe(policy: Policy) -> str:
    """The policy in a few words, for the startup banner."""
    parts = []
    if policy.owner:
        parts.append("the owner's own devices")
    if policy.rules:
        parts.append(f"{len(policy.rules)} [[allow]] rule{'s' if len(policy.rules) != 1 else ''}")
    if policy.capability:
        parts.append(f"holders of {policy.capability}")
    return ", ".join(parts) or "nobody on the tailnet"
