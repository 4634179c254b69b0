"""The least effort that meets a recall target, per kind of index search and distance band.

Bands split a kind's sampled queries by how far their nearest candidate lies (at the planned
effort): queries near the catalog, far, and in between, up to three bands, cut where the
nearest third of the sample does least work, then the middle one, then the farthest, while
each third keeps the target. A search places its query the same way, from
its first pass (effort.py), so the tuning runs those two steps too: for the least first-pass
effort e0 (of the ladder) at which the queries its first pass places in the nearest band
reach the target, each farther band then gets the least effort, at least e0, at which its
own queries do. Near queries so need not pay for far ones; a far query pays its first pass
and one longer pass (or the exact pass).

"Reach the target": the mean recall@k of the band's index answers, less STANDARD_ERRORS
standard errors (so that queries beyond the sample reach it too), is at least the target. Answers that came
back short do not count: the exact pass answers those. The ladder's last step is the exact
pass itself: a band that no candidate list brings to the target (queries far from every
product on a clustered catalog can be such) is answered exactly, and the report shows what
that costs.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from prodvec.recall.measure import LADDER, Measured, Pass
from prodvec.search.effort import EXACT

#: Fewest sampled queries a band is made for: fewer, and its mean says little.
MIN_BAND_QUERIES = 10
MAX_BANDS = 3
#: The sample's mean must clear the target by this many standard errors: with one, fresh far
#: queries fell below it now and then (tests/test_recall.py, 4,000 products, 15 per third).
STANDARD_ERRORS = 2.0


@dataclass(frozen=True)
class Figures:
    """What a group of index answers reached."""

    queries: int  # index answers (exact ones are not counted)
    exact: int  # answers the exact pass gave: the index came back short, or the band goes exact
    recall: float | None  # mean recall@k; None when no answer counted
    worst_decile: float | None  # mean recall of the worst tenth of them (at least one)
    p50_ms: float | None  # median time of the index passes
    ef_search: int | None  # median candidate list used (EXACT: mostly exact answers)


@dataclass(frozen=True)
class TunedBand:
    max_distance: float | None  # None: no bound
    ef_search: int | None  # the least candidate list (a LADDER step); None: as planned; EXACT
    figures: Figures


def figures(items: Sequence[Measured], answers: Sequence[Pass]) -> Figures:
    recalls = [r for item, answer in zip(items, answers, strict=True) if (r := item.recall(answer)) is not None]
    worst = sorted(recalls)[: max(1, len(recalls) // 10)]
    return Figures(
        queries=len(recalls),
        exact=len(answers) - len(recalls),
        recall=float(np.mean(recalls)) if recalls else None,
        worst_decile=float(np.mean(worst)) if recalls else None,
        p50_ms=float(np.median([a.seconds for a in answers])) * 1000 if answers else None,
        ef_search=int(np.median([a.ef_search for a in answers])) if answers else None,
    )


def meets(items: Sequence[Measured], answers: Sequence[Pass], target: float) -> bool:
    recalls = [r for item, answer in zip(items, answers, strict=True) if (r := item.recall(answer)) is not None]
    if not recalls:
        return True
    error = float(np.std(recalls)) / np.sqrt(len(recalls))
    return float(np.mean(recalls)) - STANDARD_ERRORS * error >= target


def cuts(items: Sequence[Measured]) -> Iterator[list[float]]:
    """Ways to cut the queries into up to MAX_BANDS bands by the distance of their nearest
    candidate at the planned effort (of those its pass found any for): at its deciles, each
    band holding at least MIN_BAND_QUERIES of them; one band first."""
    distances = np.sort([item.passes[None].first for item in items if item.passes[None].hits])
    yield []
    if len(distances) < 2 * MIN_BAND_QUERIES:
        return
    deciles = sorted({float(d) for d in np.quantile(distances, np.arange(1, 10) / 10)})

    def enough(low: float, high: float) -> bool:
        return int(np.sum((distances > low) & (distances <= high))) >= MIN_BAND_QUERIES

    for count in range(1, MAX_BANDS):
        for bounds in itertools.combinations(deciles, count):
            edges = [-np.inf, *bounds, np.inf]
            if all(enough(low, high) for low, high in itertools.pairwise(edges)):
                yield list(bounds)


def tune(items: Sequence[Measured], target: float, ladder: Sequence[int | None] = LADDER) -> list[TunedBand]:
    """One kind's bands, nearest first, with the least efforts that meet ``target`` on
    ``items`` (measured at every step of ``ladder``). Of the ways to cut them into bands
    (cuts()) that keep the target for the near, middle and far thirds of the sample alike,
    the one that asks least work (products compared) of the near third, then of the middle,
    then of the far one, then has fewest bands: near queries never pay for far ones. Where
    even the last step falls short, the band gets it and its recall says by how much."""
    thirds = _thirds(items)
    groups = _groups(items, thirds)
    best = tune_bands(items, target, ladder, thirds)
    best_cost = _cost(best, items, groups)
    for bounds in cuts(items):
        bands = tune_bands(items, target, ladder, bounds)
        answers = answers_at(items, bands)
        cost = _cost(bands, items, groups)
        if cost < best_cost and all(meets([items[i] for i in group], [answers[i] for i in group], target)
                                    for group in groups):
            best, best_cost = bands, cost
    return best


def _cost(bands: Sequence[TunedBand], items: Sequence[Measured], groups: Sequence[Sequence[int]]) -> tuple[float, ...]:
    answers = answers_at(items, bands)
    work = [float(np.mean([answers[i].work for i in group])) if group else 0.0 for group in groups]
    return (*work, len(bands))


def _thirds(items: Sequence[Measured]) -> list[float]:
    """Bounds that cut the queries into up to MAX_BANDS equal shares by their nearest
    candidate's distance at the planned effort (fewer where the sample is small)."""
    distances = sorted(item.passes[None].first for item in items if item.passes[None].hits)
    shares = max(1, min(MAX_BANDS, len(distances) // MIN_BAND_QUERIES))
    return sorted({float(np.quantile(distances, b / shares)) for b in range(1, shares)})


def _groups(items: Sequence[Measured], bounds: Sequence[float]) -> list[list[int]]:
    """Item positions per share; a query whose planned pass found nothing counts as far."""
    groups: list[list[int]] = [[] for _ in range(len(bounds) + 1)]
    for i, item in enumerate(items):
        distance = item.passes[None].first if item.passes[None].hits else np.inf
        groups[next((b for b, bound in enumerate(bounds) if distance <= bound), len(bounds))].append(i)
    return groups


def tune_bands(items: Sequence[Measured], target: float, ladder: Sequence[int | None],
               bounds: Sequence[float]) -> list[TunedBand]:
    """The least efforts that meet ``target``, for bands cut at ``bounds``."""

    def band_of(item: Measured, first_effort: int | None) -> int:
        distance = item.passes[first_effort].first
        return next((b for b, bound in enumerate(bounds) if distance <= bound), len(bounds))

    def placed(first_effort: int | None, band: int) -> list[Measured]:
        return [item for item in items if item.recall(item.passes[first_effort]) is not None
                and band_of(item, first_effort) == band]

    index_levels = [level for level in ladder if level != EXACT]
    reached = [level for level in index_levels
               if meets(near := placed(level, 0), [item.passes[level] for item in near], target)]
    if not reached and EXACT in ladder:  # not even the nearest queries: every search goes exact
        return [TunedBand(None, EXACT, figures(items, [item.passes[EXACT] for item in items]))]
    first = reached[0] if reached else index_levels[-1]
    chosen: list[int | None] = [first]
    for band in range(1, len(bounds) + 1):
        group = placed(first, band)
        steps = ladder[ladder.index(chosen[-1]):]
        chosen.append(next((e for e in steps if meets(group, [i.passes[e] for i in group], target)), ladder[-1]))
    tuned = []
    for band, level in enumerate(chosen):
        group = placed(first, band)
        # A band's answer: its first pass, and a longer one where the band asks for more.
        answers = [_answer(item, first, level) for item in group]
        bound = bounds[band] if band < len(bounds) else None
        tuned.append(TunedBand(bound, level, figures(group, answers)))
    return tuned


def answers_at(items: Sequence[Measured], bands: Sequence[TunedBand]) -> list[Pass]:
    """Each item's answer under these bands, as a search would get it (its passes' time summed)."""
    bounds = [band.max_distance for band in bands[:-1]]
    first = bands[0].ef_search
    result = []
    for item in items:
        distance = item.passes[first].first
        band = next((b for b, bound in enumerate(bounds) if bound is not None and distance <= bound), len(bounds))
        result.append(_answer(item, first, bands[band].ef_search))
    return result


def _answer(item: Measured, first: int | None, level: int | None) -> Pass:
    """What a search gets: its first pass, then (farther bands) a longer one or the exact
    pass; a pass that came back short is followed by the exact pass. Times and work add up."""
    if first == EXACT:  # every band goes exact: no index pass first
        return item.passes[EXACT]
    opening = item.passes[first]
    exact = item.passes[EXACT]
    if opening.hits < item.k:
        return dataclasses.replace(opening, seconds=opening.seconds + exact.seconds, work=opening.work + exact.work)
    if level == EXACT:
        return dataclasses.replace(exact, seconds=opening.seconds + exact.seconds, work=opening.work + exact.work)
    wider = item.passes[level]
    if wider.ef_search <= opening.ef_search:
        return opening
    return dataclasses.replace(wider, seconds=opening.seconds + wider.seconds, work=opening.work + wider.work)
