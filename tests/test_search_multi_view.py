"""Multi-view search (PRODVEC_CATALOG_VIEWS=multi) against a numpy brute-force answer.

Every product stores two vectors (embedding: the fitted photo, embedding_coarse: the coarse
thumbnail). An image query's views are each searched against both columns and fused; the
answer must be the top k of views.fused_distances over the same half-precision vectors. A
catalog embedded under the other views is refused like one of another model.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import record_catalog_views
from pgvector import HalfVector
from PIL import Image
from sqlalchemy import text
from sqlalchemy.orm import Session

from prodvec import session as open_session
from prodvec.config import load_settings
from prodvec.encode.robust import encode_queries
from prodvec.errors import ConfigError, ModelMismatch, QueryError
from prodvec.images.views import MULTI_VIEW, SINGLE_VIEW, embedding_model, fused_distances
from prodvec.models import Product
from prodvec.search import Text, plan, similar_to_many

DIMENSIONS = 512
PRODUCTS = 200
NEAR = 48  # products with one view near one of the query photo's views
TIE = 2e-3  # halfvec precision


@dataclass(frozen=True)
class Catalog:
    ids: np.ndarray
    vectors: np.ndarray  # M×2×D float32 of the stored half-precision values: (embedding, embedding_coarse)
    price: np.ndarray


@pytest.fixture
def query_photo(photo_dir: Path) -> Path:
    return photo_dir / "green.jpg"


@pytest.fixture
def query_views(query_photo: Path, test_encoder) -> np.ndarray:
    """The query photo's four views under MULTI_VIEW (fitted, turned ±, coarse), V×D."""
    with Image.open(query_photo) as photo:
        return encode_queries(test_encoder, [photo.convert("RGB")], robust=True, policy=MULTI_VIEW)[0]


@pytest.fixture
def catalog(conn: psycopg.Connection, query_views: np.ndarray, test_encoder,
            monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """Random products, and some with one stored view near one query view (at various
    distances), so that every (query view, catalog view) pair wins for some product."""
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "multi")
    record_catalog_views(conn, "multi")
    rng = np.random.default_rng(20261127)
    raw = rng.standard_normal((PRODUCTS, 2, DIMENSIONS)) / np.sqrt(DIMENSIONS)
    for i in range(NEAR):
        view, column = i % len(query_views), (i // len(query_views)) % 2
        raw[i, column] = query_views[view] + rng.uniform(0.3, 1.2) * raw[i, column]
    stored = (raw / np.linalg.norm(raw, axis=2, keepdims=True)).astype(np.float16)
    price = np.round(rng.uniform(1, 200, PRODUCTS), 2)
    model = embedding_model(test_encoder.spec, MULTI_VIEW)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO products (sku, price, stock, embedding, embedding_coarse, embedding_model) "
            "VALUES (%s, %s, 1, %s, %s, %s)",
            [(f"M{i:04d}", Decimal(f"{price[i]:.2f}"), HalfVector(stored[i, 0]), HalfVector(stored[i, 1]), model)
             for i in range(PRODUCTS)],
        )
    conn.execute("ANALYZE products")
    ids = np.array([row[0] for row in conn.execute("SELECT id FROM products ORDER BY sku")])
    vectors = stored.astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    return Catalog(ids, vectors, price)


@pytest.fixture
def db(db_url: str) -> Iterator[Session]:
    with open_session(db_url) as session:
        yield session


def _assert_fused_top_k(result, catalog: Catalog, views: np.ndarray, mask: np.ndarray, k: int) -> None:
    """The result is the top k of the in-memory fusion over the stored vectors, up to ties."""
    truth = fused_distances(views[None], catalog.vectors, MULTI_VIEW)[0]
    truth[~mask] = np.inf
    expected = np.sort(truth)[:k]
    assert len(result) == k
    assert np.allclose([hit.distance for hit in result], expected, atol=TIE)
    by_id = dict(zip(catalog.ids.tolist(), truth.tolist(), strict=False))
    for hit in result:
        assert hit.distance == pytest.approx(by_id[hit.product.id], abs=TIE)


@pytest.mark.parametrize("robust", [True, False])
def test_multi_view_query_is_the_exact_fusion_of_both_columns(
        db: Session, catalog: Catalog, query_photo: Path, query_views: np.ndarray, robust: bool) -> None:
    result = Product.similar_to(query_photo, session=db, k=10, robust=robust)
    views = query_views if robust else query_views[:1]
    _assert_fused_top_k(result, catalog, views, np.ones(PRODUCTS, bool), 10)
    # Some hits are that near only through their coarse vector: embedding_coarse was searched too.
    photo_distances = fused_distances(views[None], catalog.vectors[:, :1], MULTI_VIEW)[0]
    photo_only = dict(zip(catalog.ids.tolist(), photo_distances, strict=True))
    assert any(hit.distance < photo_only[hit.product.id] - TIE for hit in result)

    cheap = Product.similar_to(query_photo, session=db, k=7, where=[Product.price <= 120], robust=robust)
    _assert_fused_top_k(cheap, catalog, views, catalog.price <= 120, 7)
    assert all(hit.product.price <= 120 for hit in cheap)
    cut = float((cheap[2].distance + cheap[3].distance) / 2)
    near = Product.similar_to(query_photo, session=db, k=7, where=[Product.price <= 120], robust=robust,
                              max_distance=cut)
    assert [hit.product.id for hit in near] == [hit.product.id for hit in cheap[:3]]  # on the fused distance


def test_multi_view_query_through_the_indexes(db: Session, catalog: Catalog, query_photo: Path,
                                              query_views: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every per-pair search through its column's HNSW index (as for a large catalog)."""
    monkeypatch.setattr(plan, "EXACT_MAX_ROWS", 0)
    db.execute(text("SET LOCAL enable_seqscan = off"))
    db.execute(text("SET LOCAL enable_bitmapscan = off"))
    result = Product.similar_to(query_photo, session=db, k=10, where=[Product.price + 0 <= 150])
    assert result.strategy.startswith("hnsw") and len(result) == 10
    truth = fused_distances(query_views[None], catalog.vectors, MULTI_VIEW)[0]
    truth[catalog.price > 150] = np.inf
    by_id = dict(zip(catalog.ids.tolist(), truth.tolist(), strict=False))
    found = [hit.distance for hit in result]
    assert found == sorted(found)
    for hit in result:  # a pair the index missed can only make a product look farther
        assert hit.distance >= by_id[hit.product.id] - TIE
    best = set(catalog.ids[np.argsort(truth)[:10]].tolist())
    assert len({hit.product.id for hit in result} & best) >= 8


def test_other_catalog_views_are_refused(db: Session, catalog: Catalog, conn: psycopg.Connection,
                                         query_photo: Path, test_encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    words = Text("a green square")
    text_vector = test_encoder.encode_text([words.text])[0]
    by_text, by_vector = similar_to_many(db, [words, text_vector], k=5)
    # Text and vector queries search products.embedding (the fitted photo) only.
    assert [h.product.id for h in by_text] == [h.product.id for h in by_vector]
    half = text_vector.astype(np.float16).astype(np.float32)
    truth = 1 - catalog.vectors[:, 0] @ (half / np.linalg.norm(half))
    assert np.allclose([h.distance for h in by_vector], np.sort(truth)[:5], atol=TIE)

    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "single")  # the searcher disagrees with the worker
    for query in (query_photo, words):
        with pytest.raises(ModelMismatch, match=r"PRODVEC_CATALOG_VIEWS=single disagrees.*multi catalog views"):
            similar_to_many(db, [query], k=5)
    assert len(Product.similar_to(text_vector, session=db, k=5)) == 5  # a vector carries no model

    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "multi")
    conn.execute("UPDATE products SET embedding_model = %s", (test_encoder.spec,))  # a single-view catalog
    db.expire_all()
    with pytest.raises(QueryError, match=r"embedded with open_clip:ViT-B-32:none:"):
        Product.similar_to(query_photo, session=db, k=5)


def test_catalog_views_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRODVEC_CATALOG_VIEWS", raising=False)
    assert load_settings().catalog_policy is SINGLE_VIEW
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", " Multi ")
    assert load_settings().catalog_policy is MULTI_VIEW
    assert embedding_model("timm:efficientnet_lite0", MULTI_VIEW) == "timm:efficientnet_lite0+multi-view"
    assert embedding_model("timm:efficientnet_lite0", SINGLE_VIEW) == "timm:efficientnet_lite0"
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "double")
    with pytest.raises(ConfigError, match=r"PRODVEC_CATALOG_VIEWS='double': use single .* or multi"):
        load_settings()
