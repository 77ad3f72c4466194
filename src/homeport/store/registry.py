"""A client for one model's repository on a registry, speaking the OCI distribution API.

``manifest()`` GETs ``/v2/{namespace}/{model}/manifests/{tag}`` with the Docker v2 Accept header;
``locate_blob()`` finds where a blob's bytes are (following safe redirects) and whether the server
answers Range requests; ``open_range()`` streams one part of it. A 401 with a Bearer challenge
fetches an anonymous token once, from a realm on the registry's own host only. The token is sent
only to the registry's own origin, never to a storage host it redirects to. Bodies are read raw
(``Accept-Encoding: identity``) and with a size cap, so no registry can make homeport inflate or
buffer more than it asked for. See ``netpolicy`` for the redirect and realm rules.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx

from homeport import __version__
from homeport.errors import NotFoundError, RegistryError, RegistryRefusedError
from homeport.store.digests import short_digest
from homeport.store.manifests import MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES
from homeport.store.names import ModelName
from homeport.store.netpolicy import check_realm, check_redirect, same_origin, vetted_transport

OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_TOKEN_BYTES = 64 * 1024
MAX_REDIRECTS = 10
TIMEOUT = httpx.Timeout(connect=15.0, read=30.0, write=30.0, pool=60.0)
_CHALLENGE_FIELD = re.compile(r'(\w+)="([^"]*)"')
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class BlobLocation:
    """Where a blob's bytes are served, its size as the server tells it, and range support."""

    url: httpx.URL
    size: int | None
    ranged: bool


def _oci_error(body: bytes) -> str:
    """The first message of an OCI error body, short, or nothing."""
    try:
        errors = json.loads(body).get("errors")
        message = str(errors[0].get("message") or errors[0].get("code"))
    except (ValueError, AttributeError, IndexError, TypeError, KeyError):
        return ""
    return f": {message[:200]}" if message else ""


class RegistryClient:
    """One repository (``namespace/model``) on one registry; use as ``async with``."""

    def __init__(self, name: ModelName, insecure: bool, connections: int = 8) -> None:
        self.name = name
        self.insecure = insecure
        self.connections = connections
        scheme = "http" if insecure else name.scheme
        self.base = httpx.URL(f"{scheme}://{name.host}")
        self._token: str | None = None
        self._http = httpx.AsyncClient(
            timeout=TIMEOUT, follow_redirects=False,
            transport=vetted_transport(self.base, httpx.Limits(max_connections=connections + 2)),
            headers={"User-Agent": f"homeport/{__version__} (ollama compatible)",
                     "Accept-Encoding": "identity"},
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    def fork(self) -> RegistryClient:
        """A client of its own (with this one's token) for a download that may outlive this one."""
        other = RegistryClient(self.name, self.insecure, self.connections)
        other._token = self._token
        return other

    @property
    def where(self) -> str:
        return self.name.host

    def url(self, kind: str, reference: str) -> httpx.URL:
        return self.base.join(f"/v2/{self.name.namespace}/{self.name.model}/{kind}/{reference}")

    # --- requests ------------------------------------------------------------------------------

    async def _send(self, url: httpx.URL, headers: dict[str, str], *, blob: bool
                    ) -> httpx.Response:
        """GET ``url``, following safe redirects and one Bearer challenge; the body unread."""
        authenticated = False
        for _ in range(MAX_REDIRECTS + 2):
            sent = dict(headers)
            if self._token and same_origin(url, self.base):
                sent["Authorization"] = f"Bearer {self._token}"
            try:
                response = await self._http.send(
                    self._http.build_request("GET", url, headers=sent), stream=True)
            except httpx.TransportError as exc:
                raise RegistryError(
                    f"could not reach the registry at {self.where}: "
                    f"{exc or type(exc).__name__}") from None
            if response.is_redirect:
                await response.aclose()
                location = response.headers.get("location", "")
                try:
                    target = url.join(location)
                except httpx.InvalidURL:
                    raise RegistryRefusedError("the registry redirected to an invalid URL") from None
                await check_redirect(self.base, target, insecure=self.insecure, other_hosts=blob)
                url = target
                continue
            if response.status_code == 401 and not authenticated and same_origin(url, self.base):
                challenge = response.headers.get("www-authenticate", "")
                await response.aclose()
                await self._authenticate(challenge)
                authenticated = True
                continue
            return response
        raise RegistryRefusedError(f"the registry redirected more than {MAX_REDIRECTS} times")

    async def _authenticate(self, challenge: str) -> None:
        scheme, _, rest = challenge.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise RegistryRefusedError(
                f"the registry refused access to '{self.name.display}' and asks for "
                f"{scheme or 'unknown'} authentication, which homeport does not support")
        fields = dict(_CHALLENGE_FIELD.findall(rest))
        realm = check_realm(self.base, fields.get("realm", ""), self.insecure)
        params = [("service", fields["service"])] if fields.get("service") else []
        params += [("scope", scope) for scope in fields.get("scope", "").split()]
        try:
            async with self._http.stream(
                    "GET", realm.copy_merge_params(httpx.QueryParams(params))) as response:
                body = await read_capped(response, MAX_TOKEN_BYTES, "token response")
        except httpx.TransportError as exc:
            raise RegistryError(f"could not reach the registry's token service: {exc}") from None
        if response.status_code != 200:
            raise RegistryRefusedError(
                f"the registry's token service refused access to '{self.name.display}' "
                f"(HTTP {response.status_code})")
        try:
            data: Any = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryRefusedError("the registry's token service sent no token")
        self._token = token

    async def _fail(self, response: httpx.Response, what: str) -> NoReturn:
        """Raise the error an unexpected status means: 5xx and 429 are worth a retry."""
        body = await read_capped(response, 4096, "error", strict=False)
        detail = f"HTTP {response.status_code}{_oci_error(body)}"
        if response.status_code == 404:
            raise NotFoundError(
                f"{what} of model '{self.name.display}' not found in the registry ({detail})")
        if response.status_code >= 500 or response.status_code == 429:
            raise RegistryError(f"the registry failed to send the {what} ({detail})")
        raise RegistryRefusedError(
            f"the registry refused to send the {what} of '{self.name.display}' ({detail})")

    # --- the API -------------------------------------------------------------------------------

    async def manifest(self) -> bytes:
        """The manifest's bytes, unchanged (its sha256 is the model's ID)."""
        url = self.url("manifests", self.name.tag)
        accept = f"{MANIFEST_MEDIA_TYPE}, {OCI_MANIFEST_MEDIA_TYPE}"
        response = await self._send(url, {"Accept": accept}, blob=False)
        try:
            if response.status_code != 200:
                await self._fail(response, "manifest")
            return await read_capped(response, MAX_MANIFEST_BYTES, "manifest")
        finally:
            await response.aclose()

    async def locate_blob(self, digest: str) -> BlobLocation:
        """Ask for the blob's first byte: that finds its final URL, its size and range support."""
        response = await self._send(self.url("blobs", digest), {"Range": "bytes=0-0"}, blob=True)
        try:
            if response.status_code == 206:
                parsed = parse_content_range(response.headers.get("content-range", ""))
                if parsed is None or parsed[0] != 0:
                    raise RegistryRefusedError("the registry sent an invalid Content-Range")
                return BlobLocation(response.url, parsed[2], ranged=True)
            if response.status_code == 200:
                length = response.headers.get("content-length", "")
                return BlobLocation(response.url, int(length) if length.isdigit() else None,
                                    ranged=False)
            await self._fail(response, f"layer {short_digest(digest)}")
        finally:
            await response.aclose()

    @contextlib.asynccontextmanager
    async def open_range(self, location: BlobLocation, start: int, end: int
                         ) -> AsyncIterator[httpx.Response]:
        """The response for bytes ``start..end`` (inclusive), checked; the whole blob if the
        server does not do ranges."""
        headers = {"Range": f"bytes={start}-{end}"} if location.ranged else {}
        response = await self._send(location.url, headers, blob=True)
        try:
            if location.ranged and response.status_code == 206:
                parsed = parse_content_range(response.headers.get("content-range", ""))
                if parsed is None or parsed[:2] != (start, end) or parsed[2] != location.size:
                    raise RegistryRefusedError(
                        f"the registry answered a request for bytes {start}-{end} of a layer "
                        "with other bytes")
            elif not (response.status_code == 200 and not location.ranged):
                await self._fail(response, "layer")
            yield response
        finally:
            await response.aclose()


def parse_content_range(value: str) -> tuple[int, int, int | None] | None:
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


async def read_capped(response: httpx.Response, limit: int, what: str, strict: bool = True
                      ) -> bytes:
    """The raw body, refused (or, not strict, cut) past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                if not strict:
                    break
                raise RegistryRefusedError(f"the registry's {what} is larger than {limit} bytes")
            chunks.append(chunk)
    except httpx.TransportError as exc:
        if strict:
            raise RegistryError(f"the connection to the registry broke: {exc}") from None
    return b"".join(chunks)
