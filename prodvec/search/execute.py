"""The two ways to run a filtered nearest-neighbour query, as SQLAlchemy statements.

exact: cosine distance to every product the filter keeps (found with its B-trees), top k;
       optionally capped, to find out cheaply that a filter keeps more than expected.
hnsw:  pgvector's iterative index scan with transaction-local settings; it may come back short.

LIMITs are rendered as literals: a generic plan (psycopg prepares statements it sees often)
with an unknown LIMIT may not use the HNSW index at all.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import ColumnElement, Select, String, bindparam, cast, func, literal_column, select
from sqlalchemy.orm import Session

from prodvec.models import Product
from prodvec.search.result import Hit

#: pgvector's own defaults, restored when the caller had not set a value in this session.
HNSW_DEFAULTS = {"hnsw.iterative_scan": "off", "hnsw.ef_search": "40", "hnsw.max_scan_tuples": "20000"}

#: Added to a distance in ORDER BY so that no index can provide the order, and nothing can
#: claim to be sorted by it already (see exact() and hnsw()).
_ZERO = literal_column("0")


@dataclass(frozen=True)
class Query:
    """One search: the query vector, the filter and how many hits.

    No max_distance here: the k nearest within a distance are the k nearest cut at that
    distance, so similar.py applies it to the hits, and the plans stay the same.
    """

    vector: np.ndarray
    where: Sequence[ColumnElement[bool]]
    k: int
    exclude_id: int | None

    def distance(self) -> ColumnElement[float]:
        # Sent as text and cast to the column's type: `<=>` compares halfvec with halfvec (so
        # the index applies) and any engine can send it, pgvector's adapters registered or not.
        query = bindparam("query_vector", halfvec_text(self.vector), type_=String())
        return Product.embedding.cosine_distance(cast(query, HALFVEC(len(self.vector))))

    def filters(self) -> list[ColumnElement[bool]]:
        clauses = [Product.embedding.is_not(None), *self.where]
        if self.exclude_id is not None:
            clauses.append(Product.id != self.exclude_id)
        return clauses


@dataclass(frozen=True)
class IndexSettings:
    ef_search: int  # candidate list per index pass
    max_scan_tuples: int  # index tuples visited before the iterative scan gives up
    inner_limit: int  # rows taken from the index (≥ k) and re-sorted by exact distance


def exact(session: Session, query: Query) -> list[Hit]:
    """The exact top k: every product the filter keeps is compared."""
    return [Hit(row[0], float(row[1])) for row in session.execute(_exact_statement(query, cap=None))]


def exact_capped(session: Session, query: Query, cap: int) -> list[Hit] | None:
    """The exact top k, or None when the filter keeps more than ``cap`` products."""
    rows = session.execute(_exact_statement(query, cap=cap)).all()
    if rows and rows[0].kept > cap:
        return None
    return [Hit(row[0], float(row[1])) for row in rows]


def _exact_statement(query: Query, *, cap: int | None) -> Select[Any]:
    distance = query.distance()
    kept = select(Product.id, distance.label("distance")).where(*query.filters())
    counted = []
    if cap is not None:
        # The scan stops after cap + 1 rows; counting them says whether it saw every row.
        kept = kept.limit(literal_column(str(cap + 1)))
        counted = [func.count().over().label("kept")]
    rows = kept.subquery("kept")
    # `+ 0`: the planner cannot hand this order to the HNSW index (which stops after
    # ef_search candidates), so it filters with the B-trees and compares every row.
    ranked = (
        select(rows.c.id, rows.c.distance, *counted)
        .order_by(rows.c.distance + _ZERO, rows.c.id)
        .limit(literal_column(str(query.k)))
        .subquery("ranked")
    )
    return (
        select(Product, ranked.c.distance, *[ranked.c[c.name] for c in counted])
        .join(ranked, Product.id == ranked.c.id)
        .order_by(ranked.c.distance, Product.id)
    )


def hnsw(session: Session, query: Query, settings: IndexSettings) -> list[Hit]:
    distance = query.distance()
    # relaxed_order returns rows slightly out of order (better recall, less work); the
    # materialized CTE keeps the re-sort out of the index scan.
    nearest = (
        select(Product.id, distance.label("distance"))
        .where(*query.filters())
        .order_by(distance)
        .limit(literal_column(str(settings.inner_limit)))
        .cte("nearest")
        .prefix_with("MATERIALIZED")
    )
    stmt = select(Product, nearest.c.distance).join(nearest, Product.id == nearest.c.id)
    # `+ 0` again: PostgreSQL 17+ takes a CTE's ORDER BY for the order of its output
    # (pgvector#862), so sorting by the bare column would keep the index's relaxed order.
    stmt = stmt.order_by(nearest.c.distance + _ZERO, Product.id).limit(literal_column(str(query.k)))
    previous = _set_local(session, {
        "hnsw.iterative_scan": "relaxed_order",
        "hnsw.ef_search": str(settings.ef_search),
        "hnsw.max_scan_tuples": str(settings.max_scan_tuples),
    })
    hits = _hits(session, stmt)
    # Local to the transaction already; restoring keeps them off the caller's later queries.
    # (After an error there is nothing to restore: the transaction must roll back anyway.)
    _set_local(session, previous)
    return hits


def halfvec_text(vector: np.ndarray) -> str:
    """pgvector's text form of the vector rounded to half precision, as it will be stored.

    Five significant digits give back every half-precision value exactly, in half the text
    (and time) of Python's shortest float repr of the widened value.
    """
    return "[" + ",".join([f"{value:.5g}" for value in vector.astype(np.float16).tolist()]) + "]"


def _set_local(session: Session, settings: dict[str, str]) -> dict[str, str]:
    """SET LOCAL each setting (one round trip); returns the values they replaced."""
    columns = []
    for i, (name, value) in enumerate(settings.items()):
        columns.append(func.current_setting(name, True).label(f"old_{i}"))
        columns.append(func.set_config(name, value, True).label(f"new_{i}"))
    # Target lists are evaluated left to right: each old value is read before it is replaced.
    row = session.execute(select(*columns)).one()
    # NULL: vector's library was not loaded yet in this backend, so the default was in force.
    return {name: row[2 * i] or HNSW_DEFAULTS[name] for i, name in enumerate(settings)}


def _hits(session: Session, stmt: Select[tuple[Product, float]]) -> list[Hit]:
    return [Hit(product, float(distance)) for product, distance in session.execute(stmt).all()]
