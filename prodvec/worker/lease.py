"""Lease renewal: a live worker keeps the claims it is still working on.

A claim's lease (WorkerOptions.lease_seconds) bounds how long a dead worker's products stay
claimed. A live worker whose batch takes longer than that (slow image URLs, a backlog in
front of the encoder) renews its claims every third of the lease, so no other worker takes
them and no product is embedded twice in a round. A worker that dies stops renewing, and its
products go back to the others within one lease of its last renewal.
"""
from __future__ import annotations

import logging
import threading
import uuid

import psycopg

from prodvec import queue as jobs
from prodvec.db.connection import connect
from prodvec.errors import ProdvecError

log = logging.getLogger("prodvec.worker")


class LeaseKeeper:
    """Renews the leases of the claims it holds, on its own thread and connection."""

    def __init__(self, url: str, lease_seconds: float) -> None:
        self.url = url
        self.lease_seconds = lease_seconds
        self._held: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prodvec-lease", daemon=True)
        self._thread.start()

    def hold(self, token: uuid.UUID) -> None:
        with self._lock:
            self._held.add(token)

    def drop(self, token: uuid.UUID) -> None:
        """The claim is written back or released: its lease no longer matters."""
        with self._lock:
            self._held.discard(token)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()

    def __enter__(self) -> LeaseKeeper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Always, also when the worker's connection broke: a claim it abandons must not be
        # renewed on, or it would never go back to the queue.
        self.close()

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while not self._stopping.wait(self.lease_seconds / 3):
                with self._lock:
                    tokens = list(self._held)
                if not tokens:
                    continue
                try:
                    if conn is None or conn.closed:
                        conn = connect(self.url, autocommit=True)
                    jobs.renew(conn, tokens, lease_seconds=self.lease_seconds)
                except (psycopg.Error, ProdvecError) as exc:
                    # The worker's own connections notice an outage and reconnect; here the
                    # next tick simply tries again (the leases last two more ticks).
                    log.warning("could not renew leases (%s); trying again", str(exc).strip())
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
