"""Building HNSW indexes (around bulk backfills, and per category), and checking their reach.

Every vector written into an indexed column (embedding; embedding_coarse too under
PRODVEC_CATALOG_VIEWS=multi) is also inserted into its HNSW graph, which
costs more than the write itself (benchmarks/worker_throughput.py: ~16x at 3k rows on 2 cores,
~50x for COPY into a large index per ENVIRONMENT.md). Building the index once, afterwards, with
parallel maintenance workers is much cheaper. While the index is gone, searches stay correct
(prodvec falls back to exact search) but slower, so this is for backfills, not steady state.
Per-category indexes (migrations/0003) are built with the same settings.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg.rows import dict_row

from prodvec.db.connection import configure_index_builds, connect
from prodvec.errors import DatabaseError
from prodvec.sql import queries

log = logging.getLogger("prodvec.worker")

_SQL = queries("index.sql")


@contextmanager
def hnsw_index_dropped(url: str, *, maintenance_work_mem: str = "1GB") -> Iterator[None]:
    """Drop the HNSW indexes for the block, and rebuild them afterwards even if the block fails;
    then vacuum and analyze products, which the block rewrote. Where the binary-code index
    replaced the photo column's halfvec index, that one stays gone (the code index is kept and
    updated row by row: an expression index of 1-bit codes costs little per write)."""
    with connect(url) as conn:
        [(replaced,)] = conn.execute(_SQL["halfvec_replaced"]).fetchall()
    drop_hnsw_index(url)
    try:
        yield
    finally:
        seconds = rebuild_hnsw_index(url, maintenance_work_mem=maintenance_work_mem, photo_index=not replaced)
        log.info("HNSW indexes rebuilt in %.1f s", seconds)
        log.info("products vacuumed and analyzed in %.1f s", vacuum_products(url))


def drop_hnsw_index(url: str) -> None:
    """Drop the vector columns' HNSW indexes (rebuild_hnsw_index makes them again)."""
    with connect(url, autocommit=True) as conn:
        conn.execute(_SQL["drop_hnsw"])


def rebuild_hnsw_index(url: str, *, maintenance_work_mem: str = "1GB", photo_index: bool = True) -> float:
    """(Re)create the indexes that are missing (without ``photo_index``, the coarse column's
    only); returns the seconds it took."""
    started = time.perf_counter()
    # A fresh connection: the one the backfill used may be the reason it stopped.
    with connect(url, autocommit=True) as conn:
        configure_index_builds(conn, maintenance_work_mem)
        if photo_index:
            conn.execute(_SQL["create_hnsw"])
        else:
            [(statement,)] = conn.execute(_SQL["create_coarse_hnsw_statement"]).fetchall()
            conn.execute(statement)
    return time.perf_counter() - started


def vacuum_products(url: str) -> float:
    """VACUUM (ANALYZE) products after a bulk write; returns the seconds it took."""
    started = time.perf_counter()
    with connect(url, autocommit=True) as conn:
        conn.execute(_SQL["vacuum"])
    return time.perf_counter() - started


def index_categories(url: str, *, min_products: int, maintenance_work_mem: str = "1GB") -> list[dict[str, Any]]:
    """`prodvec category-indexes`: an HNSW index per category with ``min_products`` embedded
    products, stale ones dropped; one row per index (category, products, index_name, action)."""
    with connect(url, autocommit=True) as conn:
        configure_index_builds(conn, maintenance_work_mem)
        cursor = conn.cursor(row_factory=dict_row)
        return cursor.execute(_SQL["index_categories"], {"min_products": min_products}).fetchall()


def index_reachability(url: str, *, sample: int) -> dict[str, Any]:
    """`prodvec index-check`: of ``sample`` random embedded products, searched through the
    products.embedding index with their own vectors, how many come back first (searched, found,
    share, ef_search). Products it misses are found by exact passes only."""
    with connect(url) as conn:
        [(index,)] = conn.execute("SELECT to_regclass('products_embedding_hnsw')").fetchall()
        if index is None:
            raise DatabaseError(
                "products.embedding has no halfvec HNSW index (replaced by the binary-code index, or a bulk "
                "backfill stopped before rebuilding it?): `prodvec quantized-index drop` or "
                "SELECT prodvec_create_vector_indexes() builds it"
            )
        conn.execute("SET LOCAL enable_seqscan = off")
        cursor = conn.cursor(row_factory=dict_row)
        [report] = cursor.execute(_SQL["reachability"], {"sample": sample}).fetchall()  # counts: one row
        report["share"] = report["found"] / report["searched"] if report["searched"] else None
        [(ef_search,)] = conn.execute("SHOW hnsw.ef_search").fetchall()
        report["ef_search"] = int(ef_search)
        return report
