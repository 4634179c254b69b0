"""`prodvec quantized-index create|drop`: the opt-in binary-code index (migrations/0008)."""
from __future__ import annotations

import os
from typing import Any

from psycopg.rows import dict_row

from prodvec.db.connection import connect
from prodvec.sql import queries

_SQL = queries("quantized.sql")
#: Graph settings of the code index, as migrations/0008's function defaults. pgvector's own (m 16,
#: ef_construction 64) left some searches of a 1M catalog in the wrong region of the graph
#: (docs/scaling.md, benchmarks/quantized.py).
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 128


def create_index(
    url: str,
    *,
    centred: bool = True,
    m: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    maintenance_work_mem: str = "1GB",
) -> dict[str, Any]:
    """(Re)build the index on the codes of the vectors, minus the catalog mean when ``centred``;
    returns dimensions, products and mean_norm (the mean's length: 0 when not centred). Recall
    measured through an earlier code index is forgotten: run `prodvec recall --tune` again."""
    with connect(url, autocommit=True) as conn:
        # As the halfvec index is built (prodvec/worker/bulk.py): in memory, with parallel workers.
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
        workers = max(1, (os.cpu_count() or 2) - 1)
        conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(workers),))
        cursor = conn.cursor(row_factory=dict_row)
        options = {"centred": centred, "m": m, "ef_construction": ef_construction}
        with conn.transaction():
            row = cursor.execute(_SQL["create"], options).fetchone()
            conn.execute(_SQL["forget_recall"])
    assert row is not None  # the function returns one row
    return row


def drop_index(url: str) -> bool:
    """Drop the index and its code function; False when there was none."""
    with connect(url) as conn:
        row = conn.execute(_SQL["drop"]).fetchone()
        conn.execute(_SQL["forget_recall"])
    return bool(row and row[0])


def index_bytes(url: str) -> int | None:
    with connect(url) as conn:
        row = conn.execute(_SQL["size"]).fetchone()
    return row[0] if row else None
