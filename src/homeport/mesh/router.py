"""Where one request goes: this machine when it has the model, else the reachable upstreams that
have it, best first: priority, then load (the requests this node is forwarding to each now, plus
the busy slots and queue a homeport upstream reported to the background check beyond those)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from homeport.mesh.catalogue import LOCAL_NODE
from homeport.mesh.upstreams import Upstream, Upstreams


@dataclass(frozen=True)
class Local:
    """Served here, on today's path."""


@dataclass(frozen=True)
class Remote:
    """Forwarded: the first candidate that connects answers."""

    candidates: tuple[Upstream, ...]


@dataclass(frozen=True)
class Unavailable:
    """Known on these machines, none of which is reachable now."""

    nodes: tuple[str, ...]
    retry_after: int


@dataclass(frozen=True)
class UnknownNode:
    node: str


Decision = Local | Remote | Unavailable | UnknownNode


def _retry_after(upstreams: list[Upstream]) -> int:

    waits = [upstream.next_check - time.monotonic() for upstream in upstreams]
    return max(1, min(int(wait) + 1 for wait in waits)) if waits else 1


def choose(upstreams: Upstreams, key: str, here: bool, pinned: str | None) -> Decision:
    """The route for model ``key``; ``here`` says whether this machine has it, ``pinned`` names
    the one machine the caller asked for (or None). A model no machine has is Local: today's 404."""
    if pinned is not None and pinned != LOCAL_NODE:
        upstream = upstreams.named(pinned)
        if upstream is None:
            return UnknownNode(pinned)
        if upstream.is_self:
            return Local()
        if not upstream.up and upstream.checked:
            return Unavailable((upstream.name,), _retry_after([upstream]))
        return Remote((upstream,))
    if here or pinned == LOCAL_NODE:
        return Local()
    having = [upstream for upstream in upstreams.all if upstream.has(key)]
    reachable = [upstream for upstream in having if upstream.up]
    if reachable:
        reachable.sort(key=lambda item: (-item.settings.priority, item.load))
        return Remote(tuple(reachable))
    if having:
        return Unavailable(tuple(upstream.name for upstream in having), _retry_after(having))
    return Local()
