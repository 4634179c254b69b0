"""Read routing: searches go to hot-standby replicas that are up and caught up, else the primary.

PRODVEC_READ_URLS names the replicas (streaming replicas of DATABASE_URL's server, e.g.
made with pg_basebackup -R). Before searches use one, it is asked whether it is a standby that
streams from the primary and how far its replay trails (prodvec/sql/replicas.sql); one that is
down, not a standby, not streaming or lagging more than PRODVEC_MAX_REPLICA_LAG seconds is
skipped, and the primary answers. Replicas that pass take turns. Each one's answer is kept
CHECK_INTERVAL_SECONDS, so a busy service asks each replica about once a second.

Only searches are routed: the worker, imports and migrations always use the primary
(`database_url()`), and a search needs nothing written. Changes of route are logged (logger
``prodvec.replicas``: INFO to a replica, WARNING when one is skipped) and counted per target
(``ReadRouter.routed``) for metrics.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import cache

import psycopg
from psycopg.conninfo import conninfo_to_dict

from prodvec.config import Settings
from prodvec.sql import queries

log = logging.getLogger("prodvec.replicas")

#: Seconds a replica's health answer is reused.
CHECK_INTERVAL_SECONDS = 1.0
#: Seconds to wait for a replica's connection before skipping it (libpq's connect_timeout
#: counts whole seconds; 2 is its smallest useful value).
CONNECT_TIMEOUT_SECONDS = 2
#: The target name the primary is counted under in ReadRouter.routed.
PRIMARY = "primary"


@dataclass(frozen=True)
class ReplicaState:
    """One replica's answer: usable for searches, and why not when it is not."""

    url: str
    usable: bool
    reason: str  # e.g. "lag 0.2 s", "down: connection refused", "lag 12.0 s > 5 s"
    checked_at: float


class ReadRouter:
    """Picks the server a search reads from: a healthy replica in turn, else the primary."""

    def __init__(self, primary_url: str, read_urls: tuple[str, ...], max_lag_seconds: float,
                 *, check_interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self.primary_url = primary_url
        self.read_urls = read_urls
        self.max_lag_seconds = max_lag_seconds
        self.check_interval = check_interval
        #: Searches routed per target (PRIMARY or a replica's host/port/dbname), for metrics.
        self.routed: Counter[str] = Counter()
        self._states: dict[str, ReplicaState] = {}
        self._next = 0
        self._lock = threading.Lock()

    def url(self) -> str:
        """The URL the next search should read from."""
        usable = [state.url for state in map(self.state, self.read_urls) if state.usable]
        with self._lock:
            if usable:
                chosen = usable[self._next % len(usable)]
                self._next += 1
            else:
                chosen = self.primary_url
            self.routed[PRIMARY if chosen == self.primary_url else describe(chosen)] += 1
        return chosen

    def state(self, url: str) -> ReplicaState:
        """The replica's health, asked again once the last answer is CHECK_INTERVAL_SECONDS old."""
        with self._lock:
            known = self._states.get(url)
        if known is not None and time.monotonic() - known.checked_at < self.check_interval:
            return known
        state = check_replica(url, self.max_lag_seconds)
        with self._lock:
            self._states[url] = state
        if known is None or known.usable != state.usable:
            if state.usable:
                log.info("searches read from replica %s (%s)", describe(url), state.reason)
            else:
                log.warning("replica %s skipped: %s; the primary answers unless another replica can",
                            describe(url), state.reason)
        return state

    def failed(self, url: str, reason: str) -> None:
        """A read on the replica failed although its last check passed (it stopped, its
        connection broke, a recovery conflict cancelled the statement): skip it until the next
        check, CHECK_INTERVAL_SECONDS from now."""
        with self._lock:
            known = self._states.get(url)
            self._states[url] = ReplicaState(url, False, f"failed: {reason}", time.monotonic())
        if known is None or known.usable:
            log.warning("replica %s skipped: failed: %s; the primary answers unless another replica can",
                        describe(url), reason)

    def states(self) -> list[ReplicaState]:
        """Each replica's last known state, as checked (nothing is asked now): for metrics."""
        with self._lock:
            return [self._states[url] for url in self.read_urls if url in self._states]


def check_replica(url: str, max_lag_seconds: float) -> ReplicaState:
    """Ask one replica whether it may answer searches now."""
    now = time.monotonic()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            row = conn.execute(queries("replicas.sql")["standby_state"]).fetchone()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ReplicaState(url, False, f"down: {reason}", now)
    assert row is not None  # the statement returns one row
    in_recovery, streaming, lag = row
    if not in_recovery:
        return ReplicaState(url, False, "not a hot standby (a primary, or a promoted replica)", now)
    if not streaming:
        return ReplicaState(url, False, "not streaming from the primary", now)
    if lag > max_lag_seconds:
        return ReplicaState(url, False, f"lag {lag:.1f} s > {max_lag_seconds:g} s", now)
    return ReplicaState(url, True, f"lag {lag:.1f} s", now)


def describe(url: str) -> str:
    """A replica's URL for logs and metrics, without user or password."""
    params = conninfo_to_dict(url)
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname', '')}"


@cache
def router(primary_url: str, read_urls: tuple[str, ...], max_lag_seconds: float) -> ReadRouter:
    """One router per configuration, shared by the process (its health answers and counts)."""
    return ReadRouter(primary_url, read_urls, max_lag_seconds)


def read_url(settings: Settings, primary_url: str) -> str:
    """Where a search reads from under these settings: the primary when no replica is named."""
    if not settings.read_urls:
        return primary_url
    return router(primary_url, settings.read_urls, settings.max_replica_lag).url()
