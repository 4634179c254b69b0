"""Fashion-MNIST as benchmarks/quantized.py's real-photo catalogs, in filtered_search.py's shapes.

- pixels(): the 60,000 training photos as 784-d raw-pixel vectors (no model runs).
- features(): the offline encoder's vectors of the 70,000 photos (fashion_features.py, cached):
  the catalog is every photo but a held-out few hundred test photos, which make the queries.
  Image features of a CNN come out of a ReLU: every component >= 0, so their raw signs say
  almost nothing (the case the code index's centring is for).

Categories are the ten Fashion-MNIST classes (about 7,000 photos each); prices and stock are
drawn at random. Unfiltered queries: "near" a held-out test photo, "far" the same photo
white-on-black as published, a look no catalog photo has. Filtered cases: the four
selectivities of filtered_search.py, built from the classes and prices, with a held-out photo
of a class the filter keeps ("near") or of another class ("far").
"""
from __future__ import annotations

import fashion_features
import fashion_mnist
import numpy as np
from filtered_search import SELECTIVITIES, Case, Catalog, Filter

CLASSES = len(fashion_mnist.CATEGORIES)
Queries = list[tuple[str, np.ndarray]]


def pixels(per_kind: int, seed: int) -> tuple[Catalog, Queries]:
    """Training photos as unit raw-pixel vectors. Queries: test photos ("near"), and test photos
    inverted to dark-on-white ("far": a look unlike every catalog photo's)."""
    images, labels = fashion_mnist.load("train")
    vectors = images.reshape(len(images), -1).astype(np.float32)
    catalog = _catalog(vectors, labels, seed)
    test, _ = fashion_mnist.load("t10k")
    picked = np.random.default_rng(seed).choice(len(test), per_kind, replace=False)
    near = [image.reshape(-1).astype(np.float32) for image in test[picked]]
    far = [(255 - image).reshape(-1).astype(np.float32) for image in test[picked]]
    return catalog, [("near", v) for v in near] + [("far", v) for v in far]


def features(per_kind: int, per_cell: int, seed: int) -> tuple[Catalog, Queries, list[Case]]:
    """The encoder's features: catalog, unfiltered queries and filtered cases (``per_cell`` per
    selectivity and placement). The first held-out test photos make the unfiltered queries,
    the next ones the filtered cases; none of them is in the catalog."""
    held = per_kind + 2 * len(SELECTIVITIES) * per_cell * CLASSES  # enough of every class for the cases
    train, test = fashion_features.features("train"), fashion_features.features("t10k")
    _, train_labels = fashion_mnist.load("train")
    _, test_labels = fashion_mnist.load("t10k")
    held = min(held, len(test) // 2)
    catalog = _catalog(np.concatenate([train, test[held:]]), np.concatenate([train_labels, test_labels[held:]]), seed)
    inverted = fashion_features.features("t10k", slice(0, per_kind), inverted=True)
    queries = [("near", v) for v in test[:per_kind]] + [("far", v) for v in inverted]
    pool = {label: [int(i) for i in np.flatnonzero(test_labels[per_kind:held] == label) + per_kind]
            for label in range(CLASSES)}
    return catalog, queries, _cases(catalog, test, pool, per_cell, seed)


def _catalog(vectors: np.ndarray, labels: np.ndarray, seed: int) -> Catalog:
    rng = np.random.default_rng(seed)
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    classes = labels.astype(int)
    return Catalog(unit, classes, classes, np.round(rng.uniform(5, 200, len(labels)), 2),
                   rng.random(len(labels)) < 0.5, generator=lambda cluster, n: np.empty((0,)))


def _cases(catalog: Catalog, test: np.ndarray, pool: dict[int, list[int]], per_cell: int, seed: int) -> list[Case]:
    """filtered_search.py's selectivities from ten classes of ~10% each: half the classes; one
    class at or below its price median (5%), its 10th percentile (1%), or its 4th and in stock
    (0.2%). Each held-out photo is used once."""
    rng = np.random.default_rng(seed + 1)
    cases = []
    for selectivity in SELECTIVITIES:
        for placement in ("near", "far"):
            for _ in range(per_cell):
                wanted = _filter(selectivity, catalog, rng)
                kept = set(wanted.categories)
                labels = [c for c in range(CLASSES) if (c in kept) == (placement == "near") and pool[c]]
                photo = pool[int(rng.choice(labels))].pop()
                cases.append(Case(selectivity, placement, test[photo], wanted))
    return cases


def _filter(selectivity: str, catalog: Catalog, rng: np.random.Generator) -> Filter:
    if selectivity == "50%":
        return Filter(tuple(int(c) for c in rng.choice(CLASSES, CLASSES // 2, replace=False)))
    category = int(rng.integers(CLASSES))
    prices = catalog.price[catalog.category == category]
    share = {"5%": 0.5, "1%": 0.1, "0.2%": 0.04}[selectivity]
    return Filter((category,), max_price=round(float(np.quantile(prices, share)), 2), in_stock=selectivity == "0.2%")
