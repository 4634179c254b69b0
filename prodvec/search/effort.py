"""Tuned effort per kind of index search and distance band (prodvec_recall_settings,
migrations/0006), and the index answer that uses it.

How far a query lies from what it searches (a text query, a photo of something the shop does
not sell) decides how much of the graph an HNSW search must walk: a far query needs a longer
candidate list than a near one for the same recall. Its first pass tells which: the distance
of its nearest candidate places it in a band, and only a query placed in a band tuned to more
effort pays for a second, longer pass. `prodvec recall --tune` chose the bands and their
effort on a sample of this catalog's queries, in the same two steps, and measured the recall
each band reaches; an index answer carries that figure.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from prodvec.search import execute
from prodvec.search.execute import IndexSettings, Query
from prodvec.search.result import Hit

#: The planner's kinds of index search (plan.index_plan): no filter; an iterative scan under
#: a broad filter; one quick look under a selective one; a category's own index; and where the
#: binary-code index exists (quantized.py), its unfiltered search and its filtered scan.
Kind = Literal["unfiltered", "scan", "quick_look", "category", "codes_unfiltered", "codes_filtered"]
KINDS: tuple[Kind, ...] = ("unfiltered", "scan", "quick_look", "category", "codes_unfiltered", "codes_filtered")
#: A band's effort when no candidate list reaches the target: its queries are answered exactly.
EXACT = 0
#: pgvector's own upper bound for hnsw.ef_search.
EF_SEARCH_LIMIT = 1000
#: An iterative scan's budget under a tuned effort: at least this many candidate lists.
SCAN_BUDGET_PER_EF_SEARCH = 10


@dataclass(frozen=True)
class Band:
    #: Queries whose nearest candidate lies within this cosine distance; None: no bound.
    max_distance: float | None
    #: The least candidate list for these queries; None: as planned; EXACT: the exact pass
    #: answers them (no candidate list reached the target).
    ef_search: int | None
    #: Mean recall@k of the index's answers to the sample's queries in this band; None: the
    #: index answered none of them.
    recall: float | None


def band_of(bands: Sequence[Band], distance: float) -> Band:
    """The first band that holds a query whose nearest candidate lies at ``distance``."""
    for band in bands:
        if band.max_distance is None or distance <= band.max_distance:
            return band
    return bands[-1]


def index_answer(
    session: Session, query: Query, planned: IndexSettings, bands: Sequence[Band]
) -> tuple[list[Hit], Band | None]:
    """The index pass at the nearest band's effort; if k hits place the query in a band tuned
    to more, a second pass at that effort. Returns the hits (fewer than k: the pass came back
    short, or the band is answered exactly: exact must answer) and the query's band (None:
    nothing measured for this kind)."""
    if not bands:
        return execute.index(session, query, planned), None
    if bands[0].ef_search == EXACT:  # every band: the index cannot reach the target at all
        return [], bands[0]
    first = with_effort(planned, bands[0].ef_search)
    hits = execute.index(session, query, first)
    if len(hits) < query.k:
        return hits, None
    band = band_of(bands, hits[0].distance)
    if band.ef_search == EXACT:
        return [], band
    wider = with_effort(planned, band.ef_search)
    if wider.ef_search > first.ef_search:
        hits = execute.index(session, query, wider)
    return hits, band


def with_effort(settings: IndexSettings, ef_search: int | None) -> IndexSettings:
    """The settings with at least this candidate list (through the code index: this many
    candidates re-ranked); an iterative scan's budget grows with it, so the longer list is
    not cut short."""
    if ef_search is None or ef_search <= settings.ef_search:
        return settings
    ef_search = min(EF_SEARCH_LIMIT, ef_search)
    budget = settings.max_scan_tuples
    if budget is not None:
        budget = max(budget, SCAN_BUDGET_PER_EF_SEARCH * ef_search)
    return dataclasses.replace(settings, ef_search=ef_search, max_scan_tuples=budget)


def effort_label(ef_search: int | None) -> str:
    """A stored band's effort in words: "as planned", "exact", or the candidate list."""
    return "as planned" if ef_search is None else "exact" if ef_search == EXACT else str(ef_search)
