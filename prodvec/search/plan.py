"""Per query: how many products does the filter keep, and so which way to search.

Few → exact distances over just those rows (the B-trees find them). Many → the HNSW index,
with an iterative scan sized for k and the filter's selectivity. The estimate is the
planner's; where it is wrong both ways stay correct: an exact pass is capped (over the cap,
the index takes over) and an index pass that comes back short hands over to exact.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from sqlalchemy import Executable, literal, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ClauseElement

from prodvec.models import Product
from prodvec.search.execute import IndexSettings, Query

#: Switch-over: exact for up to sqrt(EXACT_COST_RATIO · k · indexed rows) matching products
#: (100k rows, k=10: 6,300). Measured on 100k × 512-d halfvec: an exact pass costs ~1.5 µs
#: per matching row, the iterative index scan ~3 µs per visited tuple and ~2k/selectivity
#: tuples for a query near its matches, but many more, with poor recall, for one far from
#: them (a shoe photo filtered to bags). Exact costs the same wherever the query lies, so it
#: is kept well past the break-even for near queries.
EXACT_COST_RATIO = 40
#: Exact below this many matching products whatever the table size (< 2 ms).
EXACT_MIN_ROWS = 1_000
#: An exact pass planned from an estimate stops (and the index takes over) past this × the
#: switch-over: the planner underestimates correlated filters (category and price).
EXACT_CAP_FACTOR = 3
#: hnsw.ef_search bounds (pgvector allows 1..1000; 40 is its default).
EF_SEARCH_MIN, EF_SEARCH_MAX = 40, 400
#: Index rows re-sorted per hit (relaxed order returns near-but-unordered rows).
INNER_LIMIT_FACTOR = 2
#: Iterative scan budget in tuples, per matching product: past it an exact pass is cheaper
#: than going on (a query far from every matching product walks much of the graph).
SCAN_BUDGET_PER_MATCH = 0.5
#: ... but never less than a few passes' worth, so queries near their matches finish.
SCAN_BUDGET_MIN = 2_000
#: Seconds table facts are reused per database: dimensions change only with a migration and
#: the row count is only used for sizing, so a slightly stale one costs nothing.
FACTS_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class TableFacts:
    indexed_rows: float | None  # planner's estimate of products with an embedding; None before ANALYZE
    dimensions: int | None  # the embedding column's, None if untyped


@dataclass(frozen=True)
class Plan:
    estimate: int  # products the filter keeps, as the planner estimates
    exact_cap: int | None  # try an exact pass first, over at most this many products
    index: IndexSettings  # for the index pass: the plan, or the exact pass's overflow


_facts_cache: dict[str, tuple[float, TableFacts]] = {}


def table_facts(session: Session) -> TableFacts:
    key = str(session.get_bind().engine.url)
    cached = _facts_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < FACTS_TTL_SECONDS:
        return cached[1]
    row = session.execute(
        text(
            "SELECT c.reltuples * (1 - coalesce(s.null_frac, 0)) AS indexed_rows, a.atttypmod AS dimensions "
            "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'embedding' "
            "LEFT JOIN pg_stats s ON s.schemaname = c.relnamespace::regnamespace::text "
            "AND s.tablename = c.relname AND s.attname = 'embedding' "
            "WHERE c.oid = CAST(:table AS regclass)"
        ),
        {"table": Product.__tablename__},
    ).one()
    # reltuples is -1 until the table is first vacuumed or analysed.
    indexed = float(row.indexed_rows) if row.indexed_rows is not None and row.indexed_rows >= 0 else None
    facts = TableFacts(indexed, row.dimensions if row.dimensions > 0 else None)
    _facts_cache[key] = (time.monotonic(), facts)
    return facts


def choose(session: Session, query: Query, facts: TableFacts) -> Plan:
    total = max(facts.indexed_rows or 0.0, 1.0)
    exact_max = max(EXACT_MIN_ROWS, math.ceil(math.sqrt(EXACT_COST_RATIO * query.k * total)))
    # Without a filter the table's row count is the estimate: no need to ask the planner.
    estimate = _planner_estimate(session, query) if query.where or facts.indexed_rows is None else int(total)
    if estimate <= exact_max:
        cap = EXACT_CAP_FACTOR * exact_max
        # Should the cap be hit, at least cap products match: size the index pass for that.
        return Plan(estimate, cap, index_settings(query.k, cap + 1, total))
    return Plan(estimate, None, index_settings(query.k, estimate, total))


def index_settings(k: int, matches: float, total: float) -> IndexSettings:
    """Iterative scan settings: candidates per pass to yield the inner limit at this
    selectivity, and a budget past which the exact pass over the matches is cheaper."""
    inner_limit = INNER_LIMIT_FACTOR * k
    selectivity = min(1.0, max(matches, 1.0) / max(total, 1.0))
    ef_search = int(min(EF_SEARCH_MAX, max(EF_SEARCH_MIN, inner_limit / selectivity)))
    budget = int(max(SCAN_BUDGET_MIN, SCAN_BUDGET_PER_MATCH * matches))
    return IndexSettings(ef_search=ef_search, max_scan_tuples=budget, inner_limit=inner_limit)


def _planner_estimate(session: Session, query: Query) -> int:
    plan = session.execute(_Explain(select(literal(1)).where(*query.filters()))).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class _Explain(Executable, ClauseElement):
    """EXPLAIN (FORMAT JSON) of a statement, compiled with it so its parameters bind as usual."""

    inherit_cache = False

    def __init__(self, statement: Executable) -> None:
        self.statement = statement


@compiles(_Explain, "postgresql")
def _compile_explain(element: _Explain, compiler, **kw):  # type: ignore[no-untyped-def]
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)
