"""Per query: how many products does the filter keep, and so which way to search.

Few → exact distances over just those rows (the B-trees find them). More → the HNSW index
first: up to a few exact passes' worth, one quick look (its first search, no iterative scan);
beyond, an iterative scan sized for k and the filter's selectivity. A filter pinned to one
category that has its own index (migrations/0003) gets an iterative scan of that category's
graph, near or far from the query. Where the binary-code index exists, it serves the index
passes no category index serves (quantized.py). The estimate is the planner's (EXPLAIN, kept
a while per filter), or for a filter on categories alone what their indexes hold or the
statistics the planner would read; where it is wrong every way stays correct: an exact pass
is capped (over the cap, the index takes over) and an index pass that comes back short hands
over to exact.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from prodvec.search import execute, quantized
from prodvec.search.effort import EF_SEARCH_LIMIT, Band, Kind
from prodvec.search.execute import IndexSettings, Query
from prodvec.search.statements import VECTOR_COLUMNS, statement
from prodvec.sql import queries

#: Exact for up to this many matching products. Measured on 100k × 512-d halfvec: ~0.45 µs a
#: row when the (category, price) index carries the vectors (migrations/0005), ~1.5 µs when
#: the pass reads the table (a filter on other columns, wider vectors), so ≤ 1–3 ms; a quick
#: index look costs ~1 ms, and a query far from its matches pays that look and the exact
#: pass after it.
EXACT_MAX_ROWS = 2_000
#: An exact pass planned from an estimate stops (and the index takes over) past this × the
#: switch-over: the planner underestimates correlated filters (category and price).
EXACT_CAP_FACTOR = 3
#: Up to this many matching products, and this share of the catalog, the index gets one
#: quick look: its first search only (no iterative scan), which finds the ef_search products
#: nearest to the query whatever the filter. If k of them match, those are the k nearest
#: matches (as far as the index finds the nearest products at all): a query near its matches
#: (a shoe photo among shoes). If not, the query is far from its matches (among bags) and the
#: exact pass answers. An iterative scan instead (measured at 100k rows, no category indexes):
#: at 1% far queries took 9.5 ms p50 against 4.9; at 5% 10.1 against 13.6, but with recall@10
#: 0.965 (one query 0.8) against 1.0. Broader filters match densely wherever the query lies,
#: and the iterative scan finds them (measured at 50% selectivity).
QUICK_LOOK_MAX_ROWS = 20_000
QUICK_LOOK_MAX_SHARE = 0.2
#: hnsw.ef_search bounds (pgvector allows 1..1000; 40 is its default). Past 200 the first
#: search costs more than it gains, measured at 5% and 1% selectivity.
EF_SEARCH_MIN, EF_SEARCH_MAX = 40, 200
#: A pass's candidate list is sized to hold this many times k matches at the filter's
#: selectivity (within EF_SEARCH_MIN..EF_SEARCH_MAX).
CANDIDATES_PER_HIT = 2
#: A quick look's candidate list holds this many times k matches at the density it expects:
#: more than a pass's, as that density rests on the planner's estimate, which is often off
#: by 2x for correlated filters, and a short quick look costs an exact pass; 40 candidates
#: more cost ~0.15 ms (measured at 100k rows).
QUICK_LOOK_CANDIDATES_PER_HIT = 4
#: Iterative scan budget in tuples, per matching product, for broad filters (no exact pass
#: could follow cheaply): a query far from every matching product walks much of the graph.
SCAN_BUDGET_PER_MATCH = 0.5
#: ... but never less than a few passes' worth, so queries near their matches finish.
SCAN_BUDGET_MIN = 2_000
#: A filter pinned to a category with its own index scans that index when the planner expects
#: at least this share of the category to match, however few that is of the catalog: an exact
#: pass would still read the category's matches one by one. Sparser matches make the scan
#: long, so up to EXACT_MAX_ROWS those go exact. Side by side at 100k rows (categories of
#: ~5,000, 320 filters near and far), the two cost the same at ~1,800 matches when the
#: (category, price) index carries the vectors (exact: 1.4 ms at 1,000–1,500 matches against
#: 1.6 through the category's index; 1.9 against 1.7 at 2,000–3,000), and at ~500–600 when
#: the exact pass reads the table (wider vectors, migrations/0005).
CATEGORY_INDEX_MIN_SHARE = 0.35
CATEGORY_INDEX_MIN_SHARE_FROM_TABLE = 0.1
#: A category's own graph is searched with at least this candidate list: queries from another
#: category land far from all of its products, where a short list can settle on the wrong ones
#: (measured at 100k rows: a far 5% query at recall 0 with 40, none below 1.0 with 100).
CATEGORY_EF_SEARCH_MIN = 100
#: Seconds table facts and planner estimates are reused per database: dimensions change only
#: with a migration, and counts only size the plan, so a slightly stale one costs nothing;
#: a new tuning (`prodvec recall --tune`) reaches other processes' searches within this time.
FACTS_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class TableFacts:
    indexed_rows: float | None  # planner's estimate of products with an embedding; None before ANALYZE
    dimensions: int | None  # the embedding column's, None if untyped
    category_indexes: dict[str, float]  # category with its own index → products the index holds
    #: Category → its share of the products, for the categories ANALYZE found most common
    #: (pg_stats.most_common_vals: the planner's own figures for `category = …`).
    category_shares: dict[str, float]
    #: The (category, price) index carries the vectors (migrations/0005): exact passes over
    #: category and price filters read it alone, ~3x faster than from the table.
    vectors_in_filter_index: bool
    #: The binary codes' width when products has the code index (migrations/0008), else None.
    code_dimensions: int | None
    #: Per kind of index search, its distance bands with their tuned effort and measured
    #: recall, nearest first (prodvec_recall_settings, `prodvec recall`); none: as planned.
    recall_bands: dict[str, tuple[Band, ...]] = field(default_factory=dict)

    def category_index_rows(self, category: str | None) -> float | None:
        """Products in the category's own index, None when it has none."""
        return self.category_indexes.get(category) if category is not None else None

    def category_rows(self, category: str) -> float | None:
        """Embedded products in the category: its index's count, or the planner's estimate
        from the statistics; None when neither knows the category."""
        if category in self.category_indexes:
            return self.category_indexes[category]
        share = self.category_shares.get(category)
        return None if share is None or self.indexed_rows is None else share * self.indexed_rows


@dataclass(frozen=True)
class Plan:
    estimate: int  # products the filter keeps, as the planner estimates
    exact_cap: int | None  # try an exact pass first, over at most this many products
    kind: Kind  # the kind of index search, for its tuned effort and measured recall
    index: IndexSettings  # for the index pass: the plan, or the exact pass's overflow


class _Recent:
    """Values kept for FACTS_TTL_SECONDS, the most recently used MAX_ENTRIES of them."""

    MAX_ENTRIES = 1024

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[0] >= FACTS_TTL_SECONDS:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.MAX_ENTRIES:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_facts = _Recent()
#: Planner estimates per database and filter (its SQL and values): a shop asks the same
#: filters again and again (a category page, a price range), and an estimate changes only
#: with ANALYZE. Saves the EXPLAIN round trip, ~0.4 ms of a 2–3 ms search.
_estimates = _Recent()


def forget() -> None:
    """Drop the cached table facts and estimates (tests, benchmarks: after creating indexes)."""
    _facts.clear()
    _estimates.clear()


def table_facts(session: Session, model_id: int | None = None) -> TableFacts:
    """What plans are sized by, cached per database and active model (``model_id``: an
    activation renames the vector columns, so another model's facts are other facts)."""
    key = (_database(session), model_id)
    facts = _facts.get(key)
    if facts is not None:
        return facts
    [row] = execute.fetch(session, queries("search_passes.sql")["table_facts"], {})
    indexed_rows, dimensions, category_indexes, category_shares, vectors_in_filter_index, code_dimensions = row
    facts = TableFacts(
        float(indexed_rows) if indexed_rows is not None and indexed_rows >= 0 else None,
        dimensions if dimensions > 0 else None,
        {category: float(products) for category, products in category_indexes.items()},
        {category: float(share) for category, share in category_shares.items()},
        bool(vectors_in_filter_index),
        code_dimensions,
        _recall_bands(session),
    )
    _facts.put(key, facts)
    return facts


def _recall_bands(session: Session) -> dict[str, tuple[Band, ...]]:
    bands: dict[str, list[Band]] = {}
    for kind, _, max_distance, ef_search, recall, _ in execute.fetch(session, queries("recall.sql")["bands"], {}):
        bands.setdefault(kind, []).append(Band(max_distance, ef_search, recall))
    return {kind: tuple(kind_bands) for kind, kind_bands in bands.items()}


def choose(session: Session, query: Query, facts: TableFacts) -> Plan:
    if query.filter.empty:
        return Plan(int(max(facts.indexed_rows or 0.0, 1.0)), None, *index_plan(query, facts, 0))
    estimate = estimated_matches(session, query, facts)
    if estimate <= EXACT_MAX_ROWS and _serving_category_index(query, facts, estimate) is None:
        cap = EXACT_CAP_FACTOR * EXACT_MAX_ROWS
        # Should the cap be hit, at least cap products match: size the index pass for that.
        return Plan(estimate, cap, *_main_index(query, facts, cap + 1))
    return Plan(estimate, None, *index_plan(query, facts, estimate))


def index_plan(query: Query, facts: TableFacts, matches: float) -> tuple[Kind, IndexSettings]:
    """The kind of index search the planner makes for a filter keeping ``matches`` products,
    and its settings, once the index is to answer (`prodvec recall` measures each kind)."""
    if query.filter.empty:
        codes = _code_index(query, facts, 0)
        if codes is not None:
            return codes
        # No filter: the index's first search holds the k nearest (but the query product).
        ef_search = min(EF_SEARCH_LIMIT, max(EF_SEARCH_MIN, query.k + 1))
        return "unfiltered", IndexSettings(ef_search=ef_search, max_scan_tuples=None)
    in_category = _serving_category_index(query, facts, matches)
    if in_category is not None:
        return "category", category_index_settings(query.k, matches, in_category)
    return _main_index(query, facts, matches)


def estimated_matches(session: Session, query: Query, facts: TableFacts) -> int:
    """How many products the filter keeps: what the categories' indexes hold (or the
    statistics say they hold, as the planner would reckon) for a filter that is only
    categories, otherwise the planner's estimate."""
    pinned_rows = _pinned_rows(query, facts)
    if query.filter.categories_only and pinned_rows is not None:
        return int(pinned_rows)
    return _planner_estimate(session, query)


def _pinned_rows(query: Query, facts: TableFacts) -> float | None:
    """Products in the categories the filter pins, None when it pins none or one is unknown."""
    in_categories = [facts.category_rows(category) for category in query.filter.categories]
    if not in_categories or None in in_categories:
        return None
    return sum(rows for rows in in_categories if rows is not None)


def _serving_category_index(query: Query, facts: TableFacts, matches: float) -> float | None:
    """Products in the category index that should serve the filter, None when none should."""
    # One category's own index serves searches of the column it indexes (embedding) only.
    in_category = facts.category_index_rows(query.filter.category) if query.vector_column == "embedding" else None
    min_share = CATEGORY_INDEX_MIN_SHARE if facts.vectors_in_filter_index else CATEGORY_INDEX_MIN_SHARE_FROM_TABLE
    if in_category and (matches > EXACT_MAX_ROWS or matches >= min_share * in_category):
        return in_category
    return None


def _main_index(query: Query, facts: TableFacts, matches: float) -> tuple[Kind, IndexSettings]:
    codes = _code_index(query, facts, matches)
    if codes is not None:
        return codes
    total = max(facts.indexed_rows or 0.0, 1.0)
    settings = index_settings(query.k, matches, total, in_categories=_pinned_rows(query, facts))
    return ("quick_look" if settings.max_scan_tuples is None else "scan"), settings


def _code_index(query: Query, facts: TableFacts, matches: float) -> tuple[Kind, IndexSettings] | None:
    """The pass through the binary-code index, when there is one for the column searched."""
    if facts.code_dimensions is None or query.vector_column != VECTOR_COLUMNS[0]:
        return None
    total = max(facts.indexed_rows or 0.0, 1.0)
    return quantized.code_plan(query.k, matches, total, filtered=not query.filter.empty,
                               few_matches=_few_for_a_quick_look(matches, total), dimensions=facts.code_dimensions)


def category_index_settings(k: int, matches: float, in_category: float) -> IndexSettings:
    """An iterative scan of one category's graph, sized for the share of it the filter keeps;
    its budget is the whole graph, so it comes back short only when fewer than k match.
    Should PostgreSQL still pick the main index (its cost model decides), the scan returns
    the nearest matches it reached, or comes back short for exact."""
    share = min(1.0, max(matches, 1.0) / max(in_category, 1.0))
    ef_search = int(min(EF_SEARCH_MAX, max(CATEGORY_EF_SEARCH_MIN, CANDIDATES_PER_HIT * k / share)))
    return IndexSettings(ef_search=ef_search, max_scan_tuples=int(in_category) + 1)


def index_settings(k: int, matches: float, total: float, *, in_categories: float | None = None) -> IndexSettings:
    """Index settings: candidates per pass to hold the wanted matches at this selectivity; a
    quick look only, or for broad filters an iterative scan with a budget sized to the matches.

    A quick look pays off for queries near their matches, so its candidates are sized for how
    densely the filter matches there: for a filter pinned to categories (``in_categories``:
    their products), the share of those it keeps, not of the catalog. Measured at 100k rows,
    near queries: one category (5% of the catalog) came back with k at ef_search 40 every time
    (recall 1.0) in 0.74 ms against 1.89 at 200; a fifth of one category (1%) 52% of the time
    at 40, 94% at 80, always at 120. Far queries come back short at any ef_search, sooner."""
    selectivity = min(1.0, max(matches, 1.0) / max(total, 1.0))
    if _few_for_a_quick_look(matches, total):
        density = selectivity if not in_categories else min(1.0, max(matches, 1.0) / in_categories)
        return IndexSettings(ef_search=_ef_search(QUICK_LOOK_CANDIDATES_PER_HIT * k, density), max_scan_tuples=None)
    budget = int(max(SCAN_BUDGET_MIN, SCAN_BUDGET_PER_MATCH * matches))
    return IndexSettings(ef_search=_ef_search(CANDIDATES_PER_HIT * k, selectivity), max_scan_tuples=budget)


def _few_for_a_quick_look(matches: float, total: float) -> bool:
    """So few matches that a query far from them is best answered by the exact pass."""
    return matches <= QUICK_LOOK_MAX_ROWS and max(matches, 1.0) / max(total, 1.0) <= QUICK_LOOK_MAX_SHARE


def _ef_search(matches: float, density: float) -> int:
    """Candidates to hold this many matches where this share of products match."""
    return int(min(EF_SEARCH_MAX, max(EF_SEARCH_MIN, matches / density)))


def _planner_estimate(session: Session, query: Query) -> int:
    # repr: filter values may be lists; the query product left out changes the count by one at most.
    key = (_database(session), query.filter.sql, repr(sorted(query.filter.params.items())))
    estimate = _estimates.get(key)
    if estimate is None:
        rows = execute.fetch(session, statement("estimate", query.filter), query.params())
        plan = rows[0][0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        _estimates.put(key, estimate)
    return estimate


def _database(session: Session) -> URL:
    return session.get_bind().engine.url  # hashable; rendering it as a string cost ~2% of a search
