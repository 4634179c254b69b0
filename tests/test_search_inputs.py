"""What a search receives rather than reads: the encoder, view policy and robust flag passed in
(settings only for what is left out), and filters whose types convert their values on the way
to the database (a TypeDecorator, a vector). Checked against numpy over the stored vectors."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from sqlalchemy import Numeric, TypeDecorator, type_coerce
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from prodvec import session as open_session
from prodvec.errors import ConfigError, ModelMismatch, QueryError
from prodvec.images.views import MULTI_VIEW, SINGLE_VIEW, fused_distances
from prodvec.models import Product
from prodvec.search import similar_to, similar_to_text
from prodvec.search.query import QueryVector

DIMENSIONS = 512
PRODUCTS = 60
TIE = 2e-3  # half-precision storage: distances of different rows can tie within this


@dataclass(frozen=True)
class Catalog:
    ids: np.ndarray
    vectors: np.ndarray  # float32 rows of the stored half-precision values, unit length
    price: np.ndarray  # in cents

    def nearest(self, query: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
        """The k smallest cosine distances of the matching products to ``query``."""
        distances = 1 - self.vectors[mask] @ (query / np.linalg.norm(query))
        return np.sort(distances)[:k]


@pytest.fixture
def catalog(conn: psycopg.Connection, test_encoder) -> Catalog:
    rng = np.random.default_rng(20261202)
    raw = rng.standard_normal((PRODUCTS, DIMENSIONS))
    stored = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float16)
    cents = rng.integers(100, 20000, PRODUCTS)
    cents[:4] = (1999, 1999, 4550, 4550)  # prices an IN list below names
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO products (sku, price, stock, embedding, embedding_model) VALUES (%s, %s, 1, %s, %s)",
            [(f"S{i:03d}", Decimal(int(cents[i])) / 100, HalfVector(stored[i]), test_encoder.spec)
             for i in range(PRODUCTS)],
        )
    conn.execute("ANALYZE products")
    ids = np.array([row[0] for row in conn.execute("SELECT id FROM products ORDER BY sku")])
    vectors = stored.astype(np.float32)
    return Catalog(ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), cents)


@pytest.fixture
def db(db_url: str) -> Iterator[Session]:
    with open_session(db_url) as session:
        yield session


@pytest.fixture
def unusable_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that fail wherever they are read."""
    monkeypatch.setenv("PRODVEC_MODEL", "no-such-family:model")
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "double")
    monkeypatch.setenv("PRODVEC_ROBUST_QUERIES", "maybe")


def _distances(result: Any) -> list[float]:
    return [hit.distance for hit in result]


def _query_views(encoder: Any, path: Path, *, robust: bool) -> np.ndarray:
    from prodvec.encode.robust import encode_queries
    from prodvec.images.decode import decode

    image = decode(path.read_bytes(), target_size=encoder.input_size)
    return encode_queries(encoder, [image], robust=robust, policy=SINGLE_VIEW)[0]  # V×D


@pytest.mark.usefixtures("unusable_settings")
def test_a_search_given_its_encoder_reads_no_settings(db: Session, catalog: Catalog, photo_dir: Path,
                                                       test_encoder) -> None:
    everything = np.ones(PRODUCTS, bool)
    photo = photo_dir / "green.jpg"
    plain = Product.similar_to(photo, session=db, k=5, encoder=test_encoder, policy=SINGLE_VIEW, robust=False)
    assert np.allclose(_distances(plain), catalog.nearest(_query_views(test_encoder, photo, robust=False)[0],
                                                          everything, 5), atol=TIE)

    robust = similar_to(db, photo, k=5, encoder=test_encoder, policy=SINGLE_VIEW, robust=True)
    views = _query_views(test_encoder, photo, robust=True)
    assert len(views) > 1
    truth = np.sort(fused_distances(views[None], catalog.vectors[:, None], SINGLE_VIEW)[0])[:5]
    assert np.allclose(_distances(robust), truth, atol=TIE)

    words = "a green square"
    by_text = similar_to_text(db, words, k=5, encoder=test_encoder, policy=SINGLE_VIEW)
    text_vector = test_encoder.encode_text([words])[0]
    assert np.allclose(_distances(by_text), catalog.nearest(text_vector, everything, 5), atol=TIE)

    # Already encoded (as the service's batching encoder hands them over): no encoder at all.
    encoded = similar_to(db, QueryVector(text_vector, model=test_encoder.spec), k=5)
    assert [hit.product.id for hit in encoded] == [hit.product.id for hit in by_text]


@pytest.mark.usefixtures("unusable_settings")
def test_the_given_policy_is_the_one_searched(db: Session, catalog: Catalog, photo_dir: Path, test_encoder) -> None:
    # The catalog was stored single-view: a search under the multi-view policy is refused.
    with pytest.raises(ModelMismatch, match=r"\+multi-view"):
        Product.similar_to(photo_dir / "red.jpg", session=db, encoder=test_encoder, policy=MULTI_VIEW, robust=False)


@pytest.mark.usefixtures("unusable_settings")
def test_unusable_queries_are_refused_before_the_encoder_is_needed(db: Session, test_encoder) -> None:
    with pytest.raises(QueryError, match=r"image file not found.*pass Sku\('SHOE-1'\)"):
        Product.similar_to("SHOE-1", session=db)
    with pytest.raises(QueryError, match="cannot search by a dict"):
        Product.similar_to({"sku": "SHOE-1"}, session=db)
    with pytest.raises(QueryError, match="cannot use the query image: not an image"):
        Product.similar_to(b"hello", session=db, encoder=test_encoder, policy=SINGLE_VIEW, robust=False)


def test_what_the_caller_leaves_out_comes_from_the_settings(db: Session, catalog: Catalog, photo_dir: Path,
                                                           test_encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = photo_dir / "blue_stripes.png"
    given = Product.similar_to(photo, session=db, k=5, encoder=test_encoder, policy=SINGLE_VIEW, robust=False)
    monkeypatch.setenv("PRODVEC_ROBUST_QUERIES", "0")  # PRODVEC_MODEL: the test model (conftest)
    configured = Product.similar_to(photo, session=db, k=5)
    assert [hit.product.id for hit in configured] == [hit.product.id for hit in given]
    monkeypatch.setenv("PRODVEC_CATALOG_VIEWS", "double")
    with pytest.raises(ConfigError, match="PRODVEC_CATALOG_VIEWS"):
        Product.similar_to(photo, session=db, k=5, encoder=test_encoder, robust=False)


class Cents(TypeDecorator[Decimal]):
    """A price given in cents, stored in the Numeric price column: its bind processor converts."""

    impl = Numeric
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value) / 100


def test_filters_whose_types_convert_their_values(db: Session, catalog: Catalog) -> None:
    rng = np.random.default_rng(7)
    query = rng.standard_normal(DIMENSIONS).astype(np.float32)
    other = catalog.vectors[10] + 0.5 * rng.standard_normal(DIMENSIONS).astype(np.float32) / np.sqrt(DIMENSIONS)
    near_other = 1 - catalog.vectors @ (other / np.linalg.norm(other)) < 0.9
    assert 0 < near_other.sum() < PRODUCTS
    price_in_cents = type_coerce(Product.price, Cents)
    cases = [
        ([price_in_cents < 5000], catalog.price < 5000),
        ([price_in_cents.in_([1999, 4550])], np.isin(catalog.price, [1999, 4550])),  # an expanded IN list
        ([Product.embedding.cosine_distance(other) < 0.9], near_other),  # a numpy vector, bound as halfvec
        ([price_in_cents >= 2000, Product.embedding.cosine_distance(other) < 0.9],
         (catalog.price >= 2000) & near_other),
    ]
    for where, mask in cases:
        result = Product.similar_to(query, session=db, k=8, where=where)
        expected = catalog.nearest(query, mask, 8)
        assert len(result) == len(expected), where
        assert np.allclose(_distances(result), expected, atol=TIE), where
        matching = set(catalog.ids[mask].tolist())
        assert all(hit.product.id in matching for hit in result), where
