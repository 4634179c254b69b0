"""Recall@k of the index's answers against the exact pass, per sampled query.

Each probe is planned as a search is (plan.index_plan: which kind of index search, with
which settings), answered exactly (the truth: its k-th distance), then through the index,
either as searches run now (the stored effort, `current`) or at each effort of a ladder
(`ladder`, for tuning). A hit counts when it lies within the true k-th distance (halfvec
distances tie within TIE): any of several tied products is right.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from prodvec.recall.sample import Probe
from prodvec.search import effort, execute, plan
from prodvec.search.effort import EXACT, Band, Kind
from prodvec.search.execute import IndexSettings, Query
from prodvec.search.result import Hit
from prodvec.search.statements import compile_filter

#: Distances of different rows tie within this (halfvec).
TIE = 1e-4
#: Efforts tried when tuning: the least candidate list (hnsw.ef_search) a pass gets; None:
#: as the planner sizes it. Steps of ~1.6x, up to pgvector's limit; then the exact pass.
LADDER: tuple[int | None, ...] = (None, 40, 64, 100, 160, 250, 400, 640, 1000, EXACT)


@dataclass(frozen=True)
class Pass:
    ef_search: int
    hits: int  # how many came back: fewer than k, and the exact pass answers instead
    correct: int  # of them, within the true k-th distance
    first: float  # the nearest hit's distance (2.0 when none came back)
    seconds: float
    #: Products compared: the candidate list of each index pass, every match for an exact one.
    work: float


@dataclass
class Measured:
    """One sampled query: its kind of search, its truth and its index passes."""

    probe: Probe
    kind: Kind
    planned: IndexSettings
    k: int
    kth: float  # the true k-th distance
    exact_seconds: float  # the exact pass's time: what a query answered exactly pays
    matches: float  # products the filter keeps (as estimated): what an exact pass compares
    passes: dict[int | None, Pass] = field(default_factory=dict)  # by effort (LADDER)
    #: As searches run now (stored bands): the band it fell in, its answer and time.
    band: int | None = None
    answer: Pass | None = None

    def recall(self, answer: Pass) -> float | None:
        """Recall@k of an index answer; None for exact answers (it came back short, or its
        band is answered exactly)."""
        return answer.correct / self.k if answer.hits >= self.k and answer.ef_search != EXACT else None


def run(
    session: Session,
    probes: Iterable[Probe],
    *,
    k: int,
    deadline: float,
    efforts: Sequence[int | None] | None = None,
    bands: dict[str, tuple[Band, ...]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Measured]:
    """Measure each probe until ``deadline`` (time.monotonic()): at each of ``efforts`` (tuning),
    else as searches run with ``bands`` (the stored ones). Probes whose filter keeps fewer
    than k products are left out: exact answers them whatever the effort."""
    facts = plan.table_facts(session)
    dialect = session.get_bind().dialect
    measured: list[Measured] = []
    for probe in probes:
        if time.monotonic() >= deadline:
            break
        query = Query(probe.vector, compile_filter(probe.where, dialect), k, probe.exclude_id)
        # What an exact pass compares: the filter's matches, or the whole catalog.
        matches = float(plan.estimated_matches(session, query, facts)) if not query.filter.empty \
            else (facts.indexed_rows or 0.0)
        kind, planned = plan.index_plan(query, facts, matches)
        started = time.perf_counter()
        truth = execute.exact(session, query)
        exact_seconds = time.perf_counter() - started
        if len(truth) < k:
            continue
        item = Measured(probe, kind, planned, k, truth[-1].distance, exact_seconds, matches)
        item.passes[EXACT] = Pass(EXACT, k, k, truth[0].distance, exact_seconds, matches)
        if efforts is not None:
            _ladder(session, query, item, efforts)
        else:
            _current(session, query, item, (bands or {}).get(kind, ()))
        measured.append(item)
        session.rollback()  # hits are loaded as products: keep the session small
        session.expunge_all()
        if progress:
            progress(len(measured))
    return measured


def _ladder(session: Session, query: Query, item: Measured, efforts: Sequence[int | None]) -> None:
    by_ef: dict[int, Pass] = {}  # efforts the planner's own candidate list already exceeds are one pass
    for level in efforts:
        if level == EXACT:  # run already: the truth
            continue
        settings = effort.with_effort(item.planned, level)
        if settings.ef_search not in by_ef:
            by_ef[settings.ef_search] = _timed(session, query, settings, item.kth)
        item.passes[level] = by_ef[settings.ef_search]


def _current(session: Session, query: Query, item: Measured, bands: tuple[Band, ...]) -> None:
    started = time.perf_counter()
    hits, band = effort.index_answer(session, query, item.planned, bands)
    seconds = time.perf_counter() - started
    item.band = bands.index(band) if band else None
    if band is not None and band.ef_search == EXACT:
        item.answer = Pass(EXACT, item.k, item.k, item.passes[EXACT].first, seconds + item.exact_seconds,
                           item.matches)
        return
    used = effort.with_effort(item.planned, band.ef_search if band else None)
    # Short: the exact pass answers, and the search pays for it too.
    short = len(hits) < item.k
    answer = _pass(hits, used.ef_search, item.kth, seconds + (item.exact_seconds if short else 0.0))
    item.answer = dataclasses.replace(answer, work=answer.work + (item.matches if short else 0.0))


def _timed(session: Session, query: Query, settings: IndexSettings, kth: float) -> Pass:
    started = time.perf_counter()
    hits = execute.index(session, query, settings)
    return _pass(hits, settings.ef_search, kth, time.perf_counter() - started)


def _pass(hits: list[Hit], ef_search: int, kth: float, seconds: float) -> Pass:
    correct = sum(hit.distance <= kth + TIE for hit in hits)
    return Pass(ef_search, len(hits), correct, hits[0].distance if hits else 2.0, seconds, ef_search)
