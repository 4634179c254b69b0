"""API keys and where the server may listen.

A key comes in the ``X-API-Key`` header or as ``Authorization: Bearer <key>``. Reads (/v1/*)
need one of PRODVEC_API_KEYS (or an admin key) when keys are configured; writes always need one
of PRODVEC_ADMIN_KEYS. Thumbnails (/images/{sku}) stay open, as do the page, the API docs,
/healthz and /readyz: a browser's <img> sends no key header (docs/service.md); what they answer
without a key names no database host, error or path (may_read). Keys are
compared in constant time against every configured key and are never logged or echoed.
Without keys the server only listens on loopback, unless it is opened read-only on purpose
(PRODVEC_ALLOW_OPEN / ``prodvec serve --allow-open``).
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from prodvec.errors import ConfigError
from prodvec.service.errors import ApiError, Forbidden, Unauthorized
from prodvec.service.settings import ServiceSettings

_HOW = "send it in the X-API-Key header or as Authorization: Bearer <key>"
# Read by FastAPI's security helpers, so OpenAPI (and /docs' Authorize button) shows both ways.
_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_BEARER = HTTPBearer(auto_error=False, description="the same key as a bearer token")


def presented_key(
    header: Annotated[str | None, Security(_HEADER)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> str | None:
    """The key the request carries, if any (a dependency)."""
    key = (header or "").strip() or (bearer.credentials.strip() if bearer else "")
    return key or None


async def request_key(request: Request) -> str | None:
    """presented_key where no dependency runs (the error handlers), read by the same helpers."""
    return presented_key(await _HEADER(request), await _BEARER(request))


def may_read(settings: ServiceSettings, key: str | None) -> bool:
    """Whether a request with ``key`` may read what the keys guard, including the reasons behind
    an error (a database's host, error and data directory): always, on a server without keys."""
    if not settings.reads_need_key:
        return True
    return key is not None and key_matches(key, (*settings.api_keys, *settings.admin_keys))


def require_read_key(request: Request, key: Annotated[str | None, Security(presented_key)]) -> None:
    """Dependency of the read routes: a valid key when the server has keys, else nothing."""
    settings: ServiceSettings = request.app.state.settings
    if may_read(settings, key):
        return
    if key is None:
        raise Unauthorized(f"this server needs an API key: {_HOW}")
    raise Forbidden("the API key is not valid here: use one of the keys in the server's PRODVEC_API_KEYS")


def require_admin_key(request: Request, key: Annotated[str | None, Security(presented_key)]) -> None:
    """Dependency of the write routes: always one of PRODVEC_ADMIN_KEYS."""
    settings: ServiceSettings = request.app.state.settings
    if not settings.admin_keys:  # first: no key could help, so asking for one would mislead
        raise Forbidden("writes are turned off on this server: start it with PRODVEC_ADMIN_KEYS set")
    if key is None:
        raise Unauthorized(f"writes need an admin key: {_HOW}")
    if not key_matches(key, settings.admin_keys):
        raise Forbidden("the key is not an admin key: writes need one of the server's PRODVEC_ADMIN_KEYS")


async def key_refusal(request: Request) -> ApiError | None:
    """What the route's key check (its require_*_key dependency) says to this request, for the
    error handlers: FastAPI reads a JSON body before it runs a route's dependencies, so a body it
    cannot parse fails before the key was checked. A request the key check refuses is told that,
    whatever its body, as a request with a good body would be."""
    route = request.scope.get("route")
    checks = [depends.dependency for depends in getattr(route, "dependencies", ())
              if depends.dependency in (require_read_key, require_admin_key)]
    if not checks:
        return None
    key = await request_key(request)
    try:
        for check in checks:
            check(request, key)
    except ApiError as refusal:
        return refusal
    return None


def key_matches(key: str, keys: tuple[str, ...]) -> bool:
    """Constant time per key, and every key compared: the answer's timing says nothing about which."""
    presented = key.encode()
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(presented, candidate.encode())
    return matched


def check_bind(host: str, settings: ServiceSettings) -> None:
    """Refuse to listen beyond loopback without keys, unless opened read-only on purpose."""
    if settings.api_keys or settings.allow_open or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {host} without API keys: anyone who reaches it could search the catalog. "
        "Set PRODVEC_API_KEYS (comma-separated), or pass --allow-open for an open read-only server, "
        "or listen on 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere
