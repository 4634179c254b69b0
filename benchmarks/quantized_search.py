"""benchmarks/quantized.py's measurements through prodvec's own search (Product.similar_to):
as it plans each query, with and without the code index, and after `prodvec recall --tune`.

Each cell: recall@10 against numpy brute force over the stored halfvec values, and seconds.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from filtered_search import SELECTIVITIES, Case, Catalog, K, all_truths, run_prodvec
from pgvector.psycopg import register_vector
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from prodvec.db.connection import sqlalchemy_url
from prodvec.recall.report import Options, tune_recall
from prodvec.search import plan
from prodvec.search.effort import effort_label

Cells = dict[tuple[str, str], tuple[list[float], list[float]]]  # (selectivity, near/far) → recalls, seconds
#: The unfiltered queries' cells are keyed by this selectivity.
UNFILTERED = "none"


def filtered(url: str, catalog: Catalog, cases: list[Case]) -> Cells:
    """Product.similar_to on filtered_search.py's cases."""
    truths = all_truths(catalog, cases)
    cells: Cells = {}
    with _session(url) as session:
        for case in cases[:20]:  # warm caches
            run_prodvec(session, case.vector, case.filter.clauses())
        for case, (right, need) in zip(cases, truths, strict=True):
            measured = run_prodvec(session, case.vector, case.filter.clauses())
            recall, seconds = cells.setdefault((case.selectivity, case.placement), ([], []))
            recall.append(min(len(set(measured.ids) & right), need) / need if need else 1.0)
            seconds.append(measured.seconds)
    return cells


def unfiltered(url: str, queries: list[tuple[str, np.ndarray]], truths: list[set[int]]) -> Cells:
    """Product.similar_to without a filter, near and far queries (``truths``: each one's true top k)."""
    cells: Cells = {}
    with _session(url) as session:
        for _, vector in queries[:20]:  # warm caches
            run_prodvec(session, vector, [])
        for (kind, vector), right in zip(queries, truths, strict=True):
            measured = run_prodvec(session, vector, [])
            recall, seconds = cells.setdefault((UNFILTERED, kind), ([], []))
            recall.append(len(set(measured.ids) & right) / K)
            seconds.append(measured.seconds)
    return cells


def tune(url: str, target: float, per_case: int, seconds: float) -> None:
    """`prodvec recall --tune --target T` on the catalog as loaded (its own sample of queries,
    none of the measured ones); prints each kind's bands."""
    started = time.perf_counter()
    with _session(url) as session:
        report = tune_recall(session, Options(per_case=per_case, seconds=seconds), target)
    print(f"\nprodvec recall --tune --target {target} ({report['queries']} sampled queries, "
          f"{time.perf_counter() - started:.0f} s)")
    for kind, tuned in report["kinds"].items():
        bands = ", ".join(("farther" if b["max_distance"] is None else f"≤ {b['max_distance']:.3f}")
                          + f": {effort_label(b['min_ef_search'])}" for b in tuned["bands"])
        print(f"  {kind:>16}: recall of the sample's index answers {_recall(tuned['before'])} → "
              f"{_recall(tuned['after'])}; bands {bands}", flush=True)
    plan.forget()


def report(title: str, runs: dict[str, Cells], per_cell: int) -> None:
    print(f"\n{title} ({per_cell} queries per cell)")
    keys = [key for key in (UNFILTERED, *SELECTIVITIES) if any((key, "near") in run for run in runs.values())]
    for key in keys:
        for placement in ("near", "far"):
            cells = "   ".join(f"{name}: {summary(*run[(key, placement)])}" for name, run in runs.items()
                               if (key, placement) in run)
            print(f"  {key:>5} {placement:>4}  {cells}", flush=True)


def summary(recalls: list[float], seconds: list[float]) -> str:
    return (f"recall@10 {np.mean(recalls):.3f} (min {min(recalls):.1f})  p50 {np.quantile(seconds, .5) * 1000:6.2f} ms"
            f"  p95 {np.quantile(seconds, .95) * 1000:6.2f} ms")


def _recall(figures: dict[str, float | None]) -> str:
    recall = figures["recall"]
    return f"{figures['exact']} exact" if recall is None else f"{recall:.3f} ({figures['exact']} exact)"


@contextmanager
def _session(url: str) -> Iterator[Session]:
    """A Session on an engine of its own (pgvector's types registered), with fresh plan facts."""
    engine = create_engine(sqlalchemy_url(url))
    event.listen(engine, "connect", lambda dbapi_connection, _: register_vector(dbapi_connection))
    plan.forget()
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()
