"""The two ways to run a filtered nearest-neighbour query, on the session's own connection.

exact: cosine distance to every product the filter keeps (found with its B-trees), top k;
       optionally capped, to find out cheaply that a filter keeps more than expected.
index: through the HNSW index with transaction-local settings (its first search only, or
       pgvector's iterative scan), or through the binary-code index for candidates re-ranked
       by exact distance (quantized.py); it may come back short.

The statements (prodvec/sql/search_passes.sql) go straight to psycopg, in the session's
transaction: an index pass is one round trip (pipeline mode: savepoint, SET LOCAL, the query,
rollback to the savepoint, which puts the caller's settings back). Errors are raised as
SQLAlchemy's DBAPIError subclasses, as a Session.execute would raise them.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg.pq import TransactionStatus
from sqlalchemy import exc
from sqlalchemy.orm import Session

from prodvec.errors import QueryError
from prodvec.search import loading
from prodvec.search.result import Hit
from prodvec.search.statements import PRODUCT_COLUMNS, VECTOR_COLUMNS, Filter, statement
from prodvec.sql import queries

#: Names the savepoint an index pass rolls back to (which undoes its SET LOCALs).
SAVEPOINT = "prodvec_index_pass"


@dataclass(frozen=True)
class Query:
    """One search: the query vector, the filter, how many hits and the vector column searched.

    No max_distance here: the k nearest within a distance are the k nearest cut at that
    distance, so similar.py applies it to the hits, and the plans stay the same.
    """

    vector: np.ndarray
    filter: Filter
    k: int
    exclude_id: int | None
    vector_column: str = VECTOR_COLUMNS[0]

    def params(self) -> dict[str, Any]:
        # Binary halfvec (pgvector's adapter): `<=>` compares halfvec with halfvec, so the index applies.
        return {**self.filter.params, "query": HalfVector(self.vector), "exclude_id": self.exclude_id}


@dataclass(frozen=True)
class IndexSettings:
    ef_search: int  # candidate list per index pass
    #: Index tuples visited before the iterative scan gives up; None: no iterative scan, the
    #: index returns its first ef_search candidates only. The iterative scan runs in relaxed
    #: order, its first k matches re-sorted: strict order drops a closer match it meets after a
    #: farther one went out, so a search that starts in the wrong region of the graph keeps
    #: its wrong answers. Measured on 1M rows: 50% filter, near queries, recall@10 0.996 (lowest
    #: query 0.8) relaxed against 0.980 (lowest 0.0) strict; 1% far 0.934 against 0.916. Same
    #: recall and latency at 100k, with or without category indexes.
    max_scan_tuples: int | None
    #: The width of the binary codes when the pass goes through the code index (quantized.py):
    #: its ef_search candidates are re-ranked by exact distance. None: the halfvec index.
    code_dimensions: int | None = None

    def as_params(self) -> dict[str, str]:
        return {
            "iterative_scan": "off" if self.max_scan_tuples is None else "relaxed_order",
            "ef_search": str(self.ef_search),
            "max_scan_tuples": str(self.max_scan_tuples or 1),  # unused with the scan off
        }


def exact(session: Session, query: Query) -> list[Hit]:
    """The exact top k: every product the filter keeps is compared."""
    sql = statement("exact", query.filter, query.vector_column, k=query.k)
    return _hits(session, fetch(session, sql, query.params()))


def exact_capped(session: Session, query: Query, cap: int) -> list[Hit] | None:
    """The exact top k, or None when the filter keeps more than ``cap`` products."""
    sql = statement("exact_capped", query.filter, query.vector_column, k=query.k, cap_plus_one=cap + 1)
    rows = fetch(session, sql, query.params())
    if rows and rows[0][-1] > cap:
        return None
    return _hits(session, rows)


def index(session: Session, query: Query, settings: IndexSettings) -> list[Hit]:
    """The index's answer: up to k hits, fewer when the scan gave up (or fewer products match)."""
    if settings.code_dimensions is None:
        sql = statement("index", query.filter, query.vector_column, k=query.k)
    else:
        sql = statement("index_codes", query.filter, query.vector_column, k=query.k,
                        dimensions=settings.code_dimensions, candidates=settings.ef_search)
    set_local = queries("search_passes.sql")["index_settings"]
    with _connection(session, sql) as conn:
        # In autocommit mode there is no transaction to hold a savepoint: make one.
        autocommit = conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
        try:
            with conn.pipeline():
                conn.execute("BEGIN" if autocommit else f"SAVEPOINT {SAVEPOINT}")
                conn.execute(set_local, settings.as_params())
                cursor = conn.execute(sql, query.params())
                if autocommit:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                    conn.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
                rows = cursor.fetchall()
        except psycopg.Error:
            if autocommit:  # the failed statement skipped the ROLLBACK; the caller began nothing
                conn.execute("ROLLBACK")
            raise
    if settings.code_dimensions is not None and (not rows or rows[0][-1] < settings.ef_search):
        return []  # fewer candidates than asked: a re-rank of them is no answer
    return _hits(session, rows)


def fetch(session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One statement's rows, in the session's transaction."""
    with _connection(session, sql) as conn:
        return conn.execute(sql, params).fetchall()


def run(session: Session, sql: str, params: dict[str, Any]) -> None:
    """One statement that returns no rows, in the session's transaction."""
    with _connection(session, sql) as conn:
        conn.execute(sql, params)


def _driver_connection(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under the session's transaction, pgvector's types registered.

    Pending ORM changes are flushed first, as before an ORM query (when autoflush is on).
    """
    if session.autoflush:
        session.flush()
    conn = session.connection().connection.driver_connection
    if not isinstance(conn, psycopg.Connection):
        raise QueryError(
            f"search needs a psycopg 3 connection, not {type(conn).__module__}: create the engine with "
            "a postgresql+psycopg:// URL (prodvec.session() does)"
        )
    if conn.adapters.types.get("halfvec") is None:
        register_vector(conn)
    return conn


@contextmanager
def _connection(session: Session, sql: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        yield _driver_connection(session)
    except psycopg.Error as error:
        raise exc.DBAPIError.instance(sql, None, error, psycopg.Error) from error


def _hits(session: Session, rows: list[tuple[Any, ...]]) -> list[Hit]:
    products = loading.products(session, rows)
    distance = len(PRODUCT_COLUMNS)
    return [Hit(product, float(row[distance])) for product, row in zip(products, rows, strict=True)]
