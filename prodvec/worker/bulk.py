"""Bulk backfills: embed many products without paying the HNSW inserts for every row.

Every vector written into an indexed column (embedding; embedding_coarse too under
PRODVEC_CATALOG_VIEWS=multi) is also inserted into its HNSW graph, which
costs more than the write itself (benchmarks/worker_throughput.py: ~3.7x at 3k rows, ~50x
for COPY into a large index per ENVIRONMENT.md). Building the index once, afterwards, with
parallel maintenance workers is much cheaper. While the index is gone, searches stay correct
(prodvec falls back to exact search) but slower, so this is for backfills, not steady state.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prodvec.db.connection import connect
from prodvec.sql import queries

log = logging.getLogger("prodvec.worker")

_SQL = queries("index.sql")


@contextmanager
def hnsw_index_dropped(url: str, *, maintenance_work_mem: str = "1GB") -> Iterator[None]:
    """Drop the HNSW indexes for the block, and rebuild them afterwards even if the block fails."""
    with connect(url, autocommit=True) as conn:
        conn.execute(_SQL["drop_hnsw"])
    try:
        yield
    finally:
        seconds = rebuild_hnsw_index(url, maintenance_work_mem=maintenance_work_mem)
        log.warning("HNSW indexes rebuilt in %.1f s", seconds)


def rebuild_hnsw_index(url: str, *, maintenance_work_mem: str = "1GB") -> float:
    """(Re)create the indexes that are missing; returns the seconds it took."""
    started = time.perf_counter()
    # A fresh connection: the one the backfill used may be the reason it stopped.
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
        workers = max(1, (os.cpu_count() or 2) - 1)
        conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(workers),))
        conn.execute(_SQL["create_hnsw"])
    return time.perf_counter() - started
