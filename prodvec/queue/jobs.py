"""Python side of the queue: each function runs one named query from sql/queue.sql."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector
from psycopg import sql

from prodvec.sql import queries

#: NOTIFY channel the enqueue trigger signals; idle workers LISTEN on it.
CHANNEL = "prodvec_embedding_jobs"
#: A model's columns on products (prodvec_model_columns() in migrations/0009_model_versions.sql).
MODEL_COLUMNS = ("embedding", "embedding_coarse", "embedding_model", "embedded_image", "embedded_at")

_SQL = queries("queue.sql")


@dataclass(frozen=True)
class Job:
    product_id: int
    image: str
    attempts: int
    sku: str  # for logs: what the shop calls the product


@dataclass(frozen=True)
class Claim:
    """Jobs of one model taken under one lease; the token proves the lease at write-back."""

    token: uuid.UUID
    model_id: int
    jobs: list[Job]


@dataclass(frozen=True)
class QueueStatus:
    """Products by state. The states (up_to_date, pending, retrying, failed, no_image,
    not_queued) add up to total; ``embedded`` counts those with a vector (searchable), which
    includes pending ones that keep their previous vector until the new one is written."""

    total: int
    up_to_date: int  # a vector of the current image, nothing queued
    pending: int  # queued, not tried yet (new, changed image, requeued)
    retrying: int  # queued again after a transient error, waiting for its next try
    failed: int
    no_image: int
    not_queued: int  # an image but no vector and no job (jobs deleted by hand)
    embedded: int
    oldest_pending_seconds: float | None

    def as_dict(self) -> dict[str, int | float | None]:
        return asdict(self)


@dataclass(frozen=True)
class Failure:
    """A failed product, or one waiting to retry (state 'pending', next try in retry_in_seconds)."""

    sku: str
    state: str
    attempts: int
    reason: str | None
    retry_in_seconds: float | None
    image: str
    model: str  # the spec of the model whose job failed


@dataclass(frozen=True)
class WaitingToRetry:
    """Jobs (a product for one model) queued again after the same transient error."""

    reason: str
    jobs: int
    next_try_seconds: float


def _one_row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The row of a query that always returns one (an aggregate, a SELECT of a function)."""
    row = cursor.fetchone()
    if row is None:
        raise AssertionError("the query returned no row")
    return row


def claim(conn: psycopg.Connection, model_id: int, *, limit: int, lease_seconds: float) -> Claim:
    """Up to ``limit`` ready jobs of model ``model_id`` (embedding_models.id), under one lease."""
    token = uuid.uuid4()
    with conn.transaction():
        rows = conn.execute(
            _SQL["claim"], {"model_id": model_id, "limit": limit, "lease_seconds": lease_seconds, "token": token}
        ).fetchall()
    return Claim(token, model_id, [Job(*row) for row in rows])


def write_back(
    conn: psycopg.Connection,
    claim: Claim,
    jobs: Sequence[Job],
    vectors: np.ndarray,
    *,
    model: str,
    coarse_vectors: np.ndarray | None = None,
) -> int:
    """Store one vector per job of ``claim`` (and its coarse view's, for multi catalog views; else
    the coarse column is cleared) in its model's columns, in one transaction; returns how many
    were still wanted. ``model``: what the rows record as having made them (views.embedding_model)."""
    if not jobs:
        return 0
    product_ids = [job.product_id for job in jobs]
    params = {
        "product_ids": product_ids,
        "images": [job.image for job in jobs],
        "embeddings": [HalfVector(vector) for vector in vectors],
        "coarse_embeddings": None if coarse_vectors is None else [HalfVector(vector) for vector in coarse_vectors],
        "token": claim.token,
        "model_id": claim.model_id,
        "model": model,
    }
    with conn.transaction():
        conn.execute(_SQL["lock_products"], {"product_ids": product_ids})
        row = conn.execute(_SQL["model_is_active"], {"model_id": claim.model_id}).fetchone()
        if row is None:  # the model was dropped meanwhile (its jobs with it)
            return 0
        suffix = "" if row[0] else f"_m{claim.model_id}"
        columns = {name: sql.Identifier(name + suffix) for name in MODEL_COLUMNS}
        return conn.execute(sql.SQL(_SQL["write_back"]).format(**columns), params).rowcount


def fail(conn: psycopg.Connection, token: uuid.UUID, product_id: int, reason: str) -> None:
    with conn.transaction():
        conn.execute(_SQL["fail"], {"product_id": product_id, "token": token, "reason": reason})


def retry_later(
    conn: psycopg.Connection,
    token: uuid.UUID,
    product_id: int,
    reason: str,
    *,
    base_delay_seconds: float,
) -> None:
    """Back to pending after an exponential backoff (the caller decided a retry is due)."""
    with conn.transaction():
        conn.execute(
            _SQL["retry_later"],
            {"product_id": product_id, "token": token, "reason": reason, "base_delay": base_delay_seconds},
        )


def release(conn: psycopg.Connection, token: uuid.UUID) -> int:
    with conn.transaction():
        return conn.execute(_SQL["release"], {"token": token}).rowcount


def renew(conn: psycopg.Connection, tokens: Sequence[uuid.UUID], *, lease_seconds: float) -> int:
    """Extend the leases of these claims to ``lease_seconds`` from now; returns jobs renewed."""
    if not tokens:
        return 0
    with conn.transaction():
        return conn.execute(_SQL["renew"], {"tokens": list(tokens), "lease_seconds": lease_seconds}).rowcount


def requeue_all(conn: psycopg.Connection) -> int:
    """Queue every product with an image to be embedded again; returns how many."""
    with conn.transaction():
        return _one_row(conn.execute(_SQL["requeue_all"]))[0] or 0


def claimable(conn: psycopg.Connection, model_ids: Sequence[int]) -> bool:
    """Is any job of these models claimable right now (pending, due, not leased)?"""
    return bool(_one_row(conn.execute(_SQL["claimable"], {"model_ids": list(model_ids)}))[0])


def products_analyzed(conn: psycopg.Connection) -> float:
    """Rows products held at its last ANALYZE; -1 when it was never analysed."""
    return float(_one_row(conn.execute(_SQL["products_analyzed"]))[0])


def analyze_products(conn: psycopg.Connection) -> None:
    """Refresh the products' planner statistics (what searches size their plans by)."""
    conn.execute(_SQL["analyze_products"])


def seconds_until_due(conn: psycopg.Connection, model_ids: Sequence[int]) -> float | None:
    """Seconds until the next pending job of these models becomes claimable (None: none pending)."""
    seconds = _one_row(conn.execute(_SQL["seconds_until_due"], {"model_ids": list(model_ids)}))[0]
    return None if seconds is None else float(seconds)


def depth(conn: psycopg.Connection) -> dict[str, int]:
    """Jobs by state: pending (leased ones included), leased, failed."""
    pending, leased, failed_jobs = _one_row(conn.execute(_SQL["depth"]))
    return {"pending": pending, "leased": leased, "failed": failed_jobs}


def status(conn: psycopg.Connection) -> QueueStatus:
    (total, up_to_date, pending, retrying, failed, no_image, not_queued, embedded,
     oldest) = _one_row(conn.execute(_SQL["status"]))
    return QueueStatus(total, up_to_date, pending, retrying, failed, no_image, not_queued, embedded,
                       None if oldest is None else float(oldest))


def failures(conn: psycopg.Connection, *, limit: int = 100) -> list[Failure]:
    """Failed products first, then those waiting to retry, of every model; each with its last error."""
    return [
        Failure(sku, state, attempts, reason, None if retry_in is None else float(retry_in), image, model)
        for sku, state, attempts, reason, retry_in, image, model in conn.execute(_SQL["failures"], {"limit": limit})
    ]


def waiting_to_retry(conn: psycopg.Connection) -> list[WaitingToRetry]:
    """Jobs queued again after transient errors, grouped by error, the largest group first."""
    return [
        WaitingToRetry(reason, jobs, float(next_try))
        for reason, jobs, next_try in conn.execute(_SQL["waiting_to_retry"])
    ]


def unknown_skus(conn: psycopg.Connection, skus: Sequence[str]) -> list[str]:
    """The skus no product has, in the order given."""
    known = {sku for (sku,) in conn.execute(_SQL["known_skus"], {"skus": list(skus)})}
    return [sku for sku in skus if sku not in known]


def retry_failed(conn: psycopg.Connection, skus: Sequence[str] | None = None) -> list[str]:
    """Requeue failed products (all when ``skus`` is None); returns the requeued skus."""
    with conn.transaction():
        rows = conn.execute(_SQL["retry_failed"], {"skus": list(skus) if skus else None}).fetchall()
    return [sku for (sku,) in rows]
