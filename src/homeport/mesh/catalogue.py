"""One model list for the whole home: this node's models and every reachable upstream's, merged
by name, each naming the machines it lives on (``local`` for this one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from homeport.mesh.upstreams import Upstreams, model_key

LOCAL_NODE = "local"
NODES_FIELD = "homeport"  # {"homeport": {"nodes": [...]}} on each entry; clients ignore it


def merged_listing(local: list[dict[str, Any]], upstreams: Upstreams | None,
                   allowed: Callable[[str], bool]) -> list[dict[str, Any]]:
    """``/api/tags`` entries: the local ones first, then each up upstream's (by priority) that
    adds a model; an entry found on several machines is listed once, naming all of them."""
    merged: dict[str, dict[str, Any]] = {}
    for entry in local:
        merged[model_key(entry["name"])] = {**entry, NODES_FIELD: {"nodes": [LOCAL_NODE]}}
    ranked = sorted(upstreams.all if upstreams else [], key=lambda item: -item.settings.priority)
    for upstream in ranked:
        if not upstream.up:
            continue
        for key, entry in upstream.models.items():
            if not allowed(key):
                continue
            if key in merged:
                merged[key][NODES_FIELD]["nodes"].append(upstream.name)
            else:
                remote = {name: value for name, value in entry.items() if name != NODES_FIELD}
                merged[key] = {**remote, "name": key, "model": key,
                               NODES_FIELD: {"nodes": [upstream.name]}}
    return list(merged.values())
