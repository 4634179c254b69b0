"""The sample `prodvec recall` measures: queries of every kind, under the filters of every
kind of index search.

Queries: products' own vectors ("more like this", the product itself excluded); queries far
from the catalog, as a text query or a photo of something the shop does not sell would be:
a product's vector turned away from it (cosine 0.1–0.6 to it) or the mix of two products of
one category; and any the caller brings (vectors an application recorded, encoded texts).
Filters: none; a price range that keeps half the catalog (an iterative scan); one category
(its own index, where it has one); one category under its median price (a quick look, or
the category's index). Own queries are filtered to their own category, the others to the
category of another sampled product.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from prodvec.errors import QueryError
from prodvec.models import Product
from prodvec.search import execute
from prodvec.search.plan import TableFacts
from prodvec.sql import queries

#: The filters sampled; "category" only where categories have their own index.
CASES = ("unfiltered", "price_half", "category", "category_price")
#: Where a query comes from: own vectors, turned away, mixed, or given by the caller.
SOURCES = ("own", "turned", "mixed", "given")
#: Cosine of a turned query to the product it was made from: from a distant look-alike to
#: barely related (the issue's CLIP text queries sit at ~0.13 to their products).
TURNED_COSINE = (0.1, 0.6)


@dataclass(frozen=True)
class Probe:
    case: str  # one of CASES
    source: str  # one of SOURCES
    vector: np.ndarray
    exclude_id: int | None
    where: tuple[ColumnElement[bool], ...]


def draw(
    session: Session, facts: TableFacts, *, per_case: int, seed: int, given: Sequence[np.ndarray] = ()
) -> list[Probe]:
    """``per_case`` queries for each filter, sources in equal shares, in a random order."""
    if per_case < 1:
        raise QueryError(f"the sample needs at least one query per case, not {per_case}")
    rng = np.random.default_rng(seed)
    recall_sql = queries("recall.sql")
    execute.fetch(session, recall_sql["set_seed"], {"seed": (seed % 1000) / 1000})
    rows = execute.fetch(session, recall_sql["sample_products"], {"limit": 2 * per_case})
    if len(rows) < 2:
        raise QueryError("measuring recall needs at least two embedded products: import and embed the catalog first")
    ids = [row[0] for row in rows]
    vectors = _unit(np.array([np.asarray(row[1].to_numpy(), dtype=np.float32) for row in rows]))
    categories = [row[2] for row in rows]
    ((quartiles,),) = execute.fetch(session, recall_sql["price_quantiles"], {"category": None})
    medians: dict[str, Decimal] = {}

    def median_price(category: str) -> Decimal:
        if category not in medians:
            ((category_quartiles,),) = execute.fetch(session, recall_sql["price_quantiles"], {"category": category})
            medians[category] = _price(category_quartiles[1])
        return medians[category]

    indexed = sorted(facts.category_indexes)
    filters: dict[str, Any] = {
        "unfiltered": lambda category: (),
        "price_half": lambda category: (Product.price >= _price(quartiles[0]), Product.price <= _price(quartiles[2])),
        "category": lambda category: (Product.category == category,),
        "category_price": lambda category: (Product.category == category, Product.price <= median_price(category)),
    }
    sources = ("own", "turned", "mixed", "given") if len(given) else ("own", "turned", "mixed")
    probes = []
    for case in CASES:
        if case == "category" and not indexed:
            continue
        for i in range(per_case):
            source = sources[i % len(sources)]
            row = int(rng.integers(len(ids)))
            vector, exclude_id = _query(source, row, vectors, ids, categories, given, i, rng)
            # Own queries search their own category; the others one the catalog draws.
            category = categories[row] if source == "own" else categories[int(rng.integers(len(ids)))]
            if case == "category" and category not in facts.category_indexes:
                category = indexed[int(rng.integers(len(indexed)))]
            probes.append(Probe(case, source, vector, exclude_id, filters[case](category)))
    order = rng.permutation(len(probes))  # cases interleaved: a time bound cuts all of them alike
    return [probes[i] for i in order]


def _query(
    source: str, row: int, vectors: np.ndarray, ids: list[int], categories: list[str], given: Sequence[np.ndarray],
    i: int, rng: np.random.Generator,
) -> tuple[np.ndarray, int | None]:
    if source == "own":
        return vectors[row], ids[row]
    if source == "turned":
        away = np.asarray(rng.standard_normal(vectors.shape[1]), dtype=np.float32)
        away -= (away @ vectors[row]) * vectors[row]  # orthogonal to the product
        cosine = rng.uniform(*TURNED_COSINE)
        return _unit(cosine * vectors[row] + np.sqrt(1 - cosine**2) * _unit(away)), None
    if source == "mixed":
        # Between two products of one category (something the shop does not sell, like two it
        # does). Products of unrelated categories mixed make a query whose neighbours split
        # between two regions of the graph: no ef_search up to 1000 finds both (recall ~0.8 at
        # 100k, benchmarks/recall.py), so it would send far queries of every kind to the exact pass.
        same = [other for other in range(len(vectors)) if categories[other] == categories[row] and other != row]
        other = same[int(rng.integers(len(same)))] if same else int(rng.integers(len(vectors)))
        mixed = vectors[row] + vectors[other]
        return (_unit(mixed) if np.linalg.norm(mixed) > 1e-3 else vectors[row]), None
    return _unit(np.asarray(given[i // len(SOURCES) % len(given)], dtype=np.float32)), None


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True), dtype=np.float32)


def _price(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")
