"""Read routing: searches go to hot-standby replicas that are up and caught up, else the primary.

PRODVEC_READ_URLS names the replicas (streaming replicas of DATABASE_URL's server, e.g.
made with pg_basebackup -R). Each replica is asked whether it is a standby that streams from
the primary and how far its replay trails (prodvec/sql/replicas.sql); one that is down, not a
standby, not streaming or lagging more than PRODVEC_MAX_REPLICA_LAG seconds is skipped, and the
primary answers. Replicas that pass take turns.

The asking is done by the router's checker, one daemon thread per replica that asks every
CHECK_INTERVAL_SECONDS, so a replica that does not answer delays only its own next answer.
Picking a server (``ReadRouter.url``) only reads the last answers: no search waits for a check.
An answer older than a check can take (its thread is stuck) counts as stale: skipped.
``ReadRouter.start`` starts the checker (the service does, in its lifespan) and ``stop`` ends
it; the process-wide ``router()`` behind ``read_url()`` starts its own for the process's life.

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
from types import TracebackType

import psycopg
from psycopg.conninfo import conninfo_to_dict

from prodvec.config import Settings
from prodvec.sql import queries

log = logging.getLogger("prodvec.replicas")

#: Seconds between two checks of one replica.
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
    checked_at: float | None  # time.monotonic() when the answer came; None: no answer yet


class ReadRouter:
    """Picks the server a search reads from: a healthy replica in turn, else the primary.
    Its checker runs between ``start()`` and ``stop()`` (or as a context manager)."""

    def __init__(self, primary_url: str, read_urls: tuple[str, ...], max_lag_seconds: float,
                 *, check_interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self.primary_url = primary_url
        self.read_urls = read_urls
        self.max_lag_seconds = max_lag_seconds
        self.check_interval = check_interval
        #: An answer is renewed every check_interval plus the time its check takes, which a
        #: connect timeout bounds for a replica that does not answer; older, its check hangs
        #: (a connection stalled after connecting) or its thread died: do not trust it.
        self.stale_after = 3 * check_interval + CONNECT_TIMEOUT_SECONDS
        #: Searches routed per target (PRIMARY or a replica's host/port/dbname), for metrics.
        self.routed: Counter[str] = Counter()
        self._states: dict[str, ReplicaState] = {}
        self._reported: dict[str, bool] = {}  # usable as last logged, so each change logs once
        self._next = 0
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start checking each replica in the background, and wait (at most a connect timeout
        and a second) for their first answers: a server that has just started then routes its
        first searches as it will its later ones, instead of loading the primary with all of
        them until the first answers come. A replica that does not answer in that time is
        skipped until it does."""
        if self._threads:
            return
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._check_every_interval, args=(url, self._stopping),
                                          name=f"prodvec-replica-check {describe(url)}", daemon=True)
                         for url in self.read_urls]
        for thread in self._threads:
            thread.start()
        with self._answered:
            self._answered.wait_for(lambda: all(url in self._states for url in self.read_urls),
                                    timeout=CONNECT_TIMEOUT_SECONDS + 1)

    def stop(self) -> None:
        """Stop the checker and wait for its threads (a check in flight ends within a connect
        timeout; one that hangs longer is left to die with the process)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=CONNECT_TIMEOUT_SECONDS + 1)
        self._threads = []

    def __enter__(self) -> ReadRouter:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def url(self) -> str:
        """The URL the next search should read from (the last answers decide: nothing is asked now)."""
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
        """The replica's last answer; not usable while none has come, or when it is stale."""
        now = time.monotonic()
        with self._lock:
            known = self._states.get(url)
        if known is None or known.checked_at is None:
            state = ReplicaState(url, False, "not checked yet", None)
        elif now - known.checked_at > self.stale_after:
            state = ReplicaState(url, False, f"stale: no answer for {now - known.checked_at:.0f} s "
                                             "(its check is stuck, or the checker is stopped)", known.checked_at)
        else:
            return known
        self._report(state)
        return state

    def failed(self, url: str, reason: str) -> None:
        """A read on the replica failed although its last check passed (it stopped, its
        connection broke, a recovery conflict cancelled the statement): skip it until the next
        check (one that began before the failure does not count)."""
        state = ReplicaState(url, False, f"failed: {reason}", time.monotonic())
        with self._lock:
            self._states[url] = state
        self._report(state)

    def states(self) -> list[ReplicaState]:
        """Each replica's state as url() sees it (nothing is asked now): for metrics."""
        return [self.state(url) for url in self.read_urls]

    def _check_every_interval(self, url: str, stopping: threading.Event) -> None:
        while not stopping.is_set():
            began = time.monotonic()
            state = check_replica(url, self.max_lag_seconds)
            with self._answered:
                known = self._states.get(url)
                # A read's failure since the check began is newer news.
                if known is None or known.checked_at is None or known.checked_at <= began:
                    self._states[url] = known = state
                self._answered.notify_all()
            self._report(known)
            stopping.wait(self.check_interval)

    def _report(self, state: ReplicaState) -> None:
        """Log a replica's state when its usability differs from the one last logged."""
        with self._lock:
            changed = self._reported.get(state.url) != state.usable
            self._reported[state.url] = state.usable
        if not changed:
            return
        if state.usable:
            log.info("searches read from replica %s (%s)", describe(state.url), state.reason)
        else:
            log.warning("replica %s skipped: %s; the primary answers unless another replica can",
                        describe(state.url), state.reason)


def check_replica(url: str, max_lag_seconds: float) -> ReplicaState:
    """Ask one replica whether it may answer searches now."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            row = conn.execute(queries("replicas.sql")["standby_state"]).fetchone()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ReplicaState(url, False, f"down: {reason}", time.monotonic())
    now = time.monotonic()
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


_shared: dict[tuple[str, tuple[str, ...], float], ReadRouter] = {}
_shared_lock = threading.Lock()


def router(primary_url: str, read_urls: tuple[str, ...], max_lag_seconds: float) -> ReadRouter:
    """One router per configuration, shared by the process (its answers and counts), its checker
    started on first use and running while the process does (daemon threads): a one-shot
    `prodvec search` waits for the first answers as for an inline check; a long-running
    process's searches never wait for one."""
    key = (primary_url, read_urls, max_lag_seconds)
    with _shared_lock:  # one router per key, however many threads ask first
        shared = _shared.get(key)
        if shared is None:
            shared = _shared[key] = ReadRouter(primary_url, read_urls, max_lag_seconds)
            shared.start()
    return shared


def forget() -> None:
    """Stop and drop the shared routers (tests: another environment in this process)."""
    with _shared_lock:
        stopping = list(_shared.values())
        _shared.clear()
    for shared in stopping:
        shared.stop()


def read_url(settings: Settings, primary_url: str) -> str:
    """Where a search reads from under these settings: the primary when no replica is named."""
    if not settings.read_urls:
        return primary_url
    return router(primary_url, settings.read_urls, settings.max_replica_lag).url()
