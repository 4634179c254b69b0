"""The service's settings, read from the environment (and `prodvec serve`'s flags) at the edge.

PRODVEC_API_KEYS        comma-separated keys for reads (/v1/*); unset: no keys, loopback only
PRODVEC_ADMIN_KEYS      comma-separated keys for writes (PUT/DELETE /v1/products/…); unset: no writes
PRODVEC_ALLOW_OPEN      1: allow a read-only server without keys on a non-loopback address
PRODVEC_MAX_UPLOAD_MB   largest request body, an uploaded or fetched photo [10]
PRODVEC_FETCH_ALLOW     comma-separated hosts or networks (CIDR) image_url may reach although
                        they are loopback, private, link-local or reserved (e.g. 10.1.0.0/16)
PRODVEC_QUEUE_LIMIT     image/text queries waiting for the encoder before 503 [64]
PRODVEC_BATCH_WINDOW_MS how long the encoder waits for more queries to share a pass [5]
PRODVEC_MAX_BATCH       query photos (or texts) per encoder pass [32]
PRODVEC_REQUEST_TIMEOUT seconds a search may take, encoder wait and database included [30]
PRODVEC_DB_POOL         database connections the server keeps per database server [8]
PRODVEC_PRELOAD_MODELS  0: load a model only when it becomes active, not when the catalog adds
                        it (one encoder in memory; the first searches after a switch wait) [1]
PRODVEC_LOG_LEVEL       prodvec's logging in each server process: debug, info or warning
                        (what `prodvec serve` sets for -v, neither, -q) [info]

Read by prodvec.config as for every command: DATABASE_URL, PRODVEC_MODEL, ..., and
PRODVEC_READ_URLS / PRODVEC_MAX_REPLICA_LAG: hot-standby replicas that searches and product
lookups read from while they are within the lag bound (prodvec/service/reads.py).
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from prodvec.config import Settings, env_flag, env_list, load_settings
from prodvec.db.connection import POSTGRES_SCHEMES
from prodvec.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: PRODVEC_LOG_LEVEL's values, the default first: uvicorn's names for `prodvec serve`'s levels.
LOG_LEVELS = ("info", "debug", "warning")


@dataclass(frozen=True)
class FetchAllowList:
    """Where image_url may go although the address is not public: host names or networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address.version == network.version and address in network for network in self.networks)

    @classmethod
    def parse(cls, text: str) -> FetchAllowList:
        hosts: set[str] = set()
        networks: list[Network] = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))


@dataclass(frozen=True)
class ServiceSettings:
    prodvec: Settings  # database, model, device, query views
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    allow_open: bool = False
    max_upload_bytes: int = 10 * 1024 * 1024
    fetch_allow: FetchAllowList = field(default_factory=FetchAllowList)
    queue_limit: int = 64
    batch_window_seconds: float = 0.005
    max_batch: int = 32
    request_timeout_seconds: float = 30.0
    db_pool_size: int = 8
    preload_models: bool = True
    log_level: str = "info"

    @property
    def reads_need_key(self) -> bool:
        return bool(self.api_keys)


def service_settings(environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """Settings from the environment (os.environ by default); ConfigError for malformed values."""
    env = os.environ if environ is None else environ
    prodvec = load_settings()
    _check_read_urls(prodvec.read_urls)
    return ServiceSettings(
        prodvec=prodvec,
        api_keys=env_list(env, "PRODVEC_API_KEYS"),
        admin_keys=env_list(env, "PRODVEC_ADMIN_KEYS"),
        allow_open=env_flag(env, "PRODVEC_ALLOW_OPEN", False),
        max_upload_bytes=round(_number(env, "PRODVEC_MAX_UPLOAD_MB", 10.0) * 1024 * 1024),
        fetch_allow=FetchAllowList.parse(env.get("PRODVEC_FETCH_ALLOW", "")),
        queue_limit=int(_number(env, "PRODVEC_QUEUE_LIMIT", 64, whole=True)),
        batch_window_seconds=_number(env, "PRODVEC_BATCH_WINDOW_MS", 5.0, minimum=0) / 1000,
        max_batch=int(_number(env, "PRODVEC_MAX_BATCH", 32, whole=True)),
        request_timeout_seconds=_number(env, "PRODVEC_REQUEST_TIMEOUT", 30.0),
        db_pool_size=int(_number(env, "PRODVEC_DB_POOL", 8, whole=True)),
        preload_models=env_flag(env, "PRODVEC_PRELOAD_MODELS", True),
        log_level=_choice(env, "PRODVEC_LOG_LEVEL", LOG_LEVELS),
    )


def _check_read_urls(urls: tuple[str, ...]) -> None:
    """Each replica gets a connection pool at startup, which takes URLs only (not key=value strings)."""
    for place, url in enumerate(urls, 1):
        scheme, separator, _ = url.partition("://")
        if not separator or scheme.lower() not in POSTGRES_SCHEMES:
            raise ConfigError(f"PRODVEC_READ_URLS: item {place} is not a PostgreSQL URL: write each replica as "
                              "postgresql://USER:PASSWORD@HOST:5432/DBNAME, comma-separated")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first when unset), in any case."""
    text = env.get(name, "").strip().lower() or choices[0]
    if text not in choices:
        raise ConfigError(f"{name}={env[name]!r}: use one of {', '.join(choices)}")
    return text


def _number(env: Mapping[str, str], name: str, default: float, *, whole: bool = False, minimum: float = 1) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= minimum or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name}={text!r}: use {kind} of at least {minimum:g}")
    return value
