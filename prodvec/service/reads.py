"""Which server answers the service's reads: a hot-standby replica of PRODVEC_READ_URLS, as
prodvec.db.replicas routes searches (up, streaming, within PRODVEC_MAX_REPLICA_LAG, in turn),
else the primary. Each server has its own bounded connection pool, made once at startup. The
router's checker runs from ``start()`` (the app's lifespan) to ``dispose()``: reads only look
at its last answers, so none waits for a replica's health check.

Searches and product, category and thumbnail lookups read here; writes, /v1/status (the queue
must be current) and /readyz use the primary's pool directly. A replica whose connection fails
during a read, or that cancels it in a recovery conflict, is reported to the router (skipped
until its next check) and the read runs again elsewhere. A replica's "no such product", "not
embedded yet" or "unknown category" is asked again of the primary, since the replica may not
have replayed that write yet: a product a shop has just written is found at once.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Literal, TypeVar

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from prodvec.db.replicas import PRIMARY, ReadRouter, ReplicaState, describe
from prodvec.service.errors import ApiError

T = TypeVar("T")
Role = Literal["primary", "replica"]
#: The response header that says which role answered a read.
READ_FROM_HEADER = "X-Prodvec-Read-From"


class ReadTargets:
    """The primary's pool, one pool per replica, and the router that picks one per read."""

    def __init__(self, primary_url: str, primary: Engine, read_urls: tuple[str, ...], max_lag_seconds: float,
                 engine_for: Callable[[str], Engine]) -> None:
        self.primary = primary
        self.router = ReadRouter(primary_url, read_urls, max_lag_seconds)
        self.replicas = {url: engine_for(url) for url in read_urls}
        self._answered: Counter[str] = Counter()
        self._lock = threading.Lock()

    def read(self, work: Callable[[Engine], T]) -> tuple[T, Role]:
        """``work`` run on the pool of the server the router picks; its result and who answered."""
        for _ in range(len(self.replicas)):  # each replica at most once: a failed one is skipped after
            url = self.router.url()
            engine = self.replicas.get(url)
            if engine is None:  # the primary: no replica is usable
                break
            try:
                result = work(engine)
            except DBAPIError as exc:
                if not _replica_cannot_answer(exc):
                    raise
                self.router.failed(url, str(exc.orig).strip().splitlines()[0] or type(exc.orig).__name__)
                continue
            except ApiError as exc:
                if not exc.primary_may_differ:
                    raise
                break  # perhaps not replayed yet: the primary knows
            self._count(describe(url))
            return result, "replica"
        result = work(self.primary)
        self._count(PRIMARY)
        return result, "primary"

    def answered(self) -> dict[str, int]:
        """Reads answered since start per server (PRIMARY or a replica's host:port/dbname)."""
        with self._lock:
            return dict(self._answered)

    def states(self) -> list[ReplicaState]:
        """Each replica's last check."""
        return self.router.states()

    def _count(self, target: str) -> None:
        with self._lock:
            self._answered[target] += 1

    def start(self) -> None:
        """Start the replicas' checker; returns once each replica has answered, or a connect
        timeout has passed."""
        self.router.start()

    def dispose(self) -> None:
        """Stop the checker (its threads joined), then close the replicas' pools."""
        self.router.stop()
        for engine in self.replicas.values():
            engine.dispose()


def _replica_cannot_answer(exc: DBAPIError) -> bool:
    """The replica, not the read, is the problem: its connection failed or broke (stopped,
    restarting, unreachable), or a recovery conflict cancelled the statement (SQLSTATE 40001 on
    a standby). A statement timeout is the read's own: it is not run again."""
    orig = exc.orig
    if isinstance(orig, psycopg.errors.QueryCanceled):
        return False
    return isinstance(orig, psycopg.OperationalError | psycopg.errors.SerializationFailure)
