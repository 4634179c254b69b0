"""The other quantisation pgvector can index, for benchmarks/quantized.py: an HNSW index on a
lower-dimensional halfvec of each vector, searched for candidates that are re-ranked by the full
halfvec distance (the code index's two-stage shape).

- "sub D": an expression index on the first D dimensions, `subvector(embedding, 1, D)::halfvec(D)`.
  A truncation: only meaningful where the leading dimensions carry the signal (after a rotation
  such as PCA); on vectors whose every direction is alike it is a random projection of sorts.
- "pca D": the vectors minus the catalog mean projected on their top D principal components, fitted
  here in numpy and stored in a side table; the query is projected the same way.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector

#: The same two-stage shape on a lower-dimensional halfvec: candidates by the index on the first
#: {d} dimensions (an expression index), re-ranked by the full vector.
TRUNCATED_INDEX = (
    "CREATE INDEX bench_sub{d}_hnsw ON products USING hnsw "
    "((subvector(embedding, 1, {d})::halfvec({d})) halfvec_cosine_ops) WITH (m = {m}, ef_construction = {ef})"
)
TRUNCATED = (
    "SELECT id FROM (SELECT id, embedding FROM products "
    "ORDER BY subvector(embedding, 1, {d})::halfvec({d}) <=> subvector(%(q)s::halfvec, 1, {d})::halfvec({d}) "
    "LIMIT {candidates}) candidates ORDER BY embedding <=> %(q)s LIMIT {k}"
)
#: PCA projections in a side table keyed by product id: filling a new products column by UPDATE
#: would write a new version of every row and of its entries in every index. Each candidate's
#: full vector is then read by its primary key (one lookup more than a column of products needs).
#: The query's projection is %(p{d})s.
PCA_TABLE = "CREATE TABLE bench_pca{d} (id int8 PRIMARY KEY, projected halfvec({d}) NOT NULL)"
PCA_INDEX = (
    "CREATE INDEX bench_pca{d}_hnsw ON bench_pca{d} USING hnsw (projected halfvec_cosine_ops) "
    "WITH (m = {m}, ef_construction = {ef})"
)
PCA = (
    "SELECT id FROM (SELECT id, (SELECT embedding FROM products WHERE products.id = bench_pca{d}.id) AS embedding "
    "FROM bench_pca{d} ORDER BY projected <=> %(p{d})s LIMIT {candidates}) candidates "
    "ORDER BY embedding <=> %(q)s LIMIT {k}"
)
TEMPLATES = {"sub": TRUNCATED, "pca": PCA}
#: A query vector's extra parameters (its PCA projection, by name).
Projector = Callable[[np.ndarray], dict[str, HalfVector]]


def parse(variant: str) -> tuple[str, int] | None:
    """("sub" or "pca", D) of "subD" / "pcaD"; None for anything else."""
    kind, dimensions = variant[:3], variant[3:]
    return (kind, int(dimensions)) if kind in TEMPLATES and dimensions.isdigit() else None


def two_stage_sql(variant: str, candidates: int, k: int) -> str:
    kind, dimensions = parse(variant) or ("", 0)
    return TEMPLATES[kind].format(d=dimensions, candidates=candidates, k=k)


def timed_index_build(url: str, statement: str, index: str, maintenance_work_mem: str) -> tuple[float, int]:
    """Run ``statement`` with the settings the code index is built with (prodvec.db.quantized_index);
    returns its seconds and ``index``'s size in bytes."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
        workers = max(1, (os.cpu_count() or 2) - 1)
        conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(workers),))
        started = time.perf_counter()
        conn.execute(statement)
        seconds = time.perf_counter() - started
        return seconds, conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()[0]


def drop_projections(url: str, variants: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for kind, dimensions in filter(None, map(parse, variants)):
            name = psycopg.sql.Identifier(f"bench_{kind}{dimensions}" + ("_hnsw" if kind == "sub" else ""))
            drop = "DROP INDEX IF EXISTS {}" if kind == "sub" else "DROP TABLE IF EXISTS {}"
            conn.execute(psycopg.sql.SQL(drop).format(name))


def build_projection(url: str, variant: str, stored: np.ndarray, m: int, ef_construction: int,
                     maintenance_work_mem: str) -> tuple[float, int, Projector | None]:
    """Build ``variant``'s index ("subD" or "pcaD"); returns its build seconds, its size and, for
    PCA, the query's parameters. PCA's fit and the side table's filling are printed, not counted."""
    kind, dimensions = parse(variant) or ("", 0)
    options = {"d": dimensions, "m": m, "ef": ef_construction}
    if kind == "sub":
        seconds, size = timed_index_build(url, TRUNCATED_INDEX.format(**options), f"bench_sub{dimensions}_hnsw",
                                          maintenance_work_mem)
        return seconds, size, None
    started = time.perf_counter()
    mean = stored.mean(axis=0)
    centred = stored - mean
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    components = eigenvectors[:, ::-1][:, :dimensions].astype(np.float32)
    projected = (centred @ components).astype(np.float16)
    del centred
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(PCA_TABLE.format(**options))
        with conn.cursor().copy(f"COPY bench_pca{dimensions} (id, projected) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "halfvec"])
            for i, vector in enumerate(projected):
                copy.write_row((i + 1, HalfVector(vector)))
        conn.execute(f"VACUUM (ANALYZE) bench_pca{dimensions}")
    print(f"  {variant}: PCA fit and side table filled in {time.perf_counter() - started:.1f} s", flush=True)
    seconds, size = timed_index_build(url, PCA_INDEX.format(**options), f"bench_pca{dimensions}_hnsw",
                                      maintenance_work_mem)

    def project(vector: np.ndarray) -> dict[str, HalfVector]:
        return {f"p{dimensions}": HalfVector((vector / np.linalg.norm(vector) - mean) @ components)}

    return seconds, size, project
