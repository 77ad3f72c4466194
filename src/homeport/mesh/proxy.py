"""Forwarding one request to an upstream and streaming its answer back as it arrives.

Failover happens only before the first byte: a candidate that refuses the connection, does not
connect in time or drops it before answering is marked down and the next is tried. Once an
upstream answered, its status, content type and body pass through unchanged, chunk by chunk; a
failure after that is the caller's to report (an error record), never a second answer from
elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field

import httpx

from homeport.mesh.upstreams import Upstream
from homeport.net.identify import FORWARDED_FOR_HEADER

log = logging.getLogger(__name__)

VIA_HEADER = "x-homeport-via"
FORWARDED_HEADERS = ("content-type", "accept", "user-agent", "anthropic-version")
ANSWER_HEADERS = ("content-type", "content-encoding", "retry-after", "x-homeport-prompt-truncated")


class AllFailed(Exception):
    """No candidate could be reached; each is marked down."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


@dataclass
class Forwarded:
    """An upstream's answer, headers received, body still to come."""

    upstream: Upstream
    response: httpx.Response
    closed: bool = field(default=False, init=False)

    async def close(self) -> None:
        """Ends the upstream request (once), whether or not its body was read."""
        if not self.closed:
            self.closed = True
            await self.response.aclose()
            self.upstream.in_flight -= 1

    def headers(self) -> dict[str, str]:
        return {name: value for name, value in self.response.headers.items()
                if name.lower() in ANSWER_HEADERS}

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives (compressed as sent); the upstream request is closed when this
        ends, fails or is closed early (the client left)."""
        try:
            async for chunk in self.response.aiter_raw():
                yield chunk
        finally:
            await self.close()


def forwarded_headers(incoming: Mapping[str, str], upstream: Upstream, via: str,
                      caller: str = "") -> dict[str, str]:
    """What the upstream is sent: the body's description, this node's token for it (never the
    caller's), the nodes the request has passed through, this one last, and the caller this node
    admitted (a homeport upstream believes it only if its policy names this node a forwarder)."""
    headers = {name: incoming[name] for name in FORWARDED_HEADERS if name in incoming}
    headers.update(upstream.headers())
    headers["accept-encoding"] = "identity"  # the body is relayed as sent: never in a coding
    headers[VIA_HEADER] = via                # the caller did not ask for
    if caller:
        headers[FORWARDED_FOR_HEADER] = caller
    return headers


Prepare = Callable[[Upstream], tuple[str, bytes]]  # the path and body one upstream is sent


async def forward(client: httpx.AsyncClient, candidates: tuple[Upstream, ...], method: str,
                  prepare: Prepare, incoming: Mapping[str, str], via: str,
                  caller: str = "") -> Forwarded:
    """The first candidate's streamed answer; AllFailed when none could be reached."""
    failed: list[str] = []
    for upstream in candidates:
        path, body = prepare(upstream)
        request = client.build_request(method, upstream.settings.url + path, content=body,
                                       headers=forwarded_headers(incoming, upstream, via, caller))
        upstream.in_flight += 1
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:  # nothing reached the client: the next may answer
            upstream.in_flight -= 1
            upstream.mark_down(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            failed.append(upstream.name)
            continue
        except BaseException:
            upstream.in_flight -= 1
            raise
        return Forwarded(upstream, response)
    raise AllFailed(failed)
