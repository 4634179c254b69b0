"""`prodvec recall`'s two jobs on a session: measure the recall searches reach now, or tune
the effort to a target; each stores its figures (store.py) and returns a report (plain data,
JSON-ready): per kind of index search, its figures overall, per distance band and per source
of query, and the settings a plain SQL user would need for the same recall.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from prodvec.recall import measure, store, tune
from prodvec.recall.measure import Measured, Pass
from prodvec.recall.sample import SOURCES, draw
from prodvec.search import execute, plan
from prodvec.search.effort import EXACT, KINDS
from prodvec.sql import queries

DEFAULT_TARGET = 0.95


@dataclass(frozen=True)
class Options:
    per_case: int = 60  # sampled queries per filter (see sample.CASES)
    seconds: float = 300.0  # time bound: measuring stops after it, with what it has
    k: int = 10
    seed: int = 0
    given: Sequence[np.ndarray] = ()  # query vectors the application recorded (or encoded texts)
    #: Tuning may answer a band exactly when no hnsw.ef_search reaches the target; False: the
    #: index always answers, at most at ef_search 1000, below the target where it must.
    exact_fallback: bool = True


def measure_recall(session: Session, options: Options, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Recall@k of index searches as they run now (the stored effort), stored per band."""
    started = time.monotonic()
    facts = plan.table_facts(session)
    probes = draw(session, facts, per_case=options.per_case, seed=options.seed, given=options.given)
    items = measure.run(session, probes, k=options.k, deadline=started + options.seconds,
                        bands=facts.recall_bands, progress=progress)
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        group = [item for item in items if item.kind == kind]
        if not group:
            continue
        answers = [_answer(item) for item in group]
        banded: dict[int, tune.Figures] = {}
        for band in sorted({item.band if item.band is not None else 0 for item in group}):
            members = [item for item in group if (item.band or 0) == band and item.recall(_answer(item)) is not None]
            banded[band] = tune.figures(members, [_answer(item) for item in members])
        store.save_measured(session, kind, banded, products=facts.indexed_rows or 0)
        kinds[kind] = {
            **asdict(tune.figures(group, answers)),
            "by_source": _by_source(group, answers),
            "bands": [{"band": band, **asdict(figures)} for band, figures in banded.items()],
        }
    return _report(items, probes, started, kinds)


def tune_recall(session: Session, options: Options, target: float = DEFAULT_TARGET,
                progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The least effort per kind and distance band that meets ``target`` on the sample, stored."""
    started = time.monotonic()
    facts = plan.table_facts(session)
    probes = draw(session, facts, per_case=options.per_case, seed=options.seed, given=options.given)
    items = measure.run(session, probes, k=options.k, deadline=started + options.seconds,
                        efforts=measure.LADDER if options.exact_fallback else measure.LADDER[:-1],
                        progress=progress)
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        group = [item for item in items if item.kind == kind]
        if not group:
            continue
        bands = tune.tune(group, target, measure.LADDER if options.exact_fallback else measure.LADDER[:-1])
        store.save_tuned(session, kind, bands, target=target, products=facts.indexed_rows or 0)
        before = [item.passes[None] for item in group]
        after = tune.answers_at(group, bands)
        reached = tune.figures(group, after)
        kinds[kind] = {
            "before": asdict(tune.figures(group, before)),
            "after": asdict(reached),
            "meets_target": all(b.figures.recall is None or b.figures.recall >= target for b in bands),
            "by_source": {"before": _by_source(group, before), "after": _by_source(group, after)},
            "bands": [{"band": number, "max_distance": band.max_distance, "min_ef_search": band.ef_search,
                       **asdict(band.figures)} for number, band in enumerate(bands)],
            "sql_ef_search": _sql_ef_search(bands, after),
            # Nothing to advise where the index answered none of the sample (every pass came back short).
            "sql": _sql_settings(kind, _sql_ef_search(bands, after)) if reached.queries else None,
        }
    return {"target": target, **_report(items, probes, started, kinds)}


def database_default(session: Session, report: dict[str, Any]) -> str | None:
    """Set the tuned unfiltered figure as this database's hnsw.ef_search for new sessions, so
    plain SQL gets the recall too; returns the statement (None: no unfiltered figure).
    prodvec's own searches are not affected: each sets its own effort for its pass."""
    unfiltered = report["kinds"].get("unfiltered")
    if not unfiltered or unfiltered["sql_ef_search"] is None:
        return None
    ((statement,),) = execute.fetch(session, queries("recall.sql")["database_default_statement"],
                                    {"ef_search": unfiltered["sql_ef_search"]})
    execute.run(session, statement, {})
    session.commit()
    return str(statement)


def embedded_products(session: Session) -> float:
    """Products with an embedding, as the planner's statistics have them (cheap at any size)."""
    ((products,),) = execute.fetch(session, queries("recall.sql")["embedded_products"], {})
    return float(products or 0)


def _answer(item: Measured) -> Pass:
    assert item.answer is not None  # measure.run(bands=...) sets it
    return item.answer


def _by_source(items: Sequence[Measured], answers: Sequence[Pass]) -> dict[str, float]:
    result = {}
    for source in SOURCES:
        recalls = [r for item, answer in zip(items, answers, strict=True)
                   if item.probe.source == source and (r := item.recall(answer)) is not None]
        if recalls:
            result[source] = round(float(np.mean(recalls)), 4)
    return result


def _sql_ef_search(bands: Sequence[tune.TunedBand], answers: Sequence[Pass]) -> int | None:
    """The one candidate list plain SQL needs for every query to reach the target: the
    farthest band's; None where that band goes exact (no candidate list reaches it)."""
    if any(band.ef_search == EXACT for band in bands):
        return None
    return max((answer.ef_search for answer in answers), default=None)


def _sql_settings(kind: str, ef_search: int | None) -> str:
    """What plain pgvector SQL needs for this kind's recall: one effort for every query, the
    farthest band's (SQL cannot look at its first candidates and go again)."""
    if ef_search is None:
        return ("no hnsw.ef_search reaches the target for the farthest queries: order by the distance "
                "plus 0 (ORDER BY embedding <=> q + 0), which the index cannot serve, for an exact answer")
    iterative = "SET hnsw.iterative_scan = relaxed_order; " if kind in ("scan", "codes_filtered") else ""
    if kind.startswith("codes_"):  # the two-stage query of docs/scaling.md
        return f"{iterative}SET hnsw.ef_search = {ef_search}; and LIMIT {ef_search} candidates in the two-stage query"
    return f"{iterative}SET hnsw.ef_search = {ef_search};"


def _report(items: Sequence[Measured], probes: Sequence[Any], started: float, kinds: dict[str, Any]) -> dict[str, Any]:
    return {
        "queries": len(items),
        "sampled": len(probes),  # more than measured: the time bound cut the rest, or few matches
        "seconds": round(time.monotonic() - started, 1),
        "kinds": kinds,
    }
