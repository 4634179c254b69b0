"""The worker against a real database: round trip, queue rules, failures, stale images."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import record_catalog_views
from pgvector import HalfVector

from prodvec import Product, session
from prodvec import queue as jobs
from prodvec.db.model_registry import list_models
from prodvec.worker.pipeline import Worker, WorkerOptions


@pytest.fixture
def encoder(test_encoder):
    return test_encoder


def _insert(conn: psycopg.Connection, sku: str, image: str | None, **columns: object) -> int:
    values = {"sku": sku, "image": image, **columns}
    names = ", ".join(values)
    placeholders = ", ".join(["%s"] * len(values))
    query = f"INSERT INTO products ({names}) VALUES ({placeholders}) RETURNING id"
    return conn.execute(query, list(values.values())).fetchone()[0]


def _job_states(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute("SELECT p.sku, j.state FROM embedding_jobs j JOIN products p ON p.id = j.product_id")
    return dict(rows.fetchall())


def test_worker_embeds_every_pending_product(conn, db_url, encoder, photo_dir: Path) -> None:
    for index, photo in enumerate(sorted(photo_dir.iterdir())):
        _insert(conn, f"P{index}", str(photo), price=10 + index, stock=index)
    stats = Worker(db_url, encoder, WorkerOptions(batch_size=3)).run(once=True)
    assert stats.embedded == 8 and stats.failed == 0
    assert jobs.status(conn).as_dict() | {"oldest_pending_seconds": None} == {
        "total": 8, "up_to_date": 8, "pending": 0, "retrying": 0, "failed": 0, "no_image": 0, "not_queued": 0,
        "embedded": 8, "oldest_pending_seconds": None,
    }
    rows = conn.execute("SELECT image, embedding, embedding_model, embedded_image FROM products").fetchall()
    for image, embedding, model, embedded_image in rows:
        vector = embedding.to_numpy().astype(np.float32)
        assert vector.shape == (512,)
        assert abs(np.linalg.norm(vector) - 1) < 1e-2
        assert model == encoder.spec and embedded_image == image
    # The stored vector is the encoder's vector for that photo (halfvec precision).
    from PIL import Image

    image, embedding = conn.execute("SELECT image, embedding FROM products WHERE sku = 'P0'").fetchone()
    with Image.open(image) as photo:
        expected = encoder.encode_images(encoder.preprocess(photo.convert("RGB"))[None])[0]
    assert np.allclose(embedding.to_numpy(), expected, atol=2e-3)


def test_multi_view_catalog_stores_both_views(conn, db_url, encoder, photo_dir: Path, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """MULTI_VIEW (PRODVEC_CATALOG_VIEWS=multi): the fitted photo in embedding, the coarse thumbnail in
    embedding_coarse, both made with PIL even where JPEGs could be decoded in batches; switching
    an embedded catalog over (and back) is a requeue."""
    from PIL import Image

    from prodvec.db.active_model import ActiveModel
    from prodvec.db.model_registry import activate_model, add_model
    from prodvec.encode.robust import encode_products
    from prodvec.images.views import MULTI_VIEW, SINGLE_VIEW

    photos = sorted(photo_dir.iterdir())
    for index, photo in enumerate(photos):
        _insert(conn, f"M{index}", str(photo))
    Worker(db_url, encoder).run(once=True)  # single, the default: no coarse vector
    assert conn.execute("SELECT count(*) FROM products WHERE embedding_coarse IS NULL").fetchone()[0] == 8

    assert jobs.requeue_all(conn) == 8
    (tmp_path / "not-an-image.jpg").write_text("hello")
    _insert(conn, "BROKEN", str(tmp_path / "not-an-image.jpg"))
    record_catalog_views(conn, "multi")
    worker = Worker(db_url, encoder, WorkerOptions(batch_size=3, gpu_decode=True), policy=MULTI_VIEW)
    assert not worker.decodes_on_gpu
    with caplog.at_level(logging.WARNING, logger="prodvec.worker"):
        stats = worker.run(once=True)
    assert (stats.embedded, stats.failed) == (8, 1)  # the broken photo fails alone
    assert sum("made with PIL" in record.message for record in caplog.records) == 1
    rows = conn.execute(
        "SELECT image, embedding, embedding_coarse, embedding_model FROM products WHERE sku LIKE 'M%' ORDER BY sku"
    ).fetchall()
    images = [Image.open(image).convert("RGB") for image, *_ in rows]
    expected = encode_products(encoder, images, policy=MULTI_VIEW)  # N×2×D
    for (_, embedding, coarse, model), views in zip(rows, expected, strict=True):
        assert model == f"{encoder.spec}+multi-view"
        assert np.allclose(embedding.to_numpy(), views[0], atol=2e-3)
        assert np.allclose(coarse.to_numpy(), views[1], atol=2e-3)

    # Back to single views: a model change like any other, backfilled beside the multi-view vectors.
    single, queued, _ = add_model(db_url, ActiveModel(encoder.spec, encoder.dimensions, "single"))
    assert queued == 9
    Worker(db_url, encoder, policy=MULTI_VIEW, loader={encoder.spec: encoder}.__getitem__).run(once=True)
    activate_model(conn, single)
    assert conn.execute(
        "SELECT count(*) FROM products WHERE embedding_coarse IS NULL AND embedding_model = %s", (encoder.spec,)
    ).fetchone()[0] == 8
    Worker(db_url, encoder, policy=SINGLE_VIEW).run(once=True)  # the active model now


def test_queue_rules(conn) -> None:
    product = _insert(conn, "Q1", "/photos/a.jpg")
    assert _job_states(conn) == {"Q1": "pending"}
    conn.execute("DELETE FROM embedding_jobs")
    conn.execute("UPDATE products SET price = 99, stock = 3, title = 'new', category = 'x' WHERE id = %s", (product,))
    assert _job_states(conn) == {}  # price/stock/title/category never queue
    conn.execute("UPDATE products SET image = '/photos/b.jpg' WHERE id = %s", (product,))
    assert conn.execute("SELECT image, state FROM embedding_jobs").fetchall() == [("/photos/b.jpg", "pending")]
    _insert(conn, "Q2", None)
    _insert(conn, "Q3", "/photos/c.jpg", embedding=HalfVector(np.ones(512)))
    assert set(_job_states(conn)) == {"Q1"}  # no image, or a vector supplied: nothing to embed


def test_broken_images_fail_alone_with_reasons(conn, db_url, encoder, photo_dir: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prodvec")
    (tmp_path / "not-an-image.jpg").write_text("hello")
    good = sorted(photo_dir.iterdir())[:2]
    _insert(conn, "GOOD1", str(good[0]))
    _insert(conn, "BROKEN", str(tmp_path / "not-an-image.jpg"))
    _insert(conn, "GOOD2", str(good[1]))
    _insert(conn, "SCHEME", "ftp://example.invalid/a.jpg")
    stats = Worker(db_url, encoder).run(once=True)
    assert (stats.embedded, stats.failed) == (2, 2)
    reasons = {failure.sku: failure.reason for failure in jobs.failures(conn)}
    assert "not an image" in reasons["BROKEN"]
    assert "unsupported image location scheme" in reasons["SCHEME"]
    assert "product BROKEN: " in caplog.text  # logs name products as the shop does, by sku
    assert jobs.retry_failed(conn, ["BROKEN"]) == ["BROKEN"]
    assert _job_states(conn) == {"BROKEN": "pending", "SCHEME": "failed"}


def test_a_drained_queue_leaves_the_products_analysed(conn, db_url, encoder, photo_dir: Path) -> None:
    """A small catalog never reaches autovacuum's threshold: the worker analyses products when it
    has written a tenth of the rows the statistics know of, so searches size plans by real counts."""
    def analysed() -> float:
        return conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'products'::regclass").fetchone()[0]

    assert analysed() < 0  # a fresh table: never analysed
    photos = sorted(photo_dir.iterdir())
    for i, photo in enumerate(photos):
        _insert(conn, f"A{i}", str(photo))
    assert Worker(db_url, encoder).run(once=True).embedded == len(photos)
    assert analysed() == len(photos)
    with session(db_url) as db:
        assert Product.similar_to(np.ones(512, np.float32), session=db, k=3).candidates == len(photos)


def test_missing_file_is_retried_then_failed(conn, db_url, encoder, tmp_path: Path) -> None:
    _insert(conn, "LATE", str(tmp_path / "not-yet.jpg"))
    options = WorkerOptions(max_attempts=2, retry_base_delay_seconds=0.0)
    worker = Worker(db_url, encoder, options)
    stats = worker.run(once=True)
    assert (stats.embedded, stats.failed, stats.retried) == (0, 1, 1)  # attempt 1 retried, attempt 2 the last
    failure = jobs.failures(conn)[0]
    assert failure.sku == "LATE" and failure.attempts == 2 and "not found" in failure.reason
    for counter in ("prodvec_retries_total", "prodvec_failures_total"):
        assert worker.metrics.registry.get_sample_value(counter, {"reason": "missing_file"}) == 1


def test_stale_image_is_not_written(conn, db_url, encoder, photo_dir: Path) -> None:
    photos = sorted(photo_dir.iterdir())
    product = _insert(conn, "S1", str(photos[0]))
    claim = jobs.claim(conn, list_models(conn)[0].id, limit=10, lease_seconds=60)
    conn.execute("UPDATE products SET image = %s WHERE id = %s", (str(photos[1]), product))
    vectors = np.ones((1, 512), dtype=np.float32) / np.sqrt(512)
    assert jobs.write_back(conn, claim, claim.jobs, vectors, model="m") == 0
    assert conn.execute("SELECT embedding FROM products").fetchone()[0] is None
    Worker(db_url, encoder).run(once=True)
    assert conn.execute("SELECT embedded_image FROM products").fetchone()[0] == str(photos[1])


def test_dimension_mismatch_stops_the_worker(conn, db_url, encoder) -> None:
    from prodvec.errors import SchemaMismatch

    conn.execute("ALTER TABLE products ALTER COLUMN embedding TYPE halfvec(3)")
    with pytest.raises(SchemaMismatch, match="prodvec migrate"):
        Worker(db_url, encoder).run(once=True)


def _has_hnsw_index(conn) -> bool:
    """Both vector columns' HNSW indexes are there (else: neither is)."""
    embedding, coarse = conn.execute(
        "SELECT to_regclass('products_embedding_hnsw') IS NOT NULL, "
        "to_regclass('products_embedding_coarse_hnsw') IS NOT NULL"
    ).fetchone()
    both, either = embedding and coarse, embedding or coarse
    assert both == either
    return both


def test_bulk_backfill_rebuilds_the_index(conn, db_url, encoder, photo_dir: Path) -> None:
    from prodvec.worker.bulk import hnsw_index_dropped

    for index, photo in enumerate(sorted(photo_dir.iterdir())):
        _insert(conn, f"B{index}", str(photo))
    with hnsw_index_dropped(db_url):
        assert not _has_hnsw_index(conn)
        Worker(db_url, encoder).run(once=True)
    assert _has_hnsw_index(conn)
    # Rebuilt with the options the migrations give them (benchmarks/worker_throughput.py rebuilds the same way).
    options = conn.execute(
        "SELECT DISTINCT array_to_string(reloptions, ',') FROM pg_class "
        "WHERE relname IN ('products_embedding_hnsw', 'products_embedding_coarse_hnsw')"
    ).fetchall()
    assert options == [("m=32,ef_construction=200",)]  # migrations/0004_denser_graphs.sql
    assert jobs.status(conn).embedded == 8
    # Vacuumed afterwards: the rewritten pages are all-visible (exact passes read the index).
    visible, pages = conn.execute(
        "SELECT relallvisible, relpages FROM pg_class WHERE oid = 'products'::regclass"
    ).fetchone()
    assert pages > 0 and visible == pages
    with pytest.raises(RuntimeError), hnsw_index_dropped(db_url):
        raise RuntimeError("backfill interrupted")
    assert _has_hnsw_index(conn)  # rebuilt even when the backfill fails


def test_a_worker_whose_active_model_it_cannot_load_stops_saying_what_to_do(conn, db_url, encoder,
                                                                            photo_dir: Path) -> None:
    """The catalog's active model switched (--force) to one whose weights this machine lacks: the
    worker started with the previous one cannot keep the catalog current, and says to roll back
    or bring the weights, as the commands do."""
    from prodvec.db.active_model import ActiveModel
    from prodvec.db.model_registry import activate_model, add_model
    from prodvec.encode import load_encoder
    from prodvec.errors import ModelMismatch

    _insert(conn, "P", str(photo_dir / "red.jpg"))
    missing, _, _ = add_model(db_url, ActiveModel("open_clip:ViT-B-32:/nowhere/x.pt", 512, "single"))
    activate_model(conn, missing, force=True)
    worker = Worker(db_url, encoder, WorkerOptions(), loader=lambda spec: load_encoder(spec, "cpu"))
    with pytest.raises(ModelMismatch) as raised:
        worker.run(once=True)
    assert str(raised.value).startswith(f"this machine cannot load the catalog's active model {missing.spec} (")
    assert str(raised.value).endswith("): roll back with `prodvec model rollback`, or give this machine the model's "
                                      "weights")
