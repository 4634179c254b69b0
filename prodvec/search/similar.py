"""Filtered similarity search that is always complete: Product.similar_to and friends.

Each query is planned on its own (plan.py): exact over the few rows a selective filter keeps,
one quick look through the HNSW index for a few thousand, its iterative scan for broad
filters. When the index pass returns fewer than k hits (a query far from its matches, a
filter it could not get past in its budget, or fewer matches than the estimate), the exact
pass answers instead, so the result always holds min(k, matching products) hits.
With max_distance that is every match within it, up to k, as far as the search got: an exact
pass compares all matches; an index pass that found k matches walked past the distance.

An index pass runs at the effort `prodvec recall --tune` stored for its kind of search and
the query's distance from the catalog (effort.py), and its answer carries the recall@10
measured there (SearchResult.recall; None before any measurement).

The index settings are SET LOCAL inside a savepoint of the session's transaction that is
rolled back after the query, which puts the caller's own settings back (execute.py).

Image queries are searched as each of their views (robust queries: turned, coarse) against
each vector column the catalog's view policy stores (PRODVEC_CATALOG_VIEWS=multi: embedding
and embedding_coarse), every pair completely, and fused exactly (views.merge_views).

Image and text queries are encoded by the catalog's active model, under its catalog views. A
search first pins the active model for its transaction (migrations/0009: a model switch waits
for it), so the query vectors and products.embedding come from one model even while a model is
activated; vectors an explicitly passed encoder made for another model raise ModelChanged
(the service then loads the active model and searches again). A hit whose vector another model
made (products.embedding_model, e.g. written by hand) would be at a meaningless distance, so
such a result raises QueryError instead.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import psycopg
from sqlalchemy import ColumnElement
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy.orm import Session

from prodvec.config import CatalogViews, catalog_policy
from prodvec.errors import ModelChanged, QueryError, SchemaMismatch
from prodvec.images.views import embedding_model, merge_views
from prodvec.search import effort, execute, plan
from prodvec.search.query import QueryInput, QueryVector, Text, resolve
from prodvec.search.result import Hit, SearchResult, Strategy
from prodvec.search.statements import VECTOR_COLUMNS, Filter, compile_filter
from prodvec.sql import queries

if TYPE_CHECKING:  # torch loads only when a query needs the encoder
    from prodvec.encode import Encoder
    from prodvec.images.views import ViewPolicy


def similar_to(
    session: Session,
    query: QueryInput,
    *,
    k: int = 10,
    where: Sequence[ColumnElement[bool]] = (),
    max_distance: float | None = None,
    robust: bool | None = None,
    encoder: Encoder | None = None,
    policy: ViewPolicy | None = None,
) -> SearchResult:
    """The k products nearest to ``query`` that satisfy every ``where`` clause, nearest first.

    ``query``: a PIL image, a path or URL, image bytes, a vector, a ``Product`` or ``Sku`` (more
    like this, itself excluded) or a ``Text``. ``max_distance``: cosine distance cut-off (0..2).
    Image and text queries go through ``encoder`` (default: PRODVEC_MODEL's, on PRODVEC_DEVICE),
    which must be the one that embedded the catalog, under its view ``policy`` (default:
    PRODVEC_CATALOG_VIEWS's). ``robust``: search an image query as several views too (turned,
    coarse) and keep each product's best; default PRODVEC_ROBUST_QUERIES (on). Settings are read
    only for what is left None and the query needs.
    """
    return similar_to_many(
        session, [query], k=k, where=where, max_distance=max_distance, robust=robust, encoder=encoder, policy=policy
    )[0]


def similar_to_text(
    session: Session,
    text: str,
    *,
    k: int = 10,
    where: Sequence[ColumnElement[bool]] = (),
    max_distance: float | None = None,
    encoder: Encoder | None = None,
    policy: ViewPolicy | None = None,
) -> SearchResult:
    """The k products whose photos best match ``text``; QueryError for image-only models.
    ``encoder``, ``policy``: as for similar_to."""
    return similar_to(session, Text(text), k=k, where=where, max_distance=max_distance, encoder=encoder, policy=policy)


def similar_to_many(
    session: Session,
    queries: Sequence[QueryInput],
    *,
    k: int = 10,
    where: Sequence[ColumnElement[bool]] = (),
    max_distance: float | None = None,
    robust: bool | None = None,
    encoder: Encoder | None = None,
    policy: ViewPolicy | None = None,
) -> list[SearchResult]:
    """One result per query, in order; query images (and texts) go through the encoder as one
    batch. Options as for similar_to."""
    _check_options(k, max_distance)
    pinned = _pin_active_model(session)
    vectors = resolve(session, queries, robust=robust, encoder=encoder, policy=policy)
    if pinned is not None:
        _check_active_model(vectors, pinned)
    facts = plan.table_facts(session, pinned.id if pinned else None)
    compiled = compile_filter(where, session.get_bind().dialect)
    results = []
    for vector in vectors:
        result = _search(session, vector, facts, k=k, where=compiled, max_distance=max_distance)
        _check_model(vector, result)
        results.append(dataclasses.replace(result, model=pinned.embedding_model) if pinned else result)
    return results


def _search(
    session: Session,
    vector: QueryVector,
    facts: plan.TableFacts,
    *,
    k: int,
    where: Filter,
    max_distance: float | None,
) -> SearchResult:
    search = functools.partial(_search_vector, session, exclude_id=vector.exclude_id, facts=facts, k=k, where=where)
    policy = vector.policy  # None: vector, text and stored queries, searched against embedding only
    views = (vector.vector, *vector.extra_views)
    columns = VECTOR_COLUMNS[: len(policy.catalog_view_names)] if policy else VECTOR_COLUMNS[:1]
    if policy is None or len(views) * len(columns) == 1:
        return search(vector.vector, columns[0], max_distance=max_distance)
    # Each (query view, catalog view) pair's complete top k, query-view-major, fused: a product in
    # the fused top k is in the top k of the pair that gives its best distance, so the fused
    # answer is complete too.
    results = [search(view, column, max_distance=None) for view in views for column in columns]
    penalties = policy.penalties(len(views), len(columns)).ravel()
    products = {hit.product.id: hit.product for result in results for hit in result}
    fused = merge_views([[(hit.product.id, hit.distance) for hit in result] for result in results], k,
                        penalties.tolist())
    hits = tuple(Hit(products[key], distance) for key, distance in fused
                 if max_distance is None or distance <= max_distance)
    # The fused answer is as good as its weakest index answer.
    recalls = [r.recall for r in results if r.recall is not None]
    return SearchResult(hits, all(r.exact for r in results), results[0].strategy, results[0].candidates,
                        min(recalls) if recalls else None)


def _search_vector(
    session: Session,
    vector: np.ndarray,
    vector_column: str,
    *,
    exclude_id: int | None,
    facts: plan.TableFacts,
    k: int,
    where: Filter,
    max_distance: float | None,
) -> SearchResult:
    if facts.dimensions is not None and len(vector) != facts.dimensions:
        raise QueryError(
            f"the query vector has {len(vector)} dimensions but products.embedding has "
            f"{facts.dimensions}: query with the model that made the embeddings"
        )
    query = execute.Query(vector, where, k, exclude_id, vector_column)
    chosen = plan.choose(session, query, facts)
    if chosen.exact_cap is not None:
        hits = execute.exact_capped(session, query, chosen.exact_cap)
        if hits is not None:
            return _result(hits, "exact", chosen, max_distance)
    # At the effort `prodvec recall --tune` found for this kind of search and the query's distance.
    hits, band = effort.index_answer(session, query, chosen.index, facts.recall_bands.get(chosen.kind, ()))
    if len(hits) == k:
        return _result(hits, "hnsw", chosen, max_distance, recall=band.recall if band else None)
    # Short: the scan spent its budget, or the filter keeps fewer than k. Only exact can tell.
    return _result(execute.exact(session, query), "hnsw+exact", chosen, max_distance)


def _result(hits: list[Hit], strategy: Strategy, chosen: plan.Plan, max_distance: float | None,
            recall: float | None = None) -> SearchResult:
    # The k nearest within max_distance are the k nearest, cut at max_distance.
    kept = tuple(hit for hit in hits if max_distance is None or hit.distance <= max_distance)
    return SearchResult(kept, strategy != "hnsw", strategy, chosen.estimate, recall)


@dataclasses.dataclass(frozen=True)
class _Pinned:
    id: int
    spec: str
    catalog_views: CatalogViews

    @property
    def embedding_model(self) -> str:
        """What products.embedding_model says of its vectors (query vectors carry the same)."""
        return embedding_model(self.spec, catalog_policy(self.catalog_views))


def _pin_active_model(session: Session) -> _Pinned | None:
    """The active model, fixed for the rest of the session's transaction; None before one is recorded."""
    try:
        rows = execute.fetch(session, queries("search_passes.sql")["pin_model"], {})
    except sqlalchemy_errors.ProgrammingError as exc:
        if isinstance(exc.orig, psycopg.errors.UndefinedFunction):
            raise SchemaMismatch("the database schema is older than this prodvec: run `prodvec migrate`") from exc
        raise
    if not rows:
        return None
    return _Pinned(*rows[0])


def _check_active_model(vectors: Sequence[QueryVector], active: _Pinned) -> None:
    for vector in vectors:
        if vector.model is not None and vector.model != active.embedding_model:
            raise ModelChanged(
                f"the catalog's active model is {active.embedding_model} (`prodvec model` shows it) but the query "
                f"was encoded with {vector.model}: encode queries with the active model (leave encoder= out to "
                "have it loaded)",
                spec=active.spec, catalog_views=active.catalog_views,
            )


def _check_model(vector: QueryVector, result: SearchResult) -> None:
    # Products stored with their vector but no model name (inserted directly) cannot be checked.
    others = {hit.product.embedding_model for hit in result} - {vector.model, None}
    if vector.model is not None and others:
        raise QueryError(
            f"the query was encoded with {vector.model} (PRODVEC_MODEL, PRODVEC_CATALOG_VIEWS) but products "
            f"it found were embedded with {', '.join(sorted(str(model) for model in others))}: their distances "
            "mean nothing. Search "
            "with PRODVEC_MODEL and PRODVEC_CATALOG_VIEWS set as when the embeddings were made, or re-embed "
            "the products (`prodvec requeue`, then `prodvec worker`)"
        )


def _check_options(k: int, max_distance: float | None) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be a positive integer, not {k!r}")
    if max_distance is not None and not (0 <= max_distance <= 2 and math.isfinite(max_distance)):
        raise QueryError(f"max_distance is a cosine distance between 0 and 2, not {max_distance!r}")
