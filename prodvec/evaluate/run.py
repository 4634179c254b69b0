"""Evaluate search on the current database with labelled query photos (``prodvec eval``).

The queries file is a CSV with an ``image`` column (path relative to the CSV's folder, absolute
path, file:// or http(s):// URL) and a ``sku`` column (the product the photo shows → recall@k
and MRR), a ``category`` column (→ precision@k: the share of results in that category), or both.
Query photos are embedded in batches and searched as vectors, through the same search as
``Product.similar_to``, so the numbers are the ones users get (index and all).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from prodvec.encode import Encoder
from prodvec.errors import ConfigError, ImageError, QueryError
from prodvec.evaluate import metrics
from prodvec.images.decode import decode
from prodvec.images.load import load_bytes
from prodvec.images.views import ViewPolicy, embedding_model
from prodvec.models import Product
from prodvec.search import similar_to_many

#: Recall is always reported at these depths (and at k), so runs with different k compare.
RECALL_AT = (1, 5, 10)
#: Query photos loaded and embedded together: bounds memory, keeps the encoder's batches full.
BATCH = 64
#: Parallel fetches per batch (URLs wait on the network, not the CPU).
LOAD_THREADS = 8


@dataclass(frozen=True)
class LabelledQuery:
    line: int  # in the CSV, header = line 1
    image: str  # absolute path or URL
    sku: str | None
    category: str | None


@dataclass(frozen=True)
class Evaluation:
    model: str  # views.embedding_model: the encoder spec, and the catalog views when not the default
    robust: bool
    k: int
    n: int
    n_sku: int
    n_category: int
    scores: dict[str, float]  # "recall@1", "mrr", "precision@10", ...

    def as_dict(self) -> dict[str, object]:
        counts: dict[str, object] = {"n": self.n}
        # Per-label counts only when they differ from n: a file with both labels on every row needs none.
        if self.n_sku not in (0, self.n):
            counts["n_sku"] = self.n_sku
        if self.n_category not in (0, self.n):
            counts["n_category"] = self.n_category
        return {**counts, **{name: round(value, 4) for name, value in self.scores.items()},
                "k": self.k, "model": self.model, "robust": self.robust}


def read_queries(path: str | os.PathLike[str]) -> list[LabelledQuery]:
    """The labelled queries in a CSV file; ConfigError when its columns or rows are unusable."""
    path = Path(path)
    base = path.resolve().parent
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            columns = set(reader.fieldnames or ())
            if "image" not in columns or not columns & {"sku", "category"}:
                raise ConfigError(
                    f"{path}: a queries file needs an 'image' column and a 'sku' and/or 'category' "
                    f"column; it has {', '.join(sorted(columns)) or 'none'}"
                )
            queries = [_query(row, reader.line_num, base, path) for row in reader]
    except OSError as exc:
        raise ConfigError(f"cannot read queries file {path}: {exc.strerror or exc}") from None
    if not queries:
        raise ConfigError(f"{path}: no queries in it")
    return queries


def evaluate(
    session: Session, queries: Sequence[LabelledQuery], *, k: int = 10, robust: bool, encoder: Encoder,
    policy: ViewPolicy,
) -> Evaluation:
    """Search the database with every query photo, as Product.similar_to does with this
    ``encoder`` and the catalog's view ``policy``, and score the results."""
    if k < 1:
        raise QueryError(f"k must be at least 1, not {k}")
    model = embedding_model(encoder.spec, policy)
    _check_catalog(session, queries, model)
    depth = max(k, *RECALL_AT)
    ranked: list[list[tuple[str, str]]] = []
    for images in _loaded(queries, encoder.input_size):
        for result in similar_to_many(session, images, k=depth, robust=robust, encoder=encoder, policy=policy):
            ranked.append([(hit.product.sku, hit.product.category) for hit in result])
        session.expunge_all()  # the hits' Product objects are not needed again: keep memory flat
    return _score(queries, ranked, model=model, k=k, robust=robust)


def _query(row: dict[str, str | None], line: int, base: Path, path: Path) -> LabelledQuery:
    image = (row.get("image") or "").strip()
    sku = (row.get("sku") or "").strip() or None
    category = (row.get("category") or "").strip() or None
    if not image:
        raise ConfigError(f"{path}:{line}: empty image")
    if sku is None and category is None:
        raise ConfigError(f"{path}:{line}: neither a sku nor a category to score the results against")
    if "://" not in image:
        image = os.path.normpath(base / image)
    return LabelledQuery(line, image, sku, category)


def _check_catalog(session: Session, queries: Sequence[LabelledQuery], model: str) -> None:
    """Refuse to produce numbers that would mean nothing: another model's vectors, unknown skus."""
    models = set(session.scalars(
        select(Product.embedding_model).where(Product.embedding.is_not(None)).distinct()
    ))
    if not models:
        raise QueryError("no product has an embedding yet: import a catalog and run `prodvec worker --once`")
    if models != {model}:
        raise QueryError(
            f"the products were embedded with {', '.join(sorted(map(str, models)))} but PRODVEC_MODEL and "
            f"PRODVEC_CATALOG_VIEWS give {model}: evaluate with the settings that made the embeddings (or re-embed)"
        )
    wanted = {q.sku for q in queries if q.sku is not None}
    found = set(session.scalars(select(Product.sku).where(Product.sku.in_(wanted), Product.embedding.is_not(None))))
    missing = sorted(wanted - found)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise QueryError(f"query skus not in the catalog or not embedded yet: {shown}")


def _loaded(queries: Sequence[LabelledQuery], size: int) -> Iterator[list[Image.Image]]:
    """Query photos in batches, in order: search sends each batch through the encoder at once."""
    with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="prodvec-eval-load") as pool:
        for start in range(0, len(queries), BATCH):
            yield list(pool.map(lambda query: _load(query, size), queries[start : start + BATCH]))


def _load(query: LabelledQuery, size: int) -> Image.Image:
    try:
        return decode(load_bytes(query.image), target_size=size)
    except ImageError as exc:
        raise QueryError(f"query on line {query.line} ({query.image}): {exc.reason}") from None


def _score(
    queries: Sequence[LabelledQuery], ranked: Sequence[Sequence[tuple[str, str]]], *,
    model: str, k: int, robust: bool,
) -> Evaluation:
    scores: dict[str, float] = {}
    ranks = [metrics.rank_of(q.sku, [sku for sku, _ in hits]) for q, hits in zip(queries, ranked, strict=True)
             if q.sku]
    if ranks:
        for at in sorted({*RECALL_AT, k}):
            scores[f"recall@{at}"] = metrics.recall_at(ranks, at)
        scores["mrr"] = metrics.mean_reciprocal_rank(ranks)
    relevant = [[category == q.category for _, category in hits] for q, hits in zip(queries, ranked, strict=True)
                if q.category]
    if relevant:
        scores[f"precision@{k}"] = metrics.precision_at(relevant, k)
    return Evaluation(
        model=model, robust=robust, k=k, n=len(queries),
        n_sku=len(ranks), n_category=len(relevant), scores=scores,
    )
