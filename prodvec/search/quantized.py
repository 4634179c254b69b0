"""The two-stage index pass: binary codes find candidates, exact halfvec distances rank them.

When products has the binary-code index (`prodvec quantized-index create`,
migrations/0008_quantized_index.sql), an index pass of Product.similar_to searches it instead
of the halfvec HNSW index: the 10 × k matching products nearest to the query's code by
Hamming distance, re-ranked by their exact cosine distance. The code index is several times
smaller and faster to build; the re-rank restores the ordering the codes blur
(benchmarks/quantized.py has the recall and latency).

The guarantees stay those of similar.py: a pass that could not fill its candidate list (the
scan gave up, or fewer products match) returns no hits, and the exact pass answers. A filter
pinned to a category with its own halfvec index (migrations/0003) and the coarse column of a
multi-view catalog keep the halfvec pass: the code index covers products.embedding only.
"""
from __future__ import annotations

import threading
import time

from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from prodvec.search import execute, loading, plan
from prodvec.search.execute import IndexSettings, Query
from prodvec.search.result import Hit
from prodvec.search.statements import PRODUCT_COLUMNS
from prodvec.sql import queries

#: Candidates re-ranked per hit asked for (pgvector's ef_search allows up to 1,000 per index
#: search). Measured with the default m 32 graph, k 10 (docs/scaling.md): near recall@10 0.998 at
#: 100k and 0.980 at 1M with 100 candidates, p50 1.1x the halfvec index's at 100k; 400 candidates
#: gained 0.01 for 2.5x the time.
CANDIDATES_PER_HIT = 10
#: A filtered pass scans the code graph until it holds its candidates: a budget of this many
#: tuples per expected match among them (Hamming comparisons of 64-byte codes are cheap) ...
SCAN_TUPLES_PER_CANDIDATE = 4
#: ... but at least pgvector's default budget.
SCAN_BUDGET_MIN = 20_000

_SQL = queries("quantized.sql")
_COLUMNS = ", ".join(PRODUCT_COLUMNS.values())
_dimensions: dict[URL, tuple[float, int | None]] = {}
_lock = threading.Lock()


def index_pass(session: Session, query: Query, chosen: plan.Plan, facts: plan.TableFacts) -> list[Hit] | None:
    """An index pass of similar.py through the code index; None when it does not serve this
    query (the halfvec index answers then). Fewer than k hits: the exact pass must answer."""
    dimensions = code_dimensions(session) if query.vector_column == "embedding" else None
    if dimensions is None or facts.category_index_rows(query.filter.category) is not None:
        return None
    total = max(facts.indexed_rows or 0.0, 1.0)
    candidates = min(plan.EF_SEARCH_LIMIT, CANDIDATES_PER_HIT * query.k)
    settings = scan_settings(candidates, chosen.estimate, total, filtered=not query.filter.empty)
    return rerank(session, query, dimensions, candidates, settings) or []


def scan_settings(candidates: int, matches: float, total: float, *, filtered: bool) -> IndexSettings:
    """One search of the code graph for an unfiltered query; for a filtered one an iterative
    scan with a budget that reaches ``candidates`` matches at the filter's selectivity."""
    ef_search = min(plan.EF_SEARCH_LIMIT, candidates)
    if not filtered:
        return IndexSettings(ef_search=ef_search, max_scan_tuples=None)
    selectivity = min(1.0, max(matches, 1.0) / total)
    budget = int(max(SCAN_BUDGET_MIN, SCAN_TUPLES_PER_CANDIDATE * candidates / selectivity))
    return IndexSettings(ef_search=ef_search, max_scan_tuples=min(budget, int(total) + 1))


def rerank(
    session: Session, query: Query, dimensions: int, candidates: int, settings: IndexSettings
) -> list[Hit] | None:
    """The k nearest of the ``candidates`` the code index gives, by exact distance; None when
    the index gave fewer candidates (its scan gave up, or fewer products match)."""
    sql = _SQL["rerank"].format(
        columns=_COLUMNS, filters=query.filter.sql, dimensions=int(dimensions), candidates=int(candidates),
        k=int(query.k),
    )
    # The settings are SET LOCAL in a savepoint rolled back after the query: the caller's stay.
    # Products are loaded after the rollback, which would expunge objects added inside it.
    savepoint = session.begin_nested()
    try:
        execute.fetch(session, queries("search_passes.sql")["index_settings"], settings.as_params())
        rows = execute.fetch(session, sql, query.params())
    finally:
        savepoint.rollback()
    if not rows or rows[0][-1] < candidates:
        return None
    distance = len(PRODUCT_COLUMNS)
    products = loading.products(session, rows)
    return [Hit(product, float(row[distance])) for product, row in zip(products, rows, strict=True)]


def code_dimensions(session: Session) -> int | None:
    """The codes' width when products has the binary-code index, else None (kept a while per
    database, as plan.py keeps its table facts)."""
    key = session.get_bind().engine.url
    with _lock:
        cached = _dimensions.get(key)
    if cached is not None and time.monotonic() - cached[0] < plan.FACTS_TTL_SECONDS:
        return cached[1]
    rows = execute.fetch(session, _SQL["code_dimensions"], {})
    dimensions = int(rows[0][0]) if rows else None
    with _lock:
        _dimensions[key] = (time.monotonic(), dimensions)
    return dimensions


def forget() -> None:
    """Drop the cached index facts (after `prodvec quantized-index create|drop` in this process)."""
    with _lock:
        _dimensions.clear()
