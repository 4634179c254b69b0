"""Retrieval metrics from ranked result lists: pure functions, checkable by hand.

A query's *rank* is the 1-based position of the product it shows in its result list, or None
when that product is not in the list (lists hold the top ``depth`` results, so MRR here is
MRR@depth: a miss counts 0).
"""
from __future__ import annotations

from collections.abc import Sequence


def rank_of(target: str, ranked: Sequence[str]) -> int | None:
    """1-based position of ``target`` in ``ranked``; None when it is not there."""
    for position, sku in enumerate(ranked, start=1):
        if sku == target:
            return position
    return None


def recall_at(ranks: Sequence[int | None], k: int) -> float:
    """Share of queries whose product is among the first k results (one relevant product each)."""
    _check(ranks, k)
    return sum(1 for rank in ranks if rank is not None and rank <= k) / len(ranks)


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    _check(ranks, 1)
    return sum(1 / rank for rank in ranks if rank is not None) / len(ranks)


def precision_at(relevant: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over queries of the share of the first k results that are relevant (same category).

    A list shorter than k (a catalog with fewer than k products) is judged on what it holds,
    so a 5-product catalog can still score 1.0.
    """
    _check(relevant, k)
    shares = [sum(flags[:k]) / min(k, len(flags)) if flags else 0.0 for flags in relevant]
    return sum(shares) / len(shares)


def _check(values: Sequence[object], k: int) -> None:
    if not values:
        raise ValueError("no queries to score")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
