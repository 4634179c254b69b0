"""`prodvec quantized-index create|drop`: the opt-in binary-code index (migrations/0008)."""
from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row

from prodvec.db.connection import configure_index_builds, connect
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
    replace_halfvec: bool = False,
) -> dict[str, Any]:
    """(Re)build the index on the codes of the vectors, minus the catalog mean when ``centred``;
    returns dimensions, products, mean_norm (the mean's length: 0 when not centred) and what
    became of the halfvec index: with ``replace_halfvec`` it is dropped, and its size freed.
    Recall measured through an earlier code index is forgotten: run `prodvec recall --tune` again."""
    with connect(url, autocommit=True) as conn:
        configure_index_builds(conn, maintenance_work_mem)
        cursor = conn.cursor(row_factory=dict_row)
        options = {"centred": centred, "m": m, "ef_construction": ef_construction}
        with conn.transaction():
            row = cursor.execute(_SQL["create"], options).fetchone()
            conn.execute(_SQL["forget_recall"])
        assert row is not None  # the function returns one row
        [(halfvec_bytes,)] = conn.execute(_SQL["halfvec_index_size"]).fetchall()
        if replace_halfvec and halfvec_bytes is not None:
            conn.execute(_SQL["drop_halfvec_index"])
            row["halfvec_index"] = f"dropped: the code index replaces it ({halfvec_bytes / 2**20:.1f} MB freed)"
        else:
            row["halfvec_index"] = "kept" if halfvec_bytes is not None else "none (replaced earlier)"
    return row


def drop_index(url: str, *, maintenance_work_mem: str = "1GB") -> bool:
    """Drop the index and its code function, and build the halfvec index again where the code
    index had replaced it; False when there was no code index."""
    with connect(url, autocommit=True) as conn:
        with conn.transaction():
            row = conn.execute(_SQL["drop"]).fetchone()
            conn.execute(_SQL["forget_recall"])
        [(halfvec_bytes,)] = conn.execute(_SQL["halfvec_index_size"]).fetchall()
        if halfvec_bytes is None:
            configure_index_builds(conn, maintenance_work_mem)
            conn.execute(_SQL["restore_halfvec_index"])
    return bool(row and row[0])


def index_bytes(url: str) -> int | None:
    """The code index's size on disk; None without it."""
    with connect(url) as conn:
        row = conn.execute(_SQL["size"]).fetchone()
    return row[0] if row else None
